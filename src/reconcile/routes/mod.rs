//! Routes: turns the desired Server, Activations and Affectations, with the packages built
//! this pass, into the plain values the agent-facing server runs on, and publishes them
//! through `watch` channels (the routing table, the listen addresses, the certificate and
//! the client verifier). Also reads the deployment counts back for Affectation statuses,
//! spaced by their cost, and arms known computers when the assignments change. The Server's
//! part (listeners, certificate, enrollment, dial-out) is `server.rs`; the Activations' and
//! Affectations' is `publishing.rs`.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use tokio::sync::watch;

use crate::desired::DesiredState;
use crate::leader::Leadership;
use crate::pki::PkiError;
use crate::pki::tls::{self, ClientAuth};
use crate::protocol::ocs::DownloadConf;
use crate::reconcile::certificates::{Certificates, Trust};
use crate::reconcile::drain::Drains;
use crate::reconcile::health::{
    RolloutFacts, affectation_outcome, dependency, listening, server_outcome,
};
use crate::reconcile::outcome::{self, Outcome, Reason};
use crate::resources::affectation::RolloutStatus;
use crate::resources::meta::Os;
use crate::resources::server::{ClientAuthMode, ServerSpec};
use crate::resources::{ActivationStatus, ServerStatus};
use crate::resources::{Kind, ObjectKey, Resource};
use crate::server::agent::{
    EnrollmentRoute, Forwarded, GatewayIdentities, Listen, PackageRoute, Routes,
};
use crate::server::deployments::{self, Assignment, OsFamily, Selector};
use crate::store::db::Database;
use crate::store::db::{Computer, Deployment, OperatorAction, State};

mod publishing;
mod server;
use publishing::Publishing;

/// Why a Server's or an Affectation's spec cannot be turned into routes and listeners. The
/// cause is the source; the status message is the whole chain ([`crate::error_chain`]).
#[derive(Debug, thiserror::Error)]
pub enum RoutesError {
    #[error("spec.listen.{field}: failed to parse {text:?} as an address:port")]
    Listen {
        field: &'static str,
        text: String,
        #[source]
        source: std::net::AddrParseError,
    },
    #[error("spec.trustedProxies[{index}]: failed to parse {text:?} as an IP address")]
    TrustedProxy {
        index: usize,
        text: String,
        #[source]
        source: std::net::AddrParseError,
    },
    /// `certificate` names where the key pair came from: a Certificate or a Secret.
    #[error("failed to load {certificate} as the serving certificate")]
    Certificate {
        certificate: String,
        #[source]
        source: PkiError,
    },
    #[error("spec.certificateSecretRef")]
    ReadSecret {
        #[source]
        source: crate::reconcile::secrets::SecretsError,
    },
    #[error("spec.trustedGateways: failed to build the verifier of forwarded agent certificates")]
    ForwardedVerifier {
        #[source]
        source: PkiError,
    },
    #[error("spec.clientAuth: failed to build the client certificate verifier")]
    ClientVerifier {
        #[source]
        source: PkiError,
    },
    #[error("spec.dialOut: failed to set up TLS to the gateway with {certificate} and {issuer}")]
    DialOut {
        certificate: ObjectKey,
        issuer: ObjectKey,
        // Boxed: two keys and the error inline would make every `Result` of this module
        // carry 152 bytes.
        #[source]
        source: Box<PkiError>,
    },
    #[error("spec.targets: failed to select computers")]
    Targets {
        #[source]
        source: deployments::SelectorError,
    },
}

