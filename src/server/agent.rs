//! The agent-facing server: the OCS endpoint and `/download/<id>/` over HTTPS, fragments
//! over the optional plain-HTTP listener (and the OCS endpoint there too when the Server
//! allows it, for agents still configured with an `http://` URL).
//!
//! Reconcile hands it plain values through `watch` channels: the [`Routes`] (what to
//! offer to whom, the pacing) and the [`Listen`] addresses; certificates reach it through
//! the rustls configuration of `pki::tls`, so a renewal never restarts a listener. The
//! listeners themselves, and the connection budget they keep, are in `server::listener`;
//! who a request comes from in `server::identity`; the OCS downloads in `server::download`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::watch;

use crate::protocol::ocs;
use crate::server::deployments::{self, Assignment};
use crate::server::download::{download_http, download_https};
use crate::server::identity::forwarded_identity;
use crate::server::metrics::Metrics;
use crate::server::metrics::requests::{Timed, layer as timed};
use crate::store::db::{Database, DbError};

pub use crate::server::download::{FRAGMENT_CACHE, FragmentCache};
pub use crate::server::identity::{
    ClientAddress, FORWARDED_CERTIFICATE, Forwarded, GatewayIdentities, PeerAgent, PeerCertificate,
};
pub use crate::server::listener::{DRAIN_TIMEOUT, run, serve_dialed};

/// What the server offers, as reconcile last computed it.
#[derive(Clone, Debug)]
pub struct Routes {
    /// Whether the OCS endpoint answers.
    pub ocs_enabled: bool,
    /// Its path, e.g. `/ocsinventory`.
    pub ocs_path: String,
    /// Whether the plain-HTTP listener serves it too (`spec.ocs.plainHttp`); if not, it
    /// answers there with a 403 naming the HTTPS address.
    pub ocs_plain_http: bool,
    /// When agents are asked for an inventory (`spec.inventoryFrequency`).
    pub inventory: crate::server::ocs::InventoryPolicy,
    /// Hours between agent contacts (`PROLOG_FREQ`).
    pub prolog_frequency_hours: u32,
    /// Pacing sent with every PROLOG reply.
    pub download: ocs::DownloadConf,
    /// A package notified longer ago than this (seconds) without a result is stale.
    pub stale_after: i64,
    /// One per Affectation whose package is built.
    pub assignments: Vec<Assignment>,
    /// Activated packages by id: only these are downloadable.
    pub packages: HashMap<String, PackageRoute>,
    /// How agents enroll, when the Server allows it.
    pub enrollment: Option<EnrollmentRoute>,
    /// Gateways in terminate mode whose word about the client is believed.
    pub forwarded: Option<Arc<Forwarded>>,
}

/// What signs agents' client certificates.
#[derive(Clone)]
pub struct EnrollmentRoute {
    pub authority: Arc<crate::pki::authority::Authority>,
    /// The CA certificates agents trust for this server (its certificate's `ca.crt`).
    pub server_ca: String,
    /// Lifetime of an agent's certificate.
    pub lifetime: jiff::SignedDuration,
}

impl std::fmt::Debug for EnrollmentRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollmentRoute")
            .field("authority", &self.authority.facts().subject)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl Default for Routes {
    fn default() -> Self {
        Self {
            ocs_enabled: true,
            ocs_path: "/ocsinventory".into(),
            ocs_plain_http: false,
            inventory: crate::server::ocs::InventoryPolicy::default(),
            prolog_frequency_hours: 12,
            download: ocs::DownloadConf::default(),
            stale_after: 7 * 24 * 3600,
            assignments: Vec::new(),
            packages: HashMap::new(),
            enrollment: None,
            forwarded: None,
        }
    }
}

/// A package agents may download.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PackageRoute {
    /// `namespace/name` of the Package.
    pub name: String,
    /// Exit codes that count as success.
    pub success_exit_codes: Vec<i32>,
    pub priority: u8,
    /// What the native agent does with it.
    pub action: crate::protocol::v1::Action,
    /// `tar.gz` or `zip`; `None` without content.
    pub format: Option<String>,
}

impl PackageRoute {
    /// A route for a package in tests and tools: priority 5, success on 0, a command.
    pub fn new(name: &str, success_exit_codes: Vec<i32>) -> Self {
        Self {
            name: name.to_owned(),
            success_exit_codes,
            priority: 5,
            action: crate::protocol::v1::Action::Execute {
                command: "true".into(),
            },
            format: None,
        }
    }
}

/// Where to listen; `None` everywhere until a Server resource says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listen {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// Relays whose PROXY protocol header (v1 or v2) names the real client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// The HTTPS listener's bound address, as the plain-HTTP listener hands it to its
/// handlers (agents that call over plain HTTP are sent there); `None` when it is not bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpsAddress(pub Option<SocketAddr>);

