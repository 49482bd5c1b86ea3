//! Who may use the admin API, and as whom: bearer tokens with a role (`viewer` reads,
//! `operator` also steers), the console's session cookie carrying the same token, client
//! certificates (`mtls`), and the open loopback of a one-machine setup.
//!
//! Every route goes through [`protect`]'s middleware except the probes (`/healthz`,
//! `/readyz`), the git webhook (its own HMAC check) and the console's login page; it puts a
//! [`Caller`] in the request's extensions for handlers to name in events.
//!
//! Tokens read `tsa_<id>_<secret>`: the shape of enrollment tokens (`pki::token`) under
//! another prefix, so that neither is ever taken for the other. Only the secret's SHA-256 is
//! stored (256 random bits leave nothing to guess, so a fast hash is enough).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::pki::token::Token;
use crate::store::db::Database;

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Read everything the admin API shows.
    Viewer,
    /// Read, and the mutating actions (suspend, resume, reconcile, renew).
    Operator,
}

impl Role {
    /// As stored and written on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = AuthError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "viewer" => Ok(Self::Viewer),
            "operator" => Ok(Self::Operator),
            other => Err(AuthError::Role(other.to_owned())),
        }
    }
}

/// Who made a request, for handlers (a request extension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, or `loopback` for the open loopback listener.
    pub name: String,
    pub role: Role,
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.role.as_str(), self.name)
    }
}

/// How callers prove who they are (`--admin-auth`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// No credentials needed: only on a loopback listener, or with `--admin-insecure`. A
    /// token presented anyway names its holder.
    #[default]
    None,
    /// Every call but the probes and the webhook needs a valid admin token.
    Token,
    /// Every call but the probes and the webhook needs a client certificate from a trusted
    /// CA (see `mtls`); a valid admin token is accepted too.
    Mtls,
}

/// Errors of the admin API's authentication set-up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "refusing to serve the admin API on {address} without authentication: it is not a loopback address, so anyone who reaches it could read the fleet and suspend deployments; pass --admin-auth token (create tokens with `tessera admin-token create --role viewer|operator --name NAME`), bind it to loopback with --admin-address 127.0.0.1:PORT, or accept the risk with --admin-insecure"
    )]
    Unprotected { address: SocketAddr },
    #[error(
        "--admin-auth token needs a state database to keep the tokens in, and this command has none"
    )]
    NoDatabase,
    #[error("{0:?} is not a role (viewer or operator)")]
    Role(String),
}

/// The admin API's authentication, decided once at start.
#[derive(Clone)]
pub struct AdminAuth {
    mode: AuthMode,
    /// Who a request without credentials is, when that is allowed at all.
    open: Option<Caller>,
    db: Option<Arc<Database>>,
    /// The listener speaks TLS: the session cookie is `Secure` and origins are `https://`.
    tls: bool,
    /// `/metrics` answers without credentials (for a Prometheus without a token).
    public_metrics: bool,
}

impl AdminAuth {
    /// The authentication for an admin listener bound to `bound`: `mode` as asked, refused
    /// when that is no authentication on a non-loopback address unless `insecure`. `db`
    /// holds the tokens.
    pub fn new(
        mode: AuthMode,
        bound: SocketAddr,
        insecure: bool,
        db: Option<Arc<Database>>,
    ) -> Result<Self, AuthError> {
        let open = match mode {
            AuthMode::Token if db.is_none() => return Err(AuthError::NoDatabase),
            AuthMode::Token | AuthMode::Mtls => None,
            AuthMode::None if bound.ip().is_loopback() => Some(Caller {
                name: "loopback".into(),
                role: Role::Operator,
            }),
            AuthMode::None if insecure => Some(Caller {
                name: "anonymous".into(),
                role: Role::Operator,
            }),
            AuthMode::None => return Err(AuthError::Unprotected { address: bound }),
        };
        Ok(Self {
            mode,
            open,
            db,
            tls: false,
            public_metrics: false,
        })
    }

    /// The listener speaks TLS: the session cookie is `Secure`, origins `https://`.
    pub fn with_tls(mut self, tls: bool) -> Self {
        self.tls = tls;
        self
    }

    /// Leaves `/metrics` open to callers without credentials.
    pub fn with_public_metrics(mut self, public: bool) -> Self {
        self.public_metrics = public;
        self
    }

    /// The mode asked for.
    pub fn mode(&self) -> AuthMode {
        self.mode
    }

