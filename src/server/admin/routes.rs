//! The admin API's routes and handlers: health and readiness, the objects and problems of
//! the latest report, the deployment table, one computer, and `/metrics`.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::report::{ConditionReport, ConditionStatus, ObjectReport, ProblemReport, Report};
use crate::server::deployments::{self, Draining, PackageLine};
use crate::server::metrics::{Metrics, Scrape};
use crate::store::db::journal::{EventQuery, LoggedEvent};
use crate::store::db::{Computer, Database, DbError, Deployment, Event, Health};

/// The admin routes, reading the latest report from `reports`.
pub fn app(reports: watch::Receiver<Report>) -> Router {
    routes(reports, None)
}

/// The admin routes of a server with a state database, whose health `/readyz` also tells.
pub fn app_with_database(reports: watch::Receiver<Report>, db: Arc<Database>) -> Router {
    routes(reports, Some(db))
}

fn routes(reports: watch::Receiver<Report>, db: Option<Arc<Database>>) -> Router {
    let readiness = Readiness {
        reports: reports.clone(),
        db,
    };
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz).with_state(readiness))
        .route("/api/v1/objects", get(objects))
        .route("/api/v1/objects/{kind}/{name}", get(object))
        .route("/api/v1/problems", get(problems))
        .with_state(reports)
}

/// What `/readyz` reads.
#[derive(Clone)]
struct Readiness {
    reports: watch::Receiver<Report>,
    db: Option<Arc<Database>>,
}

/// What the deployment routes read.
#[derive(Clone)]
pub struct Deployments {
    pub db: Arc<Database>,
    pub metrics: Arc<Metrics>,
    /// The latest report, which `/metrics` reads the objects' gauges from.
    pub reports: watch::Receiver<Report>,
}

/// `/metrics` (Prometheus), `/api/v1/deployments` (the `tessera status` table) and
/// `/api/v1/computers/{id}` (one computer, by device id or name, with its history).
pub fn deployments_app(state: Deployments) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/deployments", get(deployment_table))
        .route("/api/v1/computers/{id}", get(computer))
        .route("/api/v1/computers", get(super::fleet::computers))
        .with_state(state)
}

/// The deployment table, as JSON and as `tessera status` prints it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentTable {
    /// Notified longer than this many seconds ago without a result counts as stale.
    pub stale_after: i64,
    pub packages: Vec<PackageLine>,
    /// Superseded package versions still served to the computers notified of them.
    pub draining: Vec<Draining>,
}

