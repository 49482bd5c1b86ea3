//! `/metrics` in the Prometheus text format, through `prometheus-client`, which escapes
//! label values (`\\`, `"`, line feeds) and never rewrites them: two codes that differ in
//! one character are two series. The agent-facing handlers count on every request, so each
//! counter is an atomic they hold directly; what describes the fleet and the objects is
//! computed at scrape time ([`scrape`]), and `process_*` is read from `/proc` ([`process`]).

mod exported;
pub mod histogram;
mod live;
pub mod process;
pub mod requests;
pub mod scrape;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use exported::EXPORTED;
pub use histogram::Histogram;
use histogram::{BUILD_BYTES, BUILD_SECONDS, PASS_SECONDS};
use live::Live;
pub use live::{Connections, PlainHttp};
pub use requests::{RequestDurations, Timed};
pub use scrape::Scrape;

/// Result codes come from agents: beyond this many distinct ones, the rest count as
/// `other`, so a misbehaving agent cannot grow the metrics without bound.
const MAX_RESULT_CODES: usize = 64;
/// Longest result code kept as a label (longer ones are cut): the OCS reader and the native
/// API already refuse codes past 64 bytes; this bounds the label set's memory regardless.
const MAX_RESULT_CODE_LABEL: usize = 64;

/// Why an agent's result was not filed (see `server::ocs::result`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unfiled {
    /// The package was never offered to that computer (refused).
    NotOffered,
    /// No such computer (refused).
    UnknownDevice,
    /// Past the computer's budget of results (refused, 429).
    RateLimited,
    /// A native report out of bounds (refused).
    Invalid,
    /// Every deployment of the package had settled already (answered 200).
    Settled,
    /// Answers an offer armed again since (answered 200).
    Superseded,
}

impl Unfiled {
    /// Why the store did not file a result, or `None` when it did.
    pub fn of(filed: &crate::store::db::Filed) -> Option<Self> {
        use crate::store::db::Filed;
        match filed {
            Filed::Recorded(_) => None,
            Filed::Settled => Some(Self::Settled),
            Filed::Superseded => Some(Self::Superseded),
            Filed::NotOffered => Some(Self::NotOffered),
            Filed::UnknownDevice => Some(Self::UnknownDevice),
        }
    }

    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [Self; 6] = [
        Self::NotOffered,
        Self::UnknownDevice,
        Self::RateLimited,
        Self::Invalid,
        Self::Settled,
        Self::Superseded,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotOffered => "not_offered",
            Self::UnknownDevice => "unknown_device",
            Self::RateLimited => "rate_limited",
            Self::Invalid => "invalid",
            Self::Settled => "settled",
            Self::Superseded => "superseded",
        }
    }

    /// Whether the agent is told no (a 4xx) rather than answered 200.
    pub fn is_refusal(self) -> bool {
        !matches!(self, Self::Settled | Self::Superseded)
    }
}

/// OCS request kinds counted separately.
pub const QUERIES: [&str; 6] = [
    "PROLOG",
    "INVENTORY",
    "DOWNLOAD",
    "NOTIFY",
    "other",
    "invalid",
];

/// Why a TLS handshake (or the PROXY header before it) failed: the `reason` label of
/// `tessera_tls_handshake_failures_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// Not finished within the handshake timeout.
    Timeout,
    /// A trusted relay's PROXY protocol header was unreadable or refused.
    ProxyHeader,
    /// The client closed the connection mid-handshake (a port scan, a health check).
    Closed,
    /// The client's certificate was refused or missing where one is required.
    ClientCertificate,
    /// The client sent an alert: typically it does not trust the server's certificate.
    Alert,
    /// Anything else TLS refused: no common version or cipher suite, not TLS at all.
    Protocol,
    /// The connection failed below TLS (reset, broken pipe).
    Io,
}

