//! Push: the server says "check in now" to the agents it concerns, within seconds of a change,
//! over a connection each agent opens (so NAT, HTTP proxies and every gateway mode work).
//!
//! **The mechanism is a long poll** on the agent's ordinary HTTP/1.1 + mutual-TLS client:
//! `GET /v1/wait?seen=<generation>` answers at once when this computer's *wake generation*
//! differs from what the agent last saw, else holds until a wake or a hold of 45 to 55 s
//! (below the 60 s idle timeout of the commonest middleboxes, an nginx `proxy_read_timeout`
//! or a cloud HTTP load balancer, and far below the gateway's 5 min relay idle timeout and
//! the dial-out pool's 240 s recycling of *idle* connections; a handed-over connection is the
//! agent's for its whole life). It is an ordinary request: it passes every gateway mode
//! unchanged (passthrough, tunnel and dial-out relay bytes; terminate forwards requests one
//! by one, naming the agent), any CONNECT proxy, and needs nothing new on the agent (no
//! HTTP/2 or WebSocket upgrade that a terminating middlebox might refuse). HTTP/2 would save
//! a connection per agent but the agent's client and terminate mode speak HTTP/1.1 only; a
//! WebSocket needs an upgrade that terminate mode strips as hop-by-hop.
//!
//! **Lossless.** A wake gives the computer a new generation. The agent sends the last
//! generation it saw, so a wake that lands while it is checking in (between two waits, or
//! while its connection is being re-established) is answered at once by its next wait.
//! Generations come from one counter per process that starts at the process's start time in
//! microseconds, so no generation is handed out twice: a computer forgotten after
//! [`FORGET_AFTER`] without a wait, or an agent that saw a generation of a previous process
//! (the server restarted, and may have missed changes while down), is answered at once and
//! checks in. An agent that reconnects without a change in between makes no extra pass.
//!
//! **Bounded.** A held request is its small future, a `watch` subscription and the
//! connection; nothing grows with time. Only a request with a verified agent certificate (or
//! one a trusted terminate gateway names) may hold; anyone else is refused at once, so
//! strangers meet the listener's usual per-address and total caps and timeouts. A held
//! request is *parked* ([`crate::budget::Park`]): the listener's progress check (1 KiB per
//! 30 s) would otherwise close a request that moves nothing on purpose.
//!
//! **The trigger** ([`follow`]): when reconcile publishes new [`Routes`] whose assignments
//! differ, each connected computer's wanted set ([`deployments::wanted`], from its stored
//! facts, read on the blocking pool) is computed under the old and the new routes; only
//! those whose set changed are woken, in a random order spread over
//! [`spread_window`] (2 ms per agent, at most 2 s) so a thousand agents do not check in
//! in the same millisecond.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::Extension;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::protocol::v1;
use crate::server::agent::{PeerAgent, Routes};
use crate::server::deployments;
use crate::store::db::{Computer, Database, DbError};

/// The shortest hold: holds are spread between this and [`v1::MAX_HOLD_SECONDS`], so agents
/// that connected together do not ask again together.
const MIN_HOLD_SECONDS: u64 = 45;
/// Time between two agents of one wake: a native check-in costs the server about a
/// millisecond of work (a database read and write on the blocking pool), so 2 ms apiece
/// keeps the arrival rate near half of what two cores serve.
const SPREAD_PER_AGENT: Duration = Duration::from_millis(2);
/// The longest spread: a wake of any size reaches every agent within 2 s, leaving the rest
/// of the 5 s goal for their check-ins to queue.
const MAX_SPREAD: Duration = Duration::from_secs(2);
/// Steps a spread is cut into (one sleep each), so a wake costs a handful of timers.
const SPREAD_STEPS: u32 = 20;
/// A computer that has held no wait for this long is forgotten: three holds, so an agent
/// between two waits (checking in, downloading) keeps its generation.
const FORGET_AFTER: Duration = Duration::from_secs(3 * v1::MAX_HOLD_SECONDS);

/// Errors of the push trigger.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("failed to read the connected computers' facts")]
    Database(#[source] DbError),
    #[error("the database call did not finish")]
    Task(#[source] tokio::task::JoinError),
}

/// How a wake went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The agent holds a wait: it is answered now.
    Held,
    /// The agent held one moments ago and is checking in: its next wait is answered at once.
    Between,
    /// The agent is not connected to the channel (it will check in on its schedule).
    NotConnected,
}

