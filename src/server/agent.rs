//! The agent-facing server: the OCS endpoint and `/download/<id>/` over HTTPS, fragments
//! only over the optional plain-HTTP listener.
//!
//! Reconcile hands it plain values through `watch` channels: the [`Routes`] (what to
//! offer to whom, the pacing) and the [`Listen`] addresses; certificates reach it through
//! the rustls configuration of `pki::tls`, so a renewal never restarts a listener. The
//! listeners themselves, and the connection budget they keep, are in `server::listener`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::io::AsyncRead;
use tokio::sync::watch;

use crate::protocol::ocs;
use crate::server::deployments::{self, Assignment};
use crate::server::metrics::{Listener, Metrics};
use crate::store::db::Database;

pub use crate::server::listener::{DRAIN_TIMEOUT, run, serve_dialed};

/// Files up to this size are read whole and sent in one piece; larger ones are streamed.
pub(crate) const WHOLE_FILE: u64 = 8 << 20;
/// Read size when streaming a large file.
pub(crate) const STREAM_CHUNK: usize = 256 << 10;

/// What the server offers, as reconcile last computed it.
#[derive(Clone, Debug)]
pub struct Routes {
    /// Whether the OCS endpoint answers.
    pub ocs_enabled: bool,
    /// Its path, e.g. `/ocsinventory`.
    pub ocs_path: String,
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

/// The header a gateway in terminate mode carries the agent's verified certificate in
/// (base64 DER).
pub const FORWARDED_CERTIFICATE: &str = "x-tessera-client-certificate";

/// Per gateway: the subjects (DER) of the CA that signs its certificate (two during a CA
/// rollover), and the names its certificate carries (lowercase).
pub type GatewayIdentities = Vec<(Vec<Vec<u8>>, Vec<String>)>;

/// Gateways allowed to name the client they relay, and how their word is checked.
pub struct Forwarded {
    pub gateways: GatewayIdentities,
    /// Verifies the agent certificate a gateway forwards, against the agents' issuers.
    pub verifier: Arc<dyn rustls::server::danger::ClientCertVerifier>,
}

impl std::fmt::Debug for Forwarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarded")
            .field("gateways", &self.gateways.len())
            .finish_non_exhaustive()
    }
}

impl Forwarded {
    /// Whether `certificate` (a connection's verified client certificate) is one of the
    /// gateways'.
    pub fn is_gateway(&self, certificate: &[u8]) -> bool {
        let Ok(facts) = crate::pki::facts::read(certificate) else {
            return false;
        };
        let names: Vec<String> = facts
            .names
            .common_name
            .iter()
            .chain(&facts.names.dns_names)
            .map(|n| n.to_ascii_lowercase())
            .collect();
        self.gateways.iter().any(|(subjects, wanted)| {
            subjects.contains(&facts.issuer_der) && wanted.iter().any(|w| names.contains(w))
        })
    }

    /// The agent a gateway's header names, once its certificate verifies here too.
    pub fn agent(&self, header: &str) -> Result<Option<String>, String> {
        use base64::Engine;
        let der = base64::engine::general_purpose::STANDARD
            .decode(header.trim())
            .map_err(|e| format!("{FORWARDED_CERTIFICATE}: not base64 ({e})"))?;
        let certificate = rustls::pki_types::CertificateDer::from(der);
        self.verifier
            .verify_client_cert(&certificate, &[], rustls::pki_types::UnixTime::now())
            .map_err(|e| format!("{FORWARDED_CERTIFICATE}: {e}"))?;
        let facts = crate::pki::facts::read(&certificate).map_err(|e| e.to_string())?;
        Ok(facts
            .names
            .uris
            .iter()
            .find_map(|uri| crate::protocol::v1::agent_id_of(uri).map(str::to_owned)))
    }
}

/// The client certificate a connection presented (verified at the handshake).
#[derive(Clone, Debug)]
pub struct PeerCertificate(pub Option<Arc<Vec<u8>>>);

/// For a connection from a trusted gateway: takes the agent and client address it names
/// from the headers (the gateway's own certificate is never an agent's). From anyone
/// else the headers are removed unread.
async fn forwarded_identity(
    State(shared): State<Shared>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let header = request.headers_mut().remove(FORWARDED_CERTIFICATE);
    let forwarded = shared.routes.borrow().forwarded.clone();
    let from_gateway = match (&forwarded, request.extensions().get::<PeerCertificate>()) {
        (Some(forwarded), Some(PeerCertificate(Some(der)))) => forwarded.is_gateway(der),
        _ => false,
    };
    if let (true, Some(forwarded)) = (from_gateway, forwarded) {
        let agent = match header.as_ref().map(|h| h.to_str().unwrap_or_default()) {
            None => None,
            Some(value) => match forwarded.agent(value) {
                Ok(agent) => agent,
                Err(error) => {
                    tracing::warn!(%error, "a gateway forwarded a certificate that does not verify here");
                    return (
                        StatusCode::FORBIDDEN,
                        "forwarded client certificate refused\n",
                    )
                        .into_response();
                }
            },
        };
        request.extensions_mut().insert(PeerAgent(agent));
        let client = request
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next_back())
            .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok());
        if let Some(ip) = client {
            request
                .extensions_mut()
                .insert(ClientAddress(SocketAddr::new(ip, 0)));
        }
    }
    next.run(request).await
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

