//! Draining: a package version that stops being current (its Package edited, or its Package
//! or Activation removed) is not yanked from agents that are downloading it. It stays served
//! (`info` and fragments, OCS and native) while any computer notified of it has not reported
//! on it and is not stale, and at most for the Server's `download.drainGrace`; then the next
//! pass prunes it. New offers always name the current version: only the routing table serves
//! a draining one, no assignment offers it.
//!
//! Each served version's route is recorded beside its files (`route.json`), so a version
//! whose Package is gone, or changed, is still served as it was, also after a restart; the
//! time it stopped being current is kept beside it too (`retired`).

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;

use crate::reconcile::outcome::{self, Outcome};
use crate::resources::{DrainingVersion, Kind, ObjectKey, PackageStatus};
use crate::server::agent::{PackageRoute, Routes};
use crate::server::deployments::{DRAINING_SETTING, Draining};
use crate::store::db::Database;
use crate::store::fragments::FragmentStore;

/// What becomes of a version that is no longer current, at one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Still served: `downloading` computers may need it, until `until` at the latest; the
    /// next pass is due at `next` (the grace's end, or the first of them going stale).
    Serve {
        downloading: usize,
        until: i64,
        next: i64,
    },
    /// Pruned by this pass.
    Over(End),
}

/// Why a drain ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Every computer notified of it has reported on it or is stale (or none was notified).
    Answered,
    /// The grace period is over, whoever may still be downloading it.
    GraceOver,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "every computer notified of it has reported or is stale",
            Self::GraceOver => "its drain grace period is over",
        }
    }
}

/// The drain decision for a version no longer current since `retired` (Unix seconds), at
/// `now`: `offers` holds, for each computer with an open offer of it, the time of its last
/// word on it; an offer older than `stale_after` is stale. All in seconds.
pub fn decide(retired: i64, grace: i64, stale_after: i64, offers: &[i64], now: i64) -> Decision {
    let until = retired.saturating_add(grace);
    if now >= until {
        return Decision::Over(End::GraceOver);
    }
    let live: Vec<i64> = offers
        .iter()
        .copied()
        .filter(|since| since.saturating_add(stale_after) > now)
        .collect();
    match live.iter().min() {
        None => Decision::Over(End::Answered),
        Some(first) => Decision::Serve {
            downloading: live.len(),
            until,
            next: first.saturating_add(stale_after).min(until),
        },
    }
}

/// A served version's route as recorded beside its files.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RecordedRoute {
    name: String,
    success_exit_codes: Vec<i32>,
    priority: u8,
    action: crate::protocol::v1::Action,
    format: Option<String>,
}

impl From<&PackageRoute> for RecordedRoute {
    fn from(route: &PackageRoute) -> Self {
        Self {
            name: route.name.clone(),
            success_exit_codes: route.success_exit_codes.clone(),
            priority: route.priority,
            action: route.action.clone(),
            format: route.format.clone(),
        }
    }
}

impl From<RecordedRoute> for PackageRoute {
    fn from(recorded: RecordedRoute) -> Self {
        Self {
            name: recorded.name,
            success_exit_codes: recorded.success_exit_codes,
            priority: recorded.priority,
            action: recorded.action,
            format: recorded.format,
        }
    }
}

/// The versions draining, between passes.
#[derive(Debug)]
pub struct Drains {
    store: PathBuf,
    /// The versions served last pass though not current.
    draining: Vec<Draining>,
    /// When the next pass is due for them, if any drains.
    wake: Option<i64>,
    /// What the leader last wrote for `tessera status`.
    shown: Option<Vec<Draining>>,
}

impl Drains {
    /// Drains of the fragment store below `state_dir`.
    pub fn new(state_dir: &std::path::Path) -> Self {
        Self {
            store: state_dir.join("download"),
            draining: Vec::new(),
            wake: None,
            shown: None,
        }
    }

