//! The journal's recorder in `tessera serve`: follows the reports as the Kubernetes status
//! writer does, and records what changed (builds, issuance and renewals, CA rollover steps,
//! readiness), derived by the same `resources::events`, in the state database; and this
//! server becoming or ceasing to be the leader. Only the leader records object events, as
//! only it writes statuses: several servers on one database tell each story once.
//!
//! What was last seen of each object is kept in the database too (setting
//! [`SEEN_SETTING`]), so a restart, or a new leader, does not tell again what nothing
//! changed: the journal says "Built" when a package was built, not when a server started.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::running::Tasks;
use crate::leader::Leadership;
use crate::reconcile::outcome::{Reason, resource_kind};
use crate::resources::Kind;
use crate::resources::events::{EventType, status_events};
use crate::server::admin::Report;
use crate::sources::kube::status::{SETTLE, SETTLE_MAX};
use crate::store::db::Database;
use crate::store::db::journal::{self, Record};

/// The setting holding what the recorder last saw of each object (only the facts events
/// are derived from), as JSON.
const SEEN_SETTING: &str = "journalSeen";

/// The status fields events are derived from (see `resources::events`); the rest (counts,
/// messages of other conditions) changes often and tells nothing the journal records.
const WATCHED_FIELDS: &[&str] = &[
    "packageId",
    "fragments",
    "revision",
    "serialNumber",
    "notAfter",
    "rolloverPhase",
];

/// Starts the recorder: object events from `reports`, and this server's leadership changes.
pub(super) fn record_reports(
    reports: watch::Receiver<Report>,
    leadership: Leadership,
    db: Arc<Database>,
    tasks: &mut Tasks,
) {
    let watched = leadership.clone();
    let replica = replica_name();
    let leader_db = db.clone();
    tasks.spawn(|token| async move {
        record_leadership(watched, &leader_db, &replica, &token).await;
        Ok(())
    });
    tasks.spawn(|token| async move {
        follow(reports, leadership, db, token).await;
        Ok(())
    });
}

/// Records each change of leadership until `shutdown`.
async fn record_leadership(
    mut leadership: Leadership,
    db: &Arc<Database>,
    replica: &str,
    shutdown: &CancellationToken,
) {
    loop {
        let changed = tokio::select! {
            () = shutdown.cancelled() => return,
            changed = leadership.changed() => changed,
        };
        let (reason, message) = match changed {
            // Nothing can change it any more (a server alone): nothing to tell.
            None => return shutdown.cancelled().await,
            Some(true) => (
                Reason::BecameLeader,
                "this server leads: it reconciles and writes statuses",
            ),
            Some(false) => (Reason::LostLeadership, "this server follows: another leads"),
        };
        journal::record(
            db,
            Record::normal("Replica", "", replica, reason.as_str(), message),
        );
    }
}

/// Records the events of each new report, while leading, until `shutdown`.
async fn follow(
    mut reports: watch::Receiver<Report>,
    leadership: Leadership,
    db: Arc<Database>,
    shutdown: CancellationToken,
) {
    // What was seen, by `Kind/namespace/name`; `None` until read from the database (at
    // the first report led, and again after a time of following).
    let mut seen: Option<BTreeMap<String, Map<String, Value>>> = None;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = reports.changed() => if changed.is_err() {
                return shutdown.cancelled().await;
            },
        }
        if !leadership.is_leader() {
            seen = None;
            continue;
        }
        // As the Kubernetes status writer does: a Server `Pending` for the moment its
        // listeners take to bind is no news worth telling at every start.
        let latest = tokio::time::Instant::now() + SETTLE_MAX;
        loop {
            let quiet = (tokio::time::Instant::now() + SETTLE).min(latest);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(quiet) => break,
                changed = reports.changed() => if changed.is_err() {
                    return shutdown.cancelled().await;
                },
            }
        }
        let current = {
            let report = reports.borrow_and_update();
            if !report.ready {
                continue;
            }
            watched_statuses(&report)
        };
        let before = match seen.take() {
            Some(before) => before,
            None => load_seen(db.clone()).await,
        };
        let mut told = false;
        for (key, (kind, namespace, name, status)) in &current {
            for event in status_events(*kind, before.get(key), status) {
                told = true;
                let record = match event.type_ {
                    EventType::Normal => Record::normal,
                    EventType::Warning => Record::warning,
                };
                journal::record(
                    &db,
                    record(
                        kind.as_str(),
                        namespace,
                        name,
                        &event.reason,
                        &event.message,
                    ),
                );
            }
        }
        let current: BTreeMap<String, Map<String, Value>> = current
            .into_iter()
            .map(|(key, (_, _, _, status))| (key, status))
            .collect();
        if told || !current.keys().eq(before.keys()) {
            save_seen(db.clone(), &current).await;
        }
        seen = Some(current);
    }
}