/// The waiting agents, by device id (the agent id of the client certificate).
#[derive(Debug)]
pub struct Registry {
    /// The next generation to hand out, to a new slot or a wake: one counter for all, so a
    /// computer forgotten and seen again never gets a generation it saw before.
    next: AtomicU64,
    slots: Mutex<HashMap<String, Slot>>,
    /// Cancelled when the server shuts down: held waits answer at once instead of holding
    /// the listener's drain.
    closing: CancellationToken,
}

#[derive(Debug)]
struct Slot {
    generation: watch::Sender<u64>,
    /// When a wait last started or ended.
    touched: Instant,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty registry whose generations start at the current time in microseconds: a
    /// previous process would have had to hand out more than one generation a microsecond
    /// for one of its generations to come up again.
    pub fn new() -> Self {
        let epoch = u64::try_from(jiff::Timestamp::now().as_microsecond()).unwrap_or(1);
        Self::starting_at(epoch)
    }

    /// An empty registry whose generations start at `epoch`.
    pub fn starting_at(epoch: u64) -> Self {
        Self {
            next: AtomicU64::new(epoch),
            slots: Mutex::new(HashMap::new()),
            closing: CancellationToken::new(),
        }
    }

    fn next_generation(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `device`'s current generation, and a subscription that sees the next one.
    pub fn subscribe(&self, device: &str) -> watch::Receiver<u64> {
        let mut slots = self.lock();
        let slot = slots.entry(device.to_owned()).or_insert_with(|| Slot {
            generation: watch::Sender::new(self.next_generation()),
            touched: Instant::now(),
        });
        slot.touched = Instant::now();
        slot.generation.subscribe()
    }

    /// Marks `device` as just seen (a wait ended).
    fn touch(&self, device: &str) {
        if let Some(slot) = self.lock().get_mut(device) {
            slot.touched = Instant::now();
        }
    }

    /// Bumps `device`'s generation, which answers its held wait (or its next one).
    pub fn wake(&self, device: &str) -> Delivery {
        let slots = self.lock();
        let Some(slot) = slots.get(device) else {
            return Delivery::NotConnected;
        };
        slot.generation.send_replace(self.next_generation());
        if slot.generation.receiver_count() > 0 {
            Delivery::Held
        } else {
            Delivery::Between
        }
    }

    /// The computers connected to the channel (holding a wait, or between two).
    pub fn connected(&self) -> Vec<String> {
        self.lock().keys().cloned().collect()
    }

    /// Waits held now.
    pub fn held(&self) -> usize {
        self.lock()
            .values()
            .map(|s| s.generation.receiver_count())
            .sum()
    }

    /// Forgets computers that have held no wait for `after`.
    pub fn forget_idle(&self, after: Duration) {
        self.lock()
            .retain(|_, s| s.generation.receiver_count() > 0 || s.touched.elapsed() < after);
    }
}

/// Adds the push channel's route state to the agent-facing app (the route itself is in
/// `agent::app`; without this layer it answers 404).
pub fn layer(app: axum::Router, registry: &Arc<Registry>) -> axum::Router {
    app.layer(Extension(registry.clone()))
}

/// `GET /v1/wait?seen=<generation>`: see the module documentation.
pub async fn wait(
    registry: Option<Extension<Arc<Registry>>>,
    peer: Option<Extension<PeerAgent>>,
    park: Option<Extension<crate::budget::Park>>,
    request: axum::extract::Request,
) -> Response {
    let Some(Extension(registry)) = registry else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(Extension(PeerAgent(agent))) = peer else {
        return (
            StatusCode::FORBIDDEN,
            "a wait needs an enrolled agent's client certificate\n",
        )
            .into_response();
    };
    let seen = request.uri().query().and_then(seen);
    let device = agent.as_str();
    let mut generation = registry.subscribe(device);
    let current = *generation.borrow_and_update();
    if seen != Some(current) {
        return Json(v1::Wait {
            generation: current,
        })
        .into_response();
    }
    let _parked = park.map(|Extension(park)| park.hold());
    let hold = Duration::from_secs(
        MIN_HOLD_SECONDS + random() % (v1::MAX_HOLD_SECONDS - MIN_HOLD_SECONDS + 1),
    );
    tokio::select! {
        _ = generation.changed() => {}
        () = tokio::time::sleep(hold) => {}
        () = registry.closing.cancelled() => {}
    }
    let answer = *generation.borrow();
    drop(generation);
    registry.touch(device);
    Json(v1::Wait { generation: answer }).into_response()
}

/// The `seen` of a query string.
fn seen(query: &str) -> Option<u64> {
    query
        .split('&')
        .find_map(|pair| pair.strip_prefix("seen="))
        .and_then(|value| value.parse().ok())
}

/// A random number (the process's hash keys, fresh for each call): jitter, not secrets.
fn random() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(Instant::now())
}