    /// One pass: records the routes of the current versions in `routes`, decides each
    /// superseded version's fate and adds those still draining to `routes`. Only the leader
    /// writes what `tessera status` reads. A store or database that cannot be read keeps
    /// what drains served (nothing is pruned on a guess) until the grace period ends.
    pub fn step(
        &mut self,
        db: &Database,
        routes: &mut Routes,
        grace: i64,
        leading: bool,
        now: i64,
    ) {
        let store = match FragmentStore::open(&self.store) {
            Ok(store) => store,
            Err(error) => {
                tracing::warn!(error = %crate::error_chain(&error), "failed to open the fragment store to drain superseded packages");
                return;
            }
        };
        for (id, route) in &routes.packages {
            let recorded =
                serde_json::to_vec_pretty(&RecordedRoute::from(route)).unwrap_or_default();
            if let Err(error) = store
                .record_route(id, &recorded)
                .and_then(|_| store.reinstate(id))
            {
                tracing::warn!(package = %id, error = %crate::error_chain(&error), "failed to record a package's route");
            }
        }
        let before: BTreeSet<String> = self.draining.iter().map(|d| d.package_id.clone()).collect();
        let mut draining = Vec::new();
        let mut wake: Option<i64> = None;
        for id in store.ids().unwrap_or_default() {
            if routes.packages.contains_key(&id) {
                continue;
            }
            // Never served: nothing to drain (a Package built but never activated).
            let Some(recorded) = store
                .route(&id)
                .and_then(|bytes| serde_json::from_slice::<RecordedRoute>(&bytes).ok())
            else {
                continue;
            };
            let retired = store.retire(&id, now).unwrap_or(now);
            let decision = match db.open_offers(&id) {
                Ok(offers) => {
                    let since: Vec<i64> = offers.iter().map(|o| o.since).collect();
                    decide(retired, grace, routes.stale_after, &since, now)
                }
                Err(error) => {
                    tracing::warn!(package = %id, error = %crate::error_chain(&error), "failed to read who still downloads a superseded package; it stays served");
                    let until = retired.saturating_add(grace);
                    if now >= until {
                        Decision::Over(End::GraceOver)
                    } else {
                        Decision::Serve {
                            downloading: 0,
                            until,
                            next: until,
                        }
                    }
                }
            };
            match decision {
                Decision::Serve {
                    downloading,
                    until,
                    next,
                } => {
                    if !before.contains(&id) {
                        tracing::info!(package = %id, name = %recorded.name, downloading, until = %at(until), "draining a superseded package: served to the computers notified of it until they report");
                    }
                    wake = Some(wake.map_or(next, |w| w.min(next)));
                    draining.push(Draining {
                        package: recorded.name.clone(),
                        package_id: id.clone(),
                        downloading: i64::try_from(downloading).unwrap_or(i64::MAX),
                        until,
                    });
                    routes.packages.insert(id, recorded.into());
                }
                Decision::Over(end) if before.contains(&id) => {
                    tracing::info!(package = %id, name = %recorded.name, "a superseded package is no longer served: {}", end.as_str());
                }
                Decision::Over(_) => {}
            }
        }
        if leading && self.shown.as_ref() != Some(&draining) {
            let json = serde_json::to_string(&draining).unwrap_or_default();
            match db.set_setting(DRAINING_SETTING, &json) {
                Ok(()) => self.shown = Some(draining.clone()),
                Err(error) => {
                    tracing::warn!(error = %crate::error_chain(&error), "failed to record the draining packages");
                }
            }
        }
        self.draining = draining;
        self.wake = wake;
    }

    /// The ids the fragment store must keep though no Package builds them now.
    pub fn keep(&self) -> BTreeSet<String> {
        self.draining.iter().map(|d| d.package_id.clone()).collect()
    }

    /// When a drain next needs a pass (its grace's end, a computer going stale).
    pub fn wake(&self) -> Option<jiff::Timestamp> {
        self.wake
            .and_then(|at| jiff::Timestamp::from_second(at).ok())
    }

