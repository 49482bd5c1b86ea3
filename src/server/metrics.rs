//! Counters for `/metrics`, in the Prometheus text format. Plain atomics: the agent-facing
//! handlers bump them on every request, so they must cost nothing.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::budget::Stats;

/// Result codes come from agents: beyond this many distinct ones, the rest count as
/// `other`, so a misbehaving agent cannot grow the metrics without bound.
const MAX_RESULT_CODES: usize = 64;
/// Longest result code kept as a label (longer ones are cut): the OCS reader and the native
/// API already refuse codes past 64 bytes; this bounds the label set's memory regardless.
const MAX_RESULT_CODE_LABEL: usize = 64;

/// Most computers tracked as last seen over plain HTTP. Device ids come unauthenticated
/// over plain HTTP, so anyone can make them up: the set stays bounded (at about 100 bytes
/// an entry, some 6 MiB), and a fleet larger than this still on HTTP reads as this many.
const MAX_PLAIN_HTTP_COMPUTERS: usize = 65_536;
/// Most computers remembered as already logged for a refused plain-HTTP call; past it the
/// memory starts afresh, so a computer is logged again at most once per this many others.
const MAX_PLAIN_HTTP_LOGGED: usize = 65_536;

/// What the server keeps about OCS agents calling over plain HTTP: which computers' last
/// contact came that way (while `spec.ocs.plainHttp` allows it), and which were already
/// logged for a refused call (while it does not). Both since the process started.
#[derive(Debug, Default)]
pub struct PlainHttp {
    /// Device ids whose last OCS contact came over plain HTTP.
    on_http: Mutex<HashSet<String>>,
    /// Their number, read without the lock.
    computers: AtomicU64,
    /// Computers (device ids, else addresses) already logged for a refused call.
    logged: Mutex<HashSet<String>>,
    served: AtomicU64,
    refused: AtomicU64,
}

impl PlainHttp {
    /// Records an OCS contact of `device`, over plain HTTP or not.
    pub fn contact(&self, device: &str, plain: bool) {
        if plain {
            self.served.fetch_add(1, Ordering::Relaxed);
        } else if self.computers.load(Ordering::Relaxed) == 0 {
            // HTTPS with nobody on HTTP: the usual case costs no lock.
            return;
        }
        let mut on_http = self
            .on_http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !plain {
            on_http.remove(device);
        } else if on_http.len() < MAX_PLAIN_HTTP_COMPUTERS && !on_http.contains(device) {
            on_http.insert(device.to_owned());
        }
        self.computers
            .store(on_http.len() as u64, Ordering::Relaxed);
    }

    /// Counts a refused plain-HTTP call from `computer`; true the first time it is seen,
    /// when the call is worth a log line.
    pub fn refused(&self, computer: &str) -> bool {
        self.refused.fetch_add(1, Ordering::Relaxed);
        let mut logged = self
            .logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if logged.contains(computer) {
            return false;
        }
        if logged.len() >= MAX_PLAIN_HTTP_LOGGED {
            logged.clear();
        }
        logged.insert(computer.to_owned());
        true
    }

    /// Distinct computers whose last OCS contact came over plain HTTP.
    pub fn computers(&self) -> u64 {
        self.computers.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP tessera_ocs_plain_http_computers Computers whose last OCS contact came over plain HTTP (spec.ocs.plainHttp), since the server started.\n# TYPE tessera_ocs_plain_http_computers gauge\ntessera_ocs_plain_http_computers {}",
            self.computers()
        );
        header(
            out,
            "tessera_ocs_plain_http_requests_total",
            "OCS requests over plain HTTP, by outcome (served: spec.ocs.plainHttp allows it; refused: answered 403 with the HTTPS address).",
        );
        for (outcome, counter) in [("served", &self.served), ("refused", &self.refused)] {
            let _ = writeln!(
                out,
                "tessera_ocs_plain_http_requests_total{{outcome=\"{outcome}\"}} {}",
                counter.load(Ordering::Relaxed)
            );
        }
    }
}

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

/// Every counter the server keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: [AtomicU64; QUERIES.len()],
    results: Mutex<BTreeMap<String, u64>>,
    unfiled: [AtomicU64; Unfiled::ALL.len()],
    info_served: AtomicU64,
    fragments_served: AtomicU64,
    bytes_https: AtomicU64,
    bytes_http: AtomicU64,
    not_found: AtomicU64,
    handshake_failures: AtomicU64,
    handshake_timeouts: AtomicU64,
    builds: AtomicU64,
    build_millis: AtomicU64,
    build_bytes: AtomicU64,
    status_write_failures: AtomicU64,
    /// 1 while the last pass could not write its status files, else 0.
    status_write_failing: AtomicU64,
    /// Open, refused and timed-out connections, per listener.
    pub connections: Connections,
    /// OCS agents calling over plain HTTP.
    pub plain_http: PlainHttp,
}

