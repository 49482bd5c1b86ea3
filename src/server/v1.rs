//! The native API of Tessera's own agent (`/v1`). Enrollment: a token and a certificate
//! request in, a client certificate out. Everything else needs that certificate: the agent
//! is who its certificate says, and sees and reports only its own deployments.

use std::net::IpAddr;
use std::time::Instant;

use axum::Json;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::pki::AgentId;
use crate::server::agent::{PeerAgent, ServeError};
use crate::server::deployments;
use crate::server::fleet_log::{self, Offered, Protocol};
use crate::server::metrics::Unfiled;
use crate::store::db::{Facts, Filed, State as DeploymentState};

use crate::pki::authority::LeafRequest;
use crate::pki::token::Token;
use crate::pki::{Names, PkiError, Usage};
use crate::protocol::v1::{self, EnrollRequest, EnrollResponse, Problem, ReportError};
use crate::server::agent::{ClientAddress, Shared};
use crate::store::db::{TokenRefusal, journal};
use crate::store::fragments::FragmentError;
use crate::throttle::{RateLimit, Repeats, Verdict, source_of};

/// Why a `/v1` call is refused or failed. Refusals answer with their status and a JSON
/// [`Problem`] whose message is this error's text; the server's own failures are logged
/// with their causes and answered 500 without a body (503 with `Retry-After` when the state
/// database cannot take writes).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the native API needs the client certificate this agent received at enrollment")]
    Unauthenticated,
    /// Enrollment is off: the message says so in the words of the call.
    #[error("{0}")]
    EnrollmentDisabled(&'static str),
    #[error(
        "too many enrollment attempts from this address (at most {ENROLL_BURST} at once, then one every {ENROLL_REFILL:?}): retry in {seconds} s"
    )]
    TooManyAttempts { seconds: u64 },
    /// The body is not the request the call takes.
    #[error("not an enrollment request: {0}")]
    NotEnrollment(serde_json::Error),
    #[error(transparent)]
    Token(TokenRefusal),
    #[error(transparent)]
    BadCsr(PkiError),
    #[error(transparent)]
    BadReport(ReportError),
    #[error("package {0} is not being deployed to this agent")]
    NotAssigned(String),
    #[error("too many results from this agent; send it again later")]
    TooManyResults,
    #[error("failed to check an enrollment token")]
    TokenCheck(#[source] ServeError),
    #[error("failed to read the fragment store")]
    Store(#[source] FragmentError),
    #[error("failed to record a native API call")]
    Serve(#[from] ServeError),
}

impl ApiError {
    /// The status and stable code of a refusal; `None` for the server's own failures.
    fn refusal(&self) -> Option<(StatusCode, &'static str)> {
        Some(match self {
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, "client_certificate_required"),
            Self::EnrollmentDisabled(_) => (StatusCode::NOT_FOUND, "enrollment_disabled"),
            Self::TooManyAttempts { .. } => (StatusCode::TOO_MANY_REQUESTS, "too_many_attempts"),
            Self::NotEnrollment(_) | Self::BadReport(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::Token(refusal) => (
                StatusCode::FORBIDDEN,
                match refusal {
                    TokenRefusal::Unknown => "token_unknown",
                    TokenRefusal::Expired => "token_expired",
                    TokenRefusal::UsedUp => "token_used_up",
                    TokenRefusal::Revoked => "token_revoked",
                },
            ),
            Self::BadCsr(_) => (StatusCode::BAD_REQUEST, "bad_csr"),
            Self::NotAssigned(_) => (StatusCode::NOT_FOUND, "not_assigned"),
            Self::TooManyResults => (StatusCode::TOO_MANY_REQUESTS, "too_many_results"),
            Self::TokenCheck(_) | Self::Store(_) | Self::Serve(_) => return None,
        })
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Serve(ServeError::Unavailable(_)) = self {
            return crate::server::agent::unavailable();
        }
        let Some((status, code)) = self.refusal() else {
            let error = crate::error_chain(&self);
            tracing::error!(%error, "native API failure");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        let mut response = (
            status,
            Json(Problem {
                error: code.to_owned(),
                message: self.to_string(),
            }),
        )
            .into_response();
        if let Self::TooManyAttempts { seconds } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }
}

/// Enrollment attempts a client address may make at once: more than a site enrolling a
/// batch of machines needs, since successful attempts are given back.
pub const ENROLL_BURST: u32 = 10;
/// Then one more attempt per second and address: a guesser gets 86,400 a day instead of the
/// thousands a second one connection could make (token entropy keeps guessing hopeless
/// either way; this keeps it from costing CPU and log).
pub const ENROLL_REFILL: std::time::Duration = std::time::Duration::from_secs(1);

/// What enrollment remembers per client address: its attempts (a token bucket) and when a
/// refusal was last logged (one line per address and minute, with a count of the rest).
#[derive(Debug)]
pub struct Enrollments {
    attempts: RateLimit,
    refusals: Repeats<(IpAddr, &'static str)>,
}

impl Default for Enrollments {
    fn default() -> Self {
        Self {
            attempts: RateLimit::new(ENROLL_BURST, ENROLL_REFILL, crate::throttle::MAX_SOURCES),
            refusals: Repeats::default(),
        }
    }
}

impl Enrollments {
    /// Whether the refusal `what` of `client` is logged now, and how many were left out.
    fn log(&self, client: IpAddr, what: &'static str) -> Option<u64> {
        match self
            .refusals
            .check((source_of(client), what), Instant::now())
        {
            Verdict::Log { suppressed } => Some(suppressed),
            Verdict::Quiet => None,
        }
    }
}

/// `POST /v1/enroll`.
pub async fn enroll(
    State(shared): State<Shared>,
    client: Option<Extension<ClientAddress>>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let Some(enrollment) = shared.routes.borrow().enrollment.clone() else {
        return Err(ApiError::EnrollmentDisabled(
            "this server does not enroll agents (the Server has no spec.enrollment, or its Issuer is not ready)",
        ));
    };
    // Every listener names the client; without one, all such calls share a bucket.
    let client = client.map_or(IpAddr::from([0, 0, 0, 0]), |Extension(ClientAddress(a))| {
        a.ip()
    });
    let limits = &shared.enrollments;
    if let Err(wait) = limits.attempts.take(client, Instant::now()) {
        if let Some(suppressed) = limits.log(client, "over the limit") {
            tracing::warn!(%client, suppressed, "enrollment attempts over the limit refused");
        }
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        return Err(ApiError::TooManyAttempts { seconds });
    }
    let request: EnrollRequest = serde_json::from_slice(&body).map_err(ApiError::NotEnrollment)?;
    let Some(token) = Token::parse(&request.token) else {
        if let Some(suppressed) = limits.log(client, "malformed token") {
            tracing::warn!(%client, hostname = %request.hostname, suppressed, "enrollment with a malformed token");
            record_refused_enrollment(&shared, client, &request.hostname, "a malformed token");
        }
        return Err(ApiError::Token(TokenRefusal::Unknown));
    };
    let now = shared.now();
    let id = token.id.clone();
    let checked = token.clone();
    let used = match shared
        .db(move |db| db.use_token(&id, |stored| checked.matches(stored), now))
        .await
    {
        Ok(used) => used,
        Err(error) => {
            // Our fault, not the client's: the attempt does not count (and a database that
            // cannot take writes is a 500 here, not a 503: the token stays unused).
            limits.attempts.give_back(client);
            return Err(ApiError::TokenCheck(error));
        }
    };
    if let Err(refusal) = used {
        if let Some(suppressed) = limits.log(client, "refused") {
            tracing::warn!(%client, token = %token.id, hostname = %request.hostname, %refusal, suppressed, "enrollment refused");
            let why = format!("{refusal} (token {})", token.id);
            record_refused_enrollment(&shared, client, &request.hostname, &why);
        }
        return Err(ApiError::Token(refusal));
    }
    // A good token is no guess: a site enrolling many machines from one address is not
    // slowed down by its own successes.
    limits.attempts.give_back(client);
    let agent = AgentId::generate();
    tracing::info!(agent = agent.as_str(), token = %token.id, hostname = %request.hostname, "enrolling an agent");
    certify(&enrollment, &agent, &request.csr, now)
}

/// Records a refused enrollment in the journal (as often as it is logged), under the host
/// name the agent gave, else its address.
fn record_refused_enrollment(shared: &Shared, client: IpAddr, hostname: &str, why: &str) {
    let computer = if hostname.is_empty() {
        client.to_string()
    } else {
        hostname.to_owned()
    };
    journal::record(
        &shared.db,
        journal::Record::refused(
            &computer,
            &format!("enrollment from {client} refused: {why}"),
        ),
    );
}

/// `POST /v1/renew`: a new certificate for the agent the current one names.
pub async fn renew(
    State(shared): State<Shared>,
    peer: Option<Extension<PeerAgent>>,
    Json(request): Json<v1::RenewRequest>,
) -> Result<Response, ApiError> {
    let agent = identity(peer)?;
    let Some(enrollment) = shared.routes.borrow().enrollment.clone() else {
        return Err(ApiError::EnrollmentDisabled(
            "this server does not enroll agents",
        ));
    };
    tracing::info!(agent = agent.as_str(), "renewing an agent's certificate");
    certify(&enrollment, &agent, &request.csr, shared.now())
}

/// Signs `csr` for `agent` with the enrollment Issuer.
fn certify(
    enrollment: &crate::server::agent::EnrollmentRoute,
    agent: &AgentId,
    csr: &str,
    now: i64,
) -> Result<Response, ApiError> {
    let leaf = LeafRequest {
        names: Names {
            common_name: Some(agent.as_str().to_owned()),
            uris: vec![agent.uri()],
            ..Names::default()
        },
        // Server auth too: the agent may listen for the server's "check in now".
        usages: vec![
            Usage::ClientAuth,
            Usage::ServerAuth,
            Usage::DigitalSignature,
        ],
        is_ca: false,
        lifetime: enrollment.lifetime,
    };
    let at = jiff::Timestamp::from_second(now).unwrap_or_else(|_| jiff::Timestamp::now());
    let issued = enrollment
        .authority
        .issue_for_csr(&leaf, csr, at)
        .map_err(ApiError::BadCsr)?;
    let lifetime = issued
        .facts
        .not_after
        .duration_since(issued.facts.not_before);
    let renew_after = issued.facts.not_before + lifetime * 2 / 3;
    tracing::info!(agent = agent.as_str(), not_after = %issued.facts.not_after, "issued an agent certificate");
    Ok(Json(EnrollResponse {
        agent_id: agent.as_str().to_owned(),
        certificate: issued.chain_pem,
        ca: enrollment.server_ca.clone(),
        not_after: issued.facts.not_after.to_string(),
        renew_after: renew_after.to_string(),
        issuer_ca: issued.root_pem,
    })
    .into_response())
}

/// The agent of the connection, when it presented an enrolled certificate.
fn identity(peer: Option<Extension<PeerAgent>>) -> Result<AgentId, ApiError> {
    peer.map(|Extension(PeerAgent(agent))| agent)
        .ok_or(ApiError::Unauthenticated)
}

/// `POST /v1/checkin`: facts in (they re-target the computer at once), assignments out.
pub async fn check_in(
    State(shared): State<Shared>,
    peer: Option<Extension<PeerAgent>>,
    client: Option<Extension<crate::server::agent::ClientAddress>>,
    Json(check_in): Json<v1::CheckIn>,
) -> Result<Response, ApiError> {
    let agent = identity(peer)?;
    let routes = shared.routes.borrow().clone();
    let now = shared.now();
    let raw = serde_json::to_vec(&check_in).unwrap_or_default();
    let facts = Facts {
        name: check_in.hostname,
        os_name: check_in.os_name,
        os_version: check_in.os_version,
        tags: check_in.tags,
        ip_addresses: check_in.ip_addresses,
        history: check_in.installed,
    };
    let device = agent.as_str().to_owned();
    let table = routes.clone();
    let notify_address = check_in.notify_address.clone();
    let address = client.map(|Extension(c)| c.0.ip().to_string());
    let (computer, new, offers) = shared
        .db(move |db| {
            // The contact first: the computer as it was before this check-in's facts.
            let (before, current) = db.contact(&device, now)?;
            let computer = db.record_inventory(&device, &facts, &raw, now)?;
            db.set_notify_address(&device, notify_address.as_deref())?;
            db.set_address(&device, address.as_deref())?;
            let (mut offers, mut changes) =
                deployments::prolog(&table.assignments, &computer, &current, now);
            if !table.download.on {
                offers.clear();
                changes.retain(|c| !matches!(c, crate::store::db::Change::Notify { .. }));
            }
            let offers: Vec<_> = offers
                .into_iter()
                .map(|offer| {
                    let how = Offered::of(&offer, &changes);
                    (offer, how)
                })
                .collect();
            db.apply(&device, &changes, now)?;
            Ok((computer, before.last_inventory.is_none(), offers))
        })
        .await?;
    shared.touched();
    fleet_log::answered(Protocol::Native, agent.as_str(), offers.len(), false);
    if new {
        fleet_log::new_computer(Protocol::Native, &computer);
    }
    for (offer, how) in &offers {
        fleet_log::offer(Protocol::Native, &computer, agent.as_str(), offer, *how);
    }
    let assignments = offers
        .into_iter()
        .map(|(offer, _)| v1::Assignment {
            priority: routes
                .packages
                .get(&offer.package_id)
                .map_or(5, |p| p.priority),
            package_id: offer.package_id,
            force: offer.force,
        })
        .collect();
    let d = &routes.download;
    Ok(Json(v1::CheckInResponse {
        assignments,
        pacing: v1::Pacing {
            enabled: d.on,
            frag_latency: d.frag_latency,
            cycle_latency: d.cycle_latency,
            period_latency: d.period_latency,
            period_length: d.period_length,
            timeout_days: d.timeout,
            execution_timeout_seconds: d.execution_timeout * 60,
        },
        check_in_seconds: u64::from(routes.prolog_frequency_hours) * 3600,
    })
    .into_response())
}

/// Refused unless `package_id` is being deployed to `agent`, or was offered to it before a
/// newer version superseded it (so it may read it and report on it).
async fn assigned(shared: &Shared, agent: &AgentId, package_id: &str) -> Result<(), ApiError> {
    let device = agent.as_str().to_owned();
    let wanted = package_id.to_owned();
    // An open deployment of it, or an open offer of a version since superseded (draining).
    let assigned = shared.db(move |db| db.offered(&device, &wanted)).await?;
    if assigned {
        Ok(())
    } else {
        Err(ApiError::NotAssigned(package_id.to_owned()))
    }
}

/// `GET /v1/packages/{id}/manifest`.
pub async fn manifest(
    State(shared): State<Shared>,
    peer: Option<Extension<PeerAgent>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let agent = identity(peer)?;
    assigned(&shared, &agent, &id).await?;
    let Some(route) = shared.routes.borrow().packages.get(&id).cloned() else {
        return Err(ApiError::NotAssigned(id));
    };
    let built = crate::store::fragments::FragmentStore::open(&shared.store)
        .and_then(|s| s.manifest(&id))
        .map_err(ApiError::Store)?;
    let Some(built) = built else {
        return Err(ApiError::NotAssigned(id));
    };
    Ok(Json(v1::Manifest {
        package_id: id,
        priority: route.priority,
        action: route.action,
        format: route.format,
        size: built.size,
        sha256: built.sha256,
        fragments: built
            .fragments
            .iter()
            .map(|f| v1::Fragment {
                size: f.size,
                sha256: f.sha256.clone(),
            })
            .collect(),
        success_exit_codes: route.success_exit_codes,
    })
    .into_response())
}

/// `GET /v1/packages/{id}/fragments/{n}`, with `Range: bytes=<from>-[<to>]` to resume.
pub async fn fragment(
    State(shared): State<Shared>,
    peer: Option<Extension<PeerAgent>>,
    Path((id, n)): Path<(String, u32)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let agent = identity(peer)?;
    assigned(&shared, &agent, &id).await?;
    if !id.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::NotAssigned(id));
    }
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let response =
        crate::server::download::fragment_range(&shared.store, &shared.cache, &id, n, range).await;
    match response.status() {
        StatusCode::NOT_FOUND => shared.metrics.not_found(),
        StatusCode::OK | StatusCode::PARTIAL_CONTENT => {
            let sent = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(0);
            shared
                .metrics
                .served(true, sent, crate::server::metrics::Listener::Https);
        }
        _ => {}
    }
    Ok(response)
}

/// `POST /v1/results`. The agent is who its client certificate says, so the only check
/// left is the one OCS results get too: the package was offered to that agent (its
/// deployment `notified`, `downloading` or `installing`); see `server::ocs::result` for
/// settled and superseded deployments. Never offered: 404 `not_assigned`, nothing stored.
/// Out of bounds (`v1::Report::check`): 400. Past the agent's budget of results: 429.
pub async fn report(
    State(shared): State<Shared>,
    peer: Option<Extension<PeerAgent>>,
    Json(report): Json<v1::Report>,
) -> Result<Response, ApiError> {
    let agent = identity(peer)?;
    if let Err(refusal) = report.check() {
        shared.metrics.unfiled(Unfiled::Invalid);
        tracing::warn!(agent = agent.as_str(), %refusal, "refused a report");
        return Err(ApiError::BadReport(refusal));
    }
    if !shared
        .results
        .allow(agent.as_str(), std::time::Instant::now())
    {
        shared.metrics.unfiled(Unfiled::RateLimited);
        tracing::warn!(agent = agent.as_str(), package = %report.package_id, "too many results from one agent");
        return Err(ApiError::TooManyResults);
    }
    let success_codes = shared
        .routes
        .borrow()
        .packages
        .get(&report.package_id)
        .map_or_else(|| vec![0], |p| p.success_exit_codes.clone());
    let (state, code) = match report.state {
        v1::ReportedState::Downloading => (DeploymentState::Downloading, None),
        v1::ReportedState::Installing => (DeploymentState::Installing, None),
        v1::ReportedState::Done => {
            let code = match (&report.error, report.exit_code) {
                (Some(error), _) => error.clone(),
                (None, Some(n)) => format!("EXIT_CODE_{n}"),
                (None, None) => "SUCCESS".to_owned(),
            };
            (deployments::classify(&code, &success_codes), Some(code))
        }
    };
    let output = report.output_tail().to_owned();
    let now = shared.now();
    let package = report.package_id.clone();
    let (device, filed_code) = (agent.as_str().to_owned(), code.clone());
    let (filed, name) = shared
        .db(move |db| {
            let filed = db.record_result(
                &device,
                &package,
                state,
                filed_code.as_deref(),
                (!output.is_empty()).then_some(output.as_str()),
                now,
            )?;
            let name = match filed {
                Filed::Recorded(_) => db.computer(&device)?.map(|(c, _)| c.name),
                _ => None,
            };
            Ok((filed, name.unwrap_or_default()))
        })
        .await?;
    let Some(unfiled) = Unfiled::of(&filed) else {
        if let Some(code) = &code {
            shared.metrics.result(code);
        }
        shared.touched();
        if let Filed::Recorded(activations) = &filed {
            fleet_log::result(
                Protocol::Native,
                &name,
                agent.as_str(),
                activations,
                &report.package_id,
                code.as_deref(),
                state,
            );
        }
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    shared.metrics.unfiled(unfiled);
    if unfiled.is_refusal() {
        tracing::warn!(agent = agent.as_str(), package = %report.package_id, reason = unfiled.as_str(), "refused a report");
        return Err(ApiError::NotAssigned(report.package_id));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Status, `Retry-After` and body of an error's answer.
    async fn answer(error: ApiError) -> (u16, Option<String>, String) {
        let response = error.into_response();
        let status = response.status().as_u16();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_owned());
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, retry, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn api_errors_answer_with_their_status_code_and_message() {
        assert_eq!(
            answer(ApiError::Unauthenticated).await,
            (
                401,
                None,
                r#"{"error":"client_certificate_required","message":"the native API needs the client certificate this agent received at enrollment"}"#.into()
            )
        );
        assert_eq!(answer(ApiError::Token(TokenRefusal::Expired)).await.0, 403);
        assert!(
            answer(ApiError::Token(TokenRefusal::UsedUp))
                .await
                .2
                .starts_with(r#"{"error":"token_used_up","message":""#)
        );
        assert_eq!(
            answer(ApiError::NotAssigned("17".into())).await,
            (
                404,
                None,
                r#"{"error":"not_assigned","message":"package 17 is not being deployed to this agent"}"#.into()
            )
        );
        let (status, retry, body) = answer(ApiError::TooManyAttempts { seconds: 0 }).await;
        assert_eq!((status, retry.as_deref()), (429, Some("1")));
        assert!(body.contains("retry in 0 s"), "{body}");
        // The server's own failures: logged, and answered without a body.
        let store = ApiError::Store(FragmentError::Io {
            action: "read",
            path: "x".into(),
            source: std::io::Error::other("disk"),
        });
        assert_eq!(answer(store).await, (500, None, String::new()));
    }
}
