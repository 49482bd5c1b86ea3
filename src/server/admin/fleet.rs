//! The fleet, a page at a time (`GET /api/v1/computers`, `tessera computers`): computers
//! filtered by a selector, an activation and a state, each with its deployments, and the
//! result codes per activation as the OCS console's statistics count them.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use serde::{Deserialize, Serialize};

use super::routes::Deployments;
use crate::store::db::{self, CodeCount, Computer, Database, DbError, FLEET_PAGE, FleetFilter};

/// The namespace an activation named without one is in (the resources' default).
const DEFAULT_NAMESPACE: &str = "default";

/// Errors reading the query of `/api/v1/computers`.
#[derive(Debug, thiserror::Error)]
pub enum FleetQueryError {
    #[error(
        "unknown state {0:?}: one of waiting, notified, downloading, installing, success, error"
    )]
    State(String),
    #[error(
        "selector term {0:?} is not KEY=VALUE with KEY one of name (a glob), tag, os, silent (a duration such as 7d)"
    )]
    Selector(String),
}

/// Seconds in `text`, a whole number and one unit: `90s`, `30m`, `12h`, `7d` (a selector's
/// `silent=` term: the computers not heard from for that long).
pub(super) fn silent_seconds(text: &str) -> Option<i64> {
    let text = text.trim();
    let unit = text.chars().last()?;
    let number: i64 = text[..text.len() - unit.len_utf8()].parse().ok()?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => return None,
    };
    number.checked_mul(scale).filter(|s| *s >= 0)
}

/// The query of `/api/v1/computers`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetQuery {
    /// `name=GLOB,tag=TAG,os=TEXT`: every term must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// An Activation (`name` in the default namespace, or `namespace/name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation: Option<String>,
    /// A deployment state (`error`, `waiting`...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Computers per page, at most [`FLEET_PAGE`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    /// The `next` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
}

impl FleetQuery {
    /// The database filter this query asks for.
    pub fn filter(&self) -> Result<FleetFilter, FleetQueryError> {
        let mut filter = FleetFilter {
            activation: self.activation.as_deref().map(qualified),
            state: self
                .state
                .as_deref()
                .map(|s| db::State::named(s).ok_or_else(|| FleetQueryError::State(s.to_owned())))
                .transpose()?,
            ..FleetFilter::default()
        };
        for term in self
            .selector
            .iter()
            .flat_map(|s| s.split(','))
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            if let Some(("silent", value)) = term.split_once('=') {
                let seconds = silent_seconds(value)
                    .ok_or_else(|| FleetQueryError::Selector(term.to_owned()))?;
                filter.contact_before = Some(jiff::Timestamp::now().as_second() - seconds);
                continue;
            }
            let slot = match term.split_once('=') {
                Some(("name", value)) => (&mut filter.name, value),
                Some(("tag", value)) => (&mut filter.tag, value),
                Some(("os", value)) => (&mut filter.os, value),
                _ => return Err(FleetQueryError::Selector(term.to_owned())),
            };
            *slot.0 = Some(slot.1.to_owned());
        }
        Ok(filter)
    }
}

/// `name` as `namespace/name` (in the default namespace when it has none).
pub fn qualified(name: &str) -> String {
    if name.contains('/') {
        name.to_owned()
    } else {
        format!("{DEFAULT_NAMESPACE}/{name}")
    }
}

/// One page of the fleet.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetPage {
    pub computers: Vec<FleetComputer>,
    /// Where the next page starts (`after=`), when there may be one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Result codes per activation (of the activation asked for, if any); on the first
    /// page only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<CodeCount>,
}

/// A computer and where it stands with each activation (without the commands' output,
/// which `GET /api/v1/computers/{id}` gives).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetComputer {
    #[serde(flatten)]
    pub computer: Computer,
    pub deployments: Vec<FleetDeployment>,
}

/// One computer's state with one activation.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetDeployment {
    pub activation: String,
    pub package_id: String,
    pub state: db::State,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    pub changed_at: i64,
}

/// Reads one page of the fleet from `db`.
pub fn fleet_page_of(
    db: &Database,
    filter: &FleetFilter,
    after: Option<&str>,
    limit: Option<i64>,
) -> Result<FleetPage, DbError> {
    let limit = limit.unwrap_or(FLEET_PAGE).clamp(1, FLEET_PAGE);
    let rows = db.fleet_page(filter, after, limit)?;
    let next = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|(c, _)| c.device_id.clone()))
        .flatten();
    let codes = if after.is_none() {
        db.result_codes(filter.activation.as_deref())?
    } else {
        Vec::new()
    };
    let computers = rows
        .into_iter()
        .map(|(computer, deployments)| FleetComputer {
            computer,
            deployments: deployments
                .into_iter()
                .map(|d| FleetDeployment {
                    activation: d.activation,
                    package_id: d.package_id,
                    state: d.state,
                    code: d.code,
                    changed_at: d.changed_at,
                })
                .collect(),
        })
        .collect();
    Ok(FleetPage {
        computers,
        next,
        codes,
    })
}

