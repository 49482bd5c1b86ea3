//! One publication of the routes, step by step: the Activations of built packages, the
//! Affectations' assignments (with their staged rollouts), and the counts read back for
//! their statuses. [`super::Publisher::publish`] runs the steps in order; the Server's part
//! and the drains stay with the `Publisher`, which keeps state between passes.

use super::*;
use crate::reconcile::health;
use crate::resources::SuspendedBy;

/// What one publication builds, step by step (see [`Publisher::publish`]).
pub(super) struct Publishing<'a> {
    pub(super) runtime: &'a Runtime,
    pub(super) desired: &'a DesiredState,
    pub(super) leadership: &'a Leadership,
    pub(super) now: jiff::Timestamp,
    /// The Server, if one is declared and actionable.
    pub(super) server: Option<(ObjectKey, ServerSpec)>,
    pub(super) routes: Routes,
    pub(super) listen: Listen,
    pub(super) outcomes: HashMap<ObjectKey, Outcome>,
    /// Activations whose package is built, by key.
    pub(super) activations: HashMap<ObjectKey, ActiveActivation>,
    /// When each staged rollout's next stage begins, by Affectation.
    pub(super) wakes: HashMap<String, jiff::Timestamp>,
    /// Activations and Affectations an operator suspended.
    pub(super) suspended: HashSet<ObjectKey>,
    /// What suspends each assignment, by Affectation (`namespace/name`).
    pub(super) suspensions: HashMap<String, SuspendedBy>,
}

