//! The fleet simulator of `cargo bench --bench fleet`, at a small size against a test
//! server: the same code (included from `benches/fleet/`), so the bench keeps working.
//! Counts only, never timings.

#[path = "../../benches/fleet/native.rs"]
mod native;
// Also the agents of `wave_kill.rs` (a file included twice is a clippy error).
#[path = "../../benches/fleet/sim.rs"]
pub(crate) mod sim;

use std::sync::atomic::Ordering;
use std::time::Duration;

/// OCS and native agents of the small fleet.
const OCS: usize = 20;
const NATIVE: usize = 5;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_registers_and_files_every_result_of_the_wave() {
    let dir = crate::support::quickstart_copy();
    // Only the wave is deployed: the quickstart's own packages would be offered too.
    std::fs::remove_dir_all(dir.path().join("packages")).unwrap();
    std::fs::remove_file(dir.path().join("affectations.yaml")).unwrap();
    let running = crate::support::start(dir.path()).await;
    let (https, _) = crate::support::addresses(&running).await;
    let state = dir.path().join(".tessera");
    let token = crate::support::token(&state, i64::try_from(NATIVE).unwrap(), 3600);
    let target = sim::Target {
        https: https.parse().unwrap(),
        admin: running.admin_address,
        server_ca: crate::support::server_ca(dir.path()),
        config: dir.path().to_owned(),
        token: token.reveal(),
        pid: None,
    };
    let plan = sim::Plan {
        ocs: OCS,
        native: NATIVE,
        hour: Duration::from_secs(2),
        steady_hours: 1,
        connections: 4,
        native_workers: 2,
    };
    let outcome = sim::run(plan, target).await;

    let errors = outcome.timings.first_errors.lock().unwrap().clone();
    assert_eq!(
        outcome.timings.errors.load(Ordering::Relaxed),
        0,
        "{errors:?}"
    );
    assert_eq!(
        outcome.registered,
        i64::try_from(OCS + NATIVE).unwrap(),
        "every agent registered and targeted by the wave"
    );
    assert_eq!(
        outcome.wave_successes,
        i64::try_from(OCS + NATIVE).unwrap(),
        "every result of the wave filed"
    );
    assert_eq!(outcome.wave_reported, OCS + NATIVE);
    let count = |kind| outcome.timings.summary(kind).0;
    // Three hours: first contact, one steady hour, the wave.
    assert_eq!(count(sim::Kind::Prolog), 3 * OCS);
    assert_eq!(
        count(sim::Kind::Inventory),
        OCS,
        "one inventory each, at first contact"
    );
    assert_eq!(count(sim::Kind::Result), OCS);
    assert_eq!(count(sim::Kind::Enroll), NATIVE);
    assert_eq!(count(sim::Kind::CheckIn), 3 * NATIVE);
    assert_eq!(count(sim::Kind::Report), NATIVE);
    assert!(count(sim::Kind::Fragment) >= OCS && count(sim::Kind::NativeFragment) >= NATIVE);
    assert_eq!(outcome.hours.len(), 3);
    running.stop().await.unwrap();
}
