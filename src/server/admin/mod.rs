//! The admin API: `/healthz`, `/readyz`, and the objects with their conditions and problems
//! as JSON (`/api/v1/objects`, `/api/v1/problems`); deployments (`/api/v1/deployments`,
//! `/api/v1/computers/{id}`), the fleet a page at a time (`/api/v1/computers`), events
//! (`/api/v1/events`) and `/metrics`; and the leader's steering actions (`actions`:
//! suspend, resume, reconcile, renew); who may call them (`auth`: tokens with a role, the
//! console's session, the open loopback); the web console (`console`, `/ui/`) over the same
//! reads.
//!
//! It listens on loopback by default: it tells what is deployed where, which is for
//! operators, not for agents.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::budget::{self, ConnectionBudget, Gate, Stats, Throttle};

mod actions;
mod auth;
mod console;
mod fleet;
mod host;
mod mtls;
mod render;
mod report;
mod routes;
mod wake;

pub use actions::{
    ActionReport, Leader, LeaderView, PASS_WAIT, PassDone, PassQueue, PassTrigger,
    SUSPENDED_DETAIL, Steering, actions_app, pass_channel,
};
pub use auth::{
    AdminAuth, AuthError, AuthMode, Caller, LOGIN_PATH, Role, SESSION_COOKIE, generate_token,
    protect, token_id,
};
pub use console::{CONTENT_SECURITY_POLICY, ConsoleError, console_app};
pub use fleet::{
    FleetComputer, FleetDeployment, FleetPage, FleetQuery, FleetQueryError, fleet_page_of,
    qualified,
};
pub use host::{AdminHosts, host_checked};
pub use mtls::{PeerCaller, ROLE_URI, TlsError, caller_of, server_config};
pub use render::{write_computer_report, write_deployment_table};
pub use report::{
    ConditionReport, ConditionStatus, ConditionType, ObjectKind, ObjectReport, ProblemReport,
    RelatedReport, Relation, Report, STATE_DATABASE, STATUS_WRITTEN, SourceRef,
};
pub use routes::{
    ComputerReport, DeploymentTable, Deployments, app, app_with_database, computer_reports,
    deployment_table_of, deployments_app,
};
pub use routes::{EVENTS_LIMIT, EventFilter, EventList, events_app};
pub use wake::{WakeReport, wake_app};

/// Errors of the admin listener.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("failed to listen on {address} for the admin API")]
    Bind {
        address: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds `address` (port 0 picks a free one).
pub async fn bind(address: SocketAddr) -> Result<TcpListener, AdminError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| AdminError::Bind { address, source })
}