impl HandshakeFailure {
    /// Every reason, in the order `/metrics` lists them.
    pub const ALL: [Self; 7] = [
        Self::Timeout,
        Self::ProxyHeader,
        Self::Closed,
        Self::ClientCertificate,
        Self::Alert,
        Self::Protocol,
        Self::Io,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ProxyHeader => "proxy_header",
            Self::Closed => "closed",
            Self::ClientCertificate => "client_certificate",
            Self::Alert => "alert",
            Self::Protocol => "protocol",
            Self::Io => "io",
        }
    }

    /// Why a handshake that returned `error` failed (tokio-rustls wraps rustls's error in
    /// the `io::Error`).
    pub fn of(error: &std::io::Error) -> Self {
        use std::io::ErrorKind;
        let tls = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        match tls {
            Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
                Self::ClientCertificate
            }
            Some(rustls::Error::AlertReceived(_)) => Self::Alert,
            Some(_) => Self::Protocol,
            None if error.kind() == ErrorKind::UnexpectedEof => Self::Closed,
            None if error.kind() == ErrorKind::InvalidData => Self::Protocol,
            None => Self::Io,
        }
    }
}

/// Every metric the server keeps between scrapes, registered once. The handlers hold each
/// counter directly (a prometheus-client `Counter` is an atomic behind an `Arc`): counting
/// is one atomic add, with no lookup and no lock, except for a result code's first
/// sighting.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: [Counter; QUERIES.len()],
    results: Family<[(&'static str, String); 1], Counter>,
    /// Distinct codes labelled so far (read without the family's lock).
    result_codes: AtomicUsize,
    results_folded: Counter,
    unfiled: [Counter; Unfiled::ALL.len()],
    info_served: Counter,
    fragments_served: Counter,
    /// Bytes sent over HTTPS, then over plain HTTP.
    download_bytes: [Counter; 2],
    not_found: Counter,
    handshake_failures: [Counter; HandshakeFailure::ALL.len()],
    builds: Counter,
    build_seconds: Counter<f64, AtomicU64>,
    build_bytes: Counter,
    build_duration: Histogram,
    build_size: Histogram,
    status_write_failures: Counter,
    /// 1 while the last pass could not write its status files, else 0.
    status_write_failing: Gauge,
    reconcile_duration: Histogram,
    reconcile_errors: Counter,
    /// 1 while this server leads reconcile.
    leader: Gauge,
    /// Request durations per listener and endpoint.
    pub request_durations: RequestDurations,
    /// Open, refused and timed-out connections, per listener.
    pub connections: Arc<Connections>,
    /// OCS agents calling over plain HTTP.
    pub plain_http: Arc<PlainHttp>,
}

impl Default for Metrics {
    // One registration per metric, in the order the page lists them: long, but flat.
    #[allow(clippy::too_many_lines)]
    fn default() -> Self {
        let mut registry = Registry::default();
        let r = &mut registry;
        let requests = labelled(
            r,
            "tessera_ocs_requests",
            "OCS requests by query",
            "query",
            QUERIES.map(lower),
        );
        let results = Family::default();
        r.register(
            "tessera_deployment_results",
            "Results reported by agents, by code",
            results.clone(),
        );
        let results_folded = counter(
            r,
            "tessera_deployment_results_folded",
            "Results counted under code=\"other\" because too many distinct codes were seen",
        );
        let unfiled = labelled(
            r,
            "tessera_deployment_results_unfiled",
            "Results not filed, by reason (refused: not_offered, unknown_device, rate_limited, invalid; answered 200: settled, superseded)",
            "reason",
            Unfiled::ALL.map(Unfiled::as_str),
        );
        let info_served = counter(r, "tessera_info_files_served", "info files served");
        let fragments_served = counter(r, "tessera_fragments_served", "Fragments served");
        let not_found = counter(
            r,
            "tessera_download_not_found",
            "Download requests for files that do not exist",
        );
        let builds = counter(r, "tessera_package_builds", "Packages built");
        let build_seconds = Counter::<f64, AtomicU64>::default();
        r.register(
            "tessera_package_build_seconds",
            "Time spent building packages",
            build_seconds.clone(),
        );
        let build_bytes = counter(r, "tessera_package_build_bytes", "Bytes of archives built");
        let build_duration = histogram(
            r,
            "tessera_package_build_duration_seconds",
            "How long each package build took",
            BUILD_SECONDS,
        );
        let build_size = histogram(
            r,
            "tessera_package_build_size_bytes",
            "Size of each archive built",
            BUILD_BYTES,
        );
        let status_write_failures = counter(
            r,
            "tessera_status_write_failures",
            "Reconcile passes whose status files could not be written (a full disk, say)",
        );
        let status_write_failing = gauge(
            r,
            "tessera_status_write_failing",
            "1 while status files cannot be written",
        );
        let reconcile_duration = histogram(
            r,
            "tessera_reconcile_duration_seconds",
            "How long each reconcile pass took",
            PASS_SECONDS,
        );
        let reconcile_errors = counter(
            r,
            "tessera_reconcile_errors",
            "Reconcile passes that failed as a whole (objects with problems are in tessera_objects)",
        );
        let leader = gauge(
            r,
            "tessera_leader",
            "1 while this server leads reconcile (issues, builds, renews), else 0",
        );
        let download_bytes = labelled(
            r,
            "tessera_download_bytes",
            "Bytes of info files and fragments sent, by listener",
            "listener",
            ["https", "http"],
        );
        let handshake_failures = labelled(
            r,
            "tessera_tls_handshake_failures",
            "TLS handshakes that failed, by reason",
            "reason",
            HandshakeFailure::ALL.map(HandshakeFailure::as_str),
        );
        let request_durations = RequestDurations::default();
        r.register(
            "tessera_http_request_duration_seconds",
            "Time to the response head of each request, by endpoint and listener",
            request_durations.clone(),
        );
        r.register(
            "tessera_build",
            "The running Tessera's version",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("target_os", std::env::consts::OS),
                ("target_arch", std::env::consts::ARCH),
            ]),
        );
        let connections = Arc::new(Connections::default());
        let plain_http = Arc::new(PlainHttp::default());
        registry.register_collector(Box::new(Live {
            connections: connections.clone(),
            plain_http: plain_http.clone(),
        }));
        registry.register_collector(Box::new(process::Process));
        Self {
            registry,
            requests,
            results,
            result_codes: AtomicUsize::new(0),
            results_folded,
            unfiled,
            info_served,
            fragments_served,
            download_bytes,
            not_found,
            handshake_failures,
            builds,
            build_seconds,
            build_bytes,
            build_duration,
            build_size,
            status_write_failures,
            status_write_failing,
            reconcile_duration,
            reconcile_errors,
            leader,
            request_durations,
            connections,
            plain_http,
        }
    }
}