/// Follows the routes reconcile publishes and wakes the connected computers each change
/// concerns, until `shutdown`; forgets computers that stopped waiting.
pub async fn follow(
    registry: Arc<Registry>,
    mut routes: watch::Receiver<Arc<Routes>>,
    db: Arc<Database>,
    shutdown: CancellationToken,
) {
    let mut before = routes.borrow_and_update().clone();
    let mut forget = tokio::time::interval(FORGET_AFTER);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                registry.closing.cancel();
                return;
            }
            _ = forget.tick() => {
                registry.forget_idle(FORGET_AFTER);
                continue;
            }
            changed = routes.changed() => if changed.is_err() { return },
        }
        let after = routes.borrow_and_update().clone();
        if fingerprint(&before) == fingerprint(&after) {
            before = after;
            continue;
        }
        let devices = registry.connected();
        let (old, new) = (before.clone(), after.clone());
        let db = db.clone();
        let concerned = tokio::task::spawn_blocking(move || concerned(&db, &devices, &old, &new))
            .await
            .map_err(PushError::Task)
            .and_then(|c| c.map_err(PushError::Database));
        before = after;
        match concerned {
            Ok(devices) if devices.is_empty() => {}
            Ok(devices) => {
                tracing::info!(
                    computers = devices.len(),
                    "waking the connected computers a change concerns"
                );
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = spread(&registry, devices) => {}
                }
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "could not decide whom to wake; agents check in on their schedule");
            }
        }
    }
}

/// What of the routes can change a computer's wanted set.
fn fingerprint(routes: &Routes) -> String {
    format!("{}{:?}", routes.download.on, routes.assignments)
}

/// The computers of `devices` whose wanted set differs between `old` and `new`. Blocks.
pub fn concerned(
    db: &Database,
    devices: &[String],
    old: &Routes,
    new: &Routes,
) -> Result<Vec<String>, DbError> {
    let mut concerned = Vec::new();
    for device in devices {
        let Some((computer, _)) = db.computer(device)? else {
            continue;
        };
        if signature(old, &computer) != signature(new, &computer) {
            concerned.push(device.clone());
        }
    }
    Ok(concerned)
}

/// What `computer` should have under `routes`, as far as an agent would notice.
fn signature(routes: &Routes, computer: &Computer) -> Vec<String> {
    if !routes.download.on {
        return Vec::new();
    }
    deployments::wanted(&routes.assignments, computer)
        .iter()
        .map(|w| {
            let a = w.assignment;
            format!(
                "{}\n{}\n{}\n{}\n{:?}\n{:?}",
                w.activation, w.package_id, w.token, a.paused, a.not_before, a.not_after
            )
        })
        .collect()
}

/// How long a wake of `agents` computers is spread over: [`SPREAD_PER_AGENT`] each, at
/// most [`MAX_SPREAD`].
pub fn spread_window(agents: usize) -> Duration {
    SPREAD_PER_AGENT
        .saturating_mul(u32::try_from(agents).unwrap_or(u32::MAX))
        .min(MAX_SPREAD)
}

