//! Deployment-state writes per second of the state database, on SQLite and on PostgreSQL,
//! with a simulated fleet of 10,000 agents checking in.
//!
//! `cargo bench --bench store` registers 10,000 computers (one inventory each), then lets
//! every agent check in once through the store, as the server's handlers do on the
//! blocking pool (8 threads, the PostgreSQL pool's size): its contact (written: the last
//! one is older than `CONTACT_PRECISION`), a new deployment armed, offered (`notified`), and
//! its result (`success`), each a transaction with its history event. It prints write
//! transactions per second and the time per check-in, at 1 and 8 threads.
//!
//! SQLite: a file in a temporary directory, WAL, `synchronous = NORMAL` (as served).
//! PostgreSQL: `TESSERA_BENCH_POSTGRES` (a URL), or else a throwaway server that
//! `scripts/postgres.sh` starts under /tmp with PostgreSQL's durable defaults (Debian's
//! `postgresql`; `scripts/bench-setup.sh` installs it), once as configured (every commit
//! flushed to disk) and once with `synchronous_commit = off` (commits reach the disk within
//! a fraction of a second, as with SQLite's `NORMAL`). Skipped, with a message, when
//! neither is there. `TESSERA_BENCH_AGENTS` changes the fleet size. It prints figures; it
//! asserts nothing.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "common/postgres.rs"]
mod throwaway_postgres;

use tessera::store::db::{CONTACT_PRECISION, Change, Database, Facts, State};

use throwaway_postgres::Throwaway;

/// The simulated fleet.
const AGENTS: usize = 10_000;
/// Threads writing at once: the PostgreSQL pool's size (and the blocking pool's usual load).
const THREADS: [usize; 2] = [1, 8];
/// Write transactions per check-in: contact, arm, notify, result.
const WRITES_PER_CHECK_IN: usize = 4;

fn main() {
    let agents = std::env::var("TESSERA_BENCH_AGENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(AGENTS);
    println!("state database: {agents} agents checking in (contact, arm, notify, result)");
    println!();
    println!("| database | threads | writes/s | check-ins/s | median check-in | p99 check-in |");
    println!("| --- | --- | --- | --- | --- | --- |");

    for threads in THREADS {
        let dir = tempfile::tempdir().unwrap();
        let db = Database::open(&dir.path().join("state.db")).unwrap();
        run("SQLite (WAL, synchronous=NORMAL)", &db, agents, threads);
    }

    let started;
    let url = match std::env::var("TESSERA_BENCH_POSTGRES") {
        Ok(url) if !url.is_empty() => {
            started = None;
            url
        }
        _ => match Throwaway::start() {
            Some(server) => {
                let url = server.url.clone();
                started = Some(server);
                url
            }
            None => {
                println!();
                println!(
                    "PostgreSQL skipped: set TESSERA_BENCH_POSTGRES, or install Debian's \
                     postgresql (scripts/bench-setup.sh) for a throwaway server"
                );
                return;
            }
        },
    };
    for (label, options) in [
        ("PostgreSQL (synchronous_commit=on)", ""),
        (
            "PostgreSQL (synchronous_commit=off)",
            "-c synchronous_commit=off",
        ),
    ] {
        for threads in THREADS {
            let schema = fresh_schema(&url);
            let mut config: postgres::Config = url.parse().unwrap();
            config.options(&format!("-c search_path={schema} {options}"));
            let db = Database::postgres_with(config).unwrap();
            run(label, &db, agents, threads);
        }
    }
    drop(started);
}

/// Registers the fleet, then times one check-in of every agent over `threads` threads.
fn run(label: &str, db: &Database, agents: usize, threads: usize) {
    let device = |n: usize| format!("bench-{n:05}-2026-01-01-00-00-00");
    let registered = 1_000_000;
    for n in 0..agents {
        let facts = Facts {
            name: format!("bench-{n:05}"),
            os_name: "Debian GNU/Linux 12".into(),
            os_version: "12".into(),
            tags: vec!["lab".into()],
            ip_addresses: vec![format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255)],
            history: Vec::new(),
        };
        db.record_inventory(&device(n), &facts, b"inventory", registered)
            .unwrap();
    }
    let now = registered + CONTACT_PRECISION;
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    let mut took: Vec<Duration> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let mut took = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= agents {
                            return took;
                        }
                        let begun = Instant::now();
                        check_in(db, &device(n), now);
                        took.push(begun.elapsed());
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let elapsed = started.elapsed().as_secs_f64();
    took.sort();
    let at = |q: f64| took[((took.len() - 1) as f64 * q) as usize];
    println!(
        "| {label} | {threads} | {:.0} | {:.0} | {:.2} ms | {:.2} ms |",
        (agents * WRITES_PER_CHECK_IN) as f64 / elapsed,
        agents as f64 / elapsed,
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3
    );
}

/// One agent's check-in, as the handlers write it.
fn check_in(db: &Database, device: &str, now: i64) {
    let (computer, deployments) = db.contact(device, now).unwrap();
    assert_eq!(computer.last_contact, now, "the contact was written");
    assert!(deployments.is_empty());
    db.apply(
        device,
        &[Change::Arm {
            activation: "default/hello".into(),
            package: "default/hello".into(),
            package_id: "1234567890".into(),
            token: String::new(),
        }],
        now,
    )
    .unwrap();
    db.apply(
        device,
        &[Change::Notify {
            activation: "default/hello".into(),
        }],
        now,
    )
    .unwrap();
    let updated = db
        .record_result(
            device,
            "1234567890",
            State::Success,
            Some("SUCCESS"),
            None,
            now,
        )
        .unwrap();
    assert_eq!(
        updated,
        tessera::store::db::Filed::Recorded(vec!["default/hello".into()])
    );
}

/// A schema of its own on the server at `url`, so runs never see each other's rows.
fn fresh_schema(url: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let schema = format!(
        "bench_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    );
    let mut admin = postgres::Client::connect(url, postgres::NoTls).unwrap();
    admin
        .batch_execute(&format!("CREATE SCHEMA {schema}"))
        .unwrap();
    schema
}
