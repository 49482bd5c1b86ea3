//! Health: pure functions from what reconcile found to the conditions kstatus readers
//! (`kubectl wait`, Flux, Argo CD) act on, one per kind where the kind needs more than its
//! outcome, each unit-tested below. Exactly one of `Ready`, `Reconciling` and `Stalled`
//! holds; `Ready` only when the desired state is achieved.
//!
//! About 880 lines, 470 of them code: one pure function per kind and their unit
//! tests, which walk each kind through its states; splitting the kinds apart would scatter
//! the one kstatus rule they share.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::desired::{DesiredState, Entry, Served};
use crate::reconcile::outcome::{self, Class, ConditionStatus, ConditionType, Outcome, Reason};
use crate::resources::affectation::{DeploymentCounts, RolloutStatus};
use crate::resources::server::ServerSpec;
use crate::resources::{AffectationStatus, Kind, ObjectKey, Problem, Resource, SuspendedBy};
use crate::server::deployments::Counts;

/// A condition before its transition time is known.
#[derive(Debug, PartialEq, Eq)]
pub struct Condition {
    pub type_: ConditionType,
    pub status: ConditionStatus,
    pub reason: Reason,
    pub message: String,
}

/// The kstatus conditions of an entry: `Ready`, `Stalled` and `Reconciling`, plus
/// `Issuing` for Certificates and the warning `PlainHttp` for a Server. `outcome` is what reconcile found for the object, if it acted.
pub fn conditions(entry: &Entry, outcome: Option<&Outcome>) -> Vec<Condition> {
    let first = |problems: &[Problem]| {
        let more = problems.len().saturating_sub(1);
        let text = problems.first().map(|p| match &p.field {
            Some(field) => format!("{field}: {}", p.message),
            None => p.message.clone(),
        });
        match (text, more) {
            (Some(text), 0) => text,
            (Some(text), more) => format!("{text} (and {more} more)"),
            (None, _) => String::new(),
        }
    };
    let (ready, reason, message): (bool, Reason, String) = match &entry.served {
        Served::Nothing => (false, Reason::InvalidSpec, first(&entry.problems)),
        Served::LastGood { generation, .. } => (
            false,
            Reason::InvalidSpec,
            format!(
                "generation {} is refused: {}; generation {generation}, the last valid version, stays in effect",
                entry.generation,
                first(&entry.problems)
            ),
        ),
        Served::Current(_) if !entry.dependency_problems.is_empty() => (
            false,
            Reason::MissingDependency,
            first(&entry.dependency_problems),
        ),
        Served::Current(_) => match (outcome, pending_part(entry.key.kind)) {
            (Some(outcome), _) => (outcome.ready, outcome.reason, outcome.message.clone()),
            (None, Some(elsewhere)) => (false, Reason::RunElsewhere, elsewhere.to_owned()),
            (None, None) => (true, Reason::Accepted, accepted(entry.key.kind).to_owned()),
        },
    };
    let mut found = kstatus(ready, reason, message);
    if let Some((issuing, reason, message)) = outcome.and_then(|o| o.issuing.clone()) {
        found.push(Condition {
            type_: ConditionType::Issuing,
            status: ConditionStatus::from_bool(issuing),
            reason,
            message,
        });
    }
    if let Some(Resource::Server(server)) = entry.resource() {
        found.extend(plain_http(&server.spec));
    }
    found
}

/// The warning `PlainHttp` of a Server that serves OCS agents over plain HTTP
/// (`spec.ocs.plainHttp`); it leaves `Ready` as it is.
pub fn plain_http(spec: &ServerSpec) -> Option<Condition> {
    if !(spec.ocs.enabled && spec.ocs.plain_http) {
        return None;
    }
    let message = match &spec.listen.http {
        Some(http) => format!(
            "OCS agents are served over plain HTTP on {http}, unencrypted and unauthenticated; tessera_ocs_plain_http_computers counts the computers still calling that way, and `tessera migration-package` makes the Package that moves them to HTTPS"
        ),
        None => "spec.ocs.plainHttp has no effect without spec.listen.http".to_owned(),
    };
    Some(Condition {
        type_: ConditionType::PlainHttp,
        status: ConditionStatus::True,
        reason: Reason::PlainHttpEnabled,
        message,
    })
}