    /// The caller `token` proves, if it is a valid, unrevoked admin token.
    async fn verify(&self, token: &str) -> Option<Caller> {
        let token = parse(token)?;
        let db = self.db.clone()?;
        let now = jiff::Timestamp::now().as_second();
        tokio::task::spawn_blocking(move || {
            let record = db.admin_token(&token.id).ok()??;
            if record.revoked_at.is_some() || !token.matches(&record.secret_sha256) {
                return None;
            }
            let role = record.role.parse().ok()?;
            if record.last_used_at.is_none_or(|at| now - at >= TOUCH_EVERY) {
                // Losing a "last used" time is no reason to refuse the call.
                let _ = db.touch_admin_token(&record.id, now);
            }
            Some(Caller {
                name: record.name,
                role,
            })
        })
        .await
        .ok()?
    }
}

/// A token's last use is written at most this often (seconds): `tessera admin-token list`
/// tells a token in use from a forgotten one, and a busy console costs no write per call.
const TOUCH_EVERY: i64 = 60;

/// The prefix of admin tokens (enrollment tokens have `tsr_`).
const PREFIX: &str = "tsa_";

/// A new admin token: `(id, whole token to show once, secret's SHA-256 to store)`.
pub fn generate_token() -> (String, String, String) {
    let token = Token::generate();
    let whole = token.reveal().replacen("tsr_", PREFIX, 1);
    (token.id.clone(), whole, token.secret_sha256())
}

/// Reads an admin token; `None` when it does not have the shape.
fn parse(text: &str) -> Option<Token> {
    Token::parse(&format!("tsr_{}", text.trim().strip_prefix(PREFIX)?))
}

/// The id of an admin token given whole or as its id.
pub fn token_id(text: &str) -> String {
    text.trim()
        .trim_start_matches(PREFIX)
        .split('_')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
}

/// The console's session cookie: the admin token itself, `HttpOnly` so that no script reads
/// it, `SameSite=Strict` so that no other site sends it.
pub const SESSION_COOKIE: &str = "tessera_session";

/// Where the console's login page is.
pub const LOGIN_PATH: &str = "/ui/login";
const LOGOUT_PATH: &str = "/ui/logout";

/// The login page's Content-Security-Policy: nothing but its own stylesheet and form.
const LOGIN_CSP: &str = "default-src 'none'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// `app` behind the authentication middleware, with the console's login and logout routes.
pub fn protect(app: Router, auth: AdminAuth) -> Router {
    let auth = Arc::new(auth);
    let login = Router::new()
        .route(LOGIN_PATH, get(login_page).post(login))
        .route(LOGOUT_PATH, axum::routing::post(logout))
        .with_state(auth.clone());
    app.merge(login)
        .layer(axum::middleware::from_fn_with_state(auth, check))
}

/// Paths that answer without credentials.
fn is_open(path: &str, auth: &AdminAuth) -> bool {
    matches!(path, "/healthz" | "/readyz" | LOGIN_PATH | LOGOUT_PATH)
        || path == crate::server::webhook::PATH
        || (auth.public_metrics && path == "/metrics")
}

/// How a request was authenticated, which decides how a mutating request is checked for
/// cross-site forgery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Presented {
    /// A bearer token: no other site's page can make a browser send it.
    Bearer,
    /// The console's session: it must come from the same origin, proven by the browser.
    Cookie,
    /// A client certificate or the open loopback, which a browser also brings along to
    /// another site's request: refused when the browser says it is cross-site (the CLI
    /// and curl send no `Origin`).
    Ambient,
}

async fn check(State(auth): State<Arc<AdminAuth>>, mut request: Request, next: Next) -> Response {
    if is_open(request.uri().path(), &auth) {
        return next.run(request).await;
    }
    let headers = request.headers();
    let presented = bearer(headers)
        .map(|t| (Presented::Bearer, t))
        .or_else(|| cookie(headers).map(|t| (Presented::Cookie, t)));
    let caller = match presented {
        Some((how, token)) => match auth.verify(&token).await {
            Some(caller) => Some((how, caller)),
            None => return unauthenticated(&request, "the admin token is unknown or revoked"),
        },
        None => request
            .extensions()
            .get::<super::mtls::PeerCaller>()
            .map(|peer| peer.0.clone())
            .or_else(|| auth.open.clone())
            .map(|caller| (Presented::Ambient, caller)),
    };
    let Some((how, caller)) = caller else {
        return unauthenticated(&request, "the admin API needs a token");
    };
    let mutating = !matches!(
        *request.method(),
        Method::GET | Method::HEAD | Method::OPTIONS
    );
    let forged = match how {
        Presented::Bearer => false,
        Presented::Cookie => !same_origin(request.headers(), auth.tls),
        Presented::Ambient => cross_site(request.headers(), auth.tls),
    };
    if mutating && forged {
        return refuse(
            StatusCode::FORBIDDEN,
            "a cross-site request is refused (the console's actions come from its own pages)",
        );
    }
    if mutating && caller.role != Role::Operator {
        return refuse(
            StatusCode::FORBIDDEN,
            &format!("{caller} may only read: this action needs a token with the operator role"),
        );
    }
    request.extensions_mut().insert(caller);
    next.run(request).await
}

