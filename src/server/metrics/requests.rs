//! Request durations per endpoint and listener: a fixed table of atomic histograms picked by
//! the route that matched, so timing a request takes no lock and the label set stays
//! bounded whatever paths clients send.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;

use super::Metrics;
use super::histogram::{Histogram, REQUEST_SECONDS};

/// The listeners whose requests are timed (`listener` label). Connections a gateway hands
/// over through dial-out are served by the HTTPS routes and counted as `https`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timed {
    Https,
    Http,
    Admin,
}

impl Timed {
    const ALL: [Self; 3] = [Self::Https, Self::Http, Self::Admin];

    fn as_str(self) -> &'static str {
        match self {
            Self::Https => "https",
            Self::Http => "http",
            Self::Admin => "admin",
        }
    }

    /// What a request no route matched is: the OCS endpoint answers any path on the
    /// agent-facing listeners (agents are configured with a server URL of their own).
    fn fallback(self) -> Endpoint {
        match self {
            Self::Https | Self::Http => Endpoint::Ocs,
            Self::Admin => Endpoint::Other,
        }
    }
}

/// The `endpoint` label: what the request was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Ocs,
    Download,
    V1Enroll,
    V1Checkin,
    V1Renew,
    V1Results,
    V1Manifest,
    V1Fragment,
    /// The push channel's long poll: held up to a minute, so kept apart from the
    /// endpoints whose latency means something.
    V1Wait,
    Metrics,
    Api,
    Healthz,
    Readyz,
    Webhook,
    Ui,
    Other,
}

impl Endpoint {
    const ALL: [Self; 16] = [
        Self::Ocs,
        Self::Download,
        Self::V1Enroll,
        Self::V1Checkin,
        Self::V1Renew,
        Self::V1Results,
        Self::V1Manifest,
        Self::V1Fragment,
        Self::V1Wait,
        Self::Metrics,
        Self::Api,
        Self::Healthz,
        Self::Readyz,
        Self::Webhook,
        Self::Ui,
        Self::Other,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Self::Ocs => "ocs",
            Self::Download => "download",
            Self::V1Enroll => "v1_enroll",
            Self::V1Checkin => "v1_checkin",
            Self::V1Renew => "v1_renew",
            Self::V1Results => "v1_results",
            Self::V1Manifest => "v1_manifest",
            Self::V1Fragment => "v1_fragment",
            Self::V1Wait => "v1_wait",
            Self::Metrics => "metrics",
            Self::Api => "api",
            Self::Healthz => "healthz",
            Self::Readyz => "readyz",
            Self::Webhook => "webhook",
            Self::Ui => "ui",
            Self::Other => "other",
        }
    }

    /// The endpoint of a matched route template (`/v1/packages/{id}/manifest`).
    fn of_route(route: &str) -> Self {
        match route {
            "/download/{id}/{file}" => Self::Download,
            "/v1/enroll" => Self::V1Enroll,
            "/v1/checkin" => Self::V1Checkin,
            "/v1/renew" => Self::V1Renew,
            "/v1/results" => Self::V1Results,
            "/v1/packages/{id}/manifest" => Self::V1Manifest,
            "/v1/packages/{id}/fragments/{n}" => Self::V1Fragment,
            crate::protocol::v1::WAIT_PATH => Self::V1Wait,
            "/metrics" => Self::Metrics,
            "/healthz" => Self::Healthz,
            "/readyz" => Self::Readyz,
            r if r.starts_with("/api/") => Self::Api,
            r if r.starts_with("/hooks/") => Self::Webhook,
            r if r == "/ui" || r.starts_with("/ui/") => Self::Ui,
            _ => Self::Other,
        }
    }
}

/// One histogram per listener and endpoint, made up front.
#[derive(Clone, Debug)]
pub struct RequestDurations {
    table: Arc<[[Histogram; Endpoint::ALL.len()]; Timed::ALL.len()]>,
}

impl Default for RequestDurations {
    fn default() -> Self {
        Self {
            table: Arc::new(std::array::from_fn(|_| {
                std::array::from_fn(|_| Histogram::new(REQUEST_SECONDS))
            })),
        }
    }
}

impl RequestDurations {
    /// Records one request's time to its response head.
    pub fn observe(&self, listener: Timed, endpoint: Endpoint, seconds: f64) {
        let row = Timed::ALL.iter().position(|l| *l == listener).unwrap_or(0);
        let column = Endpoint::ALL
            .iter()
            .position(|e| *e == endpoint)
            .unwrap_or(Endpoint::ALL.len() - 1);
        self.table[row][column].observe(seconds);
    }
}

impl EncodeMetric for RequestDurations {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (listener, row) in Timed::ALL.iter().zip(self.table.iter()) {
            for (endpoint, histogram) in Endpoint::ALL.iter().zip(row) {
                // Only the pairs that served something: 45 empty histograms would be noise.
                if histogram.count() == 0 {
                    continue;
                }
                let labels = [
                    ("endpoint", endpoint.as_str()),
                    ("listener", listener.as_str()),
                ];
                histogram.encode(encoder.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// Times the requests of `listener`'s routes: `router.layer(axum::middleware::from_fn_with_state((metrics, listener), timed))`.
pub async fn timed(
    State((metrics, listener)): State<(Arc<Metrics>, Timed)>,
    request: Request,
    next: Next,
) -> Response {
    let endpoint = request
        .extensions()
        .get::<MatchedPath>()
        .map_or(listener.fallback(), |route| {
            Endpoint::of_route(route.as_str())
        });
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .request_durations
        .observe(listener, endpoint, started.elapsed().as_secs_f64());
    response
}

/// `router` with its requests timed as `listener`'s.
pub fn layer(router: axum::Router, metrics: &Arc<Metrics>, listener: Timed) -> axum::Router {
    router.layer(axum::middleware::from_fn_with_state(
        (metrics.clone(), listener),
        timed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_map_onto_a_bounded_set_of_endpoints() {
        assert_eq!(
            Endpoint::of_route("/v1/packages/{id}/fragments/{n}"),
            Endpoint::V1Fragment
        );
        assert_eq!(Endpoint::of_route("/v1/wait"), Endpoint::V1Wait);
        assert_eq!(
            Endpoint::of_route("/api/v1/objects/{kind}/{name}"),
            Endpoint::Api
        );
        assert_eq!(Endpoint::of_route("/hooks/git"), Endpoint::Webhook);
        assert_eq!(Endpoint::of_route("/anything/else"), Endpoint::Other);
        assert_eq!(Timed::Https.fallback(), Endpoint::Ocs);
    }
}