/// kstatus's three conditions from whether the object is ready, why, and the message: not
/// ready for a progressing reason (waiting on a retry, on agents, on another object) is
/// `Reconciling`, for any other reason `Stalled`. `Ready=True` never comes with either.
pub fn kstatus(ready: bool, reason: Reason, message: String) -> Vec<Condition> {
    let progressing = !ready && reason.is_progressing();
    let stalled = !ready && !progressing;
    vec![
        Condition {
            type_: ConditionType::Ready,
            status: ConditionStatus::from_bool(ready),
            reason,
            message: message.clone(),
        },
        Condition {
            type_: ConditionType::Stalled,
            status: ConditionStatus::from_bool(stalled),
            reason: if stalled { reason } else { Reason::Accepted },
            message: if stalled {
                message.clone()
            } else {
                String::new()
            },
        },
        Condition {
            type_: ConditionType::Reconciling,
            status: ConditionStatus::from_bool(progressing),
            reason: if ready { Reason::Accepted } else { reason },
            message: if progressing { message } else { String::new() },
        },
    ]
}

/// An object waiting for another (a Certificate for its Issuer, a Server or a Gateway for
/// its Certificate) is `DependencyFailed` once that one failed: waiting would never end by
/// itself, so it is not shown as progressing.
pub fn dependencies_failed(desired: &DesiredState, outcomes: &mut HashMap<ObjectKey, Outcome>) {
    let mut found = Vec::new();
    for (key, resource) in desired.actionable() {
        let needed = match resource {
            Resource::Certificate(certificate) => Some(ObjectKey::referenced(
                Kind::Issuer,
                &key.namespace,
                &certificate.spec.issuer_ref,
            )),
            Resource::Server(server) => server.spec.certificate_ref.as_ref().map(|reference| {
                ObjectKey::referenced(Kind::Certificate, &key.namespace, reference)
            }),
            Resource::Gateway(gateway) => gateway.spec.certificate_ref.as_ref().map(|reference| {
                ObjectKey::referenced(Kind::Certificate, &key.namespace, reference)
            }),
            _ => None,
        };
        let Some(needed) = needed else { continue };
        let Some(own) = outcomes.get(key) else {
            continue;
        };
        if own.ready || !own.reason.is_progressing() {
            continue;
        }
        let judged = dependency(outcomes.get(&needed), &needed, own.message.clone());
        if judged.reason == Reason::DependencyFailed {
            found.push((key.clone(), judged));
        }
    }
    for (key, judged) in found {
        if let Some(own) = outcomes.get_mut(&key) {
            own.ready = false;
            own.reason = judged.reason;
            own.message = judged.message;
        }
    }
}

/// Kinds this process does not act on, said plainly in their status.
fn pending_part(kind: Kind) -> Option<&'static str> {
    match kind {
        Kind::Gateway => Some(
            "run by `tessera gateway --config DIR --name NAME` (in the DMZ), not by this process",
        ),
        Kind::Server
        | Kind::Issuer
        | Kind::Certificate
        | Kind::Package
        | Kind::Activation
        | Kind::Affectation => None,
    }
}

fn accepted(kind: Kind) -> &'static str {
    match kind {
        Kind::Activation => "accepted: agents are offered the package once it is built",
        Kind::Affectation => {
            "accepted: targets are matched against each computer's latest inventory"
        }
        _ => "accepted",
    }
}

/// How the listeners stand against the addresses the spec asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Listening {
    /// Nothing asked for has been bound or has failed yet: the listeners are starting.
    Starting,
    /// Every address asked for is bound.
    Serving(Vec<SocketAddr>),
    /// These binds failed (and are being retried); `bound` are listening.
    Failed {
        bound: Vec<SocketAddr>,
        failed: Vec<(SocketAddr, String)>,
    },
}