/// The channels reconcile publishes on and the runtime reads, and the database both use.
pub struct Runtime {
    pub db: Arc<Database>,
    pub routes: watch::Sender<Arc<Routes>>,
    pub listen: watch::Sender<Listen>,
    pub certificate: watch::Sender<Option<Arc<CertifiedKey>>>,
    pub verifier: watch::Sender<Arc<dyn ClientCertVerifier>>,
    /// What the listeners are bound to, as the runtime reports it.
    pub bound: watch::Receiver<crate::server::listener::Bound>,
    /// Bumped by the runtime when deployment states change.
    pub activity: watch::Receiver<u64>,
    /// Where package build times are counted.
    pub metrics: Arc<crate::server::metrics::Metrics>,
    /// Dial-out to a gateway, when the Server asks for it.
    pub dial_out: watch::Sender<Option<Arc<crate::server::dial_out::Settings>>>,
    /// Operators' requests for a pass, and where its summary goes (`tessera reconcile`).
    pub passes: Option<crate::server::admin::PassQueue>,
    /// This server's name, recorded while it leads so followers can name the leader.
    pub identity: String,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Runtime")
    }
}

/// What a pass last published, to publish only changes.
pub struct Publisher {
    /// Superseded package versions still served to the agents notified of them.
    drains: Drains,
    certificate_pem: Option<(String, String)>,
    verifier_input: Option<(ClientAuthMode, Trust)>,
    /// Gateways in terminate mode, as last published.
    forwarded: Option<Arc<Forwarded>>,
    forwarded_input: Option<(GatewayIdentities, Trust)>,
    /// Dial-out: (gateway, connections, certificate chain, key, gateway CAs) as published.
    dial_out_input: Option<DialOutInput>,
    /// Activations and Affectations an operator suspended, as last read from the database
    /// (kept when a read fails: a suspension must not lift because a read did).
    suspended: HashSet<ObjectKey>,
    /// The failure gate of each assignment as of the last counts, by (Affectation, package
    /// id, redeploy token): carried into the next early publication, so an Affectation past
    /// its maxErrors is never offered between two passes. A new version or token starts open.
    gates: HashMap<GateKey, bool>,
    /// The `staleAfter` setting as last written, to write it only when it changes.
    stale_after_written: Option<i64>,
    /// What the last arming read (the revision and assignments' fingerprint) and when, while leader:
    /// arming reads the whole fleet, so it runs only when this changes, when this replica
    /// becomes leader (`None`), or after [`REARM_AFTER`] as a safety net.
    armed: Option<(String, std::time::Instant)>,
    /// The last full count of the fleet, reused by the passes before the next one is due
    /// (see [`count_due`]); `None` before the first, or after a failed read.
    counted: Option<Counted>,
    /// Set when an operator asked for a pass: the next one counts at once.
    count_next: bool,
    /// How many times the fleet was read to count, for tests and the curious.
    counts_read: u64,
}

/// The last full count of the fleet: what each Affectation's status and failure gate are
/// computed from until the next count is due.
pub(super) struct Counted {
    /// The deployment counts per Affectation.
    pub(super) counts: HashMap<String, deployments::Counts>,
    /// The error codes per Affectation, the most frequent first.
    pub(super) codes: HashMap<String, Vec<(String, i64)>>,
    /// The number of computers counted (new ones are armed: see `Publisher::arm`).
    pub(super) fleet: usize,
    /// When the count began and how long it took, to space the next one.
    pub(super) started: std::time::Instant,
    pub(super) took: std::time::Duration,
    /// What was counted against: the revision and the assignments (without the gates).
    pub(super) fingerprint: String,
}

/// The next full count waits at least this many times the last one's duration: counting
/// then takes at most about 1/10 of one core however often agents' traffic causes passes
/// (18 ms / 167 ms / 1.3 s at 1k / 10k / 100k computers: counts at most every 1 s / 1.7 s
/// / 13 s). Ten keeps statuses and the failure gate within seconds at 100,000 computers.
const COUNT_SPACING: u32 = 10;

/// The shortest spacing of two counts: a pass per second under traffic
/// ([`crate::reconcile::ACTIVITY_DEBOUNCE`]) counts every time at a small fleet, as before.
const COUNT_FLOOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Reused counts older than this say how old they are in the Affectation's status message
/// (younger ones are as fresh as the one-second debounce of passes makes them anyway).
const COUNTS_AGE_SHOWN: std::time::Duration = std::time::Duration::from_secs(5);