/// Which listener served the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listener {
    Https,
    Http,
}

impl Metrics {
    /// Counts an OCS request of kind `query` (`invalid` for ones that could not be read).
    pub fn request(&self, query: &str) {
        let index = QUERIES
            .iter()
            .position(|q| *q == query)
            .unwrap_or(QUERIES.len() - 2);
        self.requests[index].inc();
    }

    /// Counts a result code filed: the code verbatim (label values are escaped, never
    /// rewritten), cut to a bounded length; past the cap of distinct codes, as `other`.
    pub fn result(&self, code: &str) {
        let mut cut = code.len().min(MAX_RESULT_CODE_LABEL);
        while !code.is_char_boundary(cut) {
            cut -= 1;
        }
        let labels = [("code", code[..cut].to_owned())];
        if let Some(counter) = self.results.get(&labels) {
            counter.inc();
            return;
        }
        // A first sighting: counted against the cap (two racing new codes may both pass
        // the check; the cap is a bound on memory, not an exact figure).
        if self.result_codes.fetch_add(1, Ordering::Relaxed) < MAX_RESULT_CODES {
            self.results.get_or_create(&labels).inc();
        } else {
            self.result_codes.fetch_sub(1, Ordering::Relaxed);
            self.results_folded.inc();
            self.results
                .get_or_create(&[("code", scrape::OTHER.to_owned())])
                .inc();
        }
    }

