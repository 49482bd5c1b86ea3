//! The connection budget every listener works within (the agent-facing HTTPS and plain-HTTP
//! listeners, dial-out sessions, the admin API and the gateway): a timeout for every phase
//! of a connection, a total and a per-address cap on open connections, an accept loop that
//! backs off when file descriptors run out instead of failing, and the descriptor limit
//! raised at start-up.
//!
//! A connection is in one of three phases, each with its own bound:
//!
//! - **handshake** (TLS, and a trusted relay's PROXY header): [`ConnectionBudget::handshake`];
//! - **waiting for a request** (no request in flight: before the first one, between
//!   keep-alive requests, while request headers trickle in, an HTTP/2 connection with no
//!   stream): closed after [`ConnectionBudget::first_request`] or
//!   [`ConnectionBudget::keep_alive`];
//! - **a request in flight** (its body read, its response written): closed when fewer than
//!   [`ConnectionBudget::min_progress`] bytes move in a whole
//!   [`ConnectionBudget::progress_window`]. This bounds *progress*, never total time: a long
//!   fragment download to a slow agent keeps going as long as bytes move.
//!
//! This module imports nothing of the crate, so the server and the gateway share it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

mod watchdog;

pub use watchdog::{Ended, Park, Parked, TrackedBody, serve};

/// The environment variable that overrides the budget, for tests and tuning:
/// `key=value` pairs separated by commas, durations as `250ms` or `30s`, e.g.
/// `TESSERA_CONNECTION_BUDGET=first_request=1s,keep_alive=1s,max_per_address=8`.
/// Keys are the field names of [`ConnectionBudget`].
pub const BUDGET_ENV: &str = "TESSERA_CONNECTION_BUDGET";

/// Descriptors kept for everything that is not a connection (the database and its WAL,
/// fragment files being read, status files, git, logs, the admin listener's own cap): the
/// connection caps are lowered so that this many stay free whatever clients do.
pub const RESERVED_DESCRIPTORS: u64 = 256;

/// The limits of every listener. [`Default`] is for production; tests shrink it with
/// [`ConnectionBudget::with_overrides`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionBudget {
    /// TLS handshake (and a trusted relay's PROXY header) from accept. 10 s: a real
    /// handshake over a slow mobile link takes well under 2 s.
    pub handshake: Duration,
    /// After the handshake (or accept, without TLS), until the first request's headers are
    /// complete. 15 s: agents send their request at once; this only bounds silent clients.
    pub first_request: Duration,
    /// Between requests on a kept-alive connection (also bounds an HTTP/2 connection with
    /// no stream open, and headers trickling in). 20 s: agents reuse a connection for the
    /// requests of one contact, seconds apart; a later contact opens a new one.
    pub keep_alive: Duration,
    /// HTTP/1 request headers, from their first byte: hyper's own bound. 20 s.
    pub header: Duration,
    /// While a request is in flight, at least `min_progress` bytes must move (either way)
    /// in every window this long, or the connection is closed (a stalled or trickled body,
    /// a client that stopped reading its download). 30 s, with 1 KiB: any link that
    /// works moves more than 34 bytes a second.
    pub progress_window: Duration,
    pub min_progress: u64,
    /// Open connections at once, over the agent-facing listeners together. 10,000, lowered
    /// at start-up to what the descriptor limit allows ([`ConnectionBudget::fit_to`]).
    pub max_connections: usize,
    /// Open connections from one client address. 64: a NAT of a busy site keeps a few
    /// dozen agents in contact at once; one host never needs more than a handful.
    pub max_per_address: usize,
    /// Open connections to the admin API. 64: operators, a Prometheus scraper and the CLI.
    pub admin_connections: usize,
    /// HTTP/2 streams open at once on one connection. 32: the agents download fragments
    /// one after another.
    pub h2_streams: u32,
}

impl Default for ConnectionBudget {
    fn default() -> Self {
        Self {
            handshake: Duration::from_secs(10),
            first_request: Duration::from_secs(15),
            keep_alive: Duration::from_secs(20),
            header: Duration::from_secs(20),
            progress_window: Duration::from_secs(30),
            min_progress: 1024,
            max_connections: 10_000,
            max_per_address: 64,
            admin_connections: 64,
            h2_streams: 32,
        }
    }
}