/// Matches the addresses `wanted` (port 0: any port) with those `bound`, in order, and
/// the binds that `failed` (with their error) of those wanted.
pub fn listening(
    wanted: &[SocketAddr],
    bound: &[SocketAddr],
    failed: &[(SocketAddr, String)],
) -> Listening {
    let failed: Vec<(SocketAddr, String)> = failed
        .iter()
        .filter(|(address, _)| wanted.contains(address))
        .cloned()
        .collect();
    if !failed.is_empty() {
        return Listening::Failed {
            bound: bound.to_vec(),
            failed,
        };
    }
    let mut left: Vec<SocketAddr> = bound.to_vec();
    let all_found = wanted.iter().all(|address| {
        let found = left.iter().position(|b| {
            b.ip() == address.ip() && (address.port() == 0 || b.port() == address.port())
        });
        found.map(|i| left.remove(i)).is_some()
    });
    // Otherwise some are still binding, or what is bound is the previous spec's until the
    // listeners move.
    if all_found && !bound.is_empty() {
        Listening::Serving(bound.to_vec())
    } else {
        Listening::Starting
    }
}

/// The Server's outcome once its certificate and trust are in place.
pub fn server_outcome(listening: Listening) -> Outcome {
    let list = |addresses: &[SocketAddr]| {
        addresses
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match listening {
        Listening::Starting => {
            Outcome::not_ready(Reason::Pending, "the listeners are starting".to_owned())
        }
        Listening::Serving(bound) => {
            Outcome::ready(Reason::Serving, format!("listening on {}", list(&bound)))
        }
        Listening::Failed { bound, failed } => {
            let failures = failed
                .iter()
                .map(|(address, error)| format!("{address} ({error})"))
                .collect::<Vec<_>>()
                .join(", ");
            let serving = if bound.is_empty() {
                "nothing is listening".to_owned()
            } else {
                format!("listening on {} only", list(&bound))
            };
            Outcome::not_ready(
                Reason::BindFailed,
                format!("failed to bind {failures}, trying again; {serving}"),
            )
        }
    }
}

/// What an Affectation's status is made from.
#[derive(Clone, Debug, Default)]
pub struct RolloutFacts<'a> {
    /// The package id deployed.
    pub package_id: &'a str,
    /// Targets per state.
    pub counts: Counts,
    /// Error codes reported, most frequent first, with how many targets reported each.
    pub error_codes: Vec<(String, i64)>,
    /// A staged rollout's progress, when there is one.
    pub rollout: Option<RolloutStatus>,
    /// What suspends it (or its Activation), if anything.
    pub suspended: Option<SuspendedBy>,
}

/// How many error codes the message of a failed rollout names.
const CODES_SHOWN: usize = 3;

/// Longest error code shown in a message, in characters (agents report codes verbatim).
const CODE_SHOWN_CHARS: usize = 64;