impl Publishing<'_> {
    /// What suspends `key`, whose `spec.suspend` is `spec`: the spec first (only a commit
    /// lifts it), else an operator's override.
    pub(super) fn suspended_by(&self, key: &ObjectKey, spec: bool) -> Option<SuspendedBy> {
        if spec {
            Some(SuspendedBy::Spec)
        } else if self.suspended.contains(key) {
            Some(SuspendedBy::Operator)
        } else {
            None
        }
    }

    /// The Activations whose package is built: their package routes and outcomes.
    pub(super) fn activations(&mut self, packages: &HashMap<ObjectKey, Outcome>) {
        // Built packages, by key: (id, success codes, os).
        let built: HashMap<&ObjectKey, String> = packages
            .iter()
            .filter(|(_, o)| o.ready)
            .filter_map(|(k, o)| outcome::package_id(&o.details).map(|id| (k, id)))
            .collect();
        for (key, resource) in self.desired.actionable() {
            let Resource::Activation(activation) = resource else {
                continue;
            };
            let package_key =
                ObjectKey::referenced(Kind::Package, &key.namespace, &activation.spec.package_ref);
            let package = self
                .desired
                .entries
                .get(&package_key)
                .and_then(|e| e.resource());
            let (Some(id), Some(Resource::Package(package))) = (built.get(&package_key), package)
            else {
                let outcome = dependency(
                    packages.get(&package_key),
                    &package_key,
                    format!("waiting for {package_key} to be built"),
                );
                self.outcomes.insert(key.clone(), outcome);
                continue;
            };
            self.routes.packages.insert(
                id.clone(),
                PackageRoute {
                    name: qualified(&package_key),
                    success_exit_codes: package.spec.success_exit_codes.clone(),
                    priority: u8::try_from(package.spec.priority).unwrap_or(5),
                    action: native_action(&package.spec.action),
                    format: package.spec.content.as_ref().map(|_| {
                        if package.spec.os == Os::Windows {
                            "zip"
                        } else {
                            "tar.gz"
                        }
                        .to_owned()
                    }),
                },
            );
            self.activations.insert(
                key.clone(),
                (
                    qualified(&package_key),
                    id.clone(),
                    package.spec.os,
                    activation.spec.info_location.as_deref().map(strip_scheme),
                    activation.spec.pack_location.as_deref().map(strip_scheme),
                ),
            );
            // Suspended, the route stays: computers already notified fetch and report.
            let suspended = self.suspended_by(key, activation.spec.suspend);
            let details = outcome::details(&ActivationStatus {
                package_id: Some(id.clone()),
                suspended,
                ..ActivationStatus::default()
            });
            let outcome = match suspended {
                None => Outcome::ready(Reason::Active, format!("agents are offered package {id}")),
                Some(_) => Outcome::not_ready(
                    Reason::Suspended,
                    format!(
                        "{}: package {id} is offered to no computer not yet notified; those notified may finish",
                        health::suspended_message(suspended)
                    ),
                ),
            };
            self.outcomes
                .insert(key.clone(), outcome.with_details(details));
        }
    }

    /// Each Affectation's assignment: its targets, schedule and rollout share.
    pub(super) fn assignments(&mut self) {
        for (key, resource) in self.desired.actionable() {
            let Resource::Affectation(affectation) = resource else {
                continue;
            };
            let spec = &affectation.spec;
            let activation_key =
                ObjectKey::referenced(Kind::Activation, &key.namespace, &spec.activation_ref);
            let Some((package, id, os, info, pack)) = self.activations.get(&activation_key) else {
                let outcome = dependency(
                    self.outcomes.get(&activation_key),
                    &activation_key,
                    format!("waiting for {activation_key} to be active"),
                );
                self.outcomes.insert(key.clone(), outcome);
                continue;
            };
            let targets = &spec.targets;
            let selector = match Selector::new(
                targets.all,
                &targets.names,
                &targets.name_globs,
                &targets.tags,
                targets.os.iter().map(|os| family(*os)).collect(),
            ) {
                Ok(selector) => selector,
                Err(source) => {
                    let error = RoutesError::Targets { source };
                    self.outcomes
                        .insert(key.clone(), invalid(Reason::InvalidSpec, &error));
                    continue;
                }
            };
            let instant = |text: &Option<String>| {
                text.as_deref()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .map(|t| t.as_second())
            };
            // A staged rollout: its clock starts when this package version (and redeploy
            // token) is first assigned, and is kept in the database across restarts.
            let (share, next_stage) = self.rollout_share(key, id, spec);
            let activation_suspended = match self
                .desired
                .entries
                .get(&activation_key)
                .and_then(|e| e.resource())
            {
                Some(Resource::Activation(activation)) => activation.spec.suspend,
                _ => false,
            };
            let suspended = self
                .suspended_by(key, spec.suspend)
                .or_else(|| self.suspended_by(&activation_key, activation_suspended));
            if let Some(by) = suspended {
                self.suspensions.insert(qualified(key), by);
            }
            self.routes.assignments.push(Assignment {
                share,
                paused: suspended.is_some(),
                affectation: qualified(key),
                activation: qualified(&activation_key),
                package: package.clone(),
                package_id: id.clone(),
                package_os: family(*os),
                selector,
                redeploy: spec.redeploy.clone(),
                not_before: spec.schedule.as_ref().and_then(|s| instant(&s.not_before)),
                not_after: spec.schedule.as_ref().and_then(|s| instant(&s.not_after)),
                info_location: info.clone(),
                pack_location: pack.clone(),
            });
            if let Some(at) = next_stage {
                self.wakes.insert(qualified(key), at);
            }
        }
    }

    /// A staged rollout's share now and when its next stage begins: its clock starts when
    /// this package version (and redeploy token) is first assigned, and is kept in the
    /// database across restarts. Without a rollout, everyone at once.
    pub(super) fn rollout_share(
        &self,
        key: &ObjectKey,
        id: &str,
        spec: &crate::resources::affectation::AffectationSpec,
    ) -> (u8, Option<jiff::Timestamp>) {
        match &spec.rollout {
            None => (100, None),
            Some(rollout) => {
                let clock = format!(
                    "rollout/{}/{}/{}",
                    qualified(key),
                    id,
                    spec.redeploy.as_deref().unwrap_or("")
                );
                // The leader starts the clock; a follower reads it (and, before the leader
                // has, offers the first stage only).
                let now_text = self.now.as_second().to_string();
                let started = if self.leadership.is_leader() {
                    self.runtime.db.setting_or_insert(&clock, &now_text)
                } else {
                    self.runtime
                        .db
                        .setting(&clock)
                        .map(|at| at.unwrap_or_else(|| now_text.clone()))
                }
                .ok()
                .and_then(|at| at.parse().ok())
                .unwrap_or(self.now.as_second());
                let mut begins = started;
                let mut share = 0u8;
                let mut next = None;
                for stage in &rollout.stages {
                    begins = begins.saturating_add(
                        i64::try_from(stage.after.as_std().as_secs()).unwrap_or(i64::MAX),
                    );
                    if self.now.as_second() >= begins {
                        share = u8::try_from(stage.percent.clamp(0, 100)).unwrap_or(100);
                    } else {
                        next = jiff::Timestamp::from_second(begins).ok();
                        break;
                    }
                }
                (share, next)
            }
        }
    }

    /// Reads the whole fleet, a page at a time, to count each Affectation's targets and
    /// outcomes against the assignments published now (`fingerprint` names them); `None`
    /// when the read fails (the next pass counts again).
    pub(super) fn count(&self, fingerprint: String) -> Option<Counted> {
        let started = std::time::Instant::now();
        let mut fleet = 0;
        let stale_before = self.now.as_second() - self.routes.stale_after;
        // A page of the fleet at a time: the whole fleet read at once made memory grow
        // with the fleet and stay.
        let mut counts: HashMap<String, deployments::Counts> = HashMap::new();
        let mut found: HashMap<String, HashMap<String, i64>> = HashMap::new();
        let assignments = &self.routes.assignments;
        let counted = self.runtime.db.fleet_pages(|computers, rows| {
            fleet += computers.len();
            let page = deployments::counts(assignments, computers, rows, stale_before);
            for (affectation, page) in page {
                *counts.entry(affectation).or_default() += page;
            }
            error_codes(&mut found, assignments, computers, rows);
            Ok(())
        });
        match counted {
            Ok(()) => Some(Counted {
                counts,
                codes: by_frequency(found),
                fleet,
                started,
                took: started.elapsed(),
                fingerprint,
            }),
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "failed to read deployment states");
                None
            }
        }
    }

    /// The Affectations' outcomes from the last count (`counted`, none when it failed);
    /// returns the failure gate of each assignment, for the next pass's early publication.
    /// `reused`: this pass did not count, the last count is reused.
    /// Counts older than [`COUNTS_AGE_SHOWN`] at `clock` say how old in the message.
    pub(super) fn affectation_outcomes(
        &mut self,
        counted: Option<&Counted>,
        reused: bool,
        clock: std::time::Instant,
    ) -> HashMap<GateKey, bool> {
        let mut gates = HashMap::new();
        let (no_counts, no_codes) = (HashMap::new(), HashMap::new());
        let (counts, codes) = counted.map_or((&no_counts, &no_codes), |c| (&c.counts, &c.codes));
        let age = counted
            .map(|c| clock.saturating_duration_since(c.started))
            .filter(|age| *age >= COUNTS_AGE_SHOWN);
        // A reused count: the loop is woken when the next one is due, so a result that
        // arrived since (one reaching maxErrors) is counted within the spacing bound.
        let due = counted.filter(|_| reused).and_then(|c| {
            let left =
                count_spacing(c.took).saturating_sub(clock.saturating_duration_since(c.started));
            let left = jiff::SignedDuration::try_from(left).ok()?;
            (!left.is_zero())
                .then(|| self.now.checked_add(left).ok())
                .flatten()
        });
        for assignment in &mut self.routes.assignments {
            let Some(key) =
                self.desired.entries.keys().find(|k| {
                    k.kind == Kind::Affectation && qualified(k) == assignment.affectation
                })
            else {
                continue;
            };
            let c = counts
                .get(&assignment.affectation)
                .copied()
                .unwrap_or_default();
            let rollout = match self.desired.entries.get(key).and_then(|e| e.resource()) {
                Some(Resource::Affectation(a)) => a.spec.rollout.clone(),
                _ => None,
            };
            let rollout = rollout.map(|rollout| {
                // Too many errors pause it: nothing new is offered until it is fixed (a new
                // package version or redeploy token restarts the rollout).
                let gated = rollout.max_errors.is_some_and(|max| c.error >= max);
                assignment.paused |= gated;
                gates.insert(gate_key(assignment), gated);
                RolloutStatus {
                    percent: i64::from(assignment.share),
                    paused: gated,
                    next_stage: self
                        .wakes
                        .get(&assignment.affectation)
                        .map(ToString::to_string),
                }
            });
            let facts = RolloutFacts {
                package_id: &assignment.package_id,
                counts: c,
                error_codes: codes
                    .get(&assignment.affectation)
                    .cloned()
                    .unwrap_or_default(),
                rollout,
                suspended: self.suspensions.get(&assignment.affectation).copied(),
            };
            let mut outcome = affectation_outcome(&facts);
            if let Some(age) = age {
                outcome.message =
                    format!("{} (counts as of {} s ago)", outcome.message, age.as_secs());
            }
            outcome.wake = self
                .wakes
                .get(&assignment.affectation)
                .copied()
                .into_iter()
                .chain(due)
                .min();
            self.outcomes.insert(key.clone(), outcome);
        }
        gates
    }
}
