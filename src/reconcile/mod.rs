//! The reconcile loop: level-triggered, each pass evaluates the latest snapshot into a
//! desired state, converges what exists towards it (certificates issued and renewed,
//! packages built), and publishes what it found: the routes the agent-facing server runs
//! on, the relay settings of `tessera gateway`, the admin report and the status files.
//! Only the leader (see `crate::leader`) writes what servers share; followers mirror it.
//!
//! About 850 lines, 810 of them code: the loop and a pass read top to bottom here. Its next seam is the
//! report (`Reconciler::report`, `server_conditions`, `problem_report`: outcomes into the
//! admin report) into `reconcile/report.rs`.

pub mod certificates;
pub mod drain;
pub mod fetch;
pub mod fragments;
pub mod gateway;
pub mod health;
pub mod outcome;
pub mod plan;
pub mod replicate;
pub mod routes;
pub mod secrets;
pub mod status;
mod steer;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::desired::{self, DesiredState};
use crate::leader::Leadership;
use crate::reconcile::certificates::{Certificates, Environment};
use crate::reconcile::fragments::Packages;
use crate::reconcile::health::dependencies_failed;
use crate::reconcile::outcome::{ConditionStatus, ConditionType, Outcome, Reason, object_kind};

use crate::resources::{API_VERSION, Kind, ObjectKey, Problem, Resource, Snapshot};
use crate::server::admin::{
    ConditionReport, ObjectReport, ProblemReport, RelatedReport, Relation, Report, SourceRef,
};
pub use health::{Condition, conditions, kstatus};
pub use steer::LEADER_SETTING;

/// Passes run at least this often even when nothing changed (level-triggered: anything that
/// drifted outside Tessera is put back).
pub const REQUEUE: Duration = Duration::from_secs(300);

/// How reconcile runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// The state directory; status files go to `status/` below it.
    pub state_dir: PathBuf,
    /// The configuration directory, to resolve file names relative to the declaring file.
    pub config_dir: PathBuf,
    /// How snapshots are evaluated.
    pub options: desired::Options,
    /// Where `passwordEnv` values come from.
    pub environment: Environment,
    /// What time it is: the system clock, or one a test controls.
    pub clock: Clock,
    /// The agent-facing runtime to publish routes to, when one runs.
    pub runtime: Option<Arc<routes::Runtime>>,
    /// The gateway to publish relay settings to, in `tessera gateway`.
    pub gateway: Option<Arc<gateway::GatewayRuntime>>,
    /// Kubernetes mode: where Issuers of type `ca` read `secretName` and where Certificates
    /// are also written, as `kubernetes.io/tls` Secrets. The state directory stays the
    /// source of truth either way.
    pub secrets: Option<Arc<dyn secrets::Secrets>>,
    /// Whether this server reconciles, or follows another that does.
    pub leadership: Leadership,
    /// Several servers share the runtime's database: the leader shares what it issues
    /// through it, and followers mirror that (see `replicate`).
    pub shared_database: bool,
}

/// The time source of the reconcile loop.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> jiff::Timestamp + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(Arc::new(jiff::Timestamp::now))
    }

    /// A clock that answers with `now`.
    pub fn new(now: impl Fn() -> jiff::Timestamp + Send + Sync + 'static) -> Self {
        Self(Arc::new(now))
    }

    /// The current time.
    pub fn now(&self) -> jiff::Timestamp {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Clock")
    }
}

/// Errors of the reconcile loop. Status files that cannot be written are not one: they are
/// reported (condition, metric, one log line per episode) and retried.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("failed to finish a reconcile pass")]
    Panicked(#[source] tokio::task::JoinError),
}

/// While status files cannot be written, passes run at least this often to retry (a freed
/// disk is noticed within this, without waiting for the regular requeue).
pub const STATUS_RETRY: Duration = Duration::from_secs(10);

/// How often a follower looks for what the leader shared (one read of one row).
pub const FOLLOW_POLL: Duration = Duration::from_secs(2);