/// What the handlers share.
#[derive(Clone)]
pub struct Shared {
    pub routes: watch::Receiver<Arc<Routes>>,
    pub db: Arc<Database>,
    /// The fragment store's root (`<state>/download`).
    pub store: PathBuf,
    pub metrics: Arc<Metrics>,
    /// Bumped after every change to deployment states, so reconcile refreshes counts.
    pub activity: Arc<watch::Sender<u64>>,
    /// The current time in Unix seconds.
    pub clock: Arc<dyn Fn() -> i64 + Send + Sync>,
    /// Fragments kept in memory.
    pub cache: Arc<FragmentCache>,
    /// Each computer's budget of results (OCS and native).
    pub results: Arc<super::results::ResultBudget>,
    /// Enrollment attempts and refusals per client address.
    pub enrollments: Arc<super::v1::Enrollments>,
}

impl Shared {
    pub(crate) fn now(&self) -> i64 {
        (self.clock)()
    }

    pub(crate) fn touched(&self) {
        self.activity.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Runs a database call on the blocking pool.
    pub(crate) async fn db<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Database) -> Result<T, DbError> + Send + 'static,
    ) -> Result<T, ServeError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || call(&db))
            .await
            .map_err(ServeError::Task)?
            .map_err(|e| {
                if e.is_unavailable() {
                    ServeError::Unavailable(e)
                } else {
                    ServeError::Database(e)
                }
            })
    }
}

/// Errors of the agent-facing server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("failed to listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// A database call on the blocking pool panicked or was cancelled.
    #[error("a database call did not finish")]
    Task(#[source] tokio::task::JoinError),
    #[error("the state database failed")]
    Database(#[source] DbError),
    /// The state database cannot take writes (a full disk, a deleted file): answered 503
    /// and logged by the database once per episode, not per request.
    #[error("the state database is unavailable")]
    Unavailable(#[source] DbError),
    /// A trusted relay's PROXY protocol header could not be read, or was refused.
    #[error("the PROXY protocol header is refused")]
    Proxy(#[source] crate::protocol::proxy::ProxyError),
}

/// The `Retry-After` of such a 503, in seconds: freeing a disk or restoring a database takes
/// minutes, so sooner retries would only add load (OCS agents retry at their next PROLOG).
pub const RETRY_AFTER_SECONDS: &str = "60";

/// The answer when the state database cannot take writes: 503 with `Retry-After`.
pub fn unavailable() -> Response {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::RETRY_AFTER, RETRY_AFTER_SECONDS)],
        "the state database cannot record this now; retry later\n",
    )
        .into_response()
}

/// The HTTPS routes: the OCS endpoint (at whatever path the routes name) and downloads.
pub fn app(shared: Shared) -> Router {
    let router = Router::new()
        .route("/download/{id}/{file}", get(download_https))
        .route("/v1/enroll", axum::routing::post(super::v1::enroll))
        .route("/v1/checkin", axum::routing::post(super::v1::check_in))
        .route("/v1/renew", axum::routing::post(super::v1::renew))
        .route("/v1/results", axum::routing::post(super::v1::report))
        .route("/v1/packages/{id}/manifest", get(super::v1::manifest))
        .route("/v1/packages/{id}/fragments/{n}", get(super::v1::fragment))
        .route(crate::protocol::v1::WAIT_PATH, get(super::push::wait))
        .fallback(super::ocs::endpoint)
        .layer(DefaultBodyLimit::max(ocs::MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            forwarded_identity,
        ));
    let metrics = shared.metrics.clone();
    timed(router.with_state(shared), &metrics, Timed::Https)
}

/// The plain-HTTP routes: fragments (agents check the whole archive's digest, and the
/// `info` file that carries it always comes over HTTPS), and the OCS endpoint, which
/// answers there only when the routes allow it (else a 403 naming the HTTPS address).
pub fn fragments_app(shared: Shared) -> Router {
    let metrics = shared.metrics.clone();
    let router = Router::new()
        .route("/download/{id}/{file}", get(download_http))
        .fallback(super::ocs::plain_endpoint)
        .layer(DefaultBodyLimit::max(ocs::MAX_BODY))
        .with_state(shared);
    timed(router, &metrics, Timed::Http)
}

/// Arms every known computer for `routes` (a new Affectation, a new package version, a new
/// redeploy token), so counts show targets as waiting before their agents call. Runs every
/// reconcile pass: the fleet is read a page at a time, so memory does not grow with it.
pub fn arm_all(db: &Database, assignments: &[Assignment], now: i64) -> Result<usize, DbError> {
    let mut armed = 0;
    db.fleet_pages(|computers, rows| {
        let mut by_device: HashMap<&str, Vec<crate::store::db::Deployment>> = HashMap::new();
        for deployment in rows {
            by_device
                .entry(deployment.device_id.as_str())
                .or_default()
                .push(deployment.clone());
        }
        for computer in computers {
            let mine = by_device
                .remove(computer.device_id.as_str())
                .unwrap_or_default();
            let changes = deployments::arm(assignments, computer, &mine);
            armed += changes.len();
            db.apply(&computer.device_id, &changes, now)?;
        }
        Ok(())
    })?;
    Ok(armed)
}
