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
use crate::store::db::{Computer, Database, DbError, Deployment, Event, Health};

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
    /// Conditions of the server itself, when one is not `True` (status files that cannot
    /// be written, a state database that is full or lost): see [`STATUS_WRITTEN`] and
    /// [`STATE_DATABASE`].
    pub conditions: Vec<ConditionReport>,
}

/// The server's condition: the last pass wrote its status files (`False` with reason
/// `WriteFailed` while they cannot be written; retried every pass).
pub const STATUS_WRITTEN: ConditionType = ConditionType::StatusWritten;

/// The server's condition: the state database takes writes (`False` with reason `DiskFull`
/// or `DatabaseLost`).
pub const STATE_DATABASE: ConditionType = ConditionType::StateDatabaseWritable;

/// The kind of an object in the report, written as the resource kind is. Defined here
/// because the server imports nothing of `resources`; reconcile maps one onto the other
/// with exhaustive matches (`reconcile::outcome::object_kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ObjectKind {
    Server,
    Issuer,
    Certificate,
    Package,
    Activation,
    Affectation,
    Gateway,
}

impl ObjectKind {
    /// The kind as written (`Certificate`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Server => "Server",
            Self::Issuer => "Issuer",
            Self::Certificate => "Certificate",
            Self::Package => "Package",
            Self::Activation => "Activation",
            Self::Affectation => "Affectation",
            Self::Gateway => "Gateway",
        }
    }
}

impl std::fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The type of a condition: kstatus's three, cert-manager's `Issuing`, and the server's own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ConditionType {
    /// The desired state is achieved.
    Ready,
    /// Work is in flight; the object will change by itself.
    Reconciling,
    /// Nothing changes until someone acts.
    Stalled,
    /// A Certificate: an issuance is due (cert-manager's condition).
    Issuing,
    /// The server: the last pass wrote its status files.
    StatusWritten,
    /// The server: the state database takes writes.
    StateDatabaseWritable,
}

impl ConditionType {
    /// The type as written (`Ready`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ready => "Ready",
            Self::Reconciling => "Reconciling",
            Self::Stalled => "Stalled",
            Self::Issuing => "Issuing",
            Self::StatusWritten => "StatusWritten",
            Self::StateDatabaseWritable => "StateDatabaseWritable",
        }
    }
}

impl std::fmt::Display for ConditionType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The status of a condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    /// `True` or `False`.
    pub fn from_bool(value: bool) -> Self {
        if value { Self::True } else { Self::False }
    }

    /// The status as written (`True`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::True => "True",
            Self::False => "False",
            Self::Unknown => "Unknown",
        }
    }
}

/// One object as reconciled.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReport {
    pub api_version: String,
    pub kind: ObjectKind,
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
    pub type_: ConditionType,
    pub status: ConditionStatus,
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
        format!(
            "{}{}",
            state.metrics.render(),
            database_health(&state.db.health())
        ),
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