/// What a source's channel holds, as reconcile reads it: the snapshot to act on, or none yet.
///
/// A directory or git source sends its first whole read before reconcile starts, so its
/// channel always holds a `Snapshot` to act on. The Kubernetes source's holds
/// `Option<sources::kube::Listing>`: `None` until every kind has been listed whole, and a
/// `Listing` cannot be made otherwise. No pass runs, so nothing is pruned, without one.
pub trait Input: Send + Sync + 'static {
    /// The snapshot to act on, if there is one yet.
    fn snapshot(&self) -> Option<&Snapshot>;
}

impl Input for Snapshot {
    fn snapshot(&self) -> Option<&Snapshot> {
        Some(self)
    }
}

impl<T: AsRef<Snapshot> + Send + Sync + 'static> Input for Option<T> {
    fn snapshot(&self) -> Option<&Snapshot> {
        self.as_ref().map(AsRef::as_ref)
    }
}

/// Runs passes on every new snapshot (and every `REQUEUE`) until `shutdown`; none before
/// there is a snapshot to act on (see [`Input`]). A follower also runs one as soon as the
/// leader shares something new, and one at once when its leadership changes.
pub async fn run<S: Input>(
    mut snapshots: watch::Receiver<S>,
    reports: watch::Sender<Report>,
    config: Config,
    shutdown: CancellationToken,
) -> Result<(), ReconcileError> {
    let clock = config.clock.clone();
    let mut activity = config.runtime.as_ref().map(|r| r.activity.clone());
    let mut bound = config.runtime.as_ref().map(|r| r.bound.clone());
    let mut leadership = Some(config.leadership.clone());
    // Where a follower looks for what the leader shares.
    let shared_db = config
        .runtime
        .as_ref()
        .filter(|_| config.shared_database)
        .map(|r| r.db.clone());
    let metrics = config.runtime.as_ref().map(|r| r.metrics.clone());
    let mut requests = steer::Requests::new(&config);
    let mut reconciler = Reconciler::new(config);
    // The last operator's request a pass served: a new one counts the fleet at once.
    let mut served = None;
    loop {
        let serving = requests.serving();
        if serving.is_some() && serving != served {
            reconciler.publisher.count_next();
        }
        served = serving;
        let snapshot = snapshots.borrow_and_update().snapshot().cloned();
        let Some(snapshot) = snapshot else {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                changed = snapshots.changed() => if changed.is_err() { return Ok(()) },
            }
            continue;
        };
        // What the leader had shared before this pass, for a follower to notice news.
        let generation = match &shared_db {
            Some(db) => shared_generation(db.clone()).await,
            None => None,
        };
        let now = clock.now();
        let started = std::time::Instant::now();
        // A pass archives packages and makes keys: blocking work, kept off the async workers
        // so the admin API stays responsive during a large build.
        let (returned, pass) = tokio::task::spawn_blocking(move || {
            let pass = reconciler.pass(&snapshot, now);
            (reconciler, pass)
        })
        .await
        .map_err(ReconcileError::Panicked)?;
        reconciler = returned;
        if let Some(metrics) = &metrics {
            metrics.reconciled(started.elapsed(), pass.is_ok());
            metrics.leading(reconciler.config.leadership.is_leader());
        }
        let pass = pass?;
        reports.send_replace(pass.report);
        requests.answer(serving, &reports.borrow());
        // Wake for the next renewal or retry if it comes before the regular requeue.
        let sleep = pass
            .wake
            .map(|at| at.duration_since(now).max(jiff::SignedDuration::ZERO))
            .and_then(|d| Duration::try_from(d).ok())
            .map_or(REQUEUE, |d| d.min(REQUEUE));
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            changed = snapshots.changed() => if changed.is_err() { return Ok(()) },
            () = tokio::time::sleep(sleep) => {}
            Some(()) = changed(&mut bound) => {}
            Some(()) = requests.asked() => {}
            () = leadership_changed(&mut leadership) => {}
            () = news(shared_db.as_ref(), &reconciler, generation) => {}
            Some(()) = changed(&mut activity) => {
                // Agents report in bursts: refresh the counts at most this often.
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(ACTIVITY_DEBOUNCE) => {}
                }
            }
        }
    }
}