/// `Authorization: Bearer TOKEN`.
fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
}

/// The session cookie's value.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

/// Whether a request comes from a page of this same origin: its `Origin` is our own
/// scheme and `Host`, or the browser says `Sec-Fetch-Site: same-origin`.
fn same_origin(headers: &HeaderMap, tls: bool) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    text("sec-fetch-site") == Some("same-origin") || own_origin(headers, tls)
}

/// Whether a browser says the request comes from another site: a `Sec-Fetch-Site` other
/// than `same-origin` or `none` (typed by the user), or an `Origin` that is not ours.
fn cross_site(headers: &HeaderMap, tls: bool) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let fetch_site =
        text("sec-fetch-site").is_some_and(|site| site != "same-origin" && site != "none");
    let origin = text(header::ORIGIN.as_str()).is_some() && !own_origin(headers, tls);
    fetch_site || origin
}

/// Whether the `Origin` header is our own scheme and `Host`.
fn own_origin(headers: &HeaderMap, tls: bool) -> bool {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let scheme = if tls { "https" } else { "http" };
    match (text(header::ORIGIN.as_str()), text(header::HOST.as_str())) {
        (Some(origin), Some(host)) => origin.eq_ignore_ascii_case(&format!("{scheme}://{host}")),
        _ => false,
    }
}

/// No (valid) credentials: a console page sends the browser to the login page; the API
/// answers 401 with a JSON error.
fn unauthenticated(request: &Request, why: &str) -> Response {
    let wants_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if request.method() == Method::GET && request.uri().path().starts_with("/ui/") && wants_html {
        return (StatusCode::SEE_OTHER, [(header::LOCATION, LOGIN_PATH)]).into_response();
    }
    let mut response = refuse(
        StatusCode::UNAUTHORIZED,
        &format!("{why} (Authorization: Bearer, from `tessera admin-token create`)"),
    );
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"tessera admin\""),
    );
    response
}

/// A refusal as JSON `{"error": "..."}` (what the CLI prints).
fn refuse(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
}

/// `GET /ui/login`.
async fn login_page() -> Response {
    page(StatusCode::OK, "")
}

/// The login form, with a line saying what went wrong, if anything.
fn page(status: StatusCode, problem: &str) -> Response {
    let problem = if problem.is_empty() {
        String::new()
    } else {
        format!("<p role=\"alert\">{problem}</p>\n")
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>Tessera: sign in</title></head>\n<body><h1>Tessera</h1>\n{problem}<form method=\"post\" action=\"{LOGIN_PATH}\">\n<label>Admin token <input type=\"password\" name=\"token\" autocomplete=\"current-password\" required></label>\n<button type=\"submit\">Sign in</button>\n</form></body></html>\n"
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, LOGIN_CSP),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The login form's field.
#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /ui/login`: a valid token becomes the session cookie.
async fn login(
    State(auth): State<Arc<AdminAuth>>,
    headers: HeaderMap,
    axum::Form(form): axum::Form<LoginForm>,
) -> Response {
    // Another site's page must not sign the browser in with the attacker's token.
    if cross_site(&headers, auth.tls) {
        return page(StatusCode::FORBIDDEN, "Sign in from this page.");
    }
    let token = form.token.trim();
    if auth.verify(token).await.is_none() {
        return page(
            StatusCode::UNAUTHORIZED,
            "That token is unknown or revoked.",
        );
    }
    let cookie = format!(
        "{SESSION_COOKIE}={token}; HttpOnly; SameSite=Strict; Path=/{}",
        if auth.tls { "; Secure" } else { "" }
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, "/ui/".to_owned()),
        ],
    )
        .into_response()
}