/// Errors of the budget's configuration and of the descriptor limit.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("failed to read {BUDGET_ENV}: `{entry}` is not `key=value` with a known key")]
    Entry { entry: String },
    #[error("failed to read {BUDGET_ENV}: `{value}` for {key} is not a number or a duration")]
    Value { key: String, value: String },
    #[error("failed to read or raise the open-files limit")]
    Limit(#[source] std::io::Error),
}

impl ConnectionBudget {
    /// The default budget with every timeout set to `timeout` and the caps given: a compact
    /// constructor for tests.
    pub fn test(timeout: Duration, max_connections: usize, max_per_address: usize) -> Self {
        Self {
            handshake: timeout,
            first_request: timeout,
            keep_alive: timeout,
            header: timeout,
            progress_window: timeout,
            max_connections,
            max_per_address,
            ..Self::default()
        }
    }

    /// This budget with the `key=value,...` pairs of `text` (the format of [`BUDGET_ENV`]).
    pub fn with_overrides(mut self, text: &str) -> Result<Self, BudgetError> {
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let Some((key, value)) = entry.split_once('=') else {
                return Err(BudgetError::Entry {
                    entry: entry.to_owned(),
                });
            };
            let (key, value) = (key.trim(), value.trim());
            let bad = || BudgetError::Value {
                key: key.to_owned(),
                value: value.to_owned(),
            };
            let duration = || parse_duration(value).ok_or_else(bad);
            let count = || value.parse::<u64>().map_err(|_| bad());
            match key {
                "handshake" => self.handshake = duration()?,
                "first_request" => self.first_request = duration()?,
                "keep_alive" => self.keep_alive = duration()?,
                "header" => self.header = duration()?,
                "progress_window" => self.progress_window = duration()?,
                "min_progress" => self.min_progress = count()?,
                "max_connections" => self.max_connections = count()? as usize,
                "max_per_address" => self.max_per_address = count()? as usize,
                "admin_connections" => self.admin_connections = count()? as usize,
                "h2_streams" => self.h2_streams = u32::try_from(count()?).map_err(|_| bad())?,
                _ => {
                    return Err(BudgetError::Entry {
                        entry: entry.to_owned(),
                    });
                }
            }
        }
        Ok(self)
    }

    /// This budget with its caps lowered so that `descriptors` (the open-files limit) is
    /// never exceeded by connections: [`RESERVED_DESCRIPTORS`] stay for the rest.
    pub fn fit_to(mut self, descriptors: u64) -> Self {
        let room = descriptors.saturating_sub(RESERVED_DESCRIPTORS).max(16);
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        self.max_connections = self.max_connections.min(room);
        self
    }

    /// How often a connection's watchdog looks at it: often enough that a timeout fires
    /// within a quarter of its length.
    pub(crate) fn tick(&self) -> Duration {
        [self.first_request, self.keep_alive, self.progress_window]
            .into_iter()
            .min()
            .unwrap_or(Duration::from_secs(1))
            .checked_div(4)
            .unwrap_or_default()
            .max(Duration::from_millis(10))
    }
}

/// `250ms`, `30s`, `2m`, or plain seconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(at) => text.split_at(at),
        None => (text, "s"),
    };
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => Some(Duration::from_secs(number.checked_mul(60)?)),
        _ => None,
    }
}

/// The open-files limit before and after [`raise_fd_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now: the hard limit, when it could be raised.
    pub soft: u64,
    /// The hard limit (`None`: unlimited).
    pub hard: Option<u64>,
}

/// Where the soft limit goes when the hard one is unlimited: Linux refuses more than
/// `fs.nr_open`, whose default is 2^20.
const UNLIMITED_TARGET: u64 = 1 << 20;