/// `tessera_state_database_health`: 1 for the state the database is in, 0 for the others.
fn database_health(health: &Health) -> String {
    let now = match health {
        Health::Writable => "writable",
        Health::ReadOnly => "read_only",
        Health::Lost(_) => "lost",
    };
    let mut out = String::from(
        "# HELP tessera_state_database_health The state database's health (1 for its current state).\n# TYPE tessera_state_database_health gauge\n",
    );
    for state in ["writable", "read_only", "lost"] {
        out.push_str(&format!(
            "tessera_state_database_health{{state=\"{state}\"}} {}\n",
            u8::from(state == now)
        ));
    }
    out
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

/// Host names the admin API answers to, besides loopback names and IP addresses
/// (`--admin-host`).
///
/// A web page on any site can make a browser on the operator's machine call
/// `http://localhost:9090` under its own name, once that name resolves to 127.0.0.1 (DNS
/// rebinding); the browser then sends the page's name as `Host`. So only names that cannot
/// be a stranger's are accepted: `localhost` and `*.localhost` (browsers resolve them to
/// loopback themselves), IP literals (a page's origin is always a name, and Kubernetes probes
/// and Prometheus call pods by IP), and the names the operator lists. A request without any
/// `Host` (HTTP/1.0) names no foreign site and is accepted.
#[derive(Clone, Debug, Default)]
pub struct AdminHosts(Arc<[String]>);

impl AdminHosts {
    /// Also accept `names` (case-insensitive, exact, without port).
    pub fn new<S: AsRef<str>>(names: &[S]) -> Self {
        Self(
            names
                .iter()
                .map(|name| normalized(name.as_ref()))
                .filter(|name| !name.is_empty())
                .collect(),
        )
    }

    /// Whether a request naming `host` (a `Host` header or an URI authority) is for us.
    pub fn allows(&self, host: &str) -> bool {
        let name = match host.strip_prefix('[') {
            // `[v6]` or `[v6]:port`: only IPv6 literals are written in brackets.
            Some(rest) => {
                return rest
                    .split_once(']')
                    .is_some_and(|(ip, _)| ip.parse::<std::net::Ipv6Addr>().is_ok());
            }
            None => host.rsplit_once(':').map_or(host, |(name, _port)| name),
        };
        let name = normalized(name);
        name.parse::<std::net::Ipv4Addr>().is_ok()
            || name == "localhost"
            || name.ends_with(".localhost")
            || self.0.contains(&name)
    }
}

/// `name` without a trailing dot, lowercased.
fn normalized(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The admin router with the `Host` check in front of every route but `/healthz` and the git
/// webhook (called by a git host under the public name, and authenticated by its signature).
/// Apply it to the whole router, once it is complete.
pub fn host_checked(app: Router, hosts: AdminHosts) -> Router {
    app.layer(axum::middleware::from_fn_with_state(
        Arc::new(HostCheck {
            hosts,
            refusals: crate::throttle::Repeats::default(),
        }),
        check_host,
    ))
}

struct HostCheck {
    hosts: AdminHosts,
    /// When a refusal was last logged (one line a minute, with a count).
    refusals: crate::throttle::Repeats<()>,
}

/// How much of a refused host name goes into the log.
const LOGGED_HOST: usize = 100;

async fn check_host(
    State(check): State<Arc<HostCheck>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = request.uri().path();
    if path == "/healthz" || path == super::webhook::PATH {
        return next.run(request).await;
    }
    let host = request.uri().host().map(str::to_owned).or_else(|| {
        request
            .headers()
            .get(axum::http::header::HOST)
            .map(|value| String::from_utf8_lossy(value.as_bytes()).into_owned())
    });
    let Some(host) = host.filter(|host| !check.hosts.allows(host)) else {
        return next.run(request).await;
    };
    if let crate::throttle::Verdict::Log { suppressed } =
        check.refusals.check((), std::time::Instant::now())
    {
        let host: String = host.chars().take(LOGGED_HOST).collect();
        tracing::warn!(%host, suppressed, "admin API request for a foreign host name refused (421)");
    }
    (
        StatusCode::MISDIRECTED_REQUEST,
        "this admin API answers to localhost, IP addresses and the names given with --admin-host (TESSERA_ADMIN_HOSTS)\n",
    )
        .into_response()
}

/// Prints `table` as `tessera status` shows it: one line per activation and package id.
pub fn write_deployment_table(
    out: &mut impl std::io::Write,
    table: &DeploymentTable,
) -> std::io::Result<()> {
    if table.packages.is_empty() {
        writeln!(out, "no deployments yet")?;
        return Ok(());
    }
    let width = table
        .packages
        .iter()
        .map(|l| l.activation.len().max(l.package.len()))
        .max()
        .unwrap_or(0)
        .max(10);
    writeln!(
        out,
        "{:width$}  {:width$}  {:10}  {:>7}  {:>7}  {:>8}  {:>5}  {:>7}  {:>5}",
        "ACTIVATION",
        "PACKAGE",
        "ID",
        "TARGETS",
        "WAITING",
        "NOTIFIED",
        "STALE",
        "SUCCESS",
        "ERROR"
    )?;
    for line in &table.packages {
        let c = &line.counts;
        writeln!(
            out,
            "{:width$}  {:width$}  {:10}  {:>7}  {:>7}  {:>8}  {:>5}  {:>7}  {:>5}",
            line.activation,
            line.package,
            line.package_id,
            c.targets,
            c.waiting,
            c.notified + c.downloading + c.installing,
            c.stale,
            c.success,
            c.error
        )?;
    }
    writeln!(
        out,
        "stale: notified more than {:#} ago without a result",
        jiff::SignedDuration::from_secs(table.stale_after)
    )?;
    Ok(())
}

/// Prints one computer as `tessera status --computer` shows it: facts, deployments (with
/// the last lines of their output) and history, ages counted from `now`.
pub fn write_computer_report(
    out: &mut impl std::io::Write,
    report: &ComputerReport,
    now: i64,
) -> std::io::Result<()> {
    let c = &report.computer;
    let when =
        |t: i64| jiff::Timestamp::from_second(t).map_or_else(|_| t.to_string(), |t| t.to_string());
    writeln!(
        out,
        "{} ({})",
        c.device_id,
        if c.name.is_empty() {
            "no inventory yet"
        } else {
            &c.name
        }
    )?;
    writeln!(out, "  os:        {} {}", c.os_name, c.os_version)?;
    writeln!(out, "  tags:      {}", c.tags.join(", "))?;
    writeln!(out, "  addresses: {}", c.ip_addresses.join(", "))?;
    if let Some(address) = &c.address {
        writeln!(out, "  connects from: {address}")?;
    }
    writeln!(out, "  installed: {}", c.history.join(", "))?;
    writeln!(
        out,
        "  first seen {}, last contact {} ({}s ago)",
        when(c.first_seen),
        when(c.last_contact),
        now - c.last_contact
    )?;
    writeln!(out, "  deployments:")?;
    for d in &report.deployments {
        writeln!(
            out,
            "    {:30} {:10} {:9} {}",
            d.activation,
            d.package_id,
            d.state.as_str(),
            d.code.as_deref().unwrap_or("")
        )?;
        if let Some(output) = d.output.as_deref().filter(|o| !o.trim().is_empty()) {
            for line in output
                .trim_end()
                .lines()
                .rev()
                .take(5)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
            {
                writeln!(out, "      | {line}")?;
            }
        }
    }
    writeln!(out, "  history:")?;
    for e in &report.history {
        writeln!(
            out,
            "    {}  {:30} {:10} {:9} {}",
            when(e.at),
            if e.activation.is_empty() {
                "(not deployed here)"
            } else {
                &e.activation
            },
            e.package_id,
            e.state.as_str(),
            e.code.as_deref().unwrap_or("")
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod render_tests {
    use super::*;
    use crate::server::deployments::Counts;
    use crate::store::db::State;

    fn rendered(write: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
        let mut out = Vec::new();
        write(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn an_empty_deployment_table_says_so() {
        let table = DeploymentTable {
            stale_after: 3600,
            packages: Vec::new(),
        };
        let text = rendered(|out| write_deployment_table(out, &table));
        assert_eq!(text, "no deployments yet\n");
    }

    #[test]
    fn the_deployment_table_counts_in_flight_states_as_notified() {
        let table = DeploymentTable {
            stale_after: 7 * 24 * 3600,
            packages: vec![PackageLine {
                activation: "default/hello-everywhere".into(),
                package: "default/hello".into(),
                package_id: "1700000001".into(),
                counts: Counts {
                    targets: 9,
                    waiting: 1,
                    notified: 1,
                    stale: 1,
                    downloading: 2,
                    installing: 1,
                    success: 2,
                    error: 1,
                },
            }],
        };
        let text = rendered(|out| write_deployment_table(out, &table));
        // NOTIFIED sums notified, downloading and installing; stale is its own column.
        assert_eq!(
            text,
            concat!(
                "ACTIVATION                PACKAGE                   ID          TARGETS  WAITING  NOTIFIED  STALE  SUCCESS  ERROR\n",
                "default/hello-everywhere  default/hello             1700000001        9        1         4      1        2      1\n",
                "stale: notified more than 168h ago without a result\n",
            )
        );
    }

    #[test]
    fn a_computer_report_shows_facts_deployments_output_tail_and_history() {
        let report = ComputerReport {
            computer: Computer {
                device_id: "pc-1-2026-01-01-00-00-00".into(),
                name: "pc-1".into(),
                os_name: "Debian".into(),
                os_version: "13".into(),
                tags: vec!["lab".into(), "paris".into()],
                ip_addresses: vec!["192.0.2.10".into()],
                history: vec!["1700000001".into()],
                first_seen: 1_767_225_600,
                last_contact: 1_767_229_200,
                last_inventory: Some(1_767_229_200),
                address: Some("198.51.100.7".into()),
            },
            deployments: vec![Deployment {
                device_id: "pc-1-2026-01-01-00-00-00".into(),
                activation: "default/hello-everywhere".into(),
                package: "default/hello".into(),
                package_id: "1700000001".into(),
                token: String::new(),
                state: State::Error,
                code: Some("ERR_EXIT_CODE_2".into()),
                output: Some("one\ntwo\nthree\nfour\nfive\nsix\n\n".into()),
                changed_at: 1_767_229_200,
                notified_at: Some(1_767_225_600),
            }],
            history: vec![Event {
                device_id: "pc-1-2026-01-01-00-00-00".into(),
                activation: String::new(),
                package_id: "1600000000".into(),
                state: State::Success,
                code: Some("SUCCESS".into()),
                output: None,
                at: 1_767_225_600,
            }],
        };
        let text = rendered(|out| write_computer_report(out, &report, 1_767_229_260));
        assert_eq!(
            text,
            concat!(
                "pc-1-2026-01-01-00-00-00 (pc-1)\n",
                "  os:        Debian 13\n",
                "  tags:      lab, paris\n",
                "  addresses: 192.0.2.10\n",
                "  connects from: 198.51.100.7\n",
                "  installed: 1700000001\n",
                "  first seen 2026-01-01T00:00:00Z, last contact 2026-01-01T01:00:00Z (60s ago)\n",
                "  deployments:\n",
                "    default/hello-everywhere       1700000001 error     ERR_EXIT_CODE_2\n",
                "      | two\n",
                "      | three\n",
                "      | four\n",
                "      | five\n",
                "      | six\n",
                "  history:\n",
                "    2026-01-01T00:00:00Z  (not deployed here)            1600000000 success   SUCCESS\n",
            )
        );
    }
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
                kind: ObjectKind::Package,
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
            conditions: vec![],
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

    /// `GET path` with `Host: host` on the admin routes, the webhook and the check.
    async fn get_as(host: &str, uri: &str, extra: &[&str]) -> StatusCode {
        let (_tx, rx) = watch::channel(report(true));
        let hook =
            crate::server::webhook::Hook::new(b"secret", Arc::new(tokio::sync::Notify::new()));
        let app = host_checked(
            app(rx).merge(crate::server::webhook::app(hook)),
            AdminHosts::new(extra),
        );
        let method = if uri == crate::server::webhook::PATH {
            "POST"
        } else {
            "GET"
        };
        app.oneshot(
            axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .header("host", host)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
        .status()
    }

    #[tokio::test]
    async fn only_loopback_names_ip_addresses_and_configured_names_reach_the_admin_api() {
        const OBJECTS: &str = "/api/v1/objects";
        for host in [
            "localhost:9090",
            "LOCALHOST",
            "console.localhost:9090",
            "127.0.0.1:9090",
            "[::1]:9090",
            "10.1.2.3:9090",
            "10.1.2.3",
        ] {
            assert_eq!(get_as(host, OBJECTS, &[]).await, StatusCode::OK, "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9090",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "[evil.example]",
            "tessera.internal",
        ] {
            assert_eq!(
                get_as(host, OBJECTS, &[]).await,
                StatusCode::MISDIRECTED_REQUEST,
                "{host}"
            );
        }
        let configured = ["Tessera.Internal."];
        assert_eq!(
            get_as("tessera.internal:9090", OBJECTS, &configured).await,
            StatusCode::OK
        );
        assert_eq!(
            get_as("evil.example", "/readyz", &configured).await,
            StatusCode::MISDIRECTED_REQUEST
        );
        // Unknown paths too: the check is not a route's.
        assert_eq!(
            get_as("evil.example", "/nope", &[]).await,
            StatusCode::MISDIRECTED_REQUEST
        );
    }

    #[tokio::test]
    async fn health_and_the_webhook_answer_under_any_name() {
        assert_eq!(
            get_as("evil.example", "/healthz", &[]).await,
            StatusCode::OK
        );
        // The hook's own answer to an unsigned call: it was reached.
        assert_eq!(
            get_as("tessera.example.com", crate::server::webhook::PATH, &[]).await,
            StatusCode::UNAUTHORIZED
        );
    }
}
