//! The native API of Tessera's own agent (`/v1`). Enrollment: a token and a certificate
//! request in, a client certificate out.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::pki::authority::LeafRequest;
use crate::pki::token::Token;
use crate::pki::{Names, Usage};
use crate::protocol::v1::{self, EnrollRequest, EnrollResponse, Problem};
use crate::server::agent::Shared;
use crate::store::db::TokenRefusal;

fn problem(status: StatusCode, error: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(Problem {
            error: error.to_owned(),
            message: message.into(),
        }),
    )
        .into_response()
}

/// `POST /v1/enroll`.
pub async fn enroll(State(shared): State<Shared>, body: axum::body::Bytes) -> Response {
    let Some(enrollment) = shared.routes.borrow().enrollment.clone() else {
        return problem(
            StatusCode::NOT_FOUND,
            "enrollment_disabled",
            "this server does not enroll agents (the Server has no spec.enrollment, or its Issuer is not ready)",
        );
    };
    let request: EnrollRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(error) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("not an enrollment request: {error}"),
            );
        }
    };
    let Some(token) = Token::parse(&request.token) else {
        tracing::warn!(hostname = %request.hostname, "enrollment with a malformed token");
        return problem(
            StatusCode::FORBIDDEN,
            "token_unknown",
            TokenRefusal::Unknown.to_string(),
        );
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
            tracing::error!(%error, "failed to check an enrollment token");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    if let Err(refusal) = used {
        tracing::warn!(token = %token.id, hostname = %request.hostname, %refusal, "enrollment refused");
        let code = match refusal {
            TokenRefusal::Unknown => "token_unknown",
            TokenRefusal::Expired => "token_expired",
            TokenRefusal::UsedUp => "token_used_up",
            TokenRefusal::Revoked => "token_revoked",
        };
        return problem(StatusCode::FORBIDDEN, code, refusal.to_string());
    }
    let agent_id = hex::encode(crate::pki::random_bytes::<16>());
    let leaf = LeafRequest {
        names: Names {
            common_name: Some(agent_id.clone()),
            uris: vec![v1::agent_uri(&agent_id)],
            ..Names::default()
        },
        usages: vec![Usage::ClientAuth, Usage::DigitalSignature],
        is_ca: false,
        lifetime: enrollment.lifetime,
    };
    let at = jiff::Timestamp::from_second(now).unwrap_or_else(|_| jiff::Timestamp::now());
    let issued = match enrollment.authority.issue_for_csr(&leaf, &request.csr, at) {
        Ok(issued) => issued,
        Err(error) => {
            return problem(StatusCode::BAD_REQUEST, "bad_csr", error.to_string());
        }
    };
    let lifetime = issued
        .facts
        .not_after
        .duration_since(issued.facts.not_before);
    let renew_after = issued.facts.not_before + lifetime * 2 / 3;
    tracing::info!(agent = %agent_id, token = %token.id, hostname = %request.hostname, not_after = %issued.facts.not_after, "enrolled an agent");
    Json(EnrollResponse {
        agent_id,
        certificate: issued.chain_pem,
        ca: enrollment.server_ca.clone(),
        not_after: issued.facts.not_after.to_string(),
        renew_after: renew_after.to_string(),
    })
    .into_response()
}