    /// Counts a result not filed, by reason.
    pub fn unfiled(&self, reason: Unfiled) {
        let index = Unfiled::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.unfiled[index].inc();
    }

    /// Counts a file served: an `info` file or a fragment, with its size.
    pub fn served(&self, fragment: bool, bytes: u64, listener: Listener) {
        if fragment {
            self.fragments_served.inc();
        } else {
            self.info_served.inc();
        }
        let index = match listener {
            Listener::Https => 0,
            Listener::Http => 1,
        };
        self.download_bytes[index].inc_by(bytes);
    }

    /// Counts a download request for something that is not there.
    pub fn not_found(&self) {
        self.not_found.inc();
    }

    /// Counts a failed TLS handshake, by reason.
    pub fn handshake_failed(&self, reason: HandshakeFailure) {
        let index = HandshakeFailure::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        self.handshake_failures[index].inc();
    }

    /// Counts a package build.
    pub fn built(&self, took: std::time::Duration, bytes: u64) {
        self.builds.inc();
        self.build_seconds.inc_by(took.as_secs_f64());
        self.build_bytes.inc_by(bytes);
        self.build_duration.observe(took.as_secs_f64());
        self.build_size.observe(bytes as f64);
    }

    /// Records whether a pass wrote its status files.
    pub fn status_written(&self, ok: bool) {
        if !ok {
            self.status_write_failures.inc();
        }
        self.status_write_failing.set(i64::from(!ok));
    }

    /// Records a reconcile pass: how long it took, and whether it failed as a whole.
    pub fn reconciled(&self, took: std::time::Duration, ok: bool) {
        self.reconcile_duration.observe(took.as_secs_f64());
        if !ok {
            self.reconcile_errors.inc();
        }
    }

    /// Records whether this server leads reconcile.
    pub fn leading(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The Prometheus text exposition of what is kept between scrapes.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_text::encode(&mut out, &self.registry);
        out
    }

    /// The whole `/metrics` page: [`Self::render`], then the gauges computed for this
    /// scrape (fleet, objects, certificates, database health).
    pub fn render_with(&self, scrape: &Scrape<'_>) -> String {
        let mut out = self.render();
        let _ = prometheus_text::encode(&mut out, &scrape::registry(scrape));
        out
    }
}

/// A counter registered under `name` (the encoder adds `_total`).
fn counter(registry: &mut Registry, name: &str, help: &str) -> Counter {
    let counter = Counter::default();
    registry.register(name, help, counter.clone());
    counter
}

fn gauge(registry: &mut Registry, name: &str, help: &str) -> Gauge {
    let gauge = Gauge::default();
    registry.register(name, help, gauge.clone());
    gauge
}

fn histogram(registry: &mut Registry, name: &str, help: &str, bounds: &'static [f64]) -> Histogram {
    let histogram = Histogram::new(bounds);
    registry.register(name, help, histogram.clone());
    histogram
}

/// Counters with one label whose values are all known: each made up front and held, so
/// counting never looks one up.
fn labelled<const N: usize>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    key: &'static str,
    values: [&'static str; N],
) -> [Counter; N] {
    let family = Family::<[(&'static str, &'static str); 1], Counter>::default();
    let counters = values.map(|value| family.get_or_create(&[(key, value)]).clone());
    registry.register(name, help, family);
    counters
}