/// Serves `app` on `listener` (over `tls` when given: the handshake within the budget's
/// handshake timeout, a verified client certificate's caller added to each request as a
/// [`PeerCaller`]) within `budget` (its own cap, `admin_connections`, and the same timeouts
/// as the agent-facing listeners) until `shutdown`; counts in `stats`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
    budget: Arc<ConnectionBudget>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> Result<(), AdminError> {
    let gate = Arc::new(Gate::default());
    let throttle = Throttle::default();
    let tracker = tokio_util::task::TaskTracker::new();
    while let Some((stream, peer)) = budget::accept(&listener, "admin", &stats, &shutdown).await {
        let permit = match gate.admit(
            peer.ip(),
            budget.admin_connections,
            budget.max_per_address,
            &stats,
        ) {
            Ok(permit) => permit,
            Err(refusal) => {
                drop(stream);
                if let Some(held) = throttle.allow() {
                    tracing::warn!(listener = "admin", %peer, reason = refusal.as_str(), limit = budget.admin_connections, refused_since_last_warning = held, "connection refused: at the connection limit");
                }
                continue;
            }
        };
        let (app, tls) = (app.clone(), tls.clone());
        let (budget, stats, shutdown) = (budget.clone(), stats.clone(), shutdown.clone());
        tracker.spawn(async move {
            let _permit = permit;
            let Some(tls) = tls else {
                let service = hyper_util::service::TowerToHyperService::new(app);
                budget::serve(stream, service, &budget, &stats, &shutdown, ADMIN_DRAIN).await;
                return;
            };
            // In the connection's own task: one stalled handshake holds up no other client.
            let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
            let Ok(Ok(stream)) = tokio::time::timeout(budget.handshake, accept).await else {
                tracing::debug!(%peer, "admin TLS handshake failed or timed out");
                return;
            };
            let caller = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|der| caller_of(der));
            let app = match caller {
                Some(caller) => app.layer(axum::Extension(PeerCaller(caller))),
                None => app,
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            budget::serve(stream, service, &budget, &stats, &shutdown, ADMIN_DRAIN).await;
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(ADMIN_DRAIN, tracker.wait()).await;
    Ok(())
}

/// Requests in flight at shutdown get this long to finish (a `/metrics` scrape, a status
/// read: well under a second).
const ADMIN_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);
#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use axum::http::StatusCode;
    use tokio::sync::watch;
    use tower::ServiceExt;

    fn report(ready: bool) -> Report {
        Report {
            revision: "abc".into(),
            ready,
            objects: vec![ObjectReport {
                api_version: "tessera.dev/v1alpha1".into(),
                kind: ObjectKind::Package,
                namespace: "default".into(),
                name: "hello".into(),
                source: None,
                generation: 2,
                observed_generation: Some(1),
                source_revision: "abc".into(),
                details: serde_json::Map::new(),
                conditions: vec![],
                problems: vec![ProblemReport {
                    file: Some("p.yaml".into()),
                    line: Some(7),
                    object: Some("Package/hello".into()),
                    field: Some("spec.priority".into()),
                    message: "priority must be between 0 and 10, got 300".into(),
                }],
                spec: None,
                related: vec![],
            }],
            problems: vec![],
            conditions: vec![],
        }
    }

    async fn get(app: Router, uri: &str) -> (StatusCode, String) {
        let response = app
            .oneshot(Request::get(uri).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(bytes.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn readyz_is_503_until_the_first_reconcile() {
        let (tx, rx) = watch::channel(report(false));
        assert_eq!(
            get(app(rx.clone()), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        tx.send_modify(|r| r.ready = true);
        assert_eq!(get(app(rx.clone()), "/readyz").await.0, StatusCode::OK);
        assert_eq!(get(app(rx), "/healthz").await.0, StatusCode::OK);
    }

    #[tokio::test]
    async fn objects_are_listed_filtered_and_found_by_kind_and_name() {
        let (_tx, rx) = watch::channel(report(true));
        let (status, body) = get(app(rx.clone()), "/api/v1/objects?kind=package").await;
        assert_eq!(status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["objects"][0]["observedGeneration"], 1);
        let (_, body) = get(app(rx.clone()), "/api/v1/objects?kind=Server").await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["objects"].as_array().unwrap().len(), 0);
        assert_eq!(
            get(app(rx.clone()), "/api/v1/objects/Package/hello")
                .await
                .0,
            StatusCode::OK
        );
        assert_eq!(
            get(app(rx.clone()), "/api/v1/objects/Package/nope").await.0,
            StatusCode::NOT_FOUND
        );
        let (_, body) = get(app(rx), "/api/v1/problems").await;
        assert!(body.contains("spec.priority"), "{body}");
    }

    /// `GET path` with `Host: host` on the admin routes, the webhook and the check.
    async fn get_as(host: &str, uri: &str, extra: &[&str]) -> StatusCode {
        let (_tx, rx) = watch::channel(report(true));
        let hook =
            crate::server::webhook::Hook::new(b"secret", Arc::new(tokio::sync::Notify::new()));
        let app = host_checked(
            app(rx).merge(crate::server::webhook::app(hook)),
            AdminHosts::new(extra),
        );
        let method = if uri == crate::server::webhook::PATH {
            "POST"
        } else {
            "GET"
        };
        app.oneshot(
            axum::http::Request::builder()
                .method(method)
                .uri(uri)
                .header("host", host)
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap()
        .status()
    }

    #[tokio::test]
    async fn only_loopback_names_ip_addresses_and_configured_names_reach_the_admin_api() {
        const OBJECTS: &str = "/api/v1/objects";
        for host in [
            "localhost:9090",
            "LOCALHOST",
            "console.localhost:9090",
            "127.0.0.1:9090",
            "[::1]:9090",
            "10.1.2.3:9090",
            "10.1.2.3",
        ] {
            assert_eq!(get_as(host, OBJECTS, &[]).await, StatusCode::OK, "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:9090",
            "localhost.evil.example",
            "127.0.0.1.evil.example",
            "[evil.example]",
            "tessera.internal",
        ] {
            assert_eq!(
                get_as(host, OBJECTS, &[]).await,
                StatusCode::MISDIRECTED_REQUEST,
                "{host}"
            );
        }
        let configured = ["Tessera.Internal."];
        assert_eq!(
            get_as("tessera.internal:9090", OBJECTS, &configured).await,
            StatusCode::OK
        );
        assert_eq!(
            get_as("evil.example", "/readyz", &configured).await,
            StatusCode::MISDIRECTED_REQUEST
        );
        // Unknown paths too: the check is not a route's.
        assert_eq!(
            get_as("evil.example", "/nope", &[]).await,
            StatusCode::MISDIRECTED_REQUEST
        );
    }

    #[tokio::test]
    async fn health_and_the_webhook_answer_under_any_name() {
        assert_eq!(
            get_as("evil.example", "/healthz", &[]).await,
            StatusCode::OK
        );
        // The hook's own answer to an unsigned call: it was reached.
        assert_eq!(
            get_as("tessera.example.com", crate::server::webhook::PATH, &[]).await,
            StatusCode::UNAUTHORIZED
        );
    }
}
