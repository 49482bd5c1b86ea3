//! The fleet simulator: how `tessera serve` holds up as the fleet grows.
//!
//! `cargo bench --bench fleet` starts the release `tessera serve` on loopback ports with a
//! quickstart-like configuration, once per fleet size and state database, and plays the
//! fleet's hours against it (see `fleet/sim.rs`): first contact with inventories and
//! enrollment, hourly contacts, then a deployment wave (an Activation added to the
//! configuration directory mid-run) that every agent fetches and reports on. One simulated
//! hour takes `--hour` seconds of real time (default 30: a 120x speed-up).
//!
//! For each size it prints the server's resident memory (`VmRSS`, peak `VmHWM`) sampled
//! through the run, the database size, the server's CPU seconds per 1,000 agent contacts,
//! and the median and 99th percentile of each kind of request; then a CSV and an SVG plot of
//! memory and p99 against fleet size under `target/fleet/` (the README shows a copy kept in
//! `benches/fleet/`, with the CSV it was drawn from).
//!
//! ```text
//! cargo bench --bench fleet -- --sizes 1000,10000,100000 --engines sqlite,postgres \
//!     --hour 60 --native-share 10 --connections 16
//! ```
//!
//! `--wrap "heaptrack -o /tmp/fleet-heap"` runs the server under a profiler;
//! `--log info` keeps the server's INFO lines (counted per contact). Client and server share
//! the machine's cores: each hour shows the CPU every other process used. It prints
//! figures; it asserts nothing.

// A benchmark reads top to bottom as the run it measures; the 100-line limit is for `src/`.
#![allow(clippy::too_many_lines)]

#[allow(dead_code)] // copy_tree is for the quickstart benches.
mod common;
#[path = "fleet/native.rs"]
mod native;
#[path = "fleet/report.rs"]
mod report;
#[path = "fleet/server.rs"]
mod server;
#[path = "fleet/sim.rs"]
mod sim;
#[path = "common/postgres.rs"]
mod throwaway_postgres;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use server::{Engine, Served};

/// The fleet simulator's flags (after `--`).
#[derive(Debug, Parser)]
struct Flags {
    /// Fleet sizes (computers: OCS and native agents together), comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [1_000usize, 10_000])]
    sizes: Vec<usize>,
    /// State databases: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_values_t = [String::from("sqlite")])]
    engines: Vec<String>,
    /// Real seconds per simulated hour.
    #[arg(long, default_value_t = 30.0)]
    hour: f64,
    /// Hours of hourly contacts between first contact and the wave.
    #[arg(long, default_value_t = 1)]
    steady_hours: u32,
    /// Percent of the fleet that is Tessera's own agent (the rest are OCS agents). Each
    /// native agent costs an enrollment (a certificate signed) and a full TLS handshake
    /// with a client certificate per contact.
    #[arg(long, default_value_t = 10.0)]
    native_share: f64,
    /// Keep-alive connections the OCS agents share.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Native agents contacting at once (each on its own connection).
    #[arg(long, default_value_t = 8)]
    native_workers: usize,
    /// A command to run the server under (e.g. `heaptrack -o /tmp/fleet-heap`).
    #[arg(long)]
    wrap: Option<String>,
    /// The server's log level (`warn`; `info` to count its log lines per contact).
    #[arg(long, default_value = "warn")]
    log: String,
    /// Another `tessera` to measure (an older build, to compare).
    #[arg(long)]
    binary: Option<PathBuf>,
    /// Where the CSV and the SVG go (default `target/fleet/`).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

fn main() {
    let flags = Flags::parse();
    let binary = flags
        .binary
        .clone()
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_tessera")));
    let engines: Vec<Engine> = flags
        .engines
        .iter()
        .map(|e| match e.as_str() {
            "sqlite" => Engine::Sqlite,
            "postgres" | "postgresql" => Engine::Postgres,
            other => panic!("--engines: {other:?} is neither sqlite nor postgres"),
        })
        .collect();
    let hour = Duration::from_secs_f64(flags.hour);
    println!(
        "fleet bench: one simulated hour in {:.0} s ({:.0}x), {} steady hour(s), {:.0}% native agents, OCS agents on {} keep-alive connections, `{}`",
        hour.as_secs_f64(),
        3600.0 / hour.as_secs_f64(),
        flags.steady_hours,
        flags.native_share,
        flags.connections,
        binary.display()
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut rows = Vec::new();
    for &engine in &engines {
        for &size in &flags.sizes {
            let native = ((size as f64) * flags.native_share / 100.0).round() as usize;
            let plan = sim::Plan {
                ocs: size - native.min(size),
                native: native.min(size),
                hour,
                steady_hours: flags.steady_hours,
                connections: flags.connections,
                native_workers: flags.native_workers,
            };
            let (served, outcome, metrics) = runtime.block_on(async {
                let served =
                    Served::start(&binary, engine, flags.wrap.as_deref(), &flags.log).await;
                let target = sim::Target {
                    https: served.https,
                    admin: served.admin,
                    server_ca: served.server_ca(),
                    config: served.config.clone(),
                    token: served.token(&binary, plan.native),
                    pid: Some(served.pid),
                };
                eprintln!(
                    "fleet bench: {} computers on {} ({} OCS, {} native), server pid {}",
                    size,
                    engine.name(),
                    plan.ocs,
                    plan.native,
                    served.pid
                );
                let outcome = sim::run(plan.clone(), target).await;
                let metrics = sim::admin_get(served.admin, "/metrics")
                    .await
                    .map(|m| String::from_utf8_lossy(&m).into_owned())
                    .unwrap_or_default();
                (served, outcome, metrics)
            });
            // Outside the runtime: the PostgreSQL client blocks.
            let row = report::Row::of(engine, &plan, outcome, &served, &metrics);
            drop(served);
            print!("{}", row.render());
            rows.push(row);
        }
    }
    let out = flags.out.unwrap_or_else(|| {
        std::env::var_os("CARGO_TARGET_DIR")
            .map_or_else(
                || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"),
                PathBuf::from,
            )
            .join("fleet")
    });
    report::write_files(&out, &rows);
}
