//! `POST /hooks/git` on the admin listener: a push notification from a git host makes the git
//! source fetch at once instead of at its next interval.
//!
//! Two signing styles are accepted, both with the secret of `--webhook-secret-file`:
//! GitHub's (and Gitea's, Forgejo's, Bitbucket Server's) `X-Hub-Signature-256:
//! sha256=<hex HMAC-SHA256 of the body>`, and GitLab's `X-Gitlab-Token: <the secret>`. Both
//! comparisons take constant time. A call with neither header gets 401, a wrong signature or
//! token 403; neither fetches. The body is not otherwise read: any signed call means "look
//! now", and fetching a branch that did not move costs one round trip.
//!
//! Refused calls are logged once a minute for each kind of refusal, with the count of those
//! left out (`suppressed=N`): anyone who reaches the listener can send them by the thousand.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use ring::hmac;
use tokio::sync::Notify;

use crate::throttle::{self, Repeats};

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
    /// When each kind of refusal was last logged.
    refusals: Arc<Repeats<Verdict>>,
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
            refusals: Arc::default(),
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    let verdict = hook.verify(&headers, &body);
    let logged = match verdict {
        Verdict::Valid => None,
        refused => match hook.refusals.check(refused, Instant::now()) {
            throttle::Verdict::Log { suppressed } => Some(suppressed),
            throttle::Verdict::Quiet => None,
        },
    };
    match verdict {
        Verdict::Valid => {
            hook.wake.notify_one();
            (StatusCode::ACCEPTED, "fetching\n").into_response()
        }
        Verdict::Wrong => {
            if let Some(suppressed) = logged {
                tracing::warn!(suppressed, "webhook call with a wrong signature refused");
            }
            (StatusCode::FORBIDDEN, "wrong signature\n").into_response()
        }
        Verdict::Unsigned => {
            if let Some(suppressed) = logged {
                tracing::warn!(suppressed, "unsigned webhook call refused");
            }
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

    /// Log lines written while `calls` run.
    #[derive(Clone, Default)]
    struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_flood_of_refused_calls_logs_one_line_per_kind() {
        let out = Captured::default();
        let writer = out.clone();
        let _guard = tracing::subscriber::set_default(
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .finish(),
        );
        let app = app(Hook::new(SECRET, Arc::new(Notify::new())));
        for n in 0..50 {
            let mut request = Request::post(PATH);
            if n % 2 == 0 {
                request = request.header("X-Hub-Signature-256", "sha256=00");
            }
            let response = app
                .clone()
                .oneshot(request.body(Body::from(BODY)).unwrap())
                .await
                .unwrap();
            assert_ne!(response.status(), StatusCode::ACCEPTED);
        }
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(
            text.matches("wrong signature refused suppressed=0").count(),
            1
        );
        assert_eq!(
            text.matches("unsigned webhook call refused suppressed=0")
                .count(),
            1
        );
    }
}