/// When the count after one that began at `started` and took `took` is due.
fn count_spacing(took: std::time::Duration) -> std::time::Duration {
    took.saturating_mul(COUNT_SPACING).max(COUNT_FLOOR)
}

/// Whether a pass at `now` counts the fleet again, or reuses the last count (begun at
/// `last.0`, lasting `last.1`): at once when there is none, when what is counted against
/// changed (a new revision, Affectation, version, token or stage) or an operator asked,
/// else once [`count_spacing`] has passed since the last began.
fn count_due(
    last: Option<(std::time::Instant, std::time::Duration)>,
    now: std::time::Instant,
    changed: bool,
) -> bool {
    match last {
        None => true,
        Some((started, took)) => {
            changed || now.saturating_duration_since(started) >= count_spacing(took)
        }
    }
}

/// An assignment's identity for its failure gate: (Affectation, package id, redeploy token).
type GateKey = (String, String, Option<String>);

/// Arming again with unchanged assignments, as a safety net: computers are armed as their
/// inventory arrives and whenever assignments change, so this only catches a failed write;
/// ten minutes keeps its fleet-wide read rare next to the passes (one a second under traffic).
const REARM_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

fn gate_key(a: &Assignment) -> GateKey {
    (
        a.affectation.clone(),
        a.package_id.clone(),
        a.redeploy.clone(),
    )
}

/// Closes in `assignments` the gates that were closed at the last counts.
fn carry_gates(assignments: &mut [Assignment], gates: &HashMap<GateKey, bool>) {
    for assignment in assignments {
        if gates.get(&gate_key(assignment)).copied().unwrap_or(false) {
            assignment.paused = true;
        }
    }
}

type DialOutInput = (String, usize, String, String, Vec<String>);

/// An Activation whose package is built: (package, package id, OS, info location, pack
/// location).
type ActiveActivation = (String, String, Os, Option<String>, Option<String>);

/// `namespace/name`.
pub fn qualified(key: &ObjectKey) -> String {
    format!("{}/{}", key.namespace, key.name)
}

impl Publisher {
    /// A publisher that has published nothing yet, for the fragment store below `state_dir`.
    pub fn new(state_dir: &std::path::Path) -> Self {
        Self {
            drains: Drains::new(state_dir),
            certificate_pem: None,
            verifier_input: None,
            forwarded: None,
            forwarded_input: None,
            dial_out_input: None,
            suspended: HashSet::new(),
            gates: HashMap::new(),
            stale_after_written: None,
            armed: None,
            counted: None,
            count_next: false,
            counts_read: 0,
        }
    }

    /// Makes the next pass count the fleet at once (an operator asked for a pass).
    pub fn count_next(&mut self) {
        self.count_next = true;
    }

    /// How many times passes have read the fleet to count it.
    pub fn counts_read(&self) -> u64 {
        self.counts_read
    }

    /// The versions draining as of the last publish.
    pub fn drains(&self) -> &Drains {
        &self.drains
    }

