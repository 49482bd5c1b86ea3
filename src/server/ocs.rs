//! The OCS Inventory NG endpoint: PROLOG, INVENTORY, DOWNLOAD results and NOTIFY, read
//! with `protocol::ocs` and answered in the encoding the agent used.
//!
//! Anything malformed is a 400 with a short body that never repeats the request, and a log
//! line naming the device when it is known, never a crash. No User-Agent gate: the
//! reference server's refusal of newer agents is a known source of outages (protocol notes
//! 1.5).
//!
//! Results are filed only where they can come from: a package offered to that computer,
//! within a per-computer budget (both in [`results`]). The OCS protocol
//! authenticates nothing, so a device id is all a forger needs; what it can still do is
//! bounded to packages actually offered to that device and not yet reported.
//!
//! Over the plain-HTTP listener the endpoint answers only when the Server allows it
//! (`spec.ocs.plainHttp`, for a fleet moving from an OCS server); otherwise an agent still
//! configured with an `http://` URL is told, in the status line its log shows and in the
//! body, to use HTTPS and where, and is logged once.
//!
//! About 1,230 lines, 530 of them code: the rest are the tests of the OCS exchange
//! (PROLOG, inventory, results, the inventory frequency, plain HTTP, and the comparison of
//! PROLOGs answered from memory with the database path), which read best next to the
//! handlers they drive. The code's next seam is the plain-HTTP refusal and its
//! once-per-computer log, which would move to `ocs/plain_http.rs` if it grows.

use std::net::SocketAddr;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::protocol::ocs::{self, CodecError, Encoding, Pack, PrologReply, Request};
use crate::server::agent::{ClientAddress, HttpsAddress, Shared};
use crate::server::deployments;
use crate::server::fleet_log::{self, Offered, Protocol};
use crate::server::results;
use crate::store::db::{Facts, journal};

/// An agent whose last inventory is older than this is asked for a new one, so targeting
/// works on fresh facts (tags, OS): the default of [`InventoryPolicy`], a day, which is
/// also the OCS server's default `FREQUENCY`.
pub const INVENTORY_MAX_AGE: i64 = 24 * 3600;

/// Seconds in a day, for `spec.inventoryFrequency` (days, as the OCS `FREQUENCY`).
const DAY: i64 = 24 * 3600;

/// When an agent is asked for an inventory (`spec.inventoryFrequency`, the OCS server's
/// `FREQUENCY`). A computer never inventoried is always asked: nothing can be offered to
/// it before its facts are known, and the OCS server does the same even with `-1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InventoryPolicy {
    /// At every contact (`0`).
    EveryContact,
    /// Once the last inventory is this many seconds old (`N` days), and after the agent
    /// reported results, so the packages it lists as installed are known before anything
    /// else is offered.
    MaxAge(i64),
    /// Never again after the first (`-1`, or any negative number).
    FirstOnly,
}

impl Default for InventoryPolicy {
    fn default() -> Self {
        Self::MaxAge(INVENTORY_MAX_AGE)
    }
}

impl InventoryPolicy {
    /// The policy of an OCS `FREQUENCY` in days.
    pub fn from_days(days: i64) -> Self {
        match days {
            0 => Self::EveryContact,
            days if days < 0 => Self::FirstOnly,
            days => Self::MaxAge(days.saturating_mul(DAY)),
        }
    }

    /// Whether a computer last inventoried at `last_inventory` (Unix seconds), which has
    /// `reported` results since, is asked for an inventory at `now`.
    pub fn wants(self, last_inventory: Option<i64>, reported: bool, now: i64) -> bool {
        let Some(at) = last_inventory else {
            return true;
        };
        match self {
            Self::EveryContact => true,
            Self::MaxAge(age) => reported || now.saturating_sub(at) >= age,
            Self::FirstOnly => false,
        }
    }
}

/// Bodies up to this size are read in place on the async worker: PROLOGs and results are a
/// few hundred bytes. Larger ones (inventories) are read on the blocking pool.
const INLINE_BODY: usize = 4 << 10;
/// The most an in-place read may inflate to (zlib reaches about 1000:1, so 4 KiB could
/// become 4 MiB): past 64 KiB the read moves to the blocking pool, so no async worker
/// spends more than a fraction of a millisecond on one request.
const INLINE_XML: usize = 64 << 10;
/// Longest User-Agent put in a log line.
const MAX_LOGGED_AGENT: usize = 128;

/// Everything that is not a download on the HTTPS listener: the OCS endpoint when the path
/// matches, else 404.
pub async fn endpoint(
    State(shared): State<Shared>,
    client: Option<Extension<ClientAddress>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = client.map(|Extension(ClientAddress(address))| address);
    let request = HttpRequest {
        over: Over::Https,
        client,
        method,
        uri,
        headers,
        body,
    };
    answer(&shared, request).await
}

/// Everything that is not a fragment on the plain-HTTP listener: the OCS endpoint if the
/// Server allows it there, else a 403 telling the agent to use HTTPS; 404 off its path.
pub async fn plain_endpoint(
    State(shared): State<Shared>,
    client: Option<Extension<ClientAddress>>,
    https: Option<Extension<HttpsAddress>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let client = client.map(|Extension(ClientAddress(address))| address);
    let https = https.and_then(|Extension(HttpsAddress(address))| address);
    let request = HttpRequest {
        over: Over::PlainHttp { https },
        client,
        method,
        uri,
        headers,
        body,
    };
    answer(&shared, request).await
}

/// Which listener a request came through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Over {
    Https,
    /// The plain-HTTP listener, with the HTTPS listener's address when one is bound.
    PlainHttp {
        https: Option<SocketAddr>,
    },
}