/// The agent a connection's client certificate names (`urn:tessera:agent:<id>`), checked
/// at the handshake; `None` without one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAgent(pub Option<String>);

/// Where to listen; `None` everywhere until a Server resource says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Listen {
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// Relays whose PROXY protocol v2 header names the real client.
    pub trusted_proxies: Vec<std::net::IpAddr>,
}

/// The client a request came from: the TCP peer, or the one a trusted relay named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientAddress(pub SocketAddr);

/// Reads the PROXY protocol v2 header a trusted relay sends first; the client it names.
pub(crate) async fn proxied_client(
    stream: &mut (impl AsyncRead + Unpin),
    relay: SocketAddr,
) -> Result<SocketAddr, String> {
    use crate::protocol::proxy;
    use tokio::io::AsyncReadExt;
    let mut fixed = [0u8; proxy::FIXED];
    stream
        .read_exact(&mut fixed)
        .await
        .map_err(|e| e.to_string())?;
    let length = proxy::block_length(&fixed).map_err(|e| e.to_string())?;
    let mut block = vec![0u8; length];
    stream
        .read_exact(&mut block)
        .await
        .map_err(|e| e.to_string())?;
    match proxy::decode(&fixed, &block).map_err(|e| e.to_string())? {
        proxy::Header::Proxied { source, .. } => Ok(source),
        proxy::Header::Local => Ok(relay),
    }
}

/// Fragments kept in memory, least recently used dropped first.
#[derive(Debug)]
pub struct FragmentCache {
    budget: u64,
    inner: std::sync::Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    entries: HashMap<(String, String), (axum::body::Bytes, u64)>,
    used: u64,
    tick: u64,
}

impl FragmentCache {
    /// A cache holding at most `budget` bytes.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            inner: std::sync::Mutex::new(CacheInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fragment `file` of package `id`, if kept.
    pub fn get(&self, id: &str, file: &str) -> Option<axum::body::Bytes> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(&(id.to_owned(), file.to_owned()))?;
        entry.1 = tick;
        Some(entry.0.clone())
    }

    /// Keeps a fragment, dropping the least recently used ones to stay within budget.
    pub fn insert(&self, id: &str, file: &str, bytes: axum::body::Bytes) {
        let size = bytes.len() as u64;
        if size > self.budget {
            return;
        }
        let mut inner = self.lock();
        while inner.used + size > self.budget {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, (_, tick))| *tick)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            if let Some((dropped, _)) = inner.entries.remove(&oldest) {
                inner.used -= dropped.len() as u64;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((old, _)) = inner
            .entries
            .insert((id.to_owned(), file.to_owned()), (bytes, tick))
        {
            inner.used -= old.len() as u64;
        }
        inner.used += size;
    }
}

