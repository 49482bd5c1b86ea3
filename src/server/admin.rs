//! The admin API: `/healthz`, `/readyz`, and the objects with their conditions and problems
//! as JSON (`/api/v1/objects`, `/api/v1/problems`); deployments (`/api/v1/deployments`,
//! `/api/v1/computers/{id}`) and `/metrics`.
//!
//! It listens on loopback by default: it tells what is deployed where, which is for
//! operators, not for agents.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::budget::{self, ConnectionBudget, Gate, Stats, Throttle};
use crate::server::deployments::{self, PackageLine};
use crate::server::metrics::Metrics;
use crate::store::db::{Computer, Database, DbError, Deployment, Event};

/// What the admin API shows: the latest reconcile's view of every object.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Revision of the configuration reconciled.
    pub revision: String,
    /// False until the first reconcile pass has finished.
    pub ready: bool,
    /// Every object, in kind then name order.
    pub objects: Vec<ObjectReport>,
    /// Problems that concern no single object (unreadable files, YAML syntax errors,
    /// unknown kinds).
    pub problems: Vec<ProblemReport>,
}

/// One object as reconciled.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReport {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// Where the latest version was read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
    /// Generation of the latest version read.
    pub generation: i64,
    /// Generation of the version in effect, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The revision of the configuration this status was reconciled from: the commit for a
    /// git source, a content digest for a directory.
    pub source_revision: String,
    /// The kind's own status fields (a Certificate's `notAfter`, `renewalTime`, `revision`...).
    #[serde(skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, serde_json::Value>,
    /// kstatus conditions.
    pub conditions: Vec<ConditionReport>,
    /// What is wrong with this object, if anything.
    pub problems: Vec<ProblemReport>,
}

/// A file and line.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SourceRef {
    pub file: String,
    pub line: u32,
}

/// A kstatus condition.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionReport {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    /// RFC 3339; changes only when `status` does.
    pub last_transition_time: String,
}

/// A problem in plain words, with where it is.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProblemReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    pub message: String,
}

/// Errors of the admin listener.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("failed to listen on {address} for the admin API")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// The admin routes, reading the latest report from `reports`.
pub fn app(reports: watch::Receiver<Report>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/objects", get(objects))
        .route("/api/v1/objects/{kind}/{name}", get(object))
        .route("/api/v1/problems", get(problems))
        .with_state(reports)
}

/// What the deployment routes read.
#[derive(Clone)]
pub struct Deployments {
    pub db: Arc<Database>,
    pub metrics: Arc<Metrics>,
}

/// `/metrics` (Prometheus), `/api/v1/deployments` (the `tessera status` table) and
/// `/api/v1/computers/{id}` (one computer, by device id or name, with its history).
pub fn deployments_app(state: Deployments) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/deployments", get(deployment_table))
        .route("/api/v1/computers/{id}", get(computer))
        .with_state(state)
}

/// The deployment table, as JSON and as `tessera status` prints it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentTable {
    /// Notified longer than this many seconds ago without a result counts as stale.
    pub stale_after: i64,
    pub packages: Vec<PackageLine>,
}

/// One computer's facts, deployments and history.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComputerReport {
    pub computer: Computer,
    pub deployments: Vec<Deployment>,
    pub history: Vec<Event>,
}

/// Reads the deployment table from `db` at `now`.
pub fn deployment_table_of(db: &Database, now: i64) -> Result<DeploymentTable, DbError> {
    let stale_after = db
        .setting("staleAfter")?
        .and_then(|v| v.parse().ok())
        .unwrap_or(7 * 24 * 3600);
    Ok(DeploymentTable {
        stale_after,
        packages: deployments::table(&db.deployments()?, now - stale_after),
    })
}

/// Every computer whose device id or name is `wanted`.
pub fn computer_reports(db: &Database, wanted: &str) -> Result<Vec<ComputerReport>, DbError> {
    let mut out = Vec::new();
    for computer in db.find_computers(wanted)? {
        let Some((computer, deployments)) = db.computer(&computer.device_id)? else {
            continue;
        };
        let history = db.events(&computer.device_id)?;
        out.push(ComputerReport {
            computer,
            deployments,
            history,
        });
    }
    Ok(out)
}