    /// Reads which Activations and Affectations of `desired` an operator suspended.
    fn read_suspensions(&mut self, runtime: &Runtime, desired: &DesiredState) {
        match runtime.db.requests(OperatorAction::Suspend) {
            Ok(requests) => {
                self.suspended = requests
                    .iter()
                    .filter_map(|r| {
                        desired.entries.keys().find(|k| {
                            matches!(k.kind, Kind::Activation | Kind::Affectation)
                                && k.kind.as_str() == r.kind
                                && k.namespace == r.namespace
                                && k.name == r.name
                        })
                    })
                    .cloned()
                    .collect();
            }
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "failed to read operators' suspensions; keeping the last read");
            }
        }
    }

    /// The leader's writes of a pass: `staleAfter` for `tessera status`, and every known
    /// computer armed for what `routes` assign.
    /// Both only when they changed (arming: see `Publisher::armed`).
    fn arm(
        &mut self,
        runtime: &Runtime,
        routes: &Routes,
        revision: &str,
        fleet: usize,
        now: jiff::Timestamp,
    ) {
        if self.stale_after_written != Some(routes.stale_after) {
            match runtime
                .db
                .set_setting("staleAfter", &routes.stale_after.to_string())
            {
                Ok(()) => self.stale_after_written = Some(routes.stale_after),
                Err(error) => {
                    tracing::warn!(error = %crate::error_chain(&error), "failed to record staleAfter")
                }
            }
        }
        // Everything arming reads of an assignment is in its Debug form. The revision: a
        // change of desired state arms again even when it leaves the assignments as they
        // were, as every pass did before (passes caused by agents' traffic do not).
        // The fleet's size: computers recorded without being armed (inventory arms them; a
        // restore or import does not) are armed at the next pass.
        let fingerprint = format!("{revision} {fleet} {:?}", routes.assignments);
        if self
            .armed
            .as_ref()
            .is_some_and(|(last, at)| *last == fingerprint && at.elapsed() < REARM_AFTER)
        {
            return;
        }
        match crate::server::agent::arm_all(&runtime.db, &routes.assignments, now.as_second()) {
            Ok(armed) => {
                self.armed = Some((fingerprint, std::time::Instant::now()));
                if armed > 0 {
                    tracing::info!(armed, "armed deployments for known computers");
                }
            }
            Err(error) => {
                // Not recorded as armed: the next pass tries again.
                tracing::warn!(error = %crate::error_chain(&error), "failed to arm deployments")
            }
        }
    }

    /// Computes the routes from `desired` and the package `outcomes`, publishes them, and
    /// returns the outcomes of the Server, Activations and Affectations: the Server first
    /// (its listeners, certificate and enrollment), then the Activations of built packages,
    /// the draining versions, the Affectations' assignments, and their counts.
    pub fn publish(
        &mut self,
        runtime: &Runtime,
        desired: &DesiredState,
        packages: &HashMap<ObjectKey, Outcome>,
        certificates: &Certificates,
        leadership: &Leadership,
        now: jiff::Timestamp,
    ) -> HashMap<ObjectKey, Outcome> {
        self.read_suspensions(runtime, desired);
        let mut p = Publishing {
            runtime,
            desired,
            leadership,
            now,
            suspended: self.suspended.clone(),
            suspensions: HashMap::new(),
            server: desired.actionable().find_map(|(key, r)| match r {
                Resource::Server(server) => Some((key.clone(), server.spec.clone())),
                _ => None,
            }),
            routes: Routes::default(),
            listen: Listen::default(),
            outcomes: HashMap::new(),
            activations: HashMap::new(),
            wakes: HashMap::new(),
        };
        if let Some((key, spec)) = p.server.clone() {
            self.publish_server(&mut p, &key, &spec, certificates);
        }
        p.activations(packages);
        // Superseded versions still served to the agents notified of them; never offered.
        let grace = p
            .server
            .as_ref()
            .map_or_else(
                || crate::resources::server::DownloadPacing::default().drain_grace,
                |(_, spec)| spec.download.drain_grace,
            )
            .as_std()
            .as_secs();
        self.drains.step(
            &p.runtime.db,
            &mut p.routes,
            i64::try_from(grace).unwrap_or(i64::MAX),
            p.leadership.is_leader(),
            p.now.as_second(),
        );

        p.assignments();
        // Published at once, before counting and arming read the fleet, so agents see a
        // change without waiting for them; the failure gates are those of the last counts.
        let open: Vec<bool> = p.routes.assignments.iter().map(|a| a.paused).collect();
        carry_gates(&mut p.routes.assignments, &self.gates);
        let early: Vec<bool> = p.routes.assignments.iter().map(|a| a.paused).collect();
        runtime.routes.send_replace(Arc::new(p.routes.clone()));
        for (assignment, paused) in p.routes.assignments.iter_mut().zip(open) {
            assignment.paused = paused;
        }
        // Counting reads the whole fleet: done when due (see `count_due`), else the last
        // counts are reused. With reused counts the failure gate is as of the last count,
        // at most `count_spacing` old; a result reaching maxErrors is counted by the next
        // count, due within that bound, and the reusing pass wakes the loop for it.
        let fingerprint = format!("{} {:?}", desired.revision, p.routes.assignments);
        let last = self.counted.as_ref().map(|c| (c.started, c.took));
        let changed = self.count_next
            || self
                .counted
                .as_ref()
                .is_some_and(|c| c.fingerprint != fingerprint);
        let clock = std::time::Instant::now();
        let reused = !count_due(last, clock, changed);
        if !reused {
            self.count_next = false;
            self.counts_read += 1;
            self.counted = p.count(fingerprint);
        }
        let fleet = self.counted.as_ref().map_or(0, |c| c.fleet);
        let gates = p.affectation_outcomes(self.counted.as_ref(), reused, clock);
        self.gates = gates;
        let counted: Vec<bool> = p.routes.assignments.iter().map(|a| a.paused).collect();

        // Arm known computers for what is assigned now (new Affectations, versions, tokens,
        // rollout stages), when that changed. The leader's job: followers serve the routes,
        // and arm only the agents that check in with them.
        if leadership.is_leader() {
            self.arm(runtime, &p.routes, &desired.revision, fleet, now);
        } else {
            // Arms again as soon as this replica becomes leader.
            self.armed = None;
        }
        // Published again only if the counts opened or closed a gate.
        if counted != early {
            runtime.routes.send_replace(Arc::new(p.routes));
        }
        let listen = p.listen;
        runtime.listen.send_if_modified(|current| {
            let changed = *current != listen;
            *current = listen;
            changed
        });
        p.outcomes
    }
}