/// Deployment counts in statuses lag agents' reports by at most this.
pub const ACTIVITY_DEBOUNCE: Duration = Duration::from_secs(1);

/// Resolves when leadership changes; never once nothing can change it.
async fn leadership_changed(leadership: &mut Option<Leadership>) {
    match leadership {
        Some(watched) => {
            if watched.changed().await.is_none() {
                *leadership = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// The generation of the files the leader shares, if it can be read.
async fn shared_generation(db: Arc<crate::store::db::Database>) -> Option<String> {
    tokio::task::spawn_blocking(move || db.setting(crate::store::db::SHARED_GENERATION))
        .await
        .ok()?
        .ok()?
}

/// For a follower on a shared database: resolves when the leader has shared something
/// since `seen`. Never for the leader, or a server alone.
async fn news(
    db: Option<&Arc<crate::store::db::Database>>,
    reconciler: &Reconciler,
    seen: Option<String>,
) {
    let Some(db) = db else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        if !reconciler.config.leadership.is_leader() && shared_generation(db.clone()).await != seen
        {
            return;
        }
    }
}

/// Resolves when `receiver` (if any) sees a new value; `None` when its sender is gone.
async fn changed<T>(receiver: &mut Option<watch::Receiver<T>>) -> Option<()> {
    match receiver {
        Some(receiver) => receiver.changed().await.ok(),
        None => std::future::pending().await,
    }
}

/// What one pass produced.
pub struct Pass {
    /// What the admin API shows.
    pub report: Report,
    /// When something is next due (a renewal, a retry), if before anything else.
    pub wake: Option<jiff::Timestamp>,
}

/// The state kept between passes.
pub struct Reconciler {
    config: Config,
    previous: Option<DesiredState>,
    certificates: Certificates,
    packages: Packages,
    publisher: routes::Publisher,
    gateway: gateway::GatewayPublisher,
    /// When each condition last changed status, so transition times stay put between passes.
    transitions: HashMap<(ObjectKey, ConditionType), (ConditionStatus, String)>,
    /// Whether the last pass was the leader's.
    led: bool,
    /// While status files cannot be written: why, and since when (RFC 3339).
    status_fault: Option<(String, String)>,
}

impl Reconciler {
    /// A reconciler that has run no pass yet.
    pub fn new(config: Config) -> Self {
        Self {
            packages: {
                // Kubernetes mode (Secrets are its API) has no files beside the objects.
                let files = match config.secrets {
                    Some(_) => fragments::ContentFiles::Absent,
                    None => fragments::ContentFiles::Readable,
                };
                let packages = Packages::new(config.state_dir.clone(), config.config_dir.clone())
                    .with_content_files(files);
                match &config.runtime {
                    Some(runtime) => packages.with_metrics(runtime.metrics.clone()),
                    None => packages,
                }
            },
            certificates: Certificates::new(
                config.state_dir.clone(),
                config.config_dir.clone(),
                config.environment.clone(),
            )
            .with_secrets(config.secrets.clone()),
            publisher: routes::Publisher::new(&config.state_dir),
            config,
            gateway: gateway::GatewayPublisher::default(),
            previous: None,
            transitions: HashMap::new(),
            led: false,
            status_fault: None,
        }
    }

    /// One pass over `snapshot` at time `now`: returns the report to publish.
    pub fn pass(
        &mut self,
        snapshot: &Snapshot,
        now: jiff::Timestamp,
    ) -> Result<Pass, ReconcileError> {
        let root = snapshot
            .root
            .clone()
            .unwrap_or_else(|| self.config.config_dir.clone());
        self.packages.set_config_dir(root.clone());
        self.certificates.set_config_dir(root);
        let desired = desired::evaluate(snapshot, self.previous.as_ref(), self.config.options);
        let empty = DesiredState::default();
        let changes = desired::changes(self.previous.as_ref().unwrap_or(&empty), &desired);
        let leadership = self.config.leadership.clone();
        let leading = leadership.is_leader();
        let shared = self
            .config
            .runtime
            .as_ref()
            .filter(|_| self.config.shared_database)
            .map(|r| (r.db.clone(), self.certificates.shared_dirs(&desired)));
        // A follower issues nothing: it takes the leader's CAs and certificates. A server
        // that has just become the leader takes them once more, so it goes on from the last
        // shared state rather than from what it had before.
        if (!leading || !self.led)
            && let Some((db, dirs)) = &shared
        {
            take_shared_files(db, &self.config.state_dir, dirs);
        }
        self.led = leading;
        self.steer_before(&desired, leading);
        let (mut outcomes, certificates_wake) = if leading {
            self.certificates.reconcile(&desired, now)
        } else {
            (self.certificates.follow(&desired), None)
        };
        self.steer_after();
        if self.previous.is_none() {
            self.serve_already_built(&desired, &leadership, now);
        }
        // Each server builds the fragments itself: archives are deterministic, so every
        // server serves the same bytes under the same package id.
        let mut packages = self.packages.build(&desired);
        if let Some(runtime) = &self.config.runtime {
            let published = self.publisher.publish(
                runtime,
                &desired,
                &packages,
                &self.certificates,
                &leadership,
                now,
            );
            outcomes.extend(published);
            self.publisher.drains().annotate(&mut packages);
        }
        // After the routes: a version whose drain ended this pass is no longer served when
        // its files go; one still draining is kept.
        self.packages.prune(&self.publisher.drains().keep());
        if let Some(runtime) = &self.config.gateway {
            let published = self.gateway.publish(runtime, &desired, &self.certificates);
            outcomes.extend(published);
        }
        if let Some((db, dirs)) = &shared
            && leadership.is_leader()
        {
            share_files(db, &self.config.state_dir, dirs, now);
        }
        outcomes.extend(packages);
        self.expire(&desired, &mut outcomes, now);
        dependencies_failed(&desired, &mut outcomes);
        // The earliest thing due: a renewal, a retry, the next stage of a rollout.
        let wake = outcomes
            .values()
            .filter_map(|o| o.wake)
            .chain(certificates_wake)
            .chain(self.publisher.drains().wake())
            .min();
        let mut report = self.report(&desired, &outcomes, now);
        self.write_status(&desired, &outcomes, &report, leadership.is_leader(), now);
        report.conditions = self.server_conditions();
        let wake = match self.status_fault {
            Some(_) => {
                let retry = now
                    .checked_add(jiff::SignedDuration::try_from(STATUS_RETRY).unwrap_or_default())
                    .ok();
                wake.into_iter().chain(retry).min()
            }
            None => wake,
        };

        self.log_pass(&desired, &changes, &report);
        self.previous = Some(desired);
        Ok(Pass { report, wake })
    }

    /// On the first pass, publishes what is already built before building anything.
    fn serve_already_built(
        &mut self,
        desired: &DesiredState,
        leadership: &Leadership,
        now: jiff::Timestamp,
    ) {
        // After a restart, agents are served what is already built (listen addresses, the
        // certificate, the routes of complete packages) before anything is built: a large
        // build must not keep the listeners down.
        if let Some(runtime) = &self.config.runtime {
            let built = status::already_built(&self.config.state_dir, desired);
            tracing::info!(
                packages = built.len(),
                "serving what is already built while the rest is reconciled"
            );
            self.publisher.publish(
                runtime,
                desired,
                &built,
                &self.certificates,
                leadership,
                now,
            );
        }
    }

    /// Logs a pass that changed something (and the first one), and each problem not seen
    /// in the pass before.
    fn log_pass(&self, desired: &DesiredState, changes: &[desired::Change], report: &Report) {
        let shown: Vec<String> = changes.iter().map(ToString::to_string).collect();
        let ready = report
            .objects
            .iter()
            .filter(|o| {
                o.conditions
                    .iter()
                    .any(|c| c.type_ == ConditionType::Ready && c.status == ConditionStatus::True)
            })
            .count();
        if !changes.is_empty() || self.previous.is_none() {
            tracing::info!(
                revision = %desired.revision,
                objects = desired.entries.len(),
                ready,
                problems = desired.problems.len(),
                changes = %shown.join(" "),
                "reconciled"
            );
        }
        for problem in &desired.problems {
            if self
                .previous
                .as_ref()
                .is_none_or(|p| !p.problems.contains(problem))
            {
                tracing::warn!(%problem, "configuration problem");
            }
        }
    }

    /// No Certificate, Issuer or Server is Ready on an expired certificate, whatever acted
    /// on it (a follower reads what the leader shared without judging it).
    fn expire(
        &self,
        desired: &DesiredState,
        outcomes: &mut HashMap<ObjectKey, Outcome>,
        now: jiff::Timestamp,
    ) {
        let end = |key: &ObjectKey, outcomes: &HashMap<ObjectKey, Outcome>| {
            outcomes
                .get(key)
                .and_then(|o| outcome::not_after(&o.details))
                .or_else(|| {
                    let (chain, _) = self.certificates.issued(key, desired)?;
                    let certificates = crate::pki::facts::pem_certificates(&chain).ok()?;
                    crate::pki::facts::read(certificates.first()?)
                        .ok()
                        .map(|f| f.not_after)
                })
        };
        let mut expired = Vec::new();
        for (key, resource) in desired.actionable() {
            let (certificate, what) = match resource {
                Resource::Certificate(_) => (key.clone(), "the certificate".to_owned()),
                Resource::Issuer(_) => {
                    let Some(at) = outcomes
                        .get(key)
                        .and_then(|o| outcome::not_after(&o.details))
                    else {
                        continue;
                    };
                    expired.push((key.clone(), "the CA certificate".to_owned(), at));
                    continue;
                }
                // A certificate from a Secret is someone else's to renew.
                Resource::Server(server) => {
                    let Some(reference) = &server.spec.certificate_ref else {
                        continue;
                    };
                    let certificate =
                        ObjectKey::referenced(Kind::Certificate, &key.namespace, reference);
                    let what = format!("the served certificate ({certificate})");
                    (certificate, what)
                }
                _ => continue,
            };
            if outcomes.get(key).is_some_and(|o| o.ready)
                && let Some(at) = end(&certificate, outcomes)
            {
                expired.push((key.clone(), what, at));
            }
        }
        for (key, what, at) in expired {
            if let Some(found) = outcomes.get_mut(&key) {
                outcome::expire(found, &what, at, now);
            }
        }
    }

    /// Writes the status files (the leader's) and what was applied; a failure (a full disk)
    /// is remembered, counted and logged once per episode, and the next pass retries.
    fn write_status(
        &mut self,
        desired: &DesiredState,
        outcomes: &HashMap<ObjectKey, Outcome>,
        report: &Report,
        leading: bool,
        now: jiff::Timestamp,
    ) {
        let written = (|| {
            // Statuses are the leader's to write.
            if leading {
                status::write(&self.config.state_dir, report)?;
            }
            if !desired.held_back {
                status::write_applied(&self.config.state_dir, desired, outcomes)?;
            }
            Ok::<(), status::StatusError>(())
        })();
        if let Some(runtime) = &self.config.runtime {
            runtime.metrics.status_written(written.is_ok());
        }
        match written {
            Ok(()) => {
                if self.status_fault.take().is_some() {
                    tracing::info!("status files are written again");
                }
            }
            Err(error) => {
                let message = crate::error_chain(&error);
                if self.status_fault.is_none() {
                    tracing::error!(
                        error = %message,
                        retry = ?STATUS_RETRY,
                        "failed to write status files; agents are still served, and every pass retries"
                    );
                }
                let since = self
                    .status_fault
                    .take()
                    .map_or_else(|| now.to_string(), |(_, since)| since);
                self.status_fault = Some((message, since));
            }
        }
    }

    /// The server's own conditions that are not `True`: status files that cannot be
    /// written, a state database that is full or lost.
    fn server_conditions(&self) -> Vec<ConditionReport> {
        use crate::server::admin::{STATE_DATABASE, STATUS_WRITTEN};
        use crate::store::db::Health;
        let mut found = Vec::new();
        if let Some((message, since)) = &self.status_fault {
            found.push(ConditionReport {
                type_: STATUS_WRITTEN,
                status: ConditionStatus::False,
                reason: Reason::WriteFailed.to_string(),
                message: format!("{message}; retried every {}s", STATUS_RETRY.as_secs()),
                last_transition_time: since.clone(),
            });
        }
        let health = self.config.runtime.as_ref().map(|r| r.db.health());
        let database = match health {
            Some(Health::ReadOnly) => Some((
                Reason::DiskFull,
                "the state database cannot be written (disk full?): what is built is served; results and inventories are refused (503) until space is freed".to_owned(),
            )),
            Some(Health::Lost(lost)) => Some((
                Reason::DatabaseLost,
                format!(
                    "the state database {lost} while the server ran: results are refused (503); restore it and restart the server"
                ),
            )),
            Some(Health::Writable) | None => None,
        };
        if let Some((reason, message)) = database {
            found.push(ConditionReport {
                type_: STATE_DATABASE,
                status: ConditionStatus::False,
                reason: reason.to_string(),
                message,
                last_transition_time: String::new(),
            });
        }
        found
    }

    fn report(
        &mut self,
        desired: &DesiredState,
        outcomes: &HashMap<ObjectKey, Outcome>,
        now: jiff::Timestamp,
    ) -> Report {
        let mut objects = Vec::with_capacity(desired.entries.len());
        let mut related = related_objects(
            desired
                .entries
                .iter()
                .filter_map(|(key, entry)| entry.resource().map(|r| (key, r))),
        );
        for (key, entry) in &desired.entries {
            let outcome = outcomes.get(key);
            let conditions = conditions(entry, outcome)
                .into_iter()
                .map(|c| {
                    let slot = self
                        .transitions
                        .entry((key.clone(), c.type_))
                        .or_insert_with(|| (c.status, now.to_string()));
                    if slot.0 != c.status {
                        *slot = (c.status, now.to_string());
                    }
                    ConditionReport {
                        type_: c.type_,
                        status: c.status,
                        reason: c.reason.to_string(),
                        message: c.message,
                        last_transition_time: slot.1.clone(),
                    }
                })
                .collect();
            objects.push(ObjectReport {
                api_version: API_VERSION.to_owned(),
                kind: object_kind(key.kind),
                namespace: key.namespace.clone(),
                name: key.name.clone(),
                source: entry.origin.as_ref().map(|o| SourceRef {
                    file: o.file.clone(),
                    line: o.line,
                }),
                generation: entry.generation,
                observed_generation: entry.observed_generation(),
                source_revision: desired.revision.clone(),
                details: outcome.map(|o| o.details.clone()).unwrap_or_default(),
                conditions,
                problems: entry
                    .problems
                    .iter()
                    .chain(&entry.dependency_problems)
                    .map(problem_report)
                    .collect(),
                spec: entry.resource().map(Resource::spec_json),
                related: related.remove(key).unwrap_or_default(),
            });
        }
        self.transitions
            .retain(|(key, _), _| desired.entries.contains_key(key));
        Report {
            revision: desired.revision.clone(),
            ready: true,
            objects,
            problems: desired
                .problems
                .iter()
                .filter(|p| p.object.is_none())
                .map(problem_report)
                .collect(),
            conditions: Vec::new(),
        }
    }
}

/// For each object, those its served version names and those whose served versions name it
/// (`tessera describe` shows them), in the order of the fields that name them.
pub(crate) fn related_objects<'a>(
    resources: impl IntoIterator<Item = (&'a ObjectKey, &'a Resource)>,
) -> HashMap<ObjectKey, Vec<RelatedReport>> {
    let mut related: HashMap<ObjectKey, Vec<RelatedReport>> = HashMap::new();
    for (key, resource) in resources {
        for (field, target) in resource.references() {
            let report = |relation, other: &ObjectKey| RelatedReport {
                relation,
                kind: object_kind(other.kind),
                namespace: other.namespace.clone(),
                name: other.name.clone(),
                field: field.clone(),
            };
            related
                .entry(key.clone())
                .or_default()
                .push(report(Relation::RefersTo, &target));
            related
                .entry(target.clone())
                .or_default()
                .push(report(Relation::ReferredBy, key));
        }
    }
    related
}

/// A follower (or a server that has just become the leader) takes the CAs and certificates
/// the leader shared; a failure is logged and retried next pass.
fn take_shared_files(
    db: &crate::store::db::Database,
    state_dir: &std::path::Path,
    dirs: &[PathBuf],
) {
    match replicate::mirror(db, state_dir, dirs) {
        Ok(0) => {}
        Ok(files) => tracing::info!(files, "took the files the leader shared"),
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "failed to take the files the leader shared")
        }
    }
}