/// Connection counters of each listener (see `budget::Stats`).
#[derive(Debug, Default)]
pub struct Connections {
    pub https: Arc<Stats>,
    pub http: Arc<Stats>,
    /// Agents' connections handed over by a gateway through dial-out.
    pub dial_out: Arc<Stats>,
    pub admin: Arc<Stats>,
}

impl Connections {
    fn each(&self) -> [(&'static str, &Stats); 4] {
        [
            ("https", &self.https),
            ("http", &self.http),
            ("dial_out", &self.dial_out),
            ("admin", &self.admin),
        ]
    }

    /// The Prometheus text of the connection counters.
    fn render(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP tessera_connections_active Connections open now, by listener.\n# TYPE tessera_connections_active gauge"
        );
        for (listener, stats) in self.each() {
            let _ = writeln!(
                out,
                "tessera_connections_active{{listener=\"{listener}\"}} {}",
                load(&stats.active)
            );
        }
        header(
            out,
            "tessera_connections_refused_total",
            "Connections refused at accept, by listener and cap (limit: the total, per_address: one client's share).",
        );
        for (listener, stats) in self.each() {
            for (reason, counter) in [
                ("limit", &stats.refused_total),
                ("per_address", &stats.refused_per_address),
            ] {
                let _ = writeln!(
                    out,
                    "tessera_connections_refused_total{{listener=\"{listener}\",reason=\"{reason}\"}} {}",
                    load(counter)
                );
            }
        }
        header(
            out,
            "tessera_connections_timed_out_total",
            "Connections closed by the server, by listener and phase (idle: no request in time; stalled: a request stopped moving bytes).",
        );
        for (listener, stats) in self.each() {
            for (reason, counter) in [
                ("idle", &stats.closed_idle),
                ("stalled", &stats.closed_stalled),
            ] {
                let _ = writeln!(
                    out,
                    "tessera_connections_timed_out_total{{listener=\"{listener}\",reason=\"{reason}\"}} {}",
                    load(counter)
                );
            }
        }
        header(
            out,
            "tessera_accept_errors_total",
            "Failed accepts (out of file descriptors and the like), by listener.",
        );
        for (listener, stats) in self.each() {
            let _ = writeln!(
                out,
                "tessera_accept_errors_total{{listener=\"{listener}\"}} {}",
                load(&stats.accept_errors)
            );
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
        self.requests[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a result code filed.
    pub fn result(&self, code: &str) {
        let mut cut = code.len().min(MAX_RESULT_CODE_LABEL);
        while !code.is_char_boundary(cut) {
            cut -= 1;
        }
        let code = &code[..cut];
        let mut results = self
            .results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let known = results.contains_key(code) || results.len() < MAX_RESULT_CODES;
        *results
            .entry(if known { code } else { "other" }.to_owned())
            .or_default() += 1;
    }

    /// Counts a result not filed, by reason.
    pub fn unfiled(&self, reason: Unfiled) {
        let index = Unfiled::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.unfiled[index].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a file served: an `info` file or a fragment, with its size.
    pub fn served(&self, fragment: bool, bytes: u64, listener: Listener) {
        if fragment {
            self.fragments_served.fetch_add(1, Ordering::Relaxed);
        } else {
            self.info_served.fetch_add(1, Ordering::Relaxed);
        }
        match listener {
            Listener::Https => self.bytes_https.fetch_add(bytes, Ordering::Relaxed),
            Listener::Http => self.bytes_http.fetch_add(bytes, Ordering::Relaxed),
        };
    }

    /// Counts a download request for something that is not there.
    pub fn not_found(&self) {
        self.not_found.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a failed or timed-out TLS handshake.
    pub fn handshake_failed(&self, timed_out: bool) {
        if timed_out {
            self.handshake_timeouts.fetch_add(1, Ordering::Relaxed);
        } else {
            self.handshake_failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a package build.
    pub fn built(&self, took: std::time::Duration, bytes: u64) {
        self.builds.fetch_add(1, Ordering::Relaxed);
        self.build_millis.fetch_add(
            u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        self.build_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Records whether a pass wrote its status files.
    pub fn status_written(&self, ok: bool) {
        if !ok {
            self.status_write_failures.fetch_add(1, Ordering::Relaxed);
        }
        self.status_write_failing
            .store(u64::from(!ok), Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_by_label(&mut out);
        self.render_totals(&mut out);
        self.plain_http.render(&mut out);
        self.connections.render(&mut out);
        out
    }

    /// The counters with a label: OCS requests by query, results by code, unfiled
    /// results by reason.
    fn render_by_label(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        header(out, "tessera_ocs_requests_total", "OCS requests by query.");
        for (query, counter) in QUERIES.iter().zip(&self.requests) {
            let _ = writeln!(
                out,
                "tessera_ocs_requests_total{{query=\"{}\"}} {}",
                query.to_ascii_lowercase(),
                load(counter)
            );
        }
        header(
            out,
            "tessera_deployment_results_total",
            "Results reported by agents, by code.",
        );
        for (code, count) in self
            .results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            let _ = writeln!(
                out,
                "tessera_deployment_results_total{{code=\"{}\"}} {count}",
                label_value(code)
            );
        }
        header(
            out,
            "tessera_deployment_results_unfiled_total",
            "Results not filed, by reason (refused: not_offered, unknown_device, rate_limited, invalid; answered 200: settled, superseded).",
        );
        for (reason, counter) in Unfiled::ALL.iter().zip(&self.unfiled) {
            let _ = writeln!(
                out,
                "tessera_deployment_results_unfiled_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                load(counter)
            );
        }
    }

    /// The plain counters: downloads, builds, status writes, bytes and TLS handshakes.
    fn render_totals(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let counters: [(&str, &str, String); 6] = [
            (
                "tessera_info_files_served_total",
                "info files served.",
                load(&self.info_served).to_string(),
            ),
            (
                "tessera_fragments_served_total",
                "Fragments served.",
                load(&self.fragments_served).to_string(),
            ),
            (
                "tessera_download_not_found_total",
                "Download requests for files that do not exist.",
                load(&self.not_found).to_string(),
            ),
            (
                "tessera_package_builds_total",
                "Packages built.",
                load(&self.builds).to_string(),
            ),
            (
                "tessera_package_build_seconds_total",
                "Time spent building packages.",
                format!("{:.3}", load(&self.build_millis) as f64 / 1000.0),
            ),
            (
                "tessera_package_build_bytes_total",
                "Bytes of archives built.",
                load(&self.build_bytes).to_string(),
            ),
        ];
        for (name, help, value) in counters {
            header(out, name, help);
            let _ = writeln!(out, "{name} {value}");
        }
        header(
            out,
            "tessera_status_write_failures_total",
            "Reconcile passes whose status files could not be written (a full disk, say).",
        );
        let _ = writeln!(
            out,
            "tessera_status_write_failures_total {}\n# HELP tessera_status_write_failing 1 while status files cannot be written.\n# TYPE tessera_status_write_failing gauge\ntessera_status_write_failing {}",
            load(&self.status_write_failures),
            load(&self.status_write_failing)
        );
        header(
            out,
            "tessera_download_bytes_total",
            "Bytes of info files and fragments sent, by listener.",
        );
        let _ = writeln!(
            out,
            "tessera_download_bytes_total{{listener=\"https\"}} {}",
            load(&self.bytes_https)
        );
        let _ = writeln!(
            out,
            "tessera_download_bytes_total{{listener=\"http\"}} {}",
            load(&self.bytes_http)
        );
        header(
            out,
            "tessera_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
        );
        let _ = writeln!(
            out,
            "tessera_tls_handshake_failures_total{{reason=\"error\"}} {}",
            load(&self.handshake_failures)
        );
        let _ = writeln!(
            out,
            "tessera_tls_handshake_failures_total{{reason=\"timeout\"}} {}",
            load(&self.handshake_timeouts)
        );
    }
}

/// `value` escaped for a Prometheus label (backslash, double quote and line feed), so
/// distinct values stay distinct series.
fn label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
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
        assert!(text.len() < 10_000, "{}", text.len());
        assert!(
            text.contains("tessera_deployment_results_unfiled_total{reason=\"not_offered\"} 1\n")
        );
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
    fn plain_http_memory_stays_bounded_under_made_up_device_ids() {
        let plain = PlainHttp::default();
        for n in 0..MAX_PLAIN_HTTP_COMPUTERS + 10 {
            plain.contact(&format!("forged-{n}"), true);
        }
        assert_eq!(plain.computers(), MAX_PLAIN_HTTP_COMPUTERS as u64);
        assert!(plain.refused("x"), "logged the first time");
        assert!(!plain.refused("x"), "not the second");
        for n in 0..MAX_PLAIN_HTTP_LOGGED + 10 {
            plain.refused(&format!("forged-{n}"));
        }
        let logged = plain.logged.lock().unwrap().len();
        assert!(logged <= MAX_PLAIN_HTTP_LOGGED, "{logged}");
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
