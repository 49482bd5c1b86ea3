//! The gauges computed at each scrape: the fleet (one `GROUP BY` over the deployments), the
//! objects of the latest report (readiness, suspension, certificate and CA expiry, CRL
//! next-update, cert-manager's names), and the state database's health.

use std::collections::BTreeMap;

use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::server::admin::{ConditionStatus, ConditionType, ObjectKind, Report};
use crate::store::db::{FleetCount, Health, State};

/// Distinct result codes shown per activation: beyond them, the rarest fold into `other`
/// (and `tessera_fleet_result_codes_folded` says how many did), so agents reporting
/// made-up codes cannot grow the series without bound. 32 covers the OCS codes
/// (`SUCCESS`, `ERR_*`, about 20) and a handful of exit codes.
pub const MAX_CODES_PER_ACTIVATION: usize = 32;

/// The label of the codes folded together.
pub const OTHER: &str = "other";

/// The reason that says an object is suspended (`tessera suspend`, `spec.suspend`).
pub const SUSPENDED: &str = "Suspended";

type Labels = Vec<(&'static str, String)>;
type Gauges = Family<Labels, Gauge>;
/// Computers per deployment state.
type PerState = BTreeMap<State, i64>;
/// Computers per result code.
type PerCode<'a> = BTreeMap<&'a str, i64>;

/// What a scrape reads besides the counters.
pub struct Scrape<'a> {
    pub report: &'a Report,
    /// `None` when the database could not be read (the fleet series are then absent).
    pub fleet: Option<&'a [FleetCount]>,
    pub health: &'a Health,
    /// Events the journal could not write since the process started (queue full, disk
    /// full): [`crate::store::db::Database::dropped_events`].
    pub dropped_events: u64,
}

/// The registry of this scrape's gauges.
pub fn registry(scrape: &Scrape<'_>) -> Registry {
    let mut registry = Registry::default();
    if let Some(fleet) = scrape.fleet {
        fleet_gauges(&mut registry, fleet);
    }
    object_gauges(&mut registry, scrape.report);
    certificate_gauges(&mut registry, scrape.report);
    let health = gauges();
    let now = match scrape.health {
        Health::Writable => "writable",
        Health::ReadOnly => "read_only",
        Health::Lost(_) => "lost",
    };
    for state in ["writable", "read_only", "lost"] {
        set(
            &health,
            vec![("state", state.to_owned())],
            i64::from(state == now),
        );
    }
    registry.register(
        "tessera_state_database_health",
        "The state database's health (1 for its current state)",
        health,
    );
    let dropped = prometheus_client::metrics::counter::Counter::<u64>::default();
    dropped.inc_by(scrape.dropped_events);
    registry.register(
        "tessera_events_dropped",
        "Events the journal could not write (queue or disk full) since the process started",
        dropped,
    );
    registry
}

fn gauges() -> Gauges {
    Family::default()
}

// Callers build each label set for this one call; taking it whole reads simplest.
#[allow(clippy::needless_pass_by_value)]
fn set(family: &Gauges, labels: Labels, value: i64) {
    family.get_or_create(&labels).set(value);
}