/// `GET /api/v1/computers?selector=&activation=&state=&limit=&after=`.
pub(super) async fn computers(
    State(state): State<Deployments>,
    Query(query): Query<FleetQuery>,
) -> Response {
    let filter = match query.filter() {
        Ok(filter) => filter,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(serde_json::json!({ "error": error.to_string() })),
            )
                .into_response();
        }
    };
    let db = state.db.clone();
    let read = move || fleet_page_of(&db, &filter, query.after.as_deref(), query.limit);
    match tokio::task::spawn_blocking(read).await {
        Ok(Ok(page)) => Json(page).into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_query_becomes_a_filter_with_qualified_activation_and_a_known_state() {
        let query = FleetQuery {
            selector: Some("name=pc-*, tag=lab,os=debian".into()),
            activation: Some("hello".into()),
            state: Some("error".into()),
            ..FleetQuery::default()
        };
        assert_eq!(
            query.filter().unwrap(),
            FleetFilter {
                name: Some("pc-*".into()),
                tag: Some("lab".into()),
                os: Some("debian".into()),
                activation: Some("default/hello".into()),
                state: Some(db::State::Error),
                contact_before: None,
            }
        );
        let silent = FleetQuery {
            selector: Some("silent=7d".into()),
            ..FleetQuery::default()
        }
        .filter()
        .unwrap();
        let week_ago = jiff::Timestamp::now().as_second() - 7 * 86_400;
        assert!(
            silent
                .contact_before
                .is_some_and(|t| (t - week_ago).abs() < 60)
        );
        assert_eq!(silent_seconds("90s"), Some(90));
        assert_eq!(silent_seconds("12h"), Some(43_200));
        for wrong in ["7", "d", "7w", "-1d", "1.5d"] {
            assert_eq!(silent_seconds(wrong), None, "{wrong}");
        }
        let wrong = FleetQuery {
            state: Some("broken".into()),
            ..FleetQuery::default()
        };
        assert!(matches!(wrong.filter(), Err(FleetQueryError::State(_))));
        let wrong = FleetQuery {
            selector: Some("colour=blue".into()),
            ..FleetQuery::default()
        };
        assert!(matches!(wrong.filter(), Err(FleetQueryError::Selector(_))));
    }

    #[test]
    fn pages_chain_by_device_id_and_codes_come_with_the_first() {
        let db = Database::in_memory().unwrap();
        for n in 0..5 {
            db.contact(&format!("pc-{n}"), 1_000).unwrap();
        }
        let first = fleet_page_of(&db, &FleetFilter::default(), None, Some(2)).unwrap();
        assert_eq!(first.computers.len(), 2);
        assert_eq!(first.next.as_deref(), Some("pc-1"));
        let mut after = first.next;
        let mut seen = 2;
        while let Some(cursor) = after {
            let page = fleet_page_of(&db, &FleetFilter::default(), Some(&cursor), Some(2)).unwrap();
            seen += page.computers.len();
            after = page.next;
        }
        assert_eq!(seen, 5);
    }

    #[tokio::test]
    async fn the_route_answers_a_page_and_refuses_an_unknown_state_with_the_reason() {
        use tower::ServiceExt;
        let db = std::sync::Arc::new(Database::in_memory().unwrap());
        db.contact("pc-1", 1_000).unwrap();
        let app = super::super::deployments_app(Deployments {
            db,
            metrics: std::sync::Arc::default(),
            reports: tokio::sync::watch::channel(crate::server::admin::Report::default()).1,
        });
        let get = |uri: &str| {
            let request = axum::http::Request::get(uri)
                .body(axum::body::Body::empty())
                .unwrap();
            app.clone().oneshot(request)
        };
        let response = get("/api/v1/computers?limit=10").await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let page: FleetPage = serde_json::from_slice(&body).unwrap();
        assert_eq!(page.computers[0].computer.device_id, "pc-1");
        assert_eq!(page.next, None);
        let response = get("/api/v1/computers?state=broken").await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assert!(String::from_utf8_lossy(&body).contains("unknown state"));
    }
}