/// The Affectation's outcome, honestly: `Deploying` (progressing) while any target is
/// waiting, notified (even stale), downloading or installing, or a staged rollout has stages
/// left; `Deployed` (ready) once every target settled successfully, or there is none;
/// `DeploymentFailed` once every target settled and some failed; `RolloutPaused` when
/// `maxErrors` stopped the rollout.
pub fn affectation_outcome(facts: &RolloutFacts<'_>) -> Outcome {
    let c = &facts.counts;
    let in_flight = c.waiting + c.notified + c.stale + c.downloading + c.installing;
    let mut counts = format!(
        "package {} to {} target{}: {} success, {} error, {} waiting, {} notified, {} stale",
        facts.package_id,
        c.targets,
        if c.targets == 1 { "" } else { "s" },
        c.success,
        c.error,
        c.waiting,
        c.notified,
        c.stale
    );
    if c.downloading + c.installing > 0 {
        counts.push_str(&format!(
            ", {} downloading, {} installing",
            c.downloading, c.installing
        ));
    }
    if c.error > 0 && !facts.error_codes.is_empty() {
        let shown: Vec<String> = facts
            .error_codes
            .iter()
            .take(CODES_SHOWN)
            .map(|(code, n)| {
                let code: String = code.chars().take(CODE_SHOWN_CHARS).collect();
                format!("{code:?} ×{n}")
            })
            .collect();
        counts.push_str(&format!("; error codes: {}", shown.join(", ")));
    }
    let details = outcome::details(&AffectationStatus {
        targets: Some(c.targets),
        counts: Some(DeploymentCounts {
            waiting: c.waiting,
            notified: c.notified,
            stale: c.stale,
            downloading: c.downloading,
            installing: c.installing,
            success: c.success,
            error: c.error,
        }),
        rollout: facts.rollout.clone(),
        suspended: facts.suspended,
        ..AffectationStatus::default()
    });
    let stage_left = facts
        .rollout
        .as_ref()
        .is_some_and(|r| r.percent < 100 && !r.paused);
    let outcome = match &facts.rollout {
        // Before anything else: whatever the counts, nothing new is offered.
        _ if facts.suspended.is_some() => Outcome::not_ready(
            Reason::Suspended,
            format!(
                "{}; nothing new is offered, results are still recorded; {counts}",
                suspended_message(facts.suspended)
            ),
        ),
        Some(rollout) if rollout.paused => Outcome::not_ready(
            Reason::RolloutPaused,
            format!(
                "rollout paused at {}%: {} errors reached spec.rollout.maxErrors; {counts}",
                rollout.percent, c.error
            ),
        ),
        _ if in_flight > 0 => Outcome::not_ready(
            Reason::Deploying,
            format!("{in_flight} of {} in flight; {counts}", c.targets),
        ),
        Some(rollout) if stage_left => Outcome::not_ready(
            Reason::Deploying,
            format!(
                "rollout at {}%, next stage {}; {counts}",
                rollout.percent,
                rollout.next_stage.as_deref().unwrap_or("pending")
            ),
        ),
        _ if c.error > 0 => Outcome::not_ready(
            Reason::DeploymentFailed,
            format!("{} of {} failed; {counts}", c.error, c.targets),
        ),
        _ if c.targets == 0 => Outcome::ready(
            Reason::Deployed,
            format!("no computer matches the targets; {counts}"),
        ),
        _ => Outcome::ready(Reason::Deployed, format!("all settled; {counts}")),
    };
    outcome.with_details(details)
}

/// What holds an object suspended, in words (`None`: nothing).
pub fn suspended_message(by: Option<SuspendedBy>) -> &'static str {
    match by {
        Some(SuspendedBy::Spec) => "suspended by spec.suspend (a commit lifts it)",
        Some(SuspendedBy::Operator) => "suspended by an operator (`tessera resume` lifts it)",
        None => "not suspended",
    }
}

/// The outcome of an object waiting for `needed`, whose own outcome is `found`: `Pending`
/// while that one progresses, `DependencyFailed` (with its reason and message) once it
/// failed, since waiting would then never end by itself.
pub fn dependency(found: Option<&Outcome>, needed: &ObjectKey, waiting_for: String) -> Outcome {
    match found {
        Some(found) if !found.ready && found.reason.class() == Class::Failed => Outcome::not_ready(
            Reason::DependencyFailed,
            format!(
                "{needed} is not ready ({}): {}",
                found.reason, found.message
            ),
        ),
        _ => Outcome::not_ready(Reason::Pending, waiting_for),
    }
}

/// What the relay's connections said of the backends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Backend {
    /// No connection has needed one yet.
    #[default]
    Untried,
    /// A connection was relayed to one.
    Reachable,
    /// Since the last pass, `failures` connections could not reach any backend, and none
    /// was relayed.
    Unreachable { failures: u64 },
}