    /// Shows each draining version on its Package's status (a typed `draining` list and
    /// a sentence in the message); the Package stays Ready: its current version is.
    pub fn annotate(&self, outcomes: &mut HashMap<ObjectKey, Outcome>) {
        for (key, outcome) in outcomes.iter_mut() {
            if key.kind != Kind::Package {
                continue;
            }
            let name = crate::reconcile::routes::qualified(key);
            let mine: Vec<&Draining> = self.draining.iter().filter(|d| d.package == name).collect();
            if mine.is_empty() {
                continue;
            }
            let mut status: PackageStatus =
                serde_json::from_value(serde_json::Value::Object(outcome.details.clone()))
                    .unwrap_or_default();
            status.draining = mine
                .iter()
                .map(|d| DrainingVersion {
                    package_id: d.package_id.clone(),
                    downloading: d.downloading,
                    until: jiff::Timestamp::from_second(d.until)
                        .ok()
                        .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
                })
                .collect();
            outcome.details = outcome::details(&status);
            let said: Vec<String> = mine
                .iter()
                .map(|d| {
                    format!(
                        "package {} still served to {} computer{} until {}",
                        d.package_id,
                        d.downloading,
                        if d.downloading == 1 { "" } else { "s" },
                        at(d.until)
                    )
                })
                .collect();
            outcome.message = format!("{}; draining {}", outcome.message, said.join(", "));
        }
    }
}

/// Unix seconds as RFC 3339.
fn at(seconds: i64) -> String {
    jiff::Timestamp::from_second(seconds).map_or_else(|_| seconds.to_string(), |t| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3600;

    #[test]
    fn a_version_drains_while_a_notified_computer_has_not_reported_and_is_not_stale() {
        // Retired at 1000 with a 72 h grace, staleAfter 168 h: two computers notified.
        let grace = 72 * HOUR;
        let stale = 168 * HOUR;
        assert_eq!(
            decide(1000, grace, stale, &[900, 950], 1100),
            Decision::Serve {
                downloading: 2,
                until: 1000 + grace,
                next: 1000 + grace,
            }
        );
        // One has reported (its offer is closed, so not listed): still served for the other.
        assert!(matches!(
            decide(1000, grace, stale, &[950], 1100),
            Decision::Serve { downloading: 1, .. }
        ));
        // Both have reported: pruned at once, long before the grace ends.
        assert_eq!(
            decide(1000, grace, stale, &[], 1100),
            Decision::Over(End::Answered)
        );
    }

    #[test]
    fn a_stale_computer_does_not_hold_a_version_and_the_grace_bounds_every_drain() {
        let grace = 72 * HOUR;
        let stale = 24 * HOUR;
        // Notified 25 h ago: stale, so nobody holds it.
        let now = 30 * HOUR;
        assert_eq!(
            decide(now - HOUR, grace, stale, &[now - 25 * HOUR], now),
            Decision::Over(End::Answered)
        );
        // Notified 23 h ago: held, and looked at again when it goes stale, before the grace.
        assert_eq!(
            decide(now - HOUR, grace, stale, &[now - 23 * HOUR], now),
            Decision::Serve {
                downloading: 1,
                until: now - HOUR + grace,
                next: now + HOUR,
            }
        );
        // The grace is over: pruned whoever may still be downloading.
        assert_eq!(
            decide(0, grace, stale, &[grace - 1], grace),
            Decision::Over(End::GraceOver)
        );
        // A zero grace never drains.
        assert_eq!(
            decide(now, 0, stale, &[now], now),
            Decision::Over(End::GraceOver)
        );
    }

    #[test]
    fn a_recorded_route_reads_back_as_the_route_it_was() {
        let mut route = PackageRoute::new("default/hello", vec![0, 3010]);
        route.priority = 3;
        route.format = Some("tar.gz".into());
        let bytes = serde_json::to_vec(&RecordedRoute::from(&route)).unwrap();
        let back: PackageRoute = serde_json::from_slice::<RecordedRoute>(&bytes)
            .unwrap()
            .into();
        assert_eq!(back, route);
    }
}
