//! The `Host` check in front of the admin API: it answers only to names that cannot be a
//! stranger's, against DNS rebinding from a web page in the operator's browser.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

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
    if path == "/healthz" || path == crate::server::webhook::PATH {
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