/// The backends' state from the relay's counters (relayed, backend failed) at the last
/// pass and now: a relayed connection proves one reachable; failures with none relayed say
/// none is; no connection at all tells nothing new. The counters are the relay's totals
/// over every route, so one dead route beside a live one is not seen here (its failures
/// are in `/metrics`).
pub fn backend_state(previous: Backend, before: (u64, u64), now: (u64, u64)) -> Backend {
    let relayed = now.0.saturating_sub(before.0);
    let failed = now.1.saturating_sub(before.1);
    if relayed > 0 {
        Backend::Reachable
    } else if failed > 0 {
        Backend::Unreachable { failures: failed }
    } else {
        previous
    }
}

/// The Gateway's outcome once everything it relays with is in place: `Relaying`, unless
/// its connections found no reachable backend (`BackendUnreachable`, until one is relayed
/// again). `relaying` says how it relays, `to` to where.
pub fn gateway_outcome(backend: Backend, relaying: String, to: &str) -> Outcome {
    match backend {
        Backend::Unreachable { failures } => Outcome::not_ready(
            Reason::BackendUnreachable,
            format!(
                "{failures} connection{} could not reach {to} since the last pass, and none was relayed; {relaying}",
                if failures == 1 { "" } else { "s" }
            ),
        ),
        Backend::Untried | Backend::Reachable => Outcome::ready(Reason::Relaying, relaying),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Snapshot;

    fn statuses(conditions: &[Condition]) -> Vec<(ConditionType, ConditionStatus, Reason)> {
        conditions
            .iter()
            .map(|c| (c.type_, c.status, c.reason))
            .collect()
    }

    #[test]
    fn waiting_on_an_issuer_or_a_certificate_that_failed_is_not_progress() {
        let snapshot = Snapshot {
            revision: "r".into(),
            files: vec![crate::resources::SourceFile {
                path: "all.yaml".into(),
                text: "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: ca\nspec:\n  selfSigned: {}\n---\napiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: web\nspec:\n  issuerRef:\n    name: ca\n  commonName: web\n".into(),
            }],
            problems: vec![],
            root: None,
        };
        let desired = crate::desired::evaluate(&snapshot, None, Default::default());
        assert!(desired.problems.is_empty(), "{:?}", desired.problems);
        let issuer = ObjectKey::new(Kind::Issuer, "default", "ca");
        let web = ObjectKey::new(Kind::Certificate, "default", "web");
        let mut outcomes = HashMap::from([
            (
                issuer.clone(),
                Outcome::not_ready(Reason::Pending, "waiting".into()),
            ),
            (
                web.clone(),
                Outcome::not_ready(Reason::IssuerNotReady, "waiting for Issuer/ca".into()),
            ),
        ]);
        // The issuer progresses: the certificate waits.
        dependencies_failed(&desired, &mut outcomes);
        assert_eq!(outcomes[&web].reason, Reason::IssuerNotReady);
        // The issuer failed: the certificate says so, and stalls.
        outcomes.insert(
            issuer,
            Outcome::not_ready(Reason::ErrorLoadingCA, "ca.key: not a key".into()),
        );
        dependencies_failed(&desired, &mut outcomes);
        let found = &outcomes[&web];
        assert_eq!(found.reason, Reason::DependencyFailed);
        assert!(
            found
                .message
                .ends_with("is not ready (ErrorLoadingCA): ca.key: not a key"),
            "{}",
            found.message
        );
    }

    #[test]
    fn kstatus_never_says_ready_with_reconciling_or_stalled() {
        use ConditionStatus::{False, True};
        use ConditionType::{Ready, Reconciling, Stalled};
        for reason in outcome::Reason::ALL {
            for ready in [true, false] {
                let found = kstatus(ready, *reason, "m".into());
                let status = |type_| found.iter().find(|c| c.type_ == type_).unwrap().status;
                let trues = [Ready, Reconciling, Stalled]
                    .into_iter()
                    .filter(|t| status(*t) == True)
                    .count();
                assert_eq!(trues, 1, "exactly one holds: {reason} {ready}");
                if !ready {
                    assert_eq!(
                        status(Reconciling) == True,
                        reason.is_progressing(),
                        "{reason}"
                    );
                }
            }
        }
        assert_eq!(
            statuses(&kstatus(false, Reason::Deploying, "2 notified".into())),
            [
                (Ready, False, Reason::Deploying),
                (Stalled, False, Reason::Accepted),
                (Reconciling, True, Reason::Deploying),
            ]
        );
        assert_eq!(
            statuses(&kstatus(false, Reason::Expired, "expired".into())),
            [
                (Ready, False, Reason::Expired),
                (Stalled, True, Reason::Expired),
                (Reconciling, False, Reason::Expired),
            ]
        );
        assert_eq!(
            statuses(&kstatus(true, Reason::Deployed, "all settled".into())),
            [
                (Ready, True, Reason::Deployed),
                (Stalled, False, Reason::Accepted),
                (Reconciling, False, Reason::Accepted),
            ]
        );
    }

    fn counts(waiting: i64, notified: i64, success: i64, error: i64) -> Counts {
        Counts {
            targets: waiting + notified + success + error,
            waiting,
            notified,
            success,
            error,
            ..Counts::default()
        }
    }

    fn facts(counts: Counts) -> RolloutFacts<'static> {
        RolloutFacts {
            package_id: "20260101000000",
            counts,
            error_codes: Vec::new(),
            rollout: None,
            suspended: None,
        }
    }

    /// (Ready, Reconciling, Stalled) as kstatus readers see them.
    fn read(outcome: &Outcome) -> (ConditionStatus, ConditionStatus, ConditionStatus) {
        let conditions = kstatus(outcome.ready, outcome.reason, outcome.message.clone());
        let status = |type_| {
            conditions
                .iter()
                .find(|c| c.type_ == type_)
                .map(|c| c.status)
                .unwrap()
        };
        (
            status(ConditionType::Ready),
            status(ConditionType::Reconciling),
            status(ConditionType::Stalled),
        )
    }

    use ConditionStatus::{False, True};

    #[test]
    fn a_suspended_affectation_is_never_ready_nor_reconciling_and_says_who_holds_it() {
        // Settled or in flight alike: a held rollout is not a finished one.
        for c in [counts(0, 0, 3, 0), counts(2, 1, 0, 0)] {
            for by in [SuspendedBy::Spec, SuspendedBy::Operator] {
                let outcome = affectation_outcome(&RolloutFacts {
                    suspended: Some(by),
                    ..facts(c)
                });
                assert_eq!(outcome.reason, Reason::Suspended, "{c:?}");
                assert_eq!(read(&outcome), (False, False, True), "{c:?} {by:?}");
                assert_eq!(outcome.details["suspended"], by.as_str());
                assert!(
                    outcome.message.starts_with(suspended_message(Some(by))),
                    "{}",
                    outcome.message
                );
            }
        }
        let outcome = affectation_outcome(&facts(counts(0, 0, 3, 0)));
        assert!(!outcome.details.contains_key("suspended"));
    }

    #[test]
    fn an_affectation_is_reconciling_while_any_target_is_in_flight() {
        for c in [
            counts(3, 0, 0, 0),
            counts(0, 2, 1, 0),
            counts(0, 1, 0, 2),
            Counts {
                targets: 2,
                downloading: 1,
                installing: 1,
                ..Counts::default()
            },
            Counts {
                targets: 1,
                stale: 1,
                ..Counts::default()
            },
        ] {
            let outcome = affectation_outcome(&facts(c));
            assert_eq!(outcome.reason, Reason::Deploying, "{c:?}");
            assert_eq!(read(&outcome), (False, True, False), "{c:?}");
        }
        let outcome = affectation_outcome(&facts(counts(1, 2, 3, 0)));
        assert!(
            outcome.message.starts_with("3 of 6 in flight; package 20260101000000 to 6 targets: 3 success, 0 error, 1 waiting, 2 notified, 0 stale"),
            "{}",
            outcome.message
        );
    }

    #[test]
    fn an_affectation_is_ready_only_when_every_target_succeeded_or_there_is_none() {
        let outcome = affectation_outcome(&facts(counts(0, 0, 3, 0)));
        assert_eq!(outcome.reason, Reason::Deployed);
        assert_eq!(read(&outcome), (True, False, False));
        assert!(
            outcome.message.starts_with("all settled; "),
            "{}",
            outcome.message
        );
        let none = affectation_outcome(&facts(Counts::default()));
        assert_eq!(none.reason, Reason::Deployed);
        assert_eq!(read(&none), (True, False, False));
        assert!(none.message.starts_with("no computer matches the targets"));
        assert_eq!(none.details["targets"], 0);
        assert_eq!(none.details["counts"]["success"], 0);
    }

    #[test]
    fn a_settled_affectation_with_failures_is_failed_with_its_most_frequent_codes() {
        let mut f = facts(counts(0, 0, 2, 5));
        f.error_codes = vec![
            ("ERR_EXECUTE".into(), 3),
            ("ERR_DOWNLOAD".into(), 1),
            ("ERR_TIMEOUT".into(), 1),
            ("ERR_RARE".into(), 1),
        ];
        let outcome = affectation_outcome(&f);
        assert_eq!(outcome.reason, Reason::DeploymentFailed);
        assert_eq!(read(&outcome), (False, False, True));
        assert!(
            outcome.message.starts_with("5 of 7 failed; "),
            "{}",
            outcome.message
        );
        assert!(
            outcome.message.ends_with(
                "error codes: \"ERR_EXECUTE\" ×3, \"ERR_DOWNLOAD\" ×1, \"ERR_TIMEOUT\" ×1"
            ),
            "{}",
            outcome.message
        );
        // A code as long as an agent may send is cut in the message.
        f.error_codes = vec![("E".repeat(10_000), 5)];
        let outcome = affectation_outcome(&f);
        assert!(outcome.message.len() < 300, "{}", outcome.message);
    }

    #[test]
    fn a_staged_rollout_is_deploying_until_its_last_stage_and_paused_by_its_gate() {
        let mut f = facts(counts(0, 0, 4, 0));
        f.rollout = Some(RolloutStatus {
            percent: 20,
            paused: false,
            next_stage: Some("2026-01-02T00:00:00Z".into()),
        });
        let outcome = affectation_outcome(&f);
        assert_eq!(outcome.reason, Reason::Deploying);
        assert_eq!(read(&outcome), (False, True, False));
        assert!(
            outcome
                .message
                .starts_with("rollout at 20%, next stage 2026-01-02T00:00:00Z; "),
            "{}",
            outcome.message
        );
        assert_eq!(outcome.details["rollout"]["percent"], 20);

        let mut f = facts(counts(3, 0, 0, 1));
        f.rollout = Some(RolloutStatus {
            percent: 20,
            paused: true,
            next_stage: None,
        });
        let outcome = affectation_outcome(&f);
        assert_eq!(outcome.reason, Reason::RolloutPaused);
        assert_eq!(read(&outcome), (False, False, True));
        assert!(
            outcome
                .message
                .starts_with("rollout paused at 20%: 1 errors reached spec.rollout.maxErrors; "),
            "{}",
            outcome.message
        );
        assert_eq!(outcome.details["rollout"]["paused"], true);

        // The last stage reached, all settled successfully: deployed.
        let mut f = facts(counts(0, 0, 4, 0));
        f.rollout = Some(RolloutStatus {
            percent: 100,
            paused: false,
            next_stage: None,
        });
        assert_eq!(affectation_outcome(&f).reason, Reason::Deployed);
    }

    #[test]
    fn waiting_for_what_failed_is_failed_not_pending() {
        let package = ObjectKey::new(Kind::Package, "default", "hello");
        let waiting = || "waiting for Package/hello to be built".to_owned();
        let building = dependency(None, &package, waiting());
        assert_eq!(building.reason, Reason::Pending);
        assert_eq!(read(&building), (False, True, False));
        let broken = Outcome::not_ready(Reason::BuildFailed, "setup.exe: not found".into());
        let outcome = dependency(Some(&broken), &package, waiting());
        assert_eq!(outcome.reason, Reason::DependencyFailed);
        assert_eq!(read(&outcome), (False, False, True));
        assert!(
            outcome
                .message
                .ends_with("is not ready (BuildFailed): setup.exe: not found"),
            "{}",
            outcome.message
        );
        // A dependency still progressing is waited for.
        let retrying = Outcome::not_ready(Reason::Pending, "waiting".into());
        assert_eq!(
            dependency(Some(&retrying), &package, waiting()).reason,
            Reason::Pending
        );
    }

    #[test]
    fn a_server_is_ready_only_when_every_listener_asked_for_is_bound() {
        let https: SocketAddr = "127.0.0.1:0".parse().unwrap();
        let http: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let bound_https: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(listening(&[https, http], &[], &[]), Listening::Starting);
        // The plain-HTTP listener is still binding.
        assert_eq!(
            listening(&[https, http], &[bound_https], &[]),
            Listening::Starting
        );
        let both = listening(&[https, http], &[bound_https, http], &[]);
        assert_eq!(both, Listening::Serving(vec![bound_https, http]));
        let outcome = server_outcome(both);
        assert_eq!(outcome.reason, Reason::Serving);
        assert_eq!(read(&outcome), (True, False, False));

        // The plain-HTTP listener failed to bind (its port was taken).
        let taken = vec![(http, "Address already in use (os error 98)".to_owned())];
        let partial = listening(&[https, http], &[bound_https], &taken);
        assert_eq!(
            partial,
            Listening::Failed {
                bound: vec![bound_https],
                failed: taken.clone(),
            }
        );
        let outcome = server_outcome(partial);
        assert_eq!(outcome.reason, Reason::BindFailed);
        assert_eq!(read(&outcome), (False, False, True));
        assert_eq!(
            outcome.message,
            "failed to bind 127.0.0.1:8080 (Address already in use (os error 98)), trying again; listening on 127.0.0.1:40001 only"
        );

        // Every bind failed: not Pending, but BindFailed, with the cause.
        let outcome = server_outcome(listening(&[http], &[], &taken));
        assert_eq!(outcome.reason, Reason::BindFailed);
        assert!(
            outcome.message.ends_with("nothing is listening"),
            "{}",
            outcome.message
        );

        // Still bound to the previous spec's addresses: starting on the new ones.
        let moved: SocketAddr = "127.0.0.1:9443".parse().unwrap();
        assert_eq!(
            listening(&[moved], &[bound_https], &[]),
            Listening::Starting
        );
        let outcome = server_outcome(Listening::Starting);
        assert_eq!(read(&outcome), (False, True, False));
    }

    #[test]
    fn a_gateway_whose_connections_reach_no_backend_is_not_ready_until_one_is_relayed() {
        let relaying = || "relaying (passthrough) on 127.0.0.1:1 to 10.0.0.1:8443".to_owned();
        // Nothing tried: ready (relaying starts once the Gateway is Ready).
        let state = backend_state(Backend::Untried, (0, 0), (0, 0));
        assert_eq!(state, Backend::Untried);
        assert_eq!(
            gateway_outcome(state, relaying(), "b").reason,
            Reason::Relaying
        );
        // Three failures, nothing relayed: says so.
        let state = backend_state(Backend::Untried, (0, 0), (0, 3));
        assert_eq!(state, Backend::Unreachable { failures: 3 });
        let outcome = gateway_outcome(state, relaying(), "10.0.0.1:8443");
        assert!(!outcome.ready);
        assert_eq!(outcome.reason, Reason::BackendUnreachable);
        assert!(
            outcome
                .message
                .starts_with("3 connections could not reach 10.0.0.1:8443 since the last pass"),
            "{}",
            outcome.message
        );
        // No connection since: still unreachable, as far as anyone knows.
        assert_eq!(backend_state(state, (0, 3), (0, 3)), state);
        // One relayed: reachable again, even with failures beside it.
        let state = backend_state(state, (0, 3), (1, 5));
        assert_eq!(state, Backend::Reachable);
        assert!(gateway_outcome(state, relaying(), "b").ready);
    }
}