/// Raises the soft open-files limit to the hard one, so that connections never run the
/// process out of descriptors at a distribution's default of 1,024.
pub fn raise_fd_limit() -> Result<FdLimit, BudgetError> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let before = limit.current.unwrap_or(u64::MAX);
    let target = limit.maximum.unwrap_or(UNLIMITED_TARGET);
    if before >= target {
        return Ok(FdLimit {
            before,
            soft: before,
            hard: limit.maximum,
        });
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(target),
            maximum: limit.maximum,
        },
    )
    .map_err(|e| BudgetError::Limit(e.into()))?;
    Ok(FdLimit {
        before,
        soft: target,
        hard: limit.maximum,
    })
}

/// What happened to one listener's connections, for `/metrics`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Connections open now.
    pub active: AtomicU64,
    /// Refused at accept: the listener's total cap was reached.
    pub refused_total: AtomicU64,
    /// Refused at accept: the client's address had its share.
    pub refused_per_address: AtomicU64,
    /// Closed with no request in flight for too long (silent, idle or trickling headers).
    pub closed_idle: AtomicU64,
    /// Closed because a request in flight stopped moving bytes.
    pub closed_stalled: AtomicU64,
    /// Accepts that failed (out of descriptors and the like).
    pub accept_errors: AtomicU64,
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The listener's total cap.
    Total,
    /// The per-address cap.
    PerAddress,
}

impl Refusal {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "limit",
            Self::PerAddress => "per_address",
        }
    }
}

/// Counts open connections, in total and per client address, against caps.
#[derive(Debug, Default)]
pub struct Gate {
    inner: Mutex<GateInner>,
}

#[derive(Debug, Default)]
struct GateInner {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

impl Gate {
    /// Admits a connection from `ip` if fewer than `total` are open, and fewer than
    /// `per_address` from `ip`; the permit counts it until dropped. A refusal is counted
    /// in `stats`.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        total: usize,
        per_address: usize,
        stats: &Arc<Stats>,
    ) -> Result<Permit, Refusal> {
        let mut inner = self.lock();
        let refusal = if inner.total >= total {
            Some(Refusal::Total)
        } else if inner.per_address.get(&ip).copied().unwrap_or(0) >= per_address {
            Some(Refusal::PerAddress)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            match refusal {
                Refusal::Total => &stats.refused_total,
                Refusal::PerAddress => &stats.refused_per_address,
            }
            .fetch_add(1, Ordering::Relaxed);
            return Err(refusal);
        }
        inner.total += 1;
        *inner.per_address.entry(ip).or_default() += 1;
        stats.active.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            gate: self.clone(),
            ip: Some(ip),
            stats: stats.clone(),
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().total
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// One admitted connection; dropping it frees its place.
#[derive(Debug)]
pub struct Permit {
    gate: Arc<Gate>,
    /// The address whose share it counts in; `None` once vouched for.
    ip: Option<IpAddr>,
    stats: Arc<Stats>,
}

impl Permit {
    /// The connection proved who it is (a client certificate verified at the handshake): it
    /// stops counting against its address's share and counts only in the total. A site
    /// behind one NAT address keeps as many agents connected at once as it has (each holds
    /// its push channel open); strangers, who cannot prove themselves, still meet the
    /// per-address cap.
    pub fn vouched(&mut self) {
        if let Some(ip) = self.ip.take() {
            self.gate.lock().release(ip);
        }
    }
}

impl GateInner {
    fn release(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_address.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                self.per_address.remove(&ip);
            }
        }
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut inner = self.gate.lock();
        inner.total = inner.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            inner.release(ip);
        }
        self.stats.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Says a repeated warning at most once per interval, with how many were held back.
#[derive(Debug, Default)]
pub struct Throttle {
    last: Mutex<Option<Instant>>,
    held: AtomicU64,
}

/// Repeated refusals are logged at most this often per listener.
const WARN_EVERY: Duration = Duration::from_secs(10);

impl Throttle {
    /// `Some(held back since the last time)` when the warning should be said now.
    pub fn allow(&self) -> Option<u64> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            self.held.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        *last = Some(now);
        Some(self.held.swap(0, Ordering::Relaxed))
    }
}