/// `POST /ui/logout`: the session cookie is cleared.
async fn logout(State(auth): State<Arc<AdminAuth>>) -> Response {
    let cookie = format!(
        "{SESSION_COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
        if auth.tls { "; Secure" } else { "" }
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::SET_COOKIE, cookie),
            (header::LOCATION, LOGIN_PATH.to_owned()),
        ],
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use tower::ServiceExt;

    /// A database with one viewer and one operator token; their whole tokens.
    fn tokens() -> (Arc<Database>, String, String) {
        let db = Arc::new(Database::in_memory().unwrap());
        let mut made = Vec::new();
        for (name, role) in [("vera", Role::Viewer), ("otto", Role::Operator)] {
            let (id, whole, hash) = generate_token();
            db.create_admin_token(&crate::store::db::AdminTokenRecord {
                id,
                secret_sha256: hash,
                name: name.into(),
                role: role.as_str().into(),
                created_at: 0,
                last_used_at: None,
                revoked_at: None,
            })
            .unwrap();
            made.push(whole);
        }
        let operator = made.pop().unwrap();
        (db, made.pop().unwrap(), operator)
    }

    /// Routes that echo the caller.
    fn app(auth: AdminAuth) -> Router {
        let who = |caller: axum::Extension<Caller>| async move { caller.0.to_string() };
        protect(
            Router::new()
                .route("/healthz", get(|| async { "ok" }))
                .route("/readyz", get(|| async { "ok" }))
                .route(crate::server::webhook::PATH, post(|| async { "hook" }))
                .route("/api/v1/objects", get(who))
                .route("/ui/", get(who))
                .route("/api/v1/reconcile", post(who)),
            auth,
        )
    }

    fn token_auth(db: &Arc<Database>) -> AdminAuth {
        AdminAuth::new(
            AuthMode::Token,
            "0.0.0.0:9090".parse().unwrap(),
            false,
            Some(db.clone()),
        )
        .unwrap()
    }

    async fn call(
        app: &Router,
        method: &str,
        uri: &str,
        headers: &[(&str, &str)],
    ) -> (StatusCode, HeaderMap, String) {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = app
            .clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .unwrap();
        (status, headers, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn without_credentials_the_api_is_401_and_the_probes_and_webhook_answer() {
        let (db, _, _) = tokens();
        let app = app(token_auth(&db));
        let (status, headers, body) = call(&app, "GET", "/api/v1/objects", &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(
            headers[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("Bearer"), "{body}");
        for path in ["/healthz", "/readyz"] {
            assert_eq!(
                call(&app, "GET", path, &[]).await.0,
                StatusCode::OK,
                "{path}"
            );
        }
        let hook = call(&app, "POST", crate::server::webhook::PATH, &[]).await;
        assert_eq!(hook.0, StatusCode::OK);
        let wrong = call(
            &app,
            "GET",
            "/api/v1/objects",
            &[("authorization", "Bearer tsa_0123456789ab_nope")],
        )
        .await;
        assert_eq!(wrong.0, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn a_viewer_reads_but_may_not_act_and_an_operator_may() {
        let (db, viewer, operator) = tokens();
        let app = app(token_auth(&db));
        let as_viewer = format!("Bearer {viewer}");
        let read = call(
            &app,
            "GET",
            "/api/v1/objects",
            &[("authorization", &as_viewer)],
        )
        .await;
        assert_eq!((read.0, read.2.as_str()), (StatusCode::OK, "viewer vera"));
        let act = call(
            &app,
            "POST",
            "/api/v1/reconcile",
            &[("authorization", &as_viewer)],
        )
        .await;
        assert_eq!(act.0, StatusCode::FORBIDDEN);
        let as_operator = format!("Bearer {operator}");
        let act = call(
            &app,
            "POST",
            "/api/v1/reconcile",
            &[("authorization", &as_operator)],
        )
        .await;
        assert_eq!((act.0, act.2.as_str()), (StatusCode::OK, "operator otto"));
    }

    #[tokio::test]
    async fn a_revoked_token_is_refused() {
        let (db, _, operator) = tokens();
        let app = app(token_auth(&db));
        assert!(db.revoke_admin_token(&token_id(&operator), 1).unwrap());
        let auth = format!("Bearer {operator}");
        let answer = call(&app, "GET", "/api/v1/objects", &[("authorization", &auth)]).await;
        assert_eq!(answer.0, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn the_session_cookie_acts_only_from_the_same_origin() {
        let (db, _, operator) = tokens();
        let app = app(token_auth(&db));
        let cookie = format!("{SESSION_COOKIE}={operator}");
        let read = call(&app, "GET", "/ui/", &[("cookie", &cookie)]).await;
        assert_eq!(read.0, StatusCode::OK);
        let base = [("cookie", cookie.as_str()), ("host", "127.0.0.1:9090")];
        let cross = [&base[..], &[("origin", "http://evil.example")]].concat();
        assert_eq!(
            call(&app, "POST", "/api/v1/reconcile", &cross).await.0,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            call(&app, "POST", "/api/v1/reconcile", &base).await.0,
            StatusCode::FORBIDDEN,
            "no Origin at all"
        );
        let same = [&base[..], &[("origin", "http://127.0.0.1:9090")]].concat();
        let answer = call(&app, "POST", "/api/v1/reconcile", &same).await;
        assert_eq!(
            (answer.0, answer.2.as_str()),
            (StatusCode::OK, "operator otto")
        );
        let fetch = [&base[..], &[("sec-fetch-site", "same-origin")]].concat();
        assert_eq!(
            call(&app, "POST", "/api/v1/reconcile", &fetch).await.0,
            StatusCode::OK
        );
    }

    #[tokio::test]
    async fn a_console_page_without_a_session_goes_to_the_login_page() {
        let (db, _, operator) = tokens();
        let app = app(token_auth(&db));
        let page = call(&app, "GET", "/ui/", &[("accept", "text/html")]).await;
        assert_eq!(page.0, StatusCode::SEE_OTHER);
        assert_eq!(page.1[header::LOCATION], LOGIN_PATH);
        let login = call(&app, "GET", LOGIN_PATH, &[]).await;
        assert_eq!(login.0, StatusCode::OK);
        assert_eq!(login.1[header::CONTENT_SECURITY_POLICY], LOGIN_CSP);
        let form = app
            .clone()
            .oneshot(
                Request::post(LOGIN_PATH)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Body::from(format!("token={operator}")))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(form.status(), StatusCode::SEE_OTHER);
        let set = form.headers()[header::SET_COOKIE].to_str().unwrap();
        assert!(
            set.starts_with(&format!("{SESSION_COOKIE}={operator};")),
            "{set}"
        );
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        let bad = app
            .clone()
            .oneshot(
                Request::post(LOGIN_PATH)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(Body::from("token=tsa_nope"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);
        let forged = app
            .oneshot(
                Request::post(LOGIN_PATH)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .header("host", "127.0.0.1:9090")
                    .header("origin", "http://evil.example")
                    .body(Body::from(format!("token={operator}")))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::FORBIDDEN, "login CSRF");
        assert!(!forged.headers().contains_key(header::SET_COOKIE));
    }

    #[tokio::test]
    async fn loopback_is_open_only_when_the_listener_is_bound_to_loopback() {
        let (db, viewer, _) = tokens();
        let open = AdminAuth::new(
            AuthMode::None,
            "127.0.0.1:9090".parse().unwrap(),
            false,
            Some(db.clone()),
        )
        .unwrap();
        let app = app(open);
        let answer = call(&app, "POST", "/api/v1/reconcile", &[]).await;
        assert_eq!(
            (answer.0, answer.2.as_str()),
            (StatusCode::OK, "operator loopback")
        );
        // A page of another site cannot steer through the open loopback.
        let forged = [
            ("host", "127.0.0.1:9090"),
            ("origin", "http://evil.example"),
        ];
        assert_eq!(
            call(&app, "POST", "/api/v1/reconcile", &forged).await.0,
            StatusCode::FORBIDDEN
        );
        let fetched = [("sec-fetch-site", "cross-site")];
        assert_eq!(
            call(&app, "POST", "/api/v1/reconcile", &fetched).await.0,
            StatusCode::FORBIDDEN
        );
        let own = [
            ("host", "127.0.0.1:9090"),
            ("origin", "http://127.0.0.1:9090"),
        ];
        assert_eq!(
            call(&app, "POST", "/api/v1/reconcile", &own).await.0,
            StatusCode::OK
        );
        let as_viewer = format!("Bearer {viewer}");
        let named = call(
            &app,
            "GET",
            "/api/v1/objects",
            &[("authorization", &as_viewer)],
        )
        .await;
        assert_eq!(named.2, "viewer vera", "a token presented names its holder");
        let refused = AdminAuth::new(
            AuthMode::None,
            "0.0.0.0:9090".parse().unwrap(),
            false,
            Some(db),
        )
        .err()
        .unwrap();
        let message = refused.to_string();
        for flag in ["--admin-auth token", "--admin-insecure", "--admin-address"] {
            assert!(message.contains(flag), "{message}");
        }
        assert!(
            AdminAuth::new(AuthMode::None, "0.0.0.0:9090".parse().unwrap(), true, None).is_ok()
        );
    }
}
