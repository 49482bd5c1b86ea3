//! The gateway's Prometheus metrics: what happened to connections, per listener.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::dial_out::InsidePool;

/// The gateway's `/metrics` text: the counters of `listener`, and with dial-out the idle
/// connections the inside servers hold open.
pub fn render(counters: &Counters, listener: &str, inside: Option<&InsidePool>) -> String {
    let mut text = counters.render(listener);
    if let Some(pool) = inside {
        text.push_str(&format!(
            "# HELP tessera_gateway_dial_out_idle Idle connections from inside servers, ready for agents.\n# TYPE tessera_gateway_dial_out_idle gauge\ntessera_gateway_dial_out_idle{{listener=\"{listener}\"}} {}\n",
            pool.idle()
        ));
    }
    text
}

/// What happened to connections, for logs and metrics.
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub relayed: AtomicU64,
    pub refused_busy: AtomicU64,
    pub refused_hello: AtomicU64,
    /// Tunnel: refused at the edge, by reason.
    pub refused_no_certificate: AtomicU64,
    pub refused_untrusted: AtomicU64,
    pub refused_expired: AtomicU64,
    pub refused_revoked: AtomicU64,
    pub refused_handshake: AtomicU64,
    /// Tunnel: a `CONNECT` to somewhere that is not a backend, or a malformed one.
    pub refused_target: AtomicU64,
    /// Dial-out connections from inside servers: taken into the pool, and refused.
    pub inside_accepted: AtomicU64,
    pub inside_refused: AtomicU64,
    pub backend_failed: AtomicU64,
    pub bytes: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Per-address refusals, failed accepts and terminate-mode timeouts (see
    /// `budget::Stats`; its `active` is not used here).
    pub connections: Arc<crate::budget::Stats>,
}

impl Counters {
    /// The Prometheus text exposition, labelled with the listener's address.
    pub fn render(&self, listener: &str) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(&str, u64)]| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for (labels, value) in lines {
                out.push_str(&format!(
                    "{name}{{listener=\"{listener}\"{labels}}} {value}\n"
                ));
            }
        };
        metric(
            "tessera_gateway_connections_total",
            "counter",
            "Connections accepted, relayed, and refused by reason.",
            &[
                (",outcome=\"accepted\"", load(&self.accepted)),
                (",outcome=\"relayed\"", load(&self.relayed)),
                (",outcome=\"refused_limit\"", load(&self.refused_busy)),
                (
                    ",outcome=\"refused_per_address\"",
                    load(&self.connections.refused_per_address),
                ),
                (",outcome=\"refused_hello\"", load(&self.refused_hello)),
                (
                    ",outcome=\"refused_no_certificate\"",
                    load(&self.refused_no_certificate),
                ),
                (
                    ",outcome=\"refused_untrusted\"",
                    load(&self.refused_untrusted),
                ),
                (",outcome=\"refused_expired\"", load(&self.refused_expired)),
                (",outcome=\"refused_revoked\"", load(&self.refused_revoked)),
                (
                    ",outcome=\"refused_handshake\"",
                    load(&self.refused_handshake),
                ),
                (",outcome=\"refused_target\"", load(&self.refused_target)),
                (",outcome=\"backend_failed\"", load(&self.backend_failed)),
            ],
        );
        metric(
            "tessera_gateway_dial_out_connections_total",
            "counter",
            "Connections from inside servers (dial-out), accepted into the pool or refused.",
            &[
                (",outcome=\"accepted\"", load(&self.inside_accepted)),
                (",outcome=\"refused\"", load(&self.inside_refused)),
            ],
        );
        metric(
            "tessera_gateway_timed_out_total",
            "counter",
            "Terminate mode: connections closed with no request in time (idle) or a request that stopped moving bytes (stalled).",
            &[
                (",reason=\"idle\"", load(&self.connections.closed_idle)),
                (
                    ",reason=\"stalled\"",
                    load(&self.connections.closed_stalled),
                ),
            ],
        );
        metric(
            "tessera_gateway_accept_errors_total",
            "counter",
            "Failed accepts (out of file descriptors and the like).",
            &[("", load(&self.connections.accept_errors))],
        );
        metric(
            "tessera_gateway_bytes_total",
            "counter",
            "Bytes relayed, both ways.",
            &[("", load(&self.bytes))],
        );
        metric(
            "tessera_gateway_active_connections",
            "gauge",
            "Connections open now.",
            &[("", load(&self.active))],
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_per_listener_and_outcome() {
        let counters = Counters::default();
        counters.accepted.fetch_add(3, Ordering::Relaxed);
        counters.refused_busy.fetch_add(1, Ordering::Relaxed);
        let text = counters.render("0.0.0.0:443");
        assert!(text.contains(
            "tessera_gateway_connections_total{listener=\"0.0.0.0:443\",outcome=\"accepted\"} 3\n"
        ));
        assert!(text.contains("outcome=\"refused_limit\"} 1\n"));
        assert!(text.contains("# TYPE tessera_gateway_active_connections gauge\n"));
    }

    #[test]
    fn the_metrics_text_adds_the_idle_dial_out_connections_only_with_dial_out() {
        let counters = Counters::default();
        counters.bytes.fetch_add(42, Ordering::Relaxed);
        let plain = render(&counters, "[::]:443", None);
        assert_eq!(plain, counters.render("[::]:443"));
        assert!(!plain.contains("dial_out_idle"));
        let pool = InsidePool::default();
        let text = render(&counters, "[::]:443", Some(&pool));
        let idle = text.strip_prefix(plain.as_str()).unwrap();
        assert_eq!(
            idle,
            "# HELP tessera_gateway_dial_out_idle Idle connections from inside servers, ready for agents.\n\
             # TYPE tessera_gateway_dial_out_idle gauge\n\
             tessera_gateway_dial_out_idle{listener=\"[::]:443\"} 0\n"
        );
        assert!(text.contains("tessera_gateway_bytes_total{listener=\"[::]:443\"} 42\n"));
    }
}
