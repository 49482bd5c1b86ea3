//! What happened to an object, read from the change between two of its statuses: the one
//! derivation behind Kubernetes Events (`sources::kube`) and the state database's journal
//! (`tessera events`), so both tell the same story. Pure: statuses in, events out.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::meta::{CONDITION_READY, CONDITION_STALLED, CONDITION_TRUE};
use super::{CertificateStatus, IssuerStatus, Kind, PackageStatus};

/// cert-manager's condition on Certificates: whether an issuance is due, and once done,
/// why the last one was made.
pub const CONDITION_ISSUING: &str = "Issuing";

/// Whether an event is news or trouble, as Kubernetes Events type them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    /// `Normal` or `Warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// One thing that happened to an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusEvent {
    pub type_: EventType,
    /// Why, in one word (`Built`, `Renewed`, a condition's reason).
    pub reason: String,
    /// What, for people (may be empty).
    pub message: String,
    /// What Tessera did (`Reconcile`, `Build`, `Issue`, `Rollover`): Kubernetes Events' action.
    pub action: &'static str,
}

/// The events a status change deserves: the `Ready` condition changing (its reason is the
/// event's reason, a Warning when the object is stalled), a Certificate issued or renewed,
/// a Package built, an Issuer's CA rollover moving to its next phase. One event per reason:
/// a Package becoming Ready as `Built` is the same news as its new package id, told once
/// (with the id). `before` is `None` for an object never seen.
pub fn status_events(
    kind: Kind,
    before: Option<&Map<String, Value>>,
    after: &Map<String, Value>,
) -> Vec<StatusEvent> {
    let status = after;
    let mut found = Vec::new();
    let ready_after = condition(after, CONDITION_READY);
    let ready_before = before.and_then(|b| condition(b, CONDITION_READY));
    if let Some((status, reason, message)) = &ready_after
        && ready_before.as_ref().map(|(s, r, _)| (s, r)) != Some((status, reason))
    {
        let stalled =
            condition(after, CONDITION_STALLED).is_some_and(|(s, _, _)| s == CONDITION_TRUE);
        found.push(StatusEvent {
            type_: if stalled {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.clone(),
            message: message.clone(),
            action: "Reconcile",
        });
    }
    // The kinds' own facts, read through their typed statuses.
    if kind == Kind::Certificate
        && let Some(after) = typed::<CertificateStatus>(Some(after))
        && let Some(revision) = after.revision
        && typed::<CertificateStatus>(before).and_then(|b| b.revision) != Some(revision)
    {
        let serial = after
            .serial_number
            .map(|s| format!(", serial {s}"))
            .unwrap_or_default();
        // Why it was issued, as the `Issuing` condition says once it is done.
        let why = condition(status, CONDITION_ISSUING)
            .map(|(_, _, message)| message)
            .filter(|message| !message.is_empty())
            .map(|message| format!(" ({message})"))
            .unwrap_or_default();
        found.push(StatusEvent {
            type_: EventType::Normal,
            reason: if revision == 1 { "Issued" } else { "Renewed" }.into(),
            message: format!(
                "revision {revision}{serial}, valid until {}{why}",
                after.not_after.map(|t| t.0.to_string()).unwrap_or_default()
            ),
            action: "Issue",
        });
    }
    if kind == Kind::Package
        && let Some(after) = typed::<PackageStatus>(Some(after))
        && let Some(id) = after.package_id
        && typed::<PackageStatus>(before)
            .and_then(|b| b.package_id)
            .as_ref()
            != Some(&id)
    {
        found.push(StatusEvent {
            type_: EventType::Normal,
            reason: "Built".into(),
            message: format!(
                "package id {id}, {} fragments",
                after.fragments.unwrap_or_default()
            ),
            action: "Build",
        });
    }
    if kind == Kind::Issuer
        && let Some(after) = typed::<IssuerStatus>(Some(after))
        && let Some(before) = typed::<IssuerStatus>(before)
        && before.rollover_phase != after.rollover_phase
    {
        found.push(StatusEvent {
            type_: EventType::Normal,
            reason: "Rollover".into(),
            message: match (&before.rollover_phase, &after.rollover_phase) {
                (_, Some(phase)) => format!("CA rollover: {phase}"),
                (Some(_), None) => format!(
                    "CA rollover complete: serial {}",
                    after.serial_number.unwrap_or_default()
                ),
                (None, None) => String::new(),
            },
            action: "Rollover",
        });
    }
    // The Ready event comes first; a later one with the same reason says more.
    let mut seen = HashSet::new();
    let mut kept: Vec<StatusEvent> = found
        .into_iter()
        .rev()
        .filter(|event| seen.insert(event.reason.clone()))
        .collect();
    kept.reverse();
    kept
}

/// A kind's facts read from its status JSON, as the typed struct of this module's kinds.
/// The conditions are left out: they are read on their own, and one written by hand
/// (without `lastTransitionTime`) must not hide the facts.
fn typed<T: serde::de::DeserializeOwned>(status: Option<&Map<String, Value>>) -> Option<T> {
    let mut facts = status?.clone();
    facts.remove("conditions");
    serde_json::from_value(Value::Object(facts)).ok()
}

/// The (status, reason, message) of condition `type_` in a status.
fn condition(status: &Map<String, Value>, type_: &str) -> Option<(String, String, String)> {
    let conditions = status.get("conditions")?.as_array()?;
    let found = conditions.iter().find(|c| c["type"] == type_)?;
    let text = |name: &str| found[name].as_str().unwrap_or_default().to_owned();
    Some((text("status"), text("reason"), text("message")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn a_build_is_one_built_event_and_a_failed_one_a_warning() {
        let built = map(json!({
            "packageId": "17", "fragments": 2,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Built", "message": "m"}],
        }));
        let found = status_events(Kind::Package, None, &built);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].reason.as_str(), found[0].action),
            ("Built", "Build")
        );
        assert_eq!(found[0].message, "package id 17, 2 fragments");
        assert!(status_events(Kind::Package, Some(&built), &built).is_empty());
        let failed = map(json!({
            "packageId": "17", "fragments": 2,
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "BuildFailed", "message": "no such file"},
                {"type": "Stalled", "status": "True", "reason": "BuildFailed", "message": ""},
            ],
        }));
        let found = status_events(Kind::Package, Some(&built), &failed);
        assert_eq!(found.len(), 1);
        assert_eq!(
            (found[0].type_, found[0].reason.as_str()),
            (EventType::Warning, "BuildFailed")
        );
    }

    #[test]
    fn a_renewal_and_a_rollover_step_are_told() {
        let issued =
            map(json!({"revision": 1, "serialNumber": "0a", "notAfter": "2027-01-01T00:00:00Z"}));
        let renewed = map(json!({
            "revision": 2, "serialNumber": "0b", "notAfter": "2027-06-01T00:00:00Z",
            "conditions": [{"type": "Issuing", "status": "False", "reason": "Issued",
                "message": "issued because the certificate is due for renewal"}],
        }));
        let found = status_events(Kind::Certificate, Some(&issued), &renewed);
        assert_eq!(found[0].reason, "Renewed");
        assert_eq!(
            found[0].message,
            "revision 2, serial 0b, valid until 2027-06-01T00:00:00Z (issued because the \
             certificate is due for renewal)"
        );
        assert_eq!(
            status_events(Kind::Certificate, None, &issued)[0].reason,
            "Issued"
        );

        let plain = map(json!({"serialNumber": "01"}));
        let overlap = map(json!({"serialNumber": "01", "rolloverPhase": "Overlap"}));
        let found = status_events(Kind::Issuer, Some(&plain), &overlap);
        assert_eq!(found[0].message, "CA rollover: Overlap");
        let done = map(json!({"serialNumber": "02"}));
        let found = status_events(Kind::Issuer, Some(&overlap), &done);
        assert_eq!(found[0].message, "CA rollover complete: serial 02");
    }
}