/// Adds to `found`, per Affectation, the error codes that these targets reported for the
/// package and token they should have now ([`by_frequency`] orders them).
fn error_codes(
    found: &mut HashMap<String, HashMap<String, i64>>,
    assignments: &[Assignment],
    computers: &[Computer],
    rows: &[Deployment],
) {
    let index: HashMap<(&str, &str), &Deployment> = rows
        .iter()
        .map(|d| ((d.device_id.as_str(), d.activation.as_str()), d))
        .collect();
    for computer in computers {
        for wanted in deployments::wanted(assignments, computer) {
            let Some(row) = index
                .get(&(computer.device_id.as_str(), wanted.activation))
                .filter(|d| d.package_id == wanted.package_id && d.token == wanted.token)
                .filter(|d| d.state == State::Error)
            else {
                continue;
            };
            let code = row.code.clone().unwrap_or_default();
            for assignment in assignments
                .iter()
                .filter(|a| a.activation == wanted.activation && a.targets(computer))
            {
                *found
                    .entry(assignment.affectation.clone())
                    .or_default()
                    .entry(code.clone())
                    .or_default() += 1;
            }
        }
    }
}

/// Each Affectation's error codes, the most frequent first (then by code).
fn by_frequency(
    found: HashMap<String, HashMap<String, i64>>,
) -> HashMap<String, Vec<(String, i64)>> {
    found
        .into_iter()
        .map(|(affectation, codes)| {
            let mut codes: Vec<(String, i64)> = codes.into_iter().collect();
            codes.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            (affectation, codes)
        })
        .collect()
}