/// Each object of `report` with the part of its status events are derived from.
fn watched_statuses(
    report: &Report,
) -> BTreeMap<String, (Kind, String, String, Map<String, Value>)> {
    report
        .objects
        .iter()
        .map(|object| {
            let kind = resource_kind(object.kind);
            let status = watched(&crate::reconcile::status::subresource(object));
            (
                format!("{kind}/{}/{}", object.namespace, object.name),
                (kind, object.namespace.clone(), object.name.clone(), status),
            )
        })
        .collect()
}

/// The facts of `status` that events are derived from: [`WATCHED_FIELDS`] and the
/// `Ready`, `Stalled` and `Issuing` conditions.
fn watched(status: &Map<String, Value>) -> Map<String, Value> {
    let mut kept: Map<String, Value> = WATCHED_FIELDS
        .iter()
        .filter_map(|field| Some(((*field).to_owned(), status.get(*field)?.clone())))
        .collect();
    if let Some(Value::Array(conditions)) = status.get("conditions") {
        let conditions: Vec<Value> = conditions
            .iter()
            .filter(|c| {
                ["Ready", "Stalled", "Issuing"]
                    .iter()
                    .any(|t| c["type"] == *t)
            })
            .map(|c| {
                serde_json::json!({
                    "type": c["type"], "status": c["status"],
                    "reason": c["reason"], "message": c["message"],
                })
            })
            .collect();
        kept.insert("conditions".into(), Value::Array(conditions));
    }
    kept
}

/// What the last leader saw, or nothing (then every object is news).
async fn load_seen(db: Arc<Database>) -> BTreeMap<String, Map<String, Value>> {
    let read = tokio::task::spawn_blocking(move || db.setting(SEEN_SETTING)).await;
    match read {
        Ok(Ok(Some(json))) => serde_json::from_str(&json).unwrap_or_default(),
        _ => BTreeMap::new(),
    }
}

/// Keeps what was seen for the next start or leader; a failure (a full disk) is only
/// logged: the worst outcome is events told twice.
async fn save_seen(db: Arc<Database>, seen: &BTreeMap<String, Map<String, Value>>) {
    let Ok(json) = serde_json::to_string(seen) else {
        return;
    };
    let written = tokio::task::spawn_blocking(move || db.set_setting(SEEN_SETTING, &json)).await;
    if let Ok(Err(error)) = written {
        tracing::debug!(error = %crate::error_chain(&error), "failed to keep what the journal saw");
    }
}

/// This server's name in leadership events: its host name (a pod's name in Kubernetes).
fn replica_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| format!("tessera-{}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The journal's reasons are typed ones, though the modules that write them may not
    /// import `Reason`.
    #[test]
    fn every_reason_the_journal_writes_is_a_typed_reason() {
        use crate::store::db::journal::{HISTORY_REASONS, OPERATOR_REASONS, REFUSED};
        let typed = |text: &str| Reason::ALL.iter().any(|r| r.as_str() == text);
        let derived = ["Issued", "Renewed", "Built", "Rollover"];
        let written = HISTORY_REASONS.iter().chain(&OPERATOR_REASONS);
        for reason in derived.iter().chain(written).chain(&[REFUSED]) {
            assert!(typed(reason), "{reason}");
        }
        let statuses = [
            (Kind::Certificate, json!({"revision": 1})),
            (Kind::Certificate, json!({"revision": 2})),
            (Kind::Package, json!({"packageId": "1"})),
        ];
        for (kind, status) in statuses {
            for event in status_events(kind, None, status.as_object().unwrap()) {
                assert!(derived.contains(&event.reason.as_str()), "{}", event.reason);
            }
        }
    }

    #[test]
    fn only_what_events_are_derived_from_is_kept() {
        let status = json!({
            "packageId": "7", "fragments": 1, "computers": {"success": 3},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "Built", "message": "m",
                 "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1},
                {"type": "Reconciling", "status": "False", "reason": "Built", "message": ""},
            ],
        });
        let kept = watched(status.as_object().unwrap());
        assert_eq!(
            Value::Object(kept),
            json!({
                "packageId": "7", "fragments": 1,
                "conditions": [{"type": "Ready", "status": "True", "reason": "Built", "message": "m"}],
            })
        );
    }
}