/// Computers per activation and state (every state, zeros too, so sums and ratios work),
/// and result codes per activation.
fn fleet_gauges(registry: &mut Registry, fleet: &[FleetCount]) {
    let computers = gauges();
    let codes = gauges();
    let folded = gauges();
    let mut by_activation: BTreeMap<&str, (PerState, PerCode<'_>)> = BTreeMap::new();
    for line in fleet {
        let (states, codes) = by_activation.entry(&line.activation).or_default();
        *states.entry(line.state).or_default() += line.computers;
        if let Some(code) = &line.code {
            *codes.entry(code).or_default() += line.computers;
        }
    }
    for (activation, (states, by_code)) in &by_activation {
        for state in State::ALL {
            let count = states.get(&state).copied().unwrap_or(0);
            let labels = vec![
                ("activation", (*activation).to_owned()),
                ("state", state.as_str().to_owned()),
            ];
            set(&computers, labels, count);
        }
        // The most frequent codes keep their own series (ties by name, so the choice holds
        // still between scrapes); the rest add up in `other`.
        let mut ranked: Vec<(&str, i64)> = by_code.iter().map(|(c, n)| (*c, *n)).collect();
        ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let kept = ranked.len().min(MAX_CODES_PER_ACTIVATION);
        let mut shown: BTreeMap<&str, i64> = ranked[..kept].iter().copied().collect();
        let rest: i64 = ranked[kept..].iter().map(|(_, n)| n).sum();
        if rest > 0 {
            *shown.entry(OTHER).or_default() += rest;
        }
        for (code, count) in shown {
            let labels = vec![
                ("activation", (*activation).to_owned()),
                ("code", code.to_owned()),
            ];
            set(&codes, labels, count);
        }
        let labels = vec![("activation", (*activation).to_owned())];
        set(&folded, labels, (ranked.len() - kept) as i64);
    }
    registry.register(
        "tessera_fleet_computers",
        "Computers targeted by each activation, by deployment state",
        computers,
    );
    registry.register(
        "tessera_fleet_result_codes",
        "Computers whose last result for each activation carries each code (the rarest beyond a cap fold into code=\"other\")",
        codes,
    );
    registry.register(
        "tessera_fleet_result_codes_folded",
        "Distinct result codes of each activation counted under code=\"other\"",
        folded,
    );
}

/// Readiness per object (cert-manager's and Flux's per-object `condition` series), the
/// number of objects per kind and Ready reason, and the suspended ones per kind.
fn object_gauges(registry: &mut Registry, report: &Report) {
    let ready = gauges();
    let by_reason = gauges();
    let suspended = gauges();
    let mut counts: BTreeMap<(&str, &str, &str), i64> = BTreeMap::new();
    let mut paused: BTreeMap<&str, i64> = [ObjectKind::Activation, ObjectKind::Affectation]
        .into_iter()
        .map(|k| (k.as_str(), 0))
        .collect();
    for object in &report.objects {
        let condition = object
            .conditions
            .iter()
            .find(|c| c.type_ == ConditionType::Ready);
        let (status, reason) = condition.map_or((ConditionStatus::Unknown, ""), |c| {
            (c.status, c.reason.as_str())
        });
        for value in [
            ConditionStatus::True,
            ConditionStatus::False,
            ConditionStatus::Unknown,
        ] {
            let labels = vec![
                ("kind", object.kind.as_str().to_owned()),
                ("namespace", object.namespace.clone()),
                ("name", object.name.clone()),
                ("condition", value.as_str().to_owned()),
            ];
            set(&ready, labels, i64::from(value == status));
        }
        *counts
            .entry((object.kind.as_str(), status.as_str(), reason))
            .or_default() += 1;
        // Suspension shows as a condition's reason, whichever condition carries it.
        if object.conditions.iter().any(|c| c.reason == SUSPENDED) {
            *paused.entry(object.kind.as_str()).or_default() += 1;
        }
    }
    for ((kind, status, reason), count) in counts {
        let labels = vec![
            ("kind", kind.to_owned()),
            ("ready", status.to_owned()),
            ("reason", reason.to_owned()),
        ];
        set(&by_reason, labels, count);
    }
    for (kind, count) in paused {
        set(&suspended, vec![("kind", kind.to_owned())], count);
    }
    registry.register(
        "tessera_object_ready_status",
        "The Ready condition of each object (1 for its current status)",
        ready,
    );
    registry.register(
        "tessera_objects",
        "Objects by kind, Ready status and Ready reason",
        by_reason,
    );
    registry.register(
        "tessera_objects_suspended",
        "Objects suspended (a condition with reason Suspended), by kind",
        suspended,
    );
}

/// cert-manager's certificate series, and the same for issuers (CAs) with their CRL.
fn certificate_gauges(registry: &mut Registry, report: &Report) {
    let [
        cert_expiry,
        cert_renewal,
        cert_ready,
        ca_expiry,
        ca_ready,
        crl_next,
    ] = std::array::from_fn(|_| gauges());
    for object in &report.objects {
        let (expiry, ready) = match object.kind {
            ObjectKind::Certificate => (&cert_expiry, &cert_ready),
            ObjectKind::Issuer => (&ca_expiry, &ca_ready),
            _ => continue,
        };
        let labels = || {
            vec![
                ("name", object.name.clone()),
                ("namespace", object.namespace.clone()),
            ]
        };
        let time = |key: &str| {
            object
                .details
                .get(key)?
                .as_str()?
                .parse::<jiff::Timestamp>()
                .ok()
                .map(|t| t.as_second())
        };
        if let Some(at) = time("notAfter") {
            set(expiry, labels(), at);
        }
        if object.kind == ObjectKind::Certificate
            && let Some(at) = time("renewalTime")
        {
            set(&cert_renewal, labels(), at);
        }
        if let Some(at) = time("crlNextUpdate") {
            set(&crl_next, labels(), at);
        }
        let status = object
            .conditions
            .iter()
            .find(|c| c.type_ == ConditionType::Ready)
            .map_or(ConditionStatus::Unknown, |c| c.status);
        for value in [
            ConditionStatus::True,
            ConditionStatus::False,
            ConditionStatus::Unknown,
        ] {
            let mut labels = labels();
            labels.push(("condition", value.as_str().to_owned()));
            set(ready, labels, i64::from(value == status));
        }
    }
    let described = [
        (
            "tessera_certificate_expiration_timestamp_seconds",
            "The date after which the certificate expires, in seconds since the epoch",
            cert_expiry,
        ),
        (
            "tessera_certificate_renewal_timestamp_seconds",
            "The date Tessera will renew the certificate, in seconds since the epoch",
            cert_renewal,
        ),
        (
            "tessera_certificate_ready_status",
            "The Ready condition of the certificate (1 for its current status)",
            cert_ready,
        ),
        (
            "tessera_issuer_expiration_timestamp_seconds",
            "The date after which the issuer's CA certificate expires, in seconds since the epoch",
            ca_expiry,
        ),
        (
            "tessera_issuer_ready_status",
            "The Ready condition of the issuer (1 for its current status)",
            ca_ready,
        ),
        (
            "tessera_issuer_crl_next_update_timestamp_seconds",
            "The date by which the issuer's CRL in force must be replaced, in seconds since the epoch",
            crl_next,
        ),
    ];
    for (name, help, family) in described {
        registry.register(name, help, family);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::admin::{ConditionReport, ObjectReport};

    fn render(scrape: &Scrape<'_>) -> String {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &registry(scrape)).unwrap();
        text
    }

    fn line(activation: &str, state: State, code: Option<&str>, computers: i64) -> FleetCount {
        FleetCount {
            activation: activation.to_owned(),
            state,
            code: code.map(str::to_owned),
            computers,
        }
    }

    fn object(
        kind: ObjectKind,
        name: &str,
        reason: &str,
        details: &serde_json::Value,
    ) -> ObjectReport {
        ObjectReport {
            api_version: "tessera.dev/v1alpha1".to_owned(),
            kind,
            namespace: "default".to_owned(),
            name: name.to_owned(),
            source: None,
            generation: 1,
            observed_generation: Some(1),
            source_revision: String::new(),
            details: details.as_object().cloned().unwrap_or_default(),
            conditions: vec![ConditionReport {
                type_: ConditionType::Ready,
                status: ConditionStatus::from_bool(reason == "Ready"),
                reason: reason.to_owned(),
                message: String::new(),
                last_transition_time: String::new(),
            }],
            problems: Vec::new(),
            spec: None,
            related: Vec::new(),
        }
    }

    #[test]
    fn the_fleet_counts_computers_per_state_and_codes_per_activation() {
        let fleet = [
            line("app", State::Error, Some("ERR-BAD.X"), 2),
            line("app", State::Error, Some("ERRBADX"), 1),
            line("app", State::Success, Some("SUCCESS"), 4),
            line("app", State::Waiting, None, 3),
        ];
        let text = render(&Scrape {
            report: &Report::default(),
            fleet: Some(&fleet),
            health: &Health::Writable,
            dropped_events: 0,
        });
        for expected in [
            "tessera_fleet_computers{activation=\"app\",state=\"error\"} 3\n",
            "tessera_fleet_computers{activation=\"app\",state=\"waiting\"} 3\n",
            "tessera_fleet_computers{activation=\"app\",state=\"installing\"} 0\n",
            "tessera_fleet_result_codes{activation=\"app\",code=\"ERR-BAD.X\"} 2\n",
            "tessera_fleet_result_codes{activation=\"app\",code=\"ERRBADX\"} 1\n",
            "tessera_fleet_result_codes_folded{activation=\"app\"} 0\n",
            "tessera_state_database_health{state=\"writable\"} 1\n",
            "tessera_events_dropped_total 0\n",
        ] {
            assert!(text.contains(expected), "{expected}in:\n{text}");
        }
    }

    #[test]
    fn codes_beyond_the_cap_fold_into_other_and_the_fold_is_counted() {
        let fleet: Vec<FleetCount> = (0..MAX_CODES_PER_ACTIVATION + 3)
            .map(|n| line("app", State::Error, Some(&format!("EXIT_CODE_{n:02}")), 1))
            .chain([line("app", State::Error, Some("ERR_FREQUENT"), 50)])
            .collect();
        let text = render(&Scrape {
            report: &Report::default(),
            fleet: Some(&fleet),
            health: &Health::Writable,
            dropped_events: 0,
        });
        assert!(text.contains("code=\"ERR_FREQUENT\"} 50\n"), "{text}");
        assert!(text.contains("code=\"other\"} 4\n"), "{text}");
        assert!(text.contains("tessera_fleet_result_codes_folded{activation=\"app\"} 4\n"));
        let series = text
            .lines()
            .filter(|l| l.starts_with("tessera_fleet_result_codes{"))
            .count();
        assert_eq!(series, MAX_CODES_PER_ACTIVATION + 1);
    }

    #[test]
    fn certificates_and_issuers_read_as_cert_manager_names_them() {
        let report = Report {
            ready: true,
            objects: vec![
                object(
                    ObjectKind::Certificate,
                    "agents",
                    "Ready",
                    &serde_json::json!({
                        "notAfter": "2027-01-01T00:00:00Z",
                        "renewalTime": "2026-09-01T00:00:00Z",
                    }),
                ),
                object(
                    ObjectKind::Issuer,
                    "ca",
                    "Ready",
                    &serde_json::json!({
                        "notAfter": "2036-01-01T00:00:00Z",
                        "crlNextUpdate": "2026-12-08T00:00:00Z",
                    }),
                ),
                object(
                    ObjectKind::Activation,
                    "app",
                    "Suspended",
                    &serde_json::json!({}),
                ),
            ],
            ..Report::default()
        };
        let text = render(&Scrape {
            report: &report,
            fleet: None,
            health: &Health::Writable,
            dropped_events: 0,
        });
        for expected in [
            "tessera_certificate_expiration_timestamp_seconds{name=\"agents\",namespace=\"default\"} 1798761600",
            "tessera_certificate_renewal_timestamp_seconds{name=\"agents\",namespace=\"default\"} 1788220800",
            "tessera_certificate_ready_status{name=\"agents\",namespace=\"default\",condition=\"True\"} 1",
            "tessera_certificate_ready_status{name=\"agents\",namespace=\"default\",condition=\"False\"} 0",
            "tessera_issuer_expiration_timestamp_seconds{name=\"ca\",namespace=\"default\"} 2082758400",
            "tessera_issuer_crl_next_update_timestamp_seconds{name=\"ca\",namespace=\"default\"} 1796688000",
            "tessera_object_ready_status{kind=\"Activation\",namespace=\"default\",name=\"app\",condition=\"False\"} 1",
            "tessera_objects{kind=\"Activation\",ready=\"False\",reason=\"Suspended\"} 1",
            "tessera_objects_suspended{kind=\"Activation\"} 1",
            "tessera_objects_suspended{kind=\"Affectation\"} 0",
        ] {
            assert!(text.contains(expected), "{expected}\nin:\n{text}");
        }
        assert!(
            !text.contains("tessera_fleet_computers{"),
            "no database, no fleet series"
        );
    }
}