/// Wakes `devices` in a random order, spread over [`spread_window`].
async fn spread(registry: &Registry, mut devices: Vec<String>) {
    let window = spread_window(devices.len());
    let state = std::collections::hash_map::RandomState::new();
    devices.sort_by_cached_key(|d| state.hash_one(d));
    let per_step = devices.len().div_ceil(SPREAD_STEPS as usize).max(1);
    let pause = window / SPREAD_STEPS;
    for (n, chunk) in devices.chunks(per_step).enumerate() {
        if n > 0 {
            tokio::time::sleep(pause).await;
        }
        for device in chunk {
            registry.wake(device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_wake_between_two_waits_is_not_lost() {
        let registry = Registry::starting_at(100);
        let first = registry.subscribe("a");
        let seen = *first.borrow();
        assert_eq!(seen, 100);
        drop(first);
        // The agent is checking in: nothing holds, yet the wake is kept.
        assert_eq!(registry.wake("a"), Delivery::Between);
        let next = registry.subscribe("a");
        assert_ne!(*next.borrow(), seen, "the next wait answers at once");
    }

    #[tokio::test]
    async fn a_held_wait_sees_the_wake_and_others_do_not() {
        let registry = Registry::starting_at(7);
        let mut a = registry.subscribe("a");
        let mut b = registry.subscribe("b");
        a.borrow_and_update();
        b.borrow_and_update();
        assert_eq!(registry.held(), 2);
        assert_eq!(registry.wake("a"), Delivery::Held);
        assert!(a.has_changed().unwrap());
        assert!(!b.has_changed().unwrap());
        assert_eq!((*a.borrow(), *b.borrow()), (9, 8));
        assert_eq!(registry.wake("nobody"), Delivery::NotConnected);
    }

    #[tokio::test]
    async fn a_new_process_answers_a_previous_generation_at_once() {
        let old = Registry::starting_at(1_000);
        let seen = *old.subscribe("a").borrow();
        let new = Registry::new();
        assert_ne!(*new.subscribe("a").borrow(), seen);
    }

    #[tokio::test]
    async fn idle_computers_are_forgotten_and_holders_kept() {
        let registry = Registry::starting_at(1);
        let _held = registry.subscribe("held");
        drop(registry.subscribe("gone"));
        registry.forget_idle(Duration::ZERO);
        assert_eq!(registry.connected(), ["held"]);
    }

    #[tokio::test]
    async fn a_computer_forgotten_and_seen_again_is_answered_at_once() {
        let registry = Registry::starting_at(1);
        let seen = *registry.subscribe("a").borrow();
        // Woken while away (the slot still there), then forgotten.
        registry.wake("a");
        registry.forget_idle(Duration::ZERO);
        assert!(registry.connected().is_empty());
        assert_ne!(*registry.subscribe("a").borrow(), seen);
    }

    /// A state database with a Debian computer tagged `lab` and one tagged `office`.
    fn fleet() -> Database {
        let db = Database::in_memory().unwrap();
        for (device, tag) in [("lab-1", "lab"), ("office-1", "office")] {
            db.contact(device, 1).unwrap();
            let facts = crate::store::db::Facts {
                name: device.into(),
                os_name: "Debian GNU/Linux 12 (bookworm)".into(),
                tags: vec![tag.into()],
                ..crate::store::db::Facts::default()
            };
            db.record_inventory(device, &facts, b"{}", 1).unwrap();
        }
        db
    }

    fn routes(tag: &str, redeploy: Option<&str>) -> Routes {
        let selector =
            deployments::Selector::new(false, &[], &[], &[tag.to_owned()], vec![]).unwrap();
        Routes {
            assignments: vec![deployments::Assignment {
                affectation: format!("default/{tag}-hello"),
                activation: "default/hello".into(),
                package: "default/hello".into(),
                package_id: "1234567890".into(),
                package_os: deployments::OsFamily::Linux,
                selector,
                redeploy: redeploy.map(Into::into),
                not_before: None,
                not_after: None,
                info_location: None,
                pack_location: None,
                share: 100,
                paused: false,
            }],
            ..Routes::default()
        }
    }

    #[test]
    fn only_the_computers_whose_wanted_set_changed_are_concerned() {
        let db = fleet();
        let connected = ["lab-1".to_owned(), "office-1".to_owned(), "gone".to_owned()];
        let none = Routes::default();
        let lab = routes("lab", None);
        assert_eq!(concerned(&db, &connected, &none, &lab).unwrap(), ["lab-1"]);
        assert!(concerned(&db, &connected, &lab, &lab).unwrap().is_empty());
        // A redeploy concerns the targets again; a suspended download (none wanted) too.
        let redeployed = routes("lab", Some("2"));
        assert_eq!(
            concerned(&db, &connected, &lab, &redeployed).unwrap(),
            ["lab-1"]
        );
        let mut paused = lab.clone();
        paused.download.on = false;
        assert_eq!(
            concerned(&db, &connected, &paused, &lab).unwrap(),
            ["lab-1"]
        );
        assert_ne!(fingerprint(&paused), fingerprint(&lab));
    }

    #[test]
    fn the_spread_grows_with_the_wake_and_is_capped() {
        assert_eq!(spread_window(1), Duration::from_millis(2));
        assert_eq!(spread_window(100), Duration::from_millis(200));
        assert_eq!(spread_window(1_000), Duration::from_secs(2));
        assert_eq!(spread_window(100_000), Duration::from_secs(2));
    }

    #[test]
    fn seen_is_read_from_the_query() {
        assert_eq!(seen("seen=42"), Some(42));
        assert_eq!(seen("x=1&seen=7"), Some(7));
        assert_eq!(seen("seen=no"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_spread_wakes_everyone_within_its_window() {
        let registry = Registry::starting_at(0);
        let devices: Vec<String> = (0..500).map(|n| format!("d{n}")).collect();
        let subscriptions: Vec<_> = devices.iter().map(|d| registry.subscribe(d)).collect();
        let started = tokio::time::Instant::now();
        spread(&registry, devices).await;
        assert!(started.elapsed() <= spread_window(500));
        assert!(subscriptions.iter().all(|s| *s.borrow() >= 500));
    }
}