/// A request to the agent-facing server, as the handlers received it.
struct HttpRequest {
    over: Over,
    client: Option<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

async fn answer(shared: &Shared, http: HttpRequest) -> Response {
    let HttpRequest {
        over,
        client,
        method,
        uri,
        headers,
        body,
    } = http;
    let (enabled, path, plain_http) = {
        let routes = shared.routes.borrow();
        (
            routes.ocs_enabled,
            routes.ocs_path.clone(),
            routes.ocs_plain_http,
        )
    };
    if !enabled || uri.path().trim_end_matches('/') != path.trim_end_matches('/') {
        // The Windows agent asks `<path>/deploy/label` on first run; a 404 is harmless.
        return StatusCode::NOT_FOUND.into_response();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| uri.authority().map(ToString::to_string));
    // Where agents are sent for `info` files and fragments: the address they used, or the
    // HTTPS listener at the same host when they came over plain HTTP (`info` is always
    // fetched over HTTPS).
    let here = match over {
        Over::Https => host.clone(),
        Over::PlainHttp { https } => {
            let https = https_authority(host.as_deref(), https);
            if !plain_http {
                return refuse_plain(shared, https.as_deref(), &path, client, body).await;
            }
            https.or_else(|| host.clone())
        }
    };
    if method != Method::POST {
        return (StatusCode::METHOD_NOT_ALLOWED, "POST an OCS request\n").into_response();
    }
    let agent: String = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .chars()
        .take(MAX_LOGGED_AGENT)
        .collect();
    let bytes = body.len();
    let (request, encoding, xml) = match read(body).await {
        Ok(found) => found,
        Err(error) => {
            shared.metrics.request("invalid");
            let address = client.map(|c| c.to_string()).unwrap_or_default();
            tracing::warn!(%agent, %address, bytes, %error, "refused an OCS request");
            // The reason in words, never the request: it names a limit, not the input.
            return (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response();
        }
    };
    shared.metrics.request(&request.query);
    shared
        .metrics
        .plain_http
        .contact(&request.device_id, matches!(over, Over::PlainHttp { .. }));
    let outcome = match request.query.as_str() {
        "PROLOG" => prolog(shared, &request, here.as_deref(), encoding).await,
        "INVENTORY" => {
            let address = client.map(|c| c.ip().to_string());
            inventory(shared, request.clone(), xml, encoding, address).await
        }
        "DOWNLOAD" => results::file(shared, &request).await,
        // The Windows agent's IP change notice: nothing to keep yet.
        "NOTIFY" => Ok(StatusCode::OK.into_response()),
        other => {
            tracing::warn!(device = %request.device_id, query = other, "unknown OCS query");
            return (StatusCode::BAD_REQUEST, "unknown QUERY\n").into_response();
        }
    };
    match outcome {
        Ok(response) => response,
        Err(crate::server::agent::ServeError::Unavailable(_)) => {
            crate::server::agent::unavailable()
        }
        Err(error) => {
            let error = crate::error_chain(&error);
            tracing::error!(device = %request.device_id, query = %request.query, %error, "failed to answer an OCS request");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// The answer to an OCS request over plain HTTP when the Server does not allow it: a 403
/// whose status line (all the Unix agent logs of a failure) and body say to use HTTPS, and
/// where. Logged once per computer: its device id when the body can be read, else its
/// address.
async fn refuse_plain(
    shared: &Shared,
    https: Option<&str>,
    path: &str,
    client: Option<SocketAddr>,
    body: Bytes,
) -> Response {
    let url = https.map(|authority| format!("https://{authority}{path}"));
    let device = read(body).await.ok().map(|(request, ..)| request.device_id);
    let address = client.map(|c| c.ip().to_string());
    let computer = device
        .clone()
        .or_else(|| address.clone())
        .unwrap_or_default();
    if shared.metrics.plain_http.refused(&computer) {
        tracing::warn!(
            device = device.as_deref().unwrap_or("-"),
            address = address.as_deref().unwrap_or("-"),
            https = url.as_deref().unwrap_or("-"),
            "an OCS agent called over plain HTTP and was told to use HTTPS (spec.ocs.plainHttp is off); logged once per computer"
        );
        journal::record(
            &shared.db,
            journal::Record::refused(
                &computer,
                &format!(
                    "an OCS agent called over plain HTTP from {} and was told to use HTTPS (spec.ocs.plainHttp is off)",
                    address.as_deref().unwrap_or("an unknown address")
                ),
            ),
        );
    }
    let phrase = match &url {
        Some(url) => format!("Use HTTPS {url}"),
        None => "Use HTTPS".to_owned(),
    };
    let body = format!(
        "This server answers OCS agents over HTTPS only: set the agent's server to {}, with the server's CA certificate (see `tessera migration-package`).\n",
        url.as_deref().unwrap_or("its https:// address")
    );
    let mut response = (StatusCode::FORBIDDEN, body).into_response();
    // Checked: a Host header is visible ASCII, but nothing unchecked reaches a status line.
    if let Ok(phrase) = hyper::ext::ReasonPhrase::try_from(phrase.into_bytes()) {
        response.extensions_mut().insert(phrase);
    }
    response
}

/// `host:port` of the HTTPS listener as an agent that reached `host` (a Host header)
/// would name it: that host with the HTTPS port, or the listener's own address when it is
/// a specific one and no host is known.
fn https_authority(host: Option<&str>, https: Option<SocketAddr>) -> Option<String> {
    let https = https?;
    let name = host.map(without_port).filter(|name| !name.is_empty());
    match name {
        Some(name) => Some(format!("{name}:{}", https.port())),
        None if !https.ip().is_unspecified() => Some(https.to_string()),
        None => None,
    }
}

/// A Host header without its port (`[::1]:8080` is `[::1]`).
fn without_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Decodes and reads a request body: small ones in place (bounded and cheap), larger ones
/// on the blocking pool.
async fn read(body: Bytes) -> Result<(Request, Encoding, Vec<u8>), CodecError> {
    fn parse(
        (xml, encoding): (Vec<u8>, Encoding),
    ) -> Result<(Request, Encoding, Vec<u8>), CodecError> {
        ocs::parse_request(&xml).map(|request| (request, encoding, xml))
    }
    if body.len() <= INLINE_BODY {
        match ocs::decode_body_within(&body, INLINE_XML) {
            Ok(decoded) => return parse(decoded),
            Err(CodecError::InflatesTooFar) => {}
            Err(error) => return Err(error),
        }
    }
    tokio::task::spawn_blocking(move || ocs::decode_body(&body).and_then(parse))
        .await
        // The reader does not panic; if it ever did, the request is refused, not the server.
        .unwrap_or(Err(CodecError::Undecodable))
}

fn reply(xml: &str, encoding: Encoding) -> Response {
    let mut response = Response::new(ocs::encode_body(xml, encoding).into());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-compressed"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn prolog(
    shared: &Shared,
    request: &Request,
    host: Option<&str>,
    encoding: Encoding,
) -> Result<Response, crate::server::agent::ServeError> {
    let routes = shared.routes.borrow().clone();
    let now = shared.now();
    // From memory, on this worker, when the computer is indexed and this PROLOG changes no
    // deployment: no database read, no blocking-pool hop. Otherwise (a computer not yet
    // indexed, a deployment to arm or to mark notified) the database decides and records,
    // as durable as before.
    let remembered = shared
        .db
        .contact_in_memory(&request.device_id, now)
        .map(|(computer, current)| {
            let decision = decide(&routes, &computer, &current, now);
            (computer, decision)
        })
        .filter(|(_, decision)| decision.changes.is_empty());
    let from_memory = remembered.is_some();
    let (computer, decision) = match remembered {
        Some(found) => found,
        None => {
            let device = request.device_id.clone();
            let assignments = routes.clone();
            shared
                .db(move |db| {
                    let (computer, current) = db.contact(&device, now)?;
                    let decision = decide(&assignments, &computer, &current, now);
                    db.apply(&device, &decision.changes, now)?;
                    Ok((computer, decision))
                })
                .await?
        }
    };
    let Decision {
        offers,
        changes,
        reported,
    } = decision;
    fleet_log::answered(Protocol::Ocs, &request.device_id, offers.len(), from_memory);
    let changed = !changes.is_empty();
    if changed {
        shared.touched();
    }
    // Locations default to the address the agent used to reach this server.
    let here = format!("{}/download", host.unwrap_or("localhost"));
    for (offer, how) in &offers {
        fleet_log::offer(Protocol::Ocs, &computer, &request.device_id, offer, *how);
    }
    let packs: Vec<Pack> = offers
        .into_iter()
        .map(|(offer, _)| Pack {
            info_loc: offer.info_location.unwrap_or_else(|| here.clone()),
            pack_loc: offer.pack_location.unwrap_or_else(|| here.clone()),
            id: offer.package_id,
            force: offer.force,
        })
        .collect();
    let send_inventory = routes
        .inventory
        .wants(computer.last_inventory, reported, now);
    let answer = PrologReply {
        send_inventory,
        prolog_freq: routes.prolog_frequency_hours,
        download: routes.download.clone(),
        packs,
    };
    Ok(reply(&answer.to_xml(), encoding))
}

/// What a PROLOG decides for one computer: the offers (each first or repeated), the
/// changes to record, and whether results came since its last inventory.
struct Decision {
    offers: Vec<(deployments::Offer, Offered)>,
    changes: Vec<crate::store::db::Change>,
    /// Results since the last inventory: the agent's history has changed.
    reported: bool,
}

/// The decision of a PROLOG from `computer` with deployments `current` at `now` (pure: the
/// same whether they come from memory or from the database).
fn decide(
    routes: &crate::server::agent::Routes,
    computer: &crate::store::db::Computer,
    current: &[crate::store::db::Deployment],
    now: i64,
) -> Decision {
    let (mut offers, mut changes) =
        deployments::prolog(&routes.assignments, computer, current, now);
    // Deployment switched off (`ON="0"`): agents stop their download workers, so nothing is
    // offered and nothing counts as notified.
    if !routes.download.on {
        offers.clear();
        changes.retain(|c| !matches!(c, crate::store::db::Change::Notify { .. }));
    }
    let offers = offers
        .into_iter()
        .map(|offer| {
            let how = Offered::of(&offer, &changes);
            (offer, how)
        })
        .collect();
    let reported = current.iter().any(|d| {
        !d.state.is_open()
            && d.code.as_deref() != Some(deployments::ALREADY_IN_HISTORY)
            && computer.last_inventory.is_some_and(|at| d.changed_at >= at)
    });
    Decision {
        offers,
        changes,
        reported,
    }
}

async fn inventory(
    shared: &Shared,
    request: Request,
    xml: Vec<u8>,
    encoding: Encoding,
    address: Option<String>,
) -> Result<Response, crate::server::agent::ServeError> {
    let found = request.inventory.unwrap_or_default();
    let facts = Facts {
        name: found.name.unwrap_or_default(),
        os_name: found.os_name.unwrap_or_default(),
        os_version: found.os_version.unwrap_or_default(),
        tags: found.tags,
        ip_addresses: found.ip_addresses,
        history: found.history,
    };
    let routes = shared.routes.borrow().clone();
    let now = shared.now();
    let device = request.device_id.clone();
    let (armed, computer) = shared
        .db(move |db| {
            // The contact first: the computer as it was before this inventory (a PROLOG has
            // just recorded the contact, so this only reads).
            let (before, current) = db.contact(&device, now)?;
            // Kept compressed: inventories are kept for reference, rarely read.
            let raw = ocs::encode_body(&String::from_utf8_lossy(&xml), Encoding::Zlib);
            let computer = db.record_inventory(&device, &facts, &raw, now)?;
            db.set_address(&device, address.as_deref())?;
            let changes = deployments::arm(&routes.assignments, &computer, &current);
            db.apply(&device, &changes, now)?;
            Ok((
                changes.len(),
                before.last_inventory.is_none().then_some(computer),
            ))
        })
        .await?;
    shared.touched();
    if let Some(computer) = computer {
        fleet_log::new_computer(Protocol::Ocs, &computer);
    }
    tracing::debug!(device = %request.device_id, armed, "stored an inventory");
    Ok(reply(&ocs::inventory_reply(), encoding))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::Request as HttpRequest;
    use tokio::sync::watch;
    use tower::ServiceExt;

    use super::*;
    use crate::server::agent::{self, PackageRoute, Routes};
    use crate::server::agent::{ClientAddress, HttpsAddress};
    use crate::server::deployments::{Assignment, OsFamily, Selector};
    use crate::server::metrics::Metrics;
    use crate::server::results::RESULT_BURST;
    use crate::store::db::{Database, State as DeploymentState};

    const DEVICE: &str = "lab-01-2026-01-01-00-00-00";
    const ID: &str = "1234567890";

    struct Fixture {
        shared: Shared,
        store: tempfile::TempDir,
    }

    fn fixture() -> Fixture {
        let store = tempfile::tempdir().unwrap();
        let package = store.path().join(ID);
        std::fs::create_dir_all(&package).unwrap();
        std::fs::write(package.join("info"), "<DOWNLOAD ID=\"1234567890\" />").unwrap();
        std::fs::write(package.join(format!("{ID}-1")), vec![7u8; 5000]).unwrap();
        let routes = Routes {
            assignments: vec![Assignment {
                affectation: "default/lab".into(),
                activation: "default/hello".into(),
                package: "default/hello".into(),
                package_id: ID.into(),
                package_os: OsFamily::Linux,
                selector: Selector::new(false, &[], &[], &["lab".into()], vec![]).unwrap(),
                redeploy: None,
                not_before: None,
                not_after: None,
                info_location: None,
                pack_location: Some("mirror.lab:8080/download".into()),
                share: 100,
                paused: false,
            }],
            packages: HashMap::from([(
                ID.to_owned(),
                PackageRoute::new("default/hello", vec![0, 3]),
            )]),
            ..Routes::default()
        };
        let (_, routes) = watch::channel(Arc::new(routes));
        let (activity, _) = watch::channel(0);
        Fixture {
            shared: Shared {
                routes,
                db: Arc::new(Database::in_memory().unwrap()),
                store: store.path().to_path_buf(),
                metrics: Arc::new(Metrics::default()),
                activity: Arc::new(activity),
                clock: Arc::new(|| 1_000_000),
                cache: Arc::new(agent::FragmentCache::new(1 << 20)),
                results: Arc::default(),
                enrollments: Default::default(),
            },
            store,
        }
    }

    async fn post(shared: &Shared, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
        let request = HttpRequest::post("/ocsinventory")
            .header("host", "tessera.lab:8443")
            .body(Body::from(body))
            .unwrap();
        let response = agent::app(shared.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, bytes.to_vec())
    }

    async fn ask(shared: &Shared, xml: &str) -> (StatusCode, String) {
        let (status, body) = post(shared, ocs::encode_body(xml, Encoding::Zlib)).await;
        let text = if body.is_empty() || status != StatusCode::OK {
            String::from_utf8_lossy(&body).into_owned()
        } else {
            let (xml, encoding) = ocs::decode_body(&body).unwrap();
            assert_eq!(encoding, Encoding::Zlib);
            String::from_utf8(xml).unwrap()
        };
        (status, text)
    }

    fn prolog_xml() -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><REQUEST><DEVICEID>{DEVICE}</DEVICEID><QUERY>PROLOG</QUERY></REQUEST>"
        )
    }

    fn inventory_xml(history: &str) -> String {
        format!(
            "<REQUEST><CONTENT><ACCOUNTINFO><KEYNAME>TAG</KEYNAME><KEYVALUE>lab</KEYVALUE></ACCOUNTINFO>\
             <HARDWARE><NAME>lab-01</NAME><OSNAME>Debian GNU/Linux 12</OSNAME><OSVERSION>12</OSVERSION></HARDWARE>\
             <DOWNLOAD><HISTORY>{history}</HISTORY></DOWNLOAD></CONTENT>\
             <DEVICEID>{DEVICE}</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>"
        )
    }

    /// The fixture's shared state with `routes` changed by `change`.
    fn with_routes(shared: &Shared, change: impl FnOnce(&mut Routes)) -> Shared {
        let mut routes = (**shared.routes.borrow()).clone();
        change(&mut routes);
        let (_, receiver) = watch::channel(Arc::new(routes));
        Shared {
            routes: receiver,
            ..shared.clone()
        }
    }

    /// A POST to the plain-HTTP listener's routes, which know the HTTPS listener at
    /// port 8443: (status, reason phrase, body).
    async fn post_plain(shared: &Shared, body: Vec<u8>) -> (StatusCode, Option<String>, Vec<u8>) {
        let request = HttpRequest::post("/ocsinventory")
            .header("host", "tessera.lab:8080")
            .body(Body::from(body))
            .unwrap();
        let https: std::net::SocketAddr = "0.0.0.0:8443".parse().unwrap();
        let peer: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
        let app = agent::fragments_app(shared.clone())
            .layer(axum::Extension(HttpsAddress(Some(https))))
            .layer(axum::Extension(ClientAddress(peer)));
        let response = app.oneshot(request).await.unwrap();
        let status = response.status();
        let phrase = response
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|p| String::from_utf8_lossy(p.as_bytes()).into_owned());
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, phrase, bytes.to_vec())
    }

    #[test]
    fn the_inventory_policy_follows_the_ocs_frequency() {
        let now = 100 * DAY;
        let policy = InventoryPolicy::from_days;
        assert_eq!(
            policy(1),
            InventoryPolicy::default(),
            "the default is a day"
        );
        // Never inventoried: asked in every mode, as the OCS server does.
        for days in [-1, 0, 1, 7] {
            assert!(policy(days).wants(None, false, now), "{days}");
        }
        // 0: at every contact.
        assert!(policy(0).wants(Some(now), false, now));
        // N days: once the last is N days old, or after results.
        assert!(!policy(7).wants(Some(now - 6 * DAY), false, now));
        assert!(policy(7).wants(Some(now - 7 * DAY), false, now));
        assert!(policy(7).wants(Some(now - 60), true, now));
        // -1: never again, not even after results.
        assert!(!policy(-1).wants(Some(now - 365 * DAY), true, now));
        assert_eq!(policy(-5), InventoryPolicy::FirstOnly);
    }

    #[tokio::test]
    async fn prolog_asks_for_inventories_as_the_inventory_frequency_says() {
        let f = fixture();
        let send = |reply: &str| reply.contains("<RESPONSE>SEND</RESPONSE>");
        // Default: a fresh inventory is enough.
        ask(&f.shared, &inventory_xml("")).await;
        let (_, reply) = ask(&f.shared, &prolog_xml()).await;
        assert!(!send(&reply), "{reply}");
        // 0: at every contact.
        let every = with_routes(&f.shared, |r| r.inventory = InventoryPolicy::from_days(0));
        let (_, reply) = ask(&every, &prolog_xml()).await;
        assert!(send(&reply), "{reply}");
        // -1: not even after results.
        ask(&f.shared, &result_xml(DEVICE, "SUCCESS")).await;
        let never = with_routes(&f.shared, |r| r.inventory = InventoryPolicy::from_days(-1));
        let (_, reply) = ask(&never, &prolog_xml()).await;
        assert!(!send(&reply), "{reply}");
        let (_, reply) = ask(&f.shared, &prolog_xml()).await;
        assert!(send(&reply), "by default, results ask for one: {reply}");
    }

    #[tokio::test]
    async fn an_ocs_call_over_plain_http_is_told_to_use_https_and_logged_once() {
        let f = fixture();
        let (status, phrase, body) =
            post_plain(&f.shared, ocs::encode_body(&prolog_xml(), Encoding::Zlib)).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
        assert!(
            body.contains("https://tessera.lab:8443/ocsinventory"),
            "{body}"
        );
        assert_eq!(
            phrase.as_deref(),
            Some("Use HTTPS https://tessera.lab:8443/ocsinventory"),
            "the status line is all the Unix agent logs"
        );
        assert!(
            f.shared.db.computers().unwrap().is_empty(),
            "nothing served"
        );
        // Logged the first time only, for the device; an unreadable body counts by address.
        assert!(!f.shared.metrics.plain_http.refused(DEVICE));
        post_plain(&f.shared, b"garbage".to_vec()).await;
        assert!(!f.shared.metrics.plain_http.refused("192.0.2.7"));
        let text = f.shared.metrics.render();
        assert!(
            text.contains("tessera_ocs_plain_http_requests_total{outcome=\"refused\"} 4\n"),
            "{text}"
        );
        // Fragments are still served there, and other paths are still 404.
        let request = HttpRequest::get("/elsewhere").body(Body::empty()).unwrap();
        let response = agent::fragments_app(f.shared.clone())
            .oneshot(request)
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn with_plain_http_allowed_agents_are_served_there_and_sent_to_https_for_info() {
        let f = fixture();
        let shared = with_routes(&f.shared, |r| r.ocs_plain_http = true);
        let (status, _, _) = post_plain(
            &shared,
            ocs::encode_body(&inventory_xml(""), Encoding::Zlib),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _, body) =
            post_plain(&shared, ocs::encode_body(&prolog_xml(), Encoding::Zlib)).await;
        assert_eq!(status, StatusCode::OK);
        let (xml, _) = ocs::decode_body(&body).unwrap();
        let reply = String::from_utf8(xml).unwrap();
        assert!(
            reply.contains("INFO_LOC=\"tessera.lab:8443/download\""),
            "info files come over HTTPS, from the same host: {reply}"
        );
        assert_eq!(shared.metrics.plain_http.computers(), 1);
        // Its next contact over HTTPS: no longer counted.
        ask(&shared, &prolog_xml()).await;
        assert_eq!(shared.metrics.plain_http.computers(), 0);
    }

    #[test]
    fn the_https_address_is_named_as_the_agent_named_the_host() {
        let any: std::net::SocketAddr = "0.0.0.0:8443".parse().unwrap();
        let one: std::net::SocketAddr = "10.0.0.5:8443".parse().unwrap();
        assert_eq!(
            https_authority(Some("srv:8080"), Some(any)).as_deref(),
            Some("srv:8443")
        );
        assert_eq!(
            https_authority(Some("[::1]:8080"), Some(any)).as_deref(),
            Some("[::1]:8443")
        );
        assert_eq!(
            https_authority(Some("srv"), Some(any)).as_deref(),
            Some("srv:8443")
        );
        assert_eq!(
            https_authority(None, Some(one)).as_deref(),
            Some("10.0.0.5:8443")
        );
        assert_eq!(https_authority(None, Some(any)), None);
        assert_eq!(https_authority(Some("srv:8080"), None), None);
    }

    #[tokio::test]
    async fn a_new_computer_is_asked_for_an_inventory_and_then_offered_its_packages() {
        let f = fixture();
        let (status, reply) = ask(&f.shared, &prolog_xml()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(reply.contains("<RESPONSE>SEND</RESPONSE>"), "{reply}");
        assert!(
            !reply.contains("TYPE=\"PACK\""),
            "unknown computers get nothing: {reply}"
        );

        let (status, reply) = ask(&f.shared, &inventory_xml("")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(reply.contains("NO_ACCOUNT_UPDATE"), "{reply}");

        let (_, reply) = ask(&f.shared, &prolog_xml()).await;
        assert!(reply.contains("<RESPONSE>STOP</RESPONSE>"), "{reply}");
        let conf = reply.find("TYPE=\"CONF\"").unwrap();
        let pack = reply.find("TYPE=\"PACK\"").unwrap();
        assert!(conf < pack, "CONF comes first: {reply}");
        assert!(
            reply.contains(&format!("ID=\"{ID}\" INFO_LOC=\"tessera.lab:8443/download\" PACK_LOC=\"mirror.lab:8080/download\"")),
            "info from the address the agent used, fragments from the mirror: {reply}"
        );
        let (_, rows) = f.shared.db.computer(DEVICE).unwrap().unwrap();
        assert_eq!(rows[0].state, DeploymentState::Notified);
    }

    #[tokio::test]
    async fn with_deployment_switched_off_agents_get_on_0_and_no_package() {
        let mut f = fixture();
        let mut routes = (**f.shared.routes.borrow()).clone();
        routes.download.on = false;
        let (_, receiver) = watch::channel(Arc::new(routes));
        f.shared.routes = receiver;
        ask(&f.shared, &inventory_xml("")).await;
        let (_, reply) = ask(&f.shared, &prolog_xml()).await;
        assert!(reply.contains("ON=\"0\""), "{reply}");
        assert!(!reply.contains("TYPE=\"PACK\""), "{reply}");
        let (_, rows) = f.shared.db.computer(DEVICE).unwrap().unwrap();
        assert_eq!(rows[0].state, DeploymentState::Waiting);
    }

    #[tokio::test]
    async fn results_are_stored_verbatim_and_mapped_through_the_success_codes() {
        let f = fixture();
        ask(&f.shared, &inventory_xml("")).await;
        ask(&f.shared, &prolog_xml()).await;
        // The Unix agent's form: every field an attribute, no declaration.
        let result = format!(
            "<REQUEST DEVICEID=\"{DEVICE}\" ERR=\"SUCCESS_3\" ID=\"{ID}\" QUERY=\"DOWNLOAD\" />"
        );
        let (status, body) = post(&f.shared, ocs::encode_body(&result, Encoding::Zlib)).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.is_empty());
        let (_, rows) = f.shared.db.computer(DEVICE).unwrap().unwrap();
        assert_eq!(
            rows[0].state,
            DeploymentState::Success,
            "3 is listed as success"
        );
        assert_eq!(rows[0].code.as_deref(), Some("SUCCESS_3"));
        // Settled: not offered again.
        let (_, reply) = ask(&f.shared, &prolog_xml()).await;
        assert!(!reply.contains("TYPE=\"PACK\""), "{reply}");
        assert!(f.shared.metrics.render().contains("code=\"SUCCESS_3\"} 1"));
    }

    fn result_xml(device: &str, code: &str) -> String {
        format!("<REQUEST DEVICEID=\"{device}\" ERR=\"{code}\" ID=\"{ID}\" QUERY=\"DOWNLOAD\" />")
    }

    #[tokio::test]
    async fn a_forged_result_for_a_package_never_offered_is_refused_and_nothing_is_stored() {
        let f = fixture();
        // Targeted (waiting) but not yet offered: a SUCCESS cannot come from the computer.
        ask(&f.shared, &inventory_xml("")).await;
        let (status, body) = ask(&f.shared, &result_xml(DEVICE, "SUCCESS")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (_, rows) = f.shared.db.computer(DEVICE).unwrap().unwrap();
        assert_eq!(
            (rows[0].state, rows[0].code.as_deref()),
            (DeploymentState::Waiting, None)
        );
        assert!(
            f.shared
                .db
                .events(DEVICE)
                .unwrap()
                .iter()
                .all(|e| e.code.is_none())
        );
        let metrics = f.shared.metrics.render();
        assert!(!metrics.contains("code=\"SUCCESS\""), "{metrics}");
        assert!(
            metrics.contains("unfiled_total{reason=\"not_offered\"} 1\n"),
            "{metrics}"
        );
        // So the real computer is still offered the package, and its result is filed.
        let (_, reply) = ask(&f.shared, &prolog_xml()).await;
        assert!(reply.contains(&format!("ID=\"{ID}\"")), "{reply}");
        let (status, _) = ask(&f.shared, &result_xml(DEVICE, "EXIT_CODE_1603")).await;
        assert_eq!(status, StatusCode::OK);
        // A forged SUCCESS afterwards is answered 200 (so a resend ends) and changes nothing.
        let (status, _) = ask(&f.shared, &result_xml(DEVICE, "SUCCESS")).await;
        assert_eq!(status, StatusCode::OK);
        let (_, rows) = f.shared.db.computer(DEVICE).unwrap().unwrap();
        assert_eq!(
            (rows[0].state, rows[0].code.as_deref()),
            (DeploymentState::Error, Some("EXIT_CODE_1603"))
        );
    }

    #[tokio::test]
    async fn results_for_unknown_devices_are_never_stored() {
        let f = fixture();
        let stranger = "stranger-2026-01-01-00-00-00";
        let (status, _) = ask(&f.shared, &result_xml(stranger, "SUCCESS")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(f.shared.db.computers().unwrap().is_empty());
        assert!(f.shared.db.events(stranger).unwrap().is_empty());
        assert!(
            f.shared
                .metrics
                .render()
                .contains("unfiled_total{reason=\"unknown_device\"} 1\n")
        );
    }

    #[tokio::test]
    async fn results_past_a_computers_budget_get_429_and_other_computers_keep_theirs() {
        let f = fixture();
        ask(&f.shared, &inventory_xml("")).await;
        ask(&f.shared, &prolog_xml()).await;
        let burst = RESULT_BURST as usize;
        for n in 0..burst {
            let (status, _) = ask(&f.shared, &result_xml(DEVICE, "SUCCESS")).await;
            assert_eq!(status, StatusCode::OK, "result {n}");
        }
        let (status, _) = ask(&f.shared, &result_xml(DEVICE, "SUCCESS")).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
        let other = "other-2026-01-01-00-00-00";
        let (status, _) = ask(&f.shared, &result_xml(other, "SUCCESS")).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "its own budget; unknown, so refused"
        );
        assert!(
            f.shared
                .metrics
                .render()
                .contains("unfiled_total{reason=\"rate_limited\"} 1\n")
        );
    }

    #[tokio::test]
    async fn hostile_bodies_get_a_short_400_that_never_echoes_them() {
        let f = fixture();
        let mut deep = String::from(
            "<REQUEST><DEVICEID>x-2026-01-01-00-00-00</DEVICEID><QUERY>PROLOG</QUERY>",
        );
        deep.push_str(&"<a>".repeat(100_000));
        deep.push_str(&"</a>".repeat(100_000));
        deep.push_str("</REQUEST>");
        let huge_query = format!(
            "<REQUEST><DEVICEID>{DEVICE}</DEVICEID><QUERY>{}</QUERY></REQUEST>",
            "Q".repeat(1 << 20)
        );
        let unknown_query = format!(
            "<REQUEST><DEVICEID>{DEVICE}</DEVICEID><QUERY>{}</QUERY></REQUEST>",
            "Q".repeat(30)
        );
        for xml in [deep, huge_query, unknown_query] {
            let started = std::time::Instant::now();
            let (status, body) = post(&f.shared, ocs::encode_body(&xml, Encoding::Zlib)).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
            assert!(body.len() < 100, "{}", String::from_utf8_lossy(&body));
            assert!(!String::from_utf8_lossy(&body).contains("QQQ"));
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
        assert!(f.shared.db.computers().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_package_in_the_agents_history_is_never_offered_without_force() {
        let f = fixture();
        ask(
            &f.shared,
            &inventory_xml(&format!("<PACKAGE ID=\"{ID}\"/>")),
        )
        .await;
        let (_, reply) = ask(&f.shared, &prolog_xml()).await;
        assert!(!reply.contains("TYPE=\"PACK\""), "{reply}");
        let (_, rows) = f.shared.db.computer(DEVICE).unwrap().unwrap();
        assert_eq!(
            rows[0].code.as_deref(),
            Some(deployments::ALREADY_IN_HISTORY)
        );
    }

    #[tokio::test]
    async fn replies_use_the_encoding_of_the_request() {
        let f = fixture();
        let (status, body) = post(&f.shared, ocs::encode_body(&prolog_xml(), Encoding::Gzip)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..2], &[0x1f, 0x8b], "gzip in, gzip out");
        let (status, body) = post(&f.shared, prolog_xml().into_bytes()).await;
        assert_eq!(status, StatusCode::OK);
        assert!(body.starts_with(b"<?xml"), "plain in, plain out");
    }

    #[tokio::test]
    async fn malformed_requests_get_a_400_oversized_ones_a_413_and_nothing_is_stored() {
        let f = fixture();
        for body in [
            b"\x78\x9c garbage".to_vec(),
            ocs::encode_body("<REQUEST><QUERY>PROLOG</QUERY>", Encoding::Zlib),
            ocs::encode_body(
                "<REQUEST><DEVICEID>no-date</DEVICEID><QUERY>PROLOG</QUERY></REQUEST>",
                Encoding::Zlib,
            ),
            ocs::encode_body(
                &format!("<REQUEST><DEVICEID>{DEVICE}</DEVICEID><QUERY>SNMP</QUERY></REQUEST>"),
                Encoding::Zlib,
            ),
        ] {
            let (status, _) = post(&f.shared, body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
        }
        let (status, _) = post(&f.shared, vec![0u8; ocs::MAX_BODY + 1]).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(f.shared.db.computers().unwrap().is_empty());
        assert!(f.shared.metrics.render().contains("query=\"invalid\"} 3\n"));
    }

    #[tokio::test]
    async fn files_of_activated_packages_are_served_whole_and_nothing_else_is() {
        let f = fixture();
        let get = |uri: String, app: axum::Router| async move {
            let request = HttpRequest::get(uri)
                .header("if-modified-since", "Wed, 21 Oct 2099 07:28:00 GMT")
                .body(Body::empty())
                .unwrap();
            let response = app.oneshot(request).await.unwrap();
            let status = response.status();
            let length = response
                .headers()
                .get("content-length")
                .map(|v| v.to_str().unwrap().to_owned());
            let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                .await
                .unwrap();
            (status, length, body.len())
        };
        let https = agent::app(f.shared.clone());
        let (status, length, size) = get(format!("/download/{ID}/{ID}-1"), https.clone()).await;
        assert_eq!(status, StatusCode::OK, "always 200, never 304");
        assert_eq!((length.as_deref(), size), (Some("5000"), 5000));
        assert_eq!(
            get(format!("/download/{ID}/info"), https.clone()).await.0,
            StatusCode::OK
        );
        for missing in [
            format!("/download/{ID}/{ID}-2"),
            format!("/download/{ID}/manifest.json"),
            "/download/999/999-1".to_owned(),
            format!("/download/..%2F{ID}/info"),
        ] {
            assert_eq!(
                get(missing.clone(), https.clone()).await.0,
                StatusCode::NOT_FOUND,
                "{missing}"
            );
        }
        let http = agent::fragments_app(f.shared.clone());
        assert_eq!(
            get(format!("/download/{ID}/{ID}-1"), http.clone()).await.0,
            StatusCode::OK
        );
        assert_eq!(
            get(format!("/download/{ID}/info"), http).await.0,
            StatusCode::NOT_FOUND,
            "info files only over HTTPS"
        );
        drop(f.store);
    }

    /// A small random generator for the comparison below (no dependency for a test).
    struct Xorshift(u64);

    impl Xorshift {
        fn below(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n
        }
    }

    /// The same fixture with its own database and a clock the test moves.
    fn twin(f: &Fixture, db: Database, clock: Arc<std::sync::atomic::AtomicI64>) -> Shared {
        let mut routes = (**f.shared.routes.borrow()).clone();
        let mut redeployed = routes.assignments[0].clone();
        redeployed.affectation = "default/paris".into();
        redeployed.activation = "default/tools".into();
        redeployed.package = "default/tools".into();
        redeployed.package_id = "2222222222".into();
        redeployed.redeploy = Some("2".into());
        redeployed.selector =
            Selector::new(false, &[], &["lab-0*".into()], &["paris".into()], vec![]).unwrap();
        let mut later = routes.assignments[0].clone();
        later.affectation = "default/later".into();
        later.activation = "default/later".into();
        later.package_id = "3333333333".into();
        later.not_before = Some(1_000_000 + 3_000);
        later.share = 50;
        routes.assignments.extend([redeployed, later]);
        let (_, routes) = watch::channel(Arc::new(routes));
        Shared {
            routes,
            db: Arc::new(db),
            clock: Arc::new(move || clock.load(std::sync::atomic::Ordering::Relaxed)),
            results: Arc::default(),
            ..f.shared.clone()
        }
    }

    /// A PROLOG answered from the in-memory index offers exactly what the database path
    /// offers: random fleets (tags, OS, installed history), three Affectations (one with a
    /// redeploy token and a name glob, one staged and scheduled), and random sequences of
    /// PROLOGs, inventories and results over time, sent to a server with the index and to
    /// one without. Every answer, and in the end every row, is the same.
    #[tokio::test]
    async fn prologs_from_the_index_offer_exactly_what_the_database_offers() {
        use std::sync::atomic::{AtomicI64, Ordering};
        let f = fixture();
        for seed in [1u64, 7, 42, 2026] {
            let mut random = Xorshift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
            let clock = Arc::new(AtomicI64::new(1_000_000));
            let indexed = twin(&f, Database::in_memory().unwrap(), clock.clone());
            let plain = twin(
                &f,
                Database::in_memory_without_index().unwrap(),
                clock.clone(),
            );
            let computers = 12;
            let device = |n: u64| format!("lab-{n:02}-2026-01-01-00-00-00");
            for step in 0..400 {
                clock.fetch_add(i64::try_from(random.below(40)).unwrap(), Ordering::Relaxed);
                let n = random.below(computers);
                let xml = match random.below(10) {
                    0 | 1 => {
                        let tags = ["<KEYVALUE>lab</KEYVALUE>", "<KEYVALUE>paris</KEYVALUE>", ""];
                        let os = ["Debian GNU/Linux 12", "Microsoft Windows 11 Pro"];
                        let history = [
                            "",
                            "<PACKAGE ID=\"1234567890\"/>",
                            "<PACKAGE ID=\"2222222222\"/>",
                        ];
                        format!(
                            "<REQUEST><CONTENT><ACCOUNTINFO><KEYNAME>TAG</KEYNAME>{}</ACCOUNTINFO>\
                             <HARDWARE><NAME>lab-{n:02}</NAME><OSNAME>{}</OSNAME><OSVERSION>1</OSVERSION></HARDWARE>\
                             <DOWNLOAD><HISTORY>{}</HISTORY></DOWNLOAD></CONTENT>\
                             <DEVICEID>{}</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>",
                            tags[usize::try_from(random.below(3)).unwrap()],
                            os[usize::try_from(random.below(8) / 7).unwrap()],
                            history[usize::try_from(random.below(3)).unwrap()],
                            device(n)
                        )
                    }
                    2 => {
                        let ids = [ID, "2222222222", "3333333333"];
                        let codes = ["SUCCESS", "EXIT_CODE_1", "ERR_DOWNLOAD_INFO"];
                        format!(
                            "<REQUEST DEVICEID=\"{}\" ERR=\"{}\" ID=\"{}\" QUERY=\"DOWNLOAD\" />",
                            device(n),
                            codes[usize::try_from(random.below(3)).unwrap()],
                            ids[usize::try_from(random.below(3)).unwrap()]
                        )
                    }
                    _ => format!(
                        "<REQUEST><DEVICEID>{}</DEVICEID><QUERY>PROLOG</QUERY></REQUEST>",
                        device(n)
                    ),
                };
                let theirs = ask(&plain, &xml).await;
                let ours = ask(&indexed, &xml).await;
                assert_eq!(ours, theirs, "seed {seed}, step {step}: {xml}");
            }
            assert!(indexed.db.indexed() > 0, "answered from the index");
            assert_eq!(plain.db.indexed(), 0);
            assert_eq!(
                indexed.db.computers().unwrap(),
                plain.db.computers().unwrap()
            );
            assert_eq!(
                indexed.db.deployments().unwrap(),
                plain.db.deployments().unwrap()
            );
        }
    }

    /// An operator's suspension (a paused assignment in the routes reconcile publishes)
    /// reaches PROLOGs answered from memory at once, and lifting it offers the package
    /// again, recorded in the database: the index holds facts and states, never what to
    /// offer.
    #[tokio::test]
    async fn a_suspension_reaches_prologs_answered_from_memory() {
        let f = fixture();
        ask(&f.shared, &inventory_xml("")).await;
        let paused = with_routes(&f.shared, |r| r.assignments[0].paused = true);
        let (_, reply) = ask(&paused, &prolog_xml()).await;
        assert!(!reply.contains("TYPE=\"PACK\""), "{reply}");
        assert!(f.shared.db.indexed() == 1, "answered from the index");
        let (_, rows) = f.shared.db.computer(DEVICE).unwrap().unwrap();
        assert_eq!(rows[0].state, DeploymentState::Waiting);
        let (_, reply) = ask(&f.shared, &prolog_xml()).await;
        assert!(reply.contains(&format!("ID=\"{ID}\"")), "{reply}");
        let (_, rows) = f.shared.db.computer(DEVICE).unwrap().unwrap();
        assert_eq!(rows[0].state, DeploymentState::Notified);
        // Notified: offered from memory while suspended, so the agent may finish.
        let (_, reply) = ask(&paused, &prolog_xml()).await;
        assert!(reply.contains(&format!("ID=\"{ID}\"")), "{reply}");
    }
}