/// The leader shares new CA and certificate files with the other servers; a failure is
/// logged and retried next pass.
fn share_files(
    db: &crate::store::db::Database,
    state_dir: &std::path::Path,
    dirs: &[PathBuf],
    now: jiff::Timestamp,
) {
    match replicate::share(db, state_dir, dirs, now.as_second()) {
        Ok(false) => {}
        Ok(true) => {
            tracing::info!("shared new CA or certificate files with the other servers")
        }
        Err(error) => {
            tracing::warn!(error = %crate::error_chain(&error), "failed to share CA and certificate files")
        }
    }
}

/// The directory of the file that declares `key`, below `config_dir`: relative file names
/// in a resource (content directories, CA files, password files) are resolved from it.
fn declaring_dir(config_dir: &std::path::Path, desired: &DesiredState, key: &ObjectKey) -> PathBuf {
    let file = desired.entries.get(key).and_then(|e| e.origin.as_ref());
    file.and_then(|origin| {
        config_dir
            .join(&origin.file)
            .parent()
            .map(std::path::Path::to_path_buf)
    })
    .unwrap_or_else(|| config_dir.to_path_buf())
}

fn problem_report(problem: &Problem) -> ProblemReport {
    ProblemReport {
        file: problem.file.clone(),
        line: problem.line,
        object: problem.object.as_ref().map(ToString::to_string),
        field: problem.field.clone(),
        message: problem.message.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_files_that_cannot_be_written_are_reported_and_retried_never_fatal() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the status directory goes: every status write fails.
        std::fs::write(dir.path().join("status"), "in the way").unwrap();
        let mut reconciler = Reconciler::new(Config {
            state_dir: dir.path().to_path_buf(),
            config_dir: dir.path().to_path_buf(),
            options: desired::Options::default(),
            environment: Environment::default(),
            clock: Clock::default(),
            runtime: None,
            gateway: None,
            secrets: None,
            leadership: Leadership::always(),
            shared_database: false,
        });
        let now = jiff::Timestamp::now();
        let pass = reconciler.pass(&Snapshot::default(), now).unwrap();
        let condition = pass
            .report
            .conditions
            .iter()
            .find(|c| c.type_ == crate::server::admin::STATUS_WRITTEN)
            .expect("a StatusWritten condition");
        assert_eq!(condition.status, ConditionStatus::False);
        assert_eq!(condition.reason, "WriteFailed");
        let retry = jiff::SignedDuration::try_from(STATUS_RETRY).unwrap();
        assert!(pass.wake.is_some_and(|at| at <= now + retry));

        // The next pass retries; once writes work the condition is gone.
        std::fs::remove_file(dir.path().join("status")).unwrap();
        let pass = reconciler.pass(&Snapshot::default(), now).unwrap();
        assert!(
            pass.report.conditions.is_empty(),
            "{:?}",
            pass.report.conditions
        );
        assert!(dir.path().join("status/problems.yaml").is_file());
    }
}
