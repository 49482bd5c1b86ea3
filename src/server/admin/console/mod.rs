//! The web console (`/ui/`, with `/` redirecting there): the fleet, one computer and its raw
//! inventory, deployments, certificates, configuration health and events, as HTML rendered
//! on the server (maud: compile-time templates that escape every value), with one small
//! script (`/ui/assets/app.js`) that polls the page's live region every two seconds and
//! posts the steering actions to the JSON API (`actions`).
//!
//! Every page is read through the same functions as the JSON routes it mirrors
//! (`fleet_page_of`, `computer_reports`, `deployment_table_of`, `Database::event_log`, the
//! latest [`Report`]): nothing is counted twice. Every response carries a strict
//! Content-Security-Policy: no inline script or style, so markup that slipped through could
//! still run nothing.

mod pages;

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::Deserialize;

use super::actions::{Leader, Steering};
use super::fleet::{FleetPage, fleet_page_of, qualified};
use super::report::{ObjectKind, Report};
use super::routes::{EventFilter, computer_reports, deployment_table_of};
use crate::store::db::{self, Database, DbError, FleetFilter};

use pages::PAGE_SIZE;

/// The console's script: polling of the live region, and the action buttons.
const APP_JS: &str = include_str!("assets/app.js");
/// The console's style sheet.
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// The policy every console response carries: only this origin's script, style sheet and
/// calls; no inline code, no frames, no `<base>`, forms posting only here.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Errors of the console's pages.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("the state database could not be read")]
    Database(#[source] DbError),
    #[error("the page's query failed to finish")]
    Task(#[source] tokio::task::JoinError),
    #[error(
        "unknown state {0:?}: one of waiting, notified, downloading, installing, success, error"
    )]
    State(String),
    #[error("no computer {0}")]
    NoComputer(String),
    #[error("not ready: the first reconcile has not finished")]
    NotReady,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::State(_) => StatusCode::BAD_REQUEST,
            Self::NoComputer(_) => StatusCode::NOT_FOUND,
            Self::NotReady => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) | Self::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut message = self.to_string();
        let mut source = std::error::Error::source(&self);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        let page = pages::layout("Error", None, None, &pages::error(&message));
        (status, Html(page.into_string())).into_response()
    }
}

/// The console's routes, reading what the steering actions read (the state database, the
/// latest report, who leads).
pub fn console_app(steering: Steering) -> Router {
    Router::new()
        .route("/", get(to_console))
        .route("/ui", get(to_console))
        .route("/ui/", get(fleet))
        .route("/ui/computer", get(computer))
        .route("/ui/inventory", get(inventory))
        .route("/ui/deployments", get(deployments))
        .route("/ui/certificates", get(certificates))
        .route("/ui/health", get(health))
        .route("/ui/events", get(events))
        .route("/ui/assets/app.js", get(app_js))
        .route("/ui/assets/console.css", get(console_css))
        .with_state(steering)
        .layer(axum::middleware::map_response(secured))
}

/// Sets the security headers on every console response.
async fn secured(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        // Pages change every second and may be a viewer's alone: never from a cache.
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn to_console() -> Redirect {
    Redirect::to("/ui/")
}

async fn app_js() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        APP_JS,
    )
}

async fn console_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        CONSOLE_CSS,
    )
}

/// `?fragment=1`: only the live region, which the script swaps in.
#[derive(Debug, Default, Deserialize)]
struct View {
    fragment: Option<String>,
}

impl View {
    /// The whole page, or only its live region.
    fn answer(&self, page: pages::Page) -> Response {
        let markup = if self.fragment.is_some() {
            page.live
        } else {
            pages::layout(page.title, Some(page.nav), page.controls, &page.live)
        };
        Html(markup.into_string()).into_response()
    }
}

/// Runs `read` on the blocking pool (every database call does).
async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, DbError> + Send + 'static,
) -> Result<T, ConsoleError> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(ConsoleError::Task)?
        .map_err(ConsoleError::Database)
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// The Fleet page's filters (a GET form): each one given must hold.
#[derive(Clone, Debug, Default, Deserialize)]
pub(super) struct FleetParams {
    /// A name glob (`*`, `?`).
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub tag: String,
    #[serde(default)]
    pub os: String,
    /// A deployment state.
    #[serde(default)]
    pub state: String,
    /// An Activation, `namespace/name` or `name`.
    #[serde(default)]
    pub activation: String,
    /// Not heard from for this long (`1h`, `1d`, `7d`, `30d`).
    #[serde(default)]
    pub silent: String,
    /// The device id the page starts after (the API's `next`).
    #[serde(default)]
    pub after: String,
}

impl FleetParams {
    /// The database filter these ask for, as `FleetQuery::filter` builds it.
    fn filter(&self) -> Result<FleetFilter, ConsoleError> {
        let given = |value: &str| Some(value.trim().to_owned()).filter(|v| !v.is_empty());
        Ok(FleetFilter {
            name: given(&self.name),
            tag: given(&self.tag),
            os: given(&self.os),
            activation: given(&self.activation).map(|a| qualified(&a)),
            state: given(&self.state)
                .map(|s| db::State::named(&s).ok_or(ConsoleError::State(s)))
                .transpose()?,
            contact_before: given(&self.silent)
                .and_then(|s| super::fleet::silent_seconds(&s))
                .map(|seconds| jiff::Timestamp::now().as_second() - seconds),
        })
    }
}

