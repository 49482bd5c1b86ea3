//! `POST /hooks/git` on the admin listener: a push notification from a git host makes the git
//! source fetch at once instead of at its next interval.
//!
//! Two signing styles are accepted, both with the secret of `--webhook-secret-file`:
//! GitHub's (and Gitea's, Forgejo's, Bitbucket Server's) `X-Hub-Signature-256:
//! sha256=<hex HMAC-SHA256 of the body>`, and GitLab's `X-Gitlab-Token: <the secret>`. Both
//! comparisons take constant time. A call with neither header gets 401, a wrong signature or
//! token 403; neither fetches. The body is not otherwise read: any signed call means "look
//! now", and fetching a branch that did not move costs one round trip.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ring::hmac;
use tokio::sync::Notify;

/// The path of the hook.
pub const PATH: &str = "/hooks/git";
/// GitHub caps payloads at 25 MB; a push of thousands of commits stays far below this, and
/// larger bodies are refused before any signature work.
const MAX_BODY: usize = 8 << 20;

/// What the hook needs: the secret, and whom to wake.
#[derive(Clone)]
pub struct Hook {
    key: hmac::Key,
    /// HMAC of the secret itself, to compare GitLab's token in constant time.
    secret_tag: hmac::Tag,
    wake: Arc<Notify>,
}

impl Hook {
    /// A hook checking signatures with `secret`, notifying `wake` on each valid call.
    pub fn new(secret: &[u8], wake: Arc<Notify>) -> Self {
        let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
        let secret_tag = hmac::sign(&key, secret);
        Self {
            key,
            secret_tag,
            wake,
        }
    }

    /// Whether `headers` carry a valid signature of `body`.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Verdict {
        if let Some(signature) = headers.get("x-hub-signature-256") {
            let valid = signature
                .to_str()
                .ok()
                .and_then(|s| s.trim().strip_prefix("sha256="))
                .and_then(|hex_digest| hex::decode(hex_digest).ok())
                .is_some_and(|tag| hmac::verify(&self.key, body, &tag).is_ok());
            return if valid {
                Verdict::Valid
            } else {
                Verdict::Wrong
            };
        }
        if let Some(token) = headers.get("x-gitlab-token") {
            let valid = hmac::verify(&self.key, token.as_bytes(), self.secret_tag.as_ref()).is_ok();
            return if valid {
                Verdict::Valid
            } else {
                Verdict::Wrong
            };
        }
        Verdict::Unsigned
    }
}

/// What a call's signature turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// Signed, but not with our secret.
    Wrong,
    /// Neither header.
    Unsigned,
}

/// The hook's route.
pub fn app(hook: Hook) -> Router {
    Router::new()
        .route(PATH, post(receive))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(hook)
}

async fn receive(State(hook): State<Hook>, headers: HeaderMap, body: Bytes) -> Response {
    match hook.verify(&headers, &body) {
        Verdict::Valid => {
            hook.wake.notify_one();
            (StatusCode::ACCEPTED, "fetching\n").into_response()
        }
        Verdict::Wrong => {
            tracing::warn!("webhook call with a wrong signature refused");
            (StatusCode::FORBIDDEN, "wrong signature\n").into_response()
        }
        Verdict::Unsigned => {
            tracing::warn!("unsigned webhook call refused");
            (
                StatusCode::UNAUTHORIZED,
                "sign the call: X-Hub-Signature-256 or X-Gitlab-Token\n",
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    const SECRET: &[u8] = b"It's a Secret to Everybody";
    const BODY: &[u8] = b"Hello, World!";
    /// GitHub's documented example: this secret and body give this signature
    /// (docs.github.com, "Validating webhook deliveries").
    const GITHUB_EXAMPLE: &str =
        "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";

    async fn call(header: Option<(&str, &str)>, body: &'static [u8]) -> (StatusCode, bool) {
        let wake = Arc::new(Notify::new());
        let mut request = Request::post(PATH);
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let response = app(Hook::new(SECRET, wake.clone()))
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let woken = tokio::time::timeout(std::time::Duration::from_millis(10), wake.notified())
            .await
            .is_ok();
        (response.status(), woken)
    }

    #[tokio::test]
    async fn a_github_signature_wakes_the_source() {
        assert_eq!(
            call(Some(("X-Hub-Signature-256", GITHUB_EXAMPLE)), BODY).await,
            (StatusCode::ACCEPTED, true)
        );
    }

    #[tokio::test]
    async fn a_signature_of_another_body_or_secret_is_refused() {
        assert_eq!(
            call(
                Some(("X-Hub-Signature-256", GITHUB_EXAMPLE)),
                b"Hello, World?"
            )
            .await,
            (StatusCode::FORBIDDEN, false)
        );
        assert_eq!(
            call(Some(("X-Hub-Signature-256", "sha256=zz")), BODY).await,
            (StatusCode::FORBIDDEN, false)
        );
    }

    #[tokio::test]
    async fn a_gitlab_token_must_equal_the_secret() {
        assert_eq!(
            call(Some(("X-Gitlab-Token", "It's a Secret to Everybody")), BODY).await,
            (StatusCode::ACCEPTED, true)
        );
        assert_eq!(
            call(Some(("X-Gitlab-Token", "It's a Secret to Everybod")), BODY).await,
            (StatusCode::FORBIDDEN, false)
        );
    }

    #[tokio::test]
    async fn an_unsigned_call_is_refused() {
        assert_eq!(call(None, BODY).await, (StatusCode::UNAUTHORIZED, false));
    }
}
