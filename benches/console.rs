//! Time to render each page of the web console for a fleet of 10,000 computers and 20
//! Activations (the target: under 300 ms a page).
//!
//! `cargo bench --bench console` fills an SQLite state database (a file in a temporary
//! directory, as served) with 10,000 computers, each armed with the 20 Activations' packages:
//! half of them offered, and of those a third installed and one in ten failed with an exit
//! code and some output, each with its history event; a report of 20 Packages, Activations
//! and Affectations, an Issuer and a Certificate. Then it asks each page N times through the
//! console's router (`tower::ServiceExt::oneshot`, the whole handler: database reads on the
//! blocking pool, rendering, headers) and prints p50 and p99. `TESSERA_BENCH_COMPUTERS` and
//! `TESSERA_BENCH_REQUESTS` change the sizes. It prints figures; it asserts nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::Request;
use tessera::server::admin::{
    ConditionReport, ConditionStatus, ConditionType, LeaderView, ObjectKind, ObjectReport,
    PASS_WAIT, Report, Steering, console_app, pass_channel,
};
use tessera::store::db::{Change, Database, Facts, State};
use tower::ServiceExt;

/// The fleet of the target.
const COMPUTERS: usize = 10_000;
/// Activations, each with its Package and Affectation.
const ACTIVATIONS: usize = 20;
/// Requests per page: enough for a p99 that is not the maximum of a handful.
const REQUESTS: usize = 100;

fn main() {
    let computers = env_or("TESSERA_BENCH_COMPUTERS", COMPUTERS);
    let requests = env_or("TESSERA_BENCH_REQUESTS", REQUESTS);
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Database::open(&dir.path().join("state.db")).unwrap());
    let started = Instant::now();
    fill(&db, computers);
    println!(
        "console: {computers} computers, {ACTIVATIONS} activations ({} deployments), filled in {:.1?}",
        computers * ACTIVATIONS,
        started.elapsed()
    );
    let (passes, _queue) = pass_channel();
    let app = console_app(Steering {
        db,
        reports: tokio::sync::watch::channel(report()).1,
        leader: LeaderView::this(),
        passes,
        fetch: None,
        wait: PASS_WAIT,
        replica: "bench".into(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    println!();
    println!("| page | bytes | p50 | p99 |");
    println!("| --- | --- | --- | --- |");
    for (label, uri) in [
        ("Fleet (first page)", "/ui/".to_owned()),
        (
            "Fleet (filtered: an activation in error)",
            "/ui/?activation=default%2Fact-07&state=error".to_owned(),
        ),
        ("Fleet (name glob)", "/ui/?name=pc-0*9".to_owned()),
        ("Fleet (live fragment)", "/ui/?fragment=1".to_owned()),
        (
            "Computer",
            format!("/ui/computer?id={}", device(computers / 2)),
        ),
        ("Deployments", "/ui/deployments".to_owned()),
        ("Certificates", "/ui/certificates".to_owned()),
        ("Health", "/ui/health".to_owned()),
        ("Events", "/ui/events".to_owned()),
    ] {
        let mut times = Vec::with_capacity(requests);
        let mut bytes = 0;
        for _ in 0..requests {
            let started = Instant::now();
            let response = runtime
                .block_on(
                    app.clone()
                        .oneshot(Request::get(&uri).body(Body::empty()).unwrap()),
                )
                .unwrap();
            assert!(
                response.status().is_success(),
                "{uri}: {}",
                response.status()
            );
            let body = runtime
                .block_on(axum::body::to_bytes(response.into_body(), usize::MAX))
                .unwrap();
            times.push(started.elapsed());
            bytes = body.len();
        }
        times.sort();
        println!(
            "| {label} | {bytes} | {} | {} |",
            ms(percentile(&times, 50)),
            ms(percentile(&times, 99))
        );
    }
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn device(n: usize) -> String {
    format!("pc-{n:05}-2026-01-01-00-00-00")
}

fn activation(a: usize) -> String {
    format!("default/act-{a:02}")
}

fn package_id(a: usize) -> String {
    format!("17000000{a:02}")
}

/// Every computer armed with every activation; half offered; of those, a third installed
/// and one in ten failed.
fn fill(db: &Database, computers: usize) {
    for n in 0..computers {
        let id = device(n);
        let facts = Facts {
            name: format!("pc-{n:05}"),
            os_name: "Debian GNU/Linux 12 (bookworm)".into(),
            os_version: "12".into(),
            tags: vec!["lab".into(), format!("site-{}", n % 7)],
            ip_addresses: vec![format!("10.{}.{}.{}", n / 65536, (n / 256) % 256, n % 256)],
            history: Vec::new(),
        };
        db.record_inventory(&id, &facts, b"", 1_767_225_600 + n as i64)
            .unwrap();
        let mut changes = Vec::new();
        for a in 0..ACTIVATIONS {
            changes.push(Change::Arm {
                activation: activation(a),
                package: format!("default/pkg-{a:02}"),
                package_id: package_id(a),
                token: String::new(),
            });
            if (n + a) % 2 == 0 {
                changes.push(Change::Notify {
                    activation: activation(a),
                });
            }
        }
        db.apply(&id, &changes, 1_767_229_200).unwrap();
        for a in (0..ACTIVATIONS).filter(|a| (n + a) % 2 == 0) {
            let (state, code, output) = match (n + a) % 30 {
                0 | 10 => (
                    State::Error,
                    "EXIT_CODE_2",
                    Some("installing\nfailed: disk full\n"),
                ),
                r if r % 3 == 0 => (State::Success, "SUCCESS", None),
                _ => continue,
            };
            db.record_result(
                &id,
                &package_id(a),
                state,
                Some(code),
                output,
                1_767_229_300,
            )
            .unwrap();
        }
    }
}

fn object(kind: ObjectKind, name: String, details: serde_json::Value) -> ObjectReport {
    ObjectReport {
        api_version: "tessera.dev/v1alpha1".into(),
        kind,
        namespace: "default".into(),
        name,
        source: None,
        generation: 1,
        observed_generation: Some(1),
        source_revision: "0123abcd".into(),
        details: match details {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        },
        conditions: vec![ConditionReport {
            type_: ConditionType::Ready,
            status: ConditionStatus::True,
            reason: "Succeeded".into(),
            message: "ready".into(),
            last_transition_time: "2026-01-01T00:00:00Z".into(),
        }],
        problems: Vec::new(),
        spec: None,
        related: Vec::new(),
    }
}

fn report() -> Report {
    let mut objects = vec![
        object(
            ObjectKind::Issuer,
            "ca".into(),
            serde_json::json!({ "notAfter": "2036-01-01T00:00:00Z" }),
        ),
        object(
            ObjectKind::Certificate,
            "web".into(),
            serde_json::json!({ "notAfter": "2026-04-01T00:00:00Z", "renewalTime": "2026-03-01T00:00:00Z", "revision": 3 }),
        ),
    ];
    for a in 0..ACTIVATIONS {
        objects.push(object(
            ObjectKind::Package,
            format!("pkg-{a:02}"),
            serde_json::json!({ "packageId": package_id(a), "size": 123_456, "fragments": 3 }),
        ));
        objects.push(object(
            ObjectKind::Activation,
            format!("act-{a:02}"),
            serde_json::json!({}),
        ));
        objects.push(object(
            ObjectKind::Affectation,
            format!("aff-{a:02}"),
            serde_json::json!({ "targets": COMPUTERS }),
        ));
    }
    Report {
        revision: "0123abcd".into(),
        ready: true,
        objects,
        problems: Vec::new(),
        conditions: Vec::new(),
    }
}