fn base_routes(spec: &ServerSpec) -> Routes {
    let seconds = |d: crate::resources::quantity::Duration| d.as_std().as_secs();
    let pacing = &spec.download;
    Routes {
        ocs_enabled: spec.ocs.enabled,
        ocs_path: spec.ocs.path.clone(),
        ocs_plain_http: spec.ocs.enabled && spec.ocs.plain_http,
        inventory: spec
            .inventory_frequency
            .map(crate::server::ocs::InventoryPolicy::from_days)
            .unwrap_or_default(),
        prolog_frequency_hours: u32::try_from((seconds(spec.prolog_frequency) / 3600).max(1))
            .unwrap_or(u32::MAX),
        download: DownloadConf {
            on: pacing.enabled,
            frag_latency: seconds(pacing.frag_latency),
            cycle_latency: seconds(pacing.cycle_latency),
            period_latency: seconds(pacing.period_latency),
            period_length: u64::try_from(pacing.period_length.max(1)).unwrap_or(1),
            timeout: (seconds(pacing.timeout) / 86_400).max(1),
            execution_timeout: (seconds(pacing.execution_timeout) / 60).max(1),
        },
        stale_after: i64::try_from(seconds(spec.stale_after)).unwrap_or(i64::MAX),
        forwarded: None,
        assignments: Vec::new(),
        packages: HashMap::new(),
        enrollment: None,
    }
}

fn native_action(action: &crate::resources::package::PackageAction) -> crate::protocol::v1::Action {
    use crate::protocol::v1::Action;
    if let Some(launch) = &action.launch {
        Action::Launch {
            command: launch.command.clone(),
        }
    } else if let Some(store) = &action.store {
        Action::Store {
            path: store.path.clone(),
        }
    } else {
        Action::Execute {
            command: action
                .execute
                .as_ref()
                .map(|e| e.command.clone())
                .unwrap_or_default(),
        }
    }
}

fn strip_scheme(location: &str) -> String {
    location
        .split_once("://")
        .map_or(location, |(_, rest)| rest)
        .trim_end_matches('/')
        .to_owned()
}

/// The family of a package's target OS.
pub(crate) fn family(os: Os) -> OsFamily {
    match os {
        Os::Windows => OsFamily::Windows,
        Os::Linux => OsFamily::Linux,
        Os::Macos => OsFamily::Macos,
    }
}

fn client_auth(mode: ClientAuthMode) -> ClientAuth {
    match mode {
        ClientAuthMode::None => ClientAuth::None,
        ClientAuthMode::Optional => ClientAuth::Optional,
        ClientAuthMode::Required => ClientAuth::Required,
    }
}

/// The last certificate of a PEM chain, as PEM.
fn last_certificate(chain: &str) -> Option<String> {
    let certificates = crate::pki::facts::pem_certificates(chain).ok()?;
    let last = certificates.last()?;
    Some(crate::pki::authority::pem("CERTIFICATE", last))
}

fn waiting(message: String) -> Outcome {
    Outcome::not_ready(Reason::Pending, message)
}

fn failed(reason: Reason, message: String) -> Outcome {
    Outcome::not_ready(reason, message)
}