/// Memory for fragments: a few large packages being rolled out at once fit, and it stays
/// small next to what a deployment server has.
pub const FRAGMENT_CACHE: u64 = 256 << 20;

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
    pub results: Arc<super::ocs::ResultBudget>,
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
        call: impl FnOnce(&Database) -> Result<T, crate::store::db::DbError> + Send + 'static,
    ) -> Result<T, ServeError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || call(&db))
            .await
            .map_err(|e| ServeError::Internal(e.to_string()))?
            .map_err(|e| {
                if e.is_unavailable() {
                    ServeError::Unavailable(crate::error_chain(&e))
                } else {
                    ServeError::Internal(crate::error_chain(&e))
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
    #[error("internal error: {0}")]
    Internal(String),
    /// The state database cannot take writes (a full disk, a deleted file): answered 503
    /// and logged by the database once per episode, not per request.
    #[error("the state database is unavailable: {0}")]
    Unavailable(String),
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
    Router::new()
        .route("/download/{id}/{file}", get(download_https))
        .route("/v1/enroll", axum::routing::post(super::v1::enroll))
        .route("/v1/checkin", axum::routing::post(super::v1::check_in))
        .route("/v1/renew", axum::routing::post(super::v1::renew))
        .route("/v1/results", axum::routing::post(super::v1::report))
        .route("/v1/packages/{id}/manifest", get(super::v1::manifest))
        .route("/v1/packages/{id}/fragments/{n}", get(super::v1::fragment))
        .fallback(super::ocs::endpoint)
        .layer(DefaultBodyLimit::max(ocs::MAX_BODY))
        .layer(axum::middleware::from_fn_with_state(
            shared.clone(),
            forwarded_identity,
        ))
        .with_state(shared)
}

/// The plain-HTTP routes: fragments only (agents check the whole archive's digest, and the
/// `info` file that carries it always comes over HTTPS).
pub fn fragments_app(shared: Shared) -> Router {
    Router::new()
        .route("/download/{id}/{file}", get(download_http))
        .with_state(shared)
}

async fn download_https(
    State(shared): State<Shared>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    download(&shared, &id, &file, Listener::Https).await
}

async fn download_http(
    State(shared): State<Shared>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    if file == "info" {
        shared.metrics.not_found();
        return (
            StatusCode::NOT_FOUND,
            "info files are served over HTTPS only\n",
        )
            .into_response();
    }
    download(&shared, &id, &file, Listener::Http).await
}

/// `info` or a fragment `<id>-<n>` of an activated package: always 200 with the whole file
/// and its exact length (the Unix agent's LWP `mirror` fails on anything else).
async fn download(shared: &Shared, id: &str, file: &str, listener: Listener) -> Response {
    let fragment = file
        .strip_prefix(id)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let known = !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && (fragment || file == "info")
        && shared.routes.borrow().packages.contains_key(id);
    if !known {
        shared.metrics.not_found();
        return StatusCode::NOT_FOUND.into_response();
    }
    // Fragments never change under their id (a new version is a new id): the same bytes go
    // to every agent, so they are kept in memory and sent without touching the disk.
    let cached = fragment.then(|| shared.cache.get(id, file)).flatten();
    let (body, length) = match cached {
        Some(bytes) => {
            let length = bytes.len() as u64;
            (Body::from(bytes), length)
        }
        None => {
            let path = shared.store.join(id).join(file);
            let opened = match tokio::fs::File::open(&path).await {
                Ok(file) => file,
                Err(_) => {
                    shared.metrics.not_found();
                    return StatusCode::NOT_FOUND.into_response();
                }
            };
            let length = match opened.metadata().await {
                Ok(meta) => meta.len(),
                Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            };
            if length <= WHOLE_FILE {
                let mut bytes = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
                let mut opened = opened;
                if tokio::io::AsyncReadExt::read_to_end(&mut opened, &mut bytes)
                    .await
                    .is_err()
                    || bytes.len() as u64 != length
                {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                let bytes = axum::body::Bytes::from(bytes);
                if fragment {
                    shared.cache.insert(id, file, bytes.clone());
                }
                (Body::from(bytes), length)
            } else {
                let stream = tokio_util::io::ReaderStream::with_capacity(opened, STREAM_CHUNK);
                (Body::from_stream(stream), length)
            }
        }
    };
    shared.metrics.served(fragment, length, listener);
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if fragment {
            "application/octet-stream"
        } else {
            "application/xml"
        }),
    );
    response
}

/// Arms every known computer for `routes` (a new Affectation, a new package version, a new
/// redeploy token), so counts show targets as waiting before their agents call.
pub fn arm_all(
    db: &Database,
    assignments: &[Assignment],
    now: i64,
) -> Result<usize, crate::store::db::DbError> {
    let mut armed = 0;
    let mut by_device: HashMap<String, Vec<crate::store::db::Deployment>> = HashMap::new();
    for deployment in db.deployments()? {
        by_device
            .entry(deployment.device_id.clone())
            .or_default()
            .push(deployment);
    }
    for computer in db.computers()? {
        let mine = by_device.remove(&computer.device_id).unwrap_or_default();
        let changes = deployments::arm(assignments, &computer, &mine);
        armed += changes.len();
        db.apply(&computer.device_id, &changes, now)?;
    }
    Ok(armed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fragment_cache_keeps_the_most_recently_used_within_its_budget() {
        let cache = FragmentCache::new(10);
        let bytes = |n: usize| axum::body::Bytes::from(vec![0u8; n]);
        cache.insert("1", "1-1", bytes(4));
        cache.insert("1", "1-2", bytes(4));
        assert!(cache.get("1", "1-1").is_some()); // now the most recent
        cache.insert("1", "1-3", bytes(4)); // drops 1-2
        assert!(cache.get("1", "1-2").is_none());
        assert!(cache.get("1", "1-1").is_some() && cache.get("1", "1-3").is_some());
        cache.insert("2", "2-1", bytes(11)); // larger than the budget: not kept
        assert!(cache.get("2", "2-1").is_none());
        assert_eq!(cache.lock().used, 8);
    }
}
