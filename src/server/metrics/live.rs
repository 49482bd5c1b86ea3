//! What `/metrics` reads from live state at each scrape rather than counting: the
//! connections of each listener (`budget::Stats`) and the OCS agents calling over plain HTTP.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;

use crate::budget::Stats;

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
}

/// A `reason` label and the counter of a listener's [`Stats`] it reads.
type Reason = (&'static str, fn(&Stats) -> &AtomicU64);

/// The gauges read from live state at each scrape: connections per listener and the OCS
/// agents on plain HTTP.
#[derive(Debug)]
pub(super) struct Live {
    pub(super) connections: Arc<Connections>,
    pub(super) plain_http: Arc<PlainHttp>,
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let each = self.connections.each();
        {
            let mut metric = encoder.encode_descriptor(
                "tessera_connections_active",
                "Connections open now, by listener.",
                None,
                MetricType::Gauge,
            )?;
            for (listener, stats) in each {
                metric
                    .encode_family(&[("listener", listener)])?
                    .encode_gauge(&load(&stats.active))?;
            }
        }
        let by_reason: [(&str, &str, [Reason; 2]); 2] = [
            (
                "tessera_connections_refused",
                "Connections refused at accept, by listener and cap (limit: the total, per_address: one client's share).",
                [
                    ("limit", |s| &s.refused_total),
                    ("per_address", |s| &s.refused_per_address),
                ],
            ),
            (
                "tessera_connections_timed_out",
                "Connections closed by the server, by listener and phase (idle: no request in time; stalled: a request stopped moving bytes).",
                [
                    ("idle", |s| &s.closed_idle),
                    ("stalled", |s| &s.closed_stalled),
                ],
            ),
        ];
        for (name, help, reasons) in by_reason {
            let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (listener, stats) in each {
                for (reason, field) in reasons {
                    metric
                        .encode_family(&[("listener", listener), ("reason", reason)])?
                        .encode_counter::<NoLabelSet, _, u64>(&load(field(stats)), None)?;
                }
            }
        }
        {
            let mut metric = encoder.encode_descriptor(
                "tessera_accept_errors",
                "Failed accepts (out of file descriptors and the like), by listener.",
                None,
                MetricType::Counter,
            )?;
            for (listener, stats) in each {
                metric
                    .encode_family(&[("listener", listener)])?
                    .encode_counter::<NoLabelSet, _, u64>(&load(&stats.accept_errors), None)?;
            }
        }
        let plain = &self.plain_http;
        encoder
            .encode_descriptor(
                "tessera_ocs_plain_http_computers",
                "Computers whose last OCS contact came over plain HTTP (spec.ocs.plainHttp), since the server started.",
                None,
                MetricType::Gauge,
            )?
            .encode_gauge(&plain.computers())?;
        let mut metric = encoder.encode_descriptor(
            "tessera_ocs_plain_http_requests",
            "OCS requests over plain HTTP, by outcome (served: spec.ocs.plainHttp allows it; refused: answered 403 with the HTTPS address).",
            None,
            MetricType::Counter,
        )?;
        for (outcome, counter) in [("served", &plain.served), ("refused", &plain.refused)] {
            metric
                .encode_family(&[("outcome", outcome)])?
                .encode_counter::<NoLabelSet, _, u64>(&load(counter), None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