/// Not ready because of `error`, its message the whole chain of causes.
fn invalid(reason: Reason, error: &RoutesError) -> Outcome {
    failed(reason, crate::error_chain(error))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(package_id: &str, redeploy: Option<&str>) -> Assignment {
        Assignment {
            affectation: "fleet/all".into(),
            activation: "fleet/firefox".into(),
            package: "fleet/firefox".into(),
            package_id: package_id.into(),
            package_os: OsFamily::Linux,
            selector: Selector::default(),
            redeploy: redeploy.map(Into::into),
            not_before: None,
            not_after: None,
            info_location: None,
            pack_location: None,
            share: 100,
            paused: false,
        }
    }

    use std::time::{Duration, Instant};

    /// The spacing decision: the first count, a changed desired state or an operator's
    /// request count at once; otherwise the next count waits ten times the last one's
    /// duration, and at least a second.
    #[test]
    fn counts_are_spaced_by_their_cost() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert!(count_due(None, start, false), "the first pass counts");
        // A small fleet: 18 ms counts, spaced by the one-second floor.
        let small = Some((start, Duration::from_millis(18)));
        assert!(!count_due(small, at(500), false));
        assert!(count_due(small, at(1_000), false));
        // A large fleet: a 1.3 s count is next due 13 s after it began.
        let large = Some((start, Duration::from_millis(1_300)));
        assert!(!count_due(large, at(1_500), false));
        assert!(!count_due(large, at(12_999), false));
        assert!(count_due(large, at(13_000), false));
        // A new revision (or an operator's reconcile) counts at once.
        assert!(count_due(large, at(1_500), true));
        assert_eq!(
            count_spacing(Duration::from_millis(167)),
            Duration::from_millis(1_670)
        );
    }

    fn runtime(db: Database) -> Runtime {
        let verifier = crate::pki::tls::client_verifier(ClientAuth::None, &[], vec![]).unwrap();
        Runtime {
            db: Arc::new(db),
            routes: watch::channel(Arc::new(Routes::default())).0,
            listen: watch::channel(Listen::default()).0,
            certificate: watch::channel(None).0,
            verifier: watch::channel(verifier).0,
            bound: watch::channel(crate::server::listener::Bound::default()).1,
            activity: watch::channel(0).1,
            metrics: Arc::default(),
            dial_out: watch::channel(None).0,
            passes: None,
            identity: String::new(),
        }
    }

    /// Passes in between two counts reuse the last one and do not read the fleet; a new
    /// revision and an operator's request count at once.
    #[test]
    fn passes_between_counts_do_not_read_the_fleet() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = runtime(Database::in_memory().unwrap());
        let certificates = Certificates::new(
            dir.path().to_path_buf(),
            dir.path().to_path_buf(),
            crate::reconcile::certificates::Environment::default(),
        );
        let leadership = Leadership::always();
        let mut publisher = Publisher::new(dir.path());
        let mut desired = DesiredState {
            revision: "a".into(),
            ..DesiredState::default()
        };
        let pass = |publisher: &mut Publisher, desired: &DesiredState| {
            let now = jiff::Timestamp::now();
            publisher.publish(
                &runtime,
                desired,
                &HashMap::new(),
                &certificates,
                &leadership,
                now,
            );
            publisher.counts_read()
        };
        assert_eq!(pass(&mut publisher, &desired), 1, "the first pass counts");
        // Back to back, well within the one-second floor: the counts are reused.
        assert_eq!(pass(&mut publisher, &desired), 1);
        assert_eq!(pass(&mut publisher, &desired), 1);
        desired.revision = "b".into();
        assert_eq!(
            pass(&mut publisher, &desired),
            2,
            "a new revision counts at once"
        );
        assert_eq!(pass(&mut publisher, &desired), 2);
        publisher.count_next();
        assert_eq!(
            pass(&mut publisher, &desired),
            3,
            "an operator's reconcile counts"
        );
        assert_eq!(pass(&mut publisher, &desired), 3);
    }

    /// An Affectation past maxErrors at the last counts stays gated in the early
    /// publication of the next pass: nothing new is offered before it is counted again.
    #[test]
    fn early_publication_keeps_a_closed_gate() {
        let mut gates = HashMap::new();
        gates.insert(gate_key(&assignment("1", None)), true);
        let mut assignments = vec![assignment("1", None)];
        carry_gates(&mut assignments, &gates);
        assert!(assignments[0].paused);
    }

    /// A new package version or redeploy token restarts the rollout: its gate starts open.
    #[test]
    fn a_new_version_or_token_starts_open() {
        let mut gates = HashMap::new();
        gates.insert(gate_key(&assignment("1", None)), true);
        let mut assignments = vec![assignment("2", None), assignment("1", Some("again"))];
        carry_gates(&mut assignments, &gates);
        assert!(assignments.iter().all(|a| !a.paused));
    }
}