async fn fleet(
    State(steering): State<Steering>,
    Query(view): Query<View>,
    Query(params): Query<FleetParams>,
) -> Result<Response, ConsoleError> {
    let filter = params.filter()?;
    let db = steering.db.clone();
    // The API counts result codes on its first page (every activation's when none is
    // asked for: a scan of every deployment, 200 ms for 10,000 computers and 20 activations,
    // repeated at each poll). The Fleet shows them for a chosen activation only; otherwise it
    // starts after the empty device id (before every one), which is a page like the others.
    let after = Some(params.after.clone())
        .filter(|a| !a.is_empty())
        .or_else(|| filter.activation.is_none().then(String::new));
    let page: FleetPage =
        blocking(move || fleet_page_of(&db, &filter, after.as_deref(), Some(PAGE_SIZE))).await?;
    let activations = names_of(&steering.reports.borrow(), ObjectKind::Activation);
    Ok(view.answer(pages::fleet(&page, &params, &activations, now())))
}

/// `namespace/name` of every object of `kind` in the report.
fn names_of(report: &Report, kind: ObjectKind) -> Vec<String> {
    report
        .objects
        .iter()
        .filter(|o| o.kind == kind)
        .map(|o| format!("{}/{}", o.namespace, o.name))
        .collect()
}

/// `?id=`: a device id or a computer's name.
#[derive(Debug, Default, Deserialize)]
struct ComputerId {
    #[serde(default)]
    id: String,
}

async fn computer(
    State(steering): State<Steering>,
    Query(view): Query<View>,
    Query(wanted): Query<ComputerId>,
) -> Result<Response, ConsoleError> {
    let db = steering.db.clone();
    let id = wanted.id.clone();
    let found = blocking(move || computer_reports(&db, &id)).await?;
    if found.is_empty() {
        return Err(ConsoleError::NoComputer(wanted.id));
    }
    Ok(view.answer(pages::computer(&found, now())))
}

async fn inventory(
    State(steering): State<Steering>,
    Query(wanted): Query<ComputerId>,
) -> Result<Response, ConsoleError> {
    let db = steering.db.clone();
    let id = wanted.id.clone();
    let raw = blocking(move || db.inventory(&id)).await?;
    let Some(raw) = raw else {
        return Err(ConsoleError::NoComputer(wanted.id));
    };
    Ok(View::default().answer(pages::inventory(&wanted.id, &inventory_text(&raw))))
}

/// The stored inventory as text: OCS inventories are kept zlib-compressed XML, the native
/// agent's check-ins plain JSON; anything else is shown lossily rather than refused.
fn inventory_text(raw: &[u8]) -> String {
    match crate::protocol::ocs::decode_body(raw) {
        Ok((text, _)) => String::from_utf8_lossy(&text).into_owned(),
        Err(_) => String::from_utf8_lossy(raw).into_owned(),
    }
}

async fn deployments(
    State(steering): State<Steering>,
    Query(view): Query<View>,
) -> Result<Response, ConsoleError> {
    let report = ready(&steering)?;
    let db = steering.db.clone();
    let now = now();
    // The result codes come with the fleet API's first page, as `tessera computers` reads
    // them; one computer is the least that page can hold.
    let (table, codes) = blocking(move || {
        let table = deployment_table_of(&db, now)?;
        let codes = fleet_page_of(&db, &FleetFilter::default(), None, Some(1))?.codes;
        Ok((table, codes))
    })
    .await?;
    Ok(view.answer(pages::deployments(&report, &table, &codes)))
}

async fn certificates(
    State(steering): State<Steering>,
    Query(view): Query<View>,
) -> Result<Response, ConsoleError> {
    let report = ready(&steering)?;
    Ok(view.answer(pages::certificates(&report, jiff::Timestamp::now())))
}

async fn health(
    State(steering): State<Steering>,
    Query(view): Query<View>,
) -> Result<Response, ConsoleError> {
    let report = steering.reports.borrow().clone();
    let leader = steering.leader.clone();
    let replica = steering.replica.clone();
    let leader = blocking(move || {
        Ok(match leader.now() {
            Leader::This => format!("this replica ({replica})"),
            Leader::Other(Some(name)) => format!("another replica: {name}"),
            Leader::Other(None) => "another replica (not named)".to_owned(),
        })
    })
    .await?;
    Ok(view.answer(pages::health(&report, &leader)))
}

/// How many events the Events page shows: the newest, as `tessera events` does by default.
const EVENTS_SHOWN: usize = super::routes::EVENTS_LIMIT;

async fn events(
    State(steering): State<Steering>,
    Query(view): Query<View>,
) -> Result<Response, ConsoleError> {
    let query = EventFilter {
        limit: Some(EVENTS_SHOWN),
        ..EventFilter::default()
    }
    .query()
    .map_err(ConsoleError::Database)?;
    let db: Arc<Database> = steering.db.clone();
    let events = blocking(move || db.event_log(&query)).await?;
    Ok(view.answer(pages::events(&events, jiff::Timestamp::now())))
}

/// The latest report, once the first reconcile has finished (before, an empty page would
/// be a lie, as the JSON API says).
fn ready(steering: &Steering) -> Result<Report, ConsoleError> {
    let report = steering.reports.borrow();
    if report.ready {
        Ok(report.clone())
    } else {
        Err(ConsoleError::NotReady)
    }
}

#[cfg(test)]
mod tests;