/// The lower-case spelling of an OCS query, as the `query` label shows it.
fn lower(query: &'static str) -> &'static str {
    match query {
        "PROLOG" => "prolog",
        "INVENTORY" => "inventory",
        "DOWNLOAD" => "download",
        "NOTIFY" => "notify",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_in_the_prometheus_text_format() {
        let metrics = Metrics::default();
        metrics.request("PROLOG");
        metrics.request("PROLOG");
        metrics.request("SNMP");
        metrics.result("SUCCESS_0");
        metrics.result("ERR_\"x\"");
        metrics.served(true, 4096, Listener::Http);
        let text = metrics.render();
        assert!(text.contains("tessera_ocs_requests_total{query=\"prolog\"} 2\n"));
        assert!(text.contains("tessera_ocs_requests_total{query=\"other\"} 1\n"));
        assert!(text.contains("tessera_deployment_results_total{code=\"SUCCESS_0\"} 1\n"));
        assert!(text.contains("tessera_deployment_results_total{code=\"ERR_\\\"x\\\"\"} 1\n"));
        assert!(text.contains("tessera_download_bytes_total{listener=\"http\"} 4096\n"));
        assert!(text.contains("# TYPE tessera_fragments_served_total counter\n"));
    }

    #[test]
    fn result_codes_are_escaped_never_merged_and_cut_to_a_bounded_label() {
        let metrics = Metrics::default();
        metrics.result("ERR-BAD.X");
        metrics.result("ERRBADX");
        metrics.result("A\\B\nC");
        metrics.result(&"E".repeat(8 << 20));
        metrics.unfiled(Unfiled::NotOffered);
        let text = metrics.render();
        assert!(text.contains("code=\"ERR-BAD.X\"} 1\n"), "{text}");
        assert!(text.contains("code=\"ERRBADX\"} 1\n"), "{text}");
        assert!(text.contains("code=\"A\\\\B\\nC\"} 1\n"), "{text}");
        assert!(text.contains(&format!(
            "code=\"{}\"}} 1\n",
            "E".repeat(MAX_RESULT_CODE_LABEL)
        )));
        // The 8 MiB code is cut to a short label: the page stays small.
        assert!(text.len() < 64 << 10, "{}", text.len());
        assert!(
            text.contains("tessera_deployment_results_unfiled_total{reason=\"not_offered\"} 1\n")
        );
    }

    #[test]
    fn codes_that_differ_only_in_punctuation_or_accents_are_distinct_series() {
        let metrics = Metrics::default();
        metrics.result("ERR-BAD.X");
        metrics.result("ERR-BAD.X");
        metrics.result("ERRBADX");
        metrics.result("É");
        let text = metrics.render();
        assert!(
            text.contains("tessera_deployment_results_total{code=\"ERR-BAD.X\"} 2\n"),
            "{text}"
        );
        assert!(text.contains("tessera_deployment_results_total{code=\"ERRBADX\"} 1\n"));
        assert!(text.contains("tessera_deployment_results_total{code=\"É\"} 1\n"));
        assert!(!text.contains("code=\"\""), "{text}");
    }

    #[test]
    fn handshake_failures_are_told_apart_by_reason() {
        let metrics = Metrics::default();
        let refused = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::NoCertificatesPresented,
        );
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        let eof = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        for error in [&refused, &alert, &eof] {
            metrics.handshake_failed(HandshakeFailure::of(error));
        }
        metrics.handshake_failed(HandshakeFailure::Timeout);
        let text = metrics.render();
        for reason in ["client_certificate", "alert", "closed", "timeout"] {
            assert!(
                text.contains(&format!(
                    "tessera_tls_handshake_failures_total{{reason=\"{reason}\"}} 1\n"
                )),
                "{reason}: {text}"
            );
        }
    }

    #[test]
    fn passes_builds_and_leadership_are_measured() {
        let metrics = Metrics::default();
        metrics.reconciled(std::time::Duration::from_millis(20), true);
        metrics.reconciled(std::time::Duration::from_secs(2), false);
        metrics.built(std::time::Duration::from_millis(300), 2048);
        metrics.leading(true);
        let text = metrics.render();
        assert!(
            text.contains("tessera_reconcile_duration_seconds_count 2\n"),
            "{text}"
        );
        assert!(text.contains("tessera_reconcile_errors_total 1\n"));
        assert!(text.contains("tessera_package_build_size_bytes_bucket{le=\"65536\"} 1\n"));
        assert!(text.contains("tessera_package_build_duration_seconds_count 1\n"));
        assert!(text.contains("tessera_leader 1\n"));
        assert!(text.contains("tessera_build_info{version=\""));
    }

    #[test]
    fn the_exported_list_is_what_a_full_page_shows() {
        use crate::server::admin::{
            ConditionReport, ConditionStatus, ConditionType, ObjectKind, ObjectReport, Report,
        };
        let metrics = Metrics::default();
        metrics.result("SUCCESS");
        metrics
            .request_durations
            .observe(Timed::Https, requests::Endpoint::Ocs, 0.01);
        let certificate = |kind| ObjectReport {
            api_version: "tessera.dev/v1alpha1".to_owned(),
            kind,
            namespace: "default".to_owned(),
            name: "x".to_owned(),
            source: None,
            generation: 1,
            observed_generation: Some(1),
            source_revision: String::new(),
            details: serde_json::json!({
                "notAfter": "2027-01-01T00:00:00Z",
                "renewalTime": "2026-09-01T00:00:00Z",
                "crlNextUpdate": "2026-12-08T00:00:00Z",
            })
            .as_object()
            .cloned()
            .unwrap(),
            conditions: vec![ConditionReport {
                type_: ConditionType::Ready,
                status: ConditionStatus::True,
                reason: "Ready".to_owned(),
                message: String::new(),
                last_transition_time: String::new(),
            }],
            problems: Vec::new(),
            spec: None,
            related: Vec::new(),
        };
        let report = Report {
            ready: true,
            objects: vec![
                certificate(ObjectKind::Certificate),
                certificate(ObjectKind::Issuer),
            ],
            ..Report::default()
        };
        let fleet = [crate::store::db::FleetCount {
            activation: "default/app".to_owned(),
            state: crate::store::db::State::Error,
            code: Some("ERR_X".to_owned()),
            computers: 1,
        }];
        let text = metrics.render_with(&Scrape {
            report: &report,
            fleet: Some(&fleet),
            health: &crate::store::db::Health::Writable,
            dropped_events: 0,
        });
        let shown: std::collections::BTreeSet<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        let listed: std::collections::BTreeSet<&str> = EXPORTED.iter().copied().collect();
        assert_eq!(shown, listed, "{text}");
    }

    #[test]
    fn connection_counters_render_per_listener() {
        let metrics = Metrics::default();
        metrics.connections.https.active.store(3, Ordering::Relaxed);
        metrics
            .connections
            .admin
            .refused_per_address
            .store(2, Ordering::Relaxed);
        metrics
            .connections
            .http
            .closed_idle
            .store(5, Ordering::Relaxed);
        let text = metrics.render();
        assert!(text.contains("tessera_connections_active{listener=\"https\"} 3\n"));
        assert!(text.contains(
            "tessera_connections_refused_total{listener=\"admin\",reason=\"per_address\"} 2\n"
        ));
        assert!(text.contains(
            "tessera_connections_timed_out_total{listener=\"http\",reason=\"idle\"} 5\n"
        ));
        assert!(text.contains("# TYPE tessera_connections_active gauge\n"));
    }

    #[test]
    fn computers_on_plain_http_are_counted_until_they_call_over_https() {
        let metrics = Metrics::default();
        let plain = &metrics.plain_http;
        plain.contact("a-2026-01-01-00-00-00", true);
        plain.contact("a-2026-01-01-00-00-00", true);
        plain.contact("b-2026-01-01-00-00-00", true);
        plain.contact("c-2026-01-01-00-00-00", false);
        assert_eq!(plain.computers(), 2);
        plain.contact("a-2026-01-01-00-00-00", false);
        assert_eq!(plain.computers(), 1);
        let text = metrics.render();
        assert!(
            text.contains("tessera_ocs_plain_http_computers 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE tessera_ocs_plain_http_computers gauge\n"));
        assert!(text.contains("tessera_ocs_plain_http_requests_total{outcome=\"served\"} 3\n"));
    }

    #[test]
    fn result_codes_beyond_the_limit_count_as_other() {
        let metrics = Metrics::default();
        for n in 0..MAX_RESULT_CODES + 5 {
            metrics.result(&format!("EXIT_CODE_{n}"));
        }
        let text = metrics.render();
        assert!(text.contains("code=\"other\"} 5\n"));
    }
}