/// First wait after a failed accept, doubled up to [`ACCEPT_BACKOFF_MAX`].
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest wait between accepts while they fail: connections in the backlog wait this
/// long at most once descriptors are free again.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The next connection on `listener`, or `None` at `shutdown`. Failed accepts (out of file
/// descriptors, mostly) never end the loop: it waits, longer each time, warns once per run
/// of failures and says when accepting works again.
pub async fn accept(
    listener: &TcpListener,
    name: &str,
    stats: &Stats,
    shutdown: &CancellationToken,
) -> Option<(TcpStream, SocketAddr)> {
    let mut backoff = ACCEPT_BACKOFF_MIN;
    let mut failures = 0u64;
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return None,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok(accepted) => {
                if failures > 0 {
                    tracing::info!(listener = name, failures, "accepting connections again");
                }
                return Some(accepted);
            }
            Err(error) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                if failures == 1 {
                    tracing::warn!(listener = name, %error, "accept failed; backing off until it works again (connections wait in the backlog)");
                }
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_shrink_the_budget_and_unknown_keys_are_refused() {
        let budget = ConnectionBudget::default()
            .with_overrides("first_request=250ms, keep_alive=2s,max_per_address=3,min_progress=10")
            .unwrap();
        assert_eq!(budget.first_request, Duration::from_millis(250));
        assert_eq!(budget.keep_alive, Duration::from_secs(2));
        assert_eq!(budget.max_per_address, 3);
        assert_eq!(budget.min_progress, 10);
        assert_eq!(budget.handshake, ConnectionBudget::default().handshake);
        assert!(
            ConnectionBudget::default()
                .with_overrides("nope=1")
                .is_err()
        );
        assert!(
            ConnectionBudget::default()
                .with_overrides("keep_alive=soon")
                .is_err()
        );
    }

    #[test]
    fn the_caps_leave_descriptors_for_the_rest() {
        let budget = ConnectionBudget::default().fit_to(1024);
        assert_eq!(budget.max_connections, 1024 - RESERVED_DESCRIPTORS as usize);
        let budget = ConnectionBudget::default().fit_to(1 << 20);
        assert_eq!(budget.max_connections, 10_000);
    }

    #[test]
    fn the_gate_counts_per_address_and_in_total_and_frees_on_drop() {
        let gate = Arc::new(Gate::default());
        let stats = Arc::new(Stats::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = gate.admit(a, 3, 2, &stats).unwrap();
        let _second = gate.admit(a, 3, 2, &stats).unwrap();
        assert_eq!(
            gate.admit(a, 3, 2, &stats).unwrap_err(),
            Refusal::PerAddress
        );
        let _third = gate.admit(b, 3, 2, &stats).unwrap();
        assert_eq!(gate.admit(b, 3, 2, &stats).unwrap_err(), Refusal::Total);
        drop(first);
        let _again = gate.admit(a, 3, 2, &stats).unwrap();
        assert_eq!(stats.refused_per_address.load(Ordering::Relaxed), 1);
        assert_eq!(stats.refused_total.load(Ordering::Relaxed), 1);
        assert_eq!(gate.open(), 3);
    }

    #[test]
    fn a_vouched_connection_leaves_its_address_share_but_counts_in_the_total() {
        let gate = Arc::new(Gate::default());
        let stats = Arc::new(Stats::default());
        let nat: IpAddr = "192.0.2.7".parse().unwrap();
        // Five agents behind one address, each proving itself: more than the share of 2.
        let mut agents = Vec::new();
        for _ in 0..5 {
            let mut permit = gate.admit(nat, 6, 2, &stats).unwrap();
            permit.vouched();
            permit.vouched();
            agents.push(permit);
        }
        // Strangers from there still get only their share, and the total still holds.
        let _stranger = gate.admit(nat, 6, 2, &stats).unwrap();
        assert_eq!(gate.admit(nat, 6, 2, &stats).unwrap_err(), Refusal::Total);
        drop(agents);
        let _second = gate.admit(nat, 6, 2, &stats).unwrap();
        assert_eq!(
            gate.admit(nat, 6, 2, &stats).unwrap_err(),
            Refusal::PerAddress
        );
        assert_eq!(gate.open(), 2);
    }

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let limit = raise_fd_limit().unwrap();
        assert_eq!(Some(limit.soft), limit.hard.or(Some(UNLIMITED_TARGET)));
        assert!(limit.soft >= limit.before);
    }
}