/// One computer's facts, deployments and history.
#[derive(Clone, Debug, Serialize, Deserialize)]
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
    // Written by the leader's reconcile pass; unreadable or absent: nothing drains.
    let draining = db
        .setting(deployments::DRAINING_SETTING)?
        .and_then(|json| serde_json::from_str(&json).ok())
        .unwrap_or_default();
    Ok(DeploymentTable {
        stale_after,
        packages: deployments::table(&db.state_counts(now - stale_after)?),
        draining,
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

/// The counters, and the gauges of this scrape: the fleet (one query, on the blocking
/// pool), the objects of the latest report, the database's health.
async fn metrics(State(state): State<Deployments>) -> Response {
    let db = state.db.clone();
    let fleet = tokio::task::spawn_blocking(move || db.fleet_counts())
        .await
        .ok()
        .and_then(Result::ok);
    let health = state.db.health();
    let text = {
        let report = state.reports.borrow();
        state.metrics.render_with(&Scrape {
            report: &report,
            fleet: fleet.as_deref(),
            health: &health,
            dropped_events: state.db.dropped_events(),
        })
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        text,
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

async fn healthz() -> &'static str {
    "ok\n"
}

/// 503 before the first reconcile and once the state database is lost (results are refused:
/// take this server out of rotation); 200 otherwise, saying what is degraded (a full disk
/// still serves what is built).
async fn readyz(State(readiness): State<Readiness>) -> Response {
    let (ready, degraded) = {
        let report = readiness.reports.borrow();
        let degraded: Vec<String> = report
            .conditions
            .iter()
            .filter(|c| c.status != ConditionStatus::True)
            .map(|c| format!("{}: {}", c.type_, c.message))
            .collect();
        (report.ready, degraded)
    };
    if !ready {
        return not_ready();
    }
    let health = match readiness.db {
        // A stat and a 16-byte read at most once a second: cheap enough for a worker.
        Some(db) => db.health(),
        None => Health::Writable,
    };
    match health {
        Health::Lost(lost) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "not ready: the state database {lost} while the server ran; results are refused; restore it and restart the server\n"
            ),
        )
            .into_response(),
        Health::ReadOnly => (
            StatusCode::OK,
            "ready, read-only: the state database cannot be written (disk full?): what is built is served, results and inventories are refused (503) until space is freed\n".to_owned(),
        )
            .into_response(),
        Health::Writable if degraded.is_empty() => (StatusCode::OK, "ready\n").into_response(),
        Health::Writable => (
            StatusCode::OK,
            format!("ready, degraded: {}\n", degraded.join("; ")),
        )
            .into_response(),
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
    /// The server's own conditions that are not `True`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    conditions: Vec<ConditionReport>,
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
                .is_none_or(|k| o.kind.as_str().eq_ignore_ascii_case(k))
        })
        .filter(|o| filter.namespace.as_ref().is_none_or(|n| &o.namespace == n))
        .cloned()
        .collect();
    Json(ObjectList {
        revision: report.revision.clone(),
        objects,
        conditions: report.conditions.clone(),
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
        .find(|o| o.kind.as_str().eq_ignore_ascii_case(&kind) && o.name == name)
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

/// The events `/api/v1/events` answers when no `limit` is given: a screenful or two of
/// recent history, what `kubectl events` shows.
pub const EVENTS_LIMIT: usize = 500;

/// `/api/v1/events?for=Kind/name&namespace=NS&after=ID&limit=N`: what happened, newest
/// last (the journal merged with the deployment history's offers and results), for
/// `tessera events` and `tessera describe`.
pub fn events_app(db: Arc<Database>) -> Router {
    Router::new()
        .route("/api/v1/events", get(events))
        .with_state(db)
}

/// The body of `/api/v1/events`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EventList {
    /// Oldest first.
    pub events: Vec<LoggedEvent>,
}

/// The query of `/api/v1/events`.
#[derive(Debug, Default, Deserialize)]
pub struct EventFilter {
    /// `Kind/name`, or `Kind`.
    #[serde(rename = "for")]
    pub object: Option<String>,
    pub namespace: Option<String>,
    /// An event's `id`: only what came after it.
    pub after: Option<String>,
    pub limit: Option<usize>,
}

impl EventFilter {
    /// The database query this filter asks for; an `after` that is no event id is refused.
    pub fn query(&self) -> Result<EventQuery, DbError> {
        let (kind, name) = match self.object.as_deref().map(|o| o.split_once('/')) {
            Some(Some((kind, name))) => (Some(kind.to_owned()), Some(name.to_owned())),
            Some(None) => (self.object.clone(), None),
            None => (None, None),
        };
        Ok(EventQuery {
            kind: kind.filter(|k| !k.is_empty()),
            name: name.filter(|n| !n.is_empty()),
            namespace: self.namespace.clone().filter(|n| !n.is_empty()),
            after: self.after.as_deref().map(str::parse).transpose()?,
            limit: self.limit.unwrap_or(EVENTS_LIMIT).min(
                usize::try_from(crate::store::db::journal::JOURNAL_KEEP).unwrap_or(usize::MAX),
            ),
        })
    }
}

async fn events(State(db): State<Arc<Database>>, Query(filter): Query<EventFilter>) -> Response {
    let query = match filter.query() {
        Ok(query) => query,
        Err(error) => return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    };
    match tokio::task::spawn_blocking(move || db.event_log(&query)).await {
        Ok(Ok(events)) => Json(EventList { events }).into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