async fn metrics(State(state): State<Deployments>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn deployment_table(State(state): State<Deployments>) -> Response {
    let now = jiff::Timestamp::now().as_second();
    let db = state.db.clone();
    match tokio::task::spawn_blocking(move || deployment_table_of(&db, now)).await {
        Ok(Ok(table)) => Json(table).into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

async fn computer(State(state): State<Deployments>, Path(id): Path<String>) -> Response {
    let db = state.db.clone();
    let wanted = id.clone();
    match tokio::task::spawn_blocking(move || computer_reports(&db, &wanted)).await {
        Ok(Ok(found)) if found.is_empty() => {
            (StatusCode::NOT_FOUND, format!("no computer {id}\n")).into_response()
        }
        Ok(Ok(found)) => Json(found).into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// Binds `address` (port 0 picks a free one).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AdminError::Bind { address, source })
}

/// Serves `app` on `listener` within `budget` (its own cap, `admin_connections`, and the
/// same timeouts as the agent-facing listeners) until `shutdown`; counts in `stats`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    budget: Arc<ConnectionBudget>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    let gate = Arc::new(Gate::default());
    let throttle = Throttle::default();
    let tracker = tokio_util::task::TaskTracker::new();
    while let Some((stream, peer)) = budget::accept(&listener, "admin", &stats, &shutdown).await {
        let permit = match gate.admit(
            peer.ip(),
            budget.admin_connections,
            budget.max_per_address,
            &stats,
        ) {
            Ok(permit) => permit,
            Err(refusal) => {
                drop(stream);
                if let Some(held) = throttle.allow() {
                    tracing::warn!(listener = "admin", %peer, reason = refusal.as_str(), limit = budget.admin_connections, refused_since_last_warning = held, "connection refused: at the connection limit");
                }
                continue;
            }
        };
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let (budget, stats, shutdown) = (budget.clone(), stats.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _permit = permit;
            budget::serve(stream, service, &budget, &stats, &shutdown, ADMIN_DRAIN).await;
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(ADMIN_DRAIN, tracker.wait()).await;
    Ok(())
}

/// Requests in flight at shutdown get this long to finish (a `/metrics` scrape, a status
/// read: well under a second).
const ADMIN_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(reports): State<watch::Receiver<Report>>) -> Response {
    if reports.borrow().ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first reconcile has not finished\n",
        )
            .into_response()
    }
}

/// Filters of `/api/v1/objects`.
#[derive(Deserialize)]
struct ObjectFilter {
    kind: Option<String>,
    namespace: Option<String>,
}

/// The body of `/api/v1/objects`.
#[derive(Serialize)]
struct ObjectList {
    revision: String,
    objects: Vec<ObjectReport>,
}

async fn objects(
    State(reports): State<watch::Receiver<Report>>,
    Query(filter): Query<ObjectFilter>,
) -> Response {
    let report = reports.borrow();
    if !report.ready {
        return not_ready();
    }
    let objects = report
        .objects
        .iter()
        .filter(|o| {
            filter
                .kind
                .as_ref()
                .is_none_or(|k| o.kind.eq_ignore_ascii_case(k))
        })
        .filter(|o| filter.namespace.as_ref().is_none_or(|n| &o.namespace == n))
        .cloned()
        .collect();
    Json(ObjectList {
        revision: report.revision.clone(),
        objects,
    })
    .into_response()
}

/// Before the first reconcile there is nothing true to show: an empty list would be a lie.
fn not_ready() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        "not ready: the first reconcile has not finished\n",
    )
        .into_response()
}

async fn object(
    State(reports): State<watch::Receiver<Report>>,
    Path((kind, name)): Path<(String, String)>,
) -> Response {
    let report = reports.borrow();
    match report
        .objects
        .iter()
        .find(|o| o.kind.eq_ignore_ascii_case(&kind) && o.name == name)
    {
        Some(found) => Json(found.clone()).into_response(),
        None => (StatusCode::NOT_FOUND, format!("no {kind}/{name}\n")).into_response(),
    }
}

async fn problems(State(reports): State<watch::Receiver<Report>>) -> Response {
    let report = reports.borrow();
    if !report.ready {
        return not_ready();
    }
    let all: Vec<ProblemReport> = report
        .problems
        .iter()
        .chain(report.objects.iter().flat_map(|o| o.problems.iter()))
        .cloned()
        .collect();
    Json(all).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    fn report(ready: bool) -> Report {
        Report {
            revision: "abc".into(),
            ready,
            objects: vec![ObjectReport {
                api_version: "tessera.dev/v1alpha1".into(),
                kind: "Package".into(),
                namespace: "default".into(),
                name: "hello".into(),
                source: None,
                generation: 2,
                observed_generation: Some(1),
                source_revision: "abc".into(),
                details: serde_json::Map::new(),
                conditions: vec![],
                problems: vec![ProblemReport {
                    file: Some("p.yaml".into()),
                    line: Some(7),
                    object: Some("Package/hello".into()),
                    field: Some("spec.priority".into()),
                    message: "priority must be between 0 and 10, got 300".into(),
                }],
            }],
            problems: vec![],
        }
    }

    async fn get(app: Router, uri: &str) -> (StatusCode, String) {
        let response = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_is_503_until_the_first_reconcile() {
        let (tx, rx) = watch::channel(report(false));
        assert_eq!(
            get(app(rx.clone()), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        tx.send_modify(|r| r.ready = true);
        assert_eq!(get(app(rx.clone()), "/readyz").await.0, StatusCode::OK);
        assert_eq!(get(app(rx), "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn objects_are_listed_filtered_and_found_by_kind_and_name() {
        let (_tx, rx) = watch::channel(report(true));
        let (status, body) = get(app(rx.clone()), "/api/v1/objects?kind=package").await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["objects"][0]["observedGeneration"], 1);
        let (_, body) = get(app(rx.clone()), "/api/v1/objects?kind=Server").await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["objects"].as_array().unwrap().len(), 0);
        assert_eq!(
            get(app(rx.clone()), "/api/v1/objects/Package/hello")
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            get(app(rx.clone()), "/api/v1/objects/Package/nope").await.0,
            StatusCode::NOT_FOUND
        );
        let (_, body) = get(app(rx), "/api/v1/problems").await;
        assert!(body.contains("spec.priority"), "{body}");
    }
}
