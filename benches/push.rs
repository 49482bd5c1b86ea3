//! Seconds from push to fleet: how long a change committed to the watched directory takes to
//! reach 1,000 connected native agents, and what holding them connected costs.
//!
//! `cargo bench --bench push` starts the release `tessera serve` on loopback ports with the
//! quickstart (agents' schedule: an hour), enrolls `TESSERA_BENCH_AGENTS` simulated native
//! agents (default 1,000; `push/native.rs`) with one token, each checks in once and then
//! holds the push channel (`GET /v1/wait`) over mutual TLS. Then it measures:
//!
//! - the idle cost per connected agent: the server's resident memory with every agent
//!   holding, minus before they connected, per agent; the server's CPU and its threads'
//!   wake-ups (context switches) beyond what it uses with no agent connected (20 s measured
//!   first), and the answered waits per agent, over `TESSERA_BENCH_IDLE_SECS` (default 60)
//!   of nothing happening;
//! - a command-only Package with its Activation and an Affectation to the agents written
//!   into the configuration directory: the time until every agent has been offered it by a
//!   check-in (goal: 5 s), and until the first result arrives (goal: 10 s).
//!
//! Client and server share the machine's cores (the bench's own CPU, the agents', is printed
//! with the server's and everyone else's). It prints figures; it asserts nothing.

// A benchmark reads top to bottom as the run it measures; the 100-line limit is for `src/`.
#![allow(clippy::too_many_lines)]

mod common;
#[path = "push/native.rs"]
mod native;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use native::{Agent, Event};

/// Agents connected by default.
const AGENTS: usize = 1_000;
/// Enrollments at once: the server gives each client address a burst of 10 attempts.
const ENROLL_CONCURRENCY: usize = 8;
/// Time allowed for the server to start and build the quickstart.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Time allowed for every agent to be offered the change before the bench gives up.
const REACH_TIMEOUT: Duration = Duration::from_secs(120);
/// The goals of issue 19.
const OFFERED_GOAL: Duration = Duration::from_secs(5);
const FIRST_RESULT_GOAL: Duration = Duration::from_secs(10);

/// The server process, killed when dropped (even when the bench panics).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    let agents: usize = env_number("TESSERA_BENCH_AGENTS").unwrap_or(AGENTS);
    let idle = Duration::from_secs(env_number("TESSERA_BENCH_IDLE_SECS").unwrap_or(60) as u64);
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_tessera"));
    let _ = rustls::crypto::ring::default_provider().install_default();
    if let Err(error) = tessera::budget::raise_fd_limit() {
        println!("could not raise the open-files limit: {error}");
    }
    let load_average = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let work = tempfile::tempdir().expect("temporary directory");
    let config = work.path().join("config");
    let [https, http, admin] = common::free_ports();
    common::copy_tree(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart"),
        &config,
    );
    let server_yaml = config.join("server.yaml");
    let text = std::fs::read_to_string(&server_yaml)
        .expect("the quickstart's server.yaml")
        .replace("https: 0.0.0.0:8443", &format!("https: {https}"))
        .replace("http: 0.0.0.0:8080", &format!("http: {http}"))
        .replace("fragLatency: 1s", "fragLatency: 0s")
        .replace("cycleLatency: 5s", "cycleLatency: 0s")
        .replace("periodLatency: 1s", "periodLatency: 0s");
    std::fs::write(&server_yaml, text).expect("write server.yaml");
    let log = work.path().join("tessera.log");
    let server = Server(
        common::serve_command(&binary, &config, admin, &log)
            .spawn()
            .expect("start tessera serve"),
    );
    let pid = server.0.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let ca_path = config.join(".tessera/certificates/default/tessera-server/ca.crt");
    let started = Instant::now();
    while !(ca_path.is_file() && std::net::TcpStream::connect(https).is_ok()) {
        assert!(
            started.elapsed() < READY_TIMEOUT,
            "the server did not start"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let token = token(&binary, &config, agents);
    let ca = std::fs::read_to_string(&ca_path).expect("the server's CA");
    let server_url = format!("https://{https}");

    let figures = runtime.block_on(async {
        // Enrolled and checked in, a few at a time.
        let enrolling = Instant::now();
        let mut enrolled = Vec::with_capacity(agents);
        let mut pending = tokio::task::JoinSet::new();
        for index in 0..agents {
            if pending.len() >= ENROLL_CONCURRENCY {
                enrolled.push(pending.join_next().await.expect("a task").expect("joined"));
            }
            let (server_url, ca, token) = (server_url.clone(), ca.clone(), token.clone());
            pending.spawn(async move { Agent::enroll(index, &server_url, &ca, &token).await });
        }
        while let Some(done) = pending.join_next().await {
            enrolled.push(done.expect("joined"));
        }
        let enrolled: Vec<Agent> = enrolled
            .into_iter()
            .map(|a| a.expect("an agent enrolls"))
            .collect();
        let enroll_time = enrolling.elapsed();
        // The enrollment connections close after the server's keep-alive timeout (20 s):
        // then the server's own idle cost, with no agent connected, is the baseline.
        tokio::time::sleep(Duration::from_secs(22)).await;
        let rss_before = rss(pid);
        let baseline_window = idle.min(Duration::from_secs(20));
        let (cpu_before, switches_before) = (Cpu::sample(pid), switches(pid));
        tokio::time::sleep(baseline_window).await;
        let cpu_baseline = Cpu::sample(pid).since(&cpu_before);
        let switches_baseline = switches(pid).saturating_sub(switches_before);

        // Every agent holds the channel.
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let mut holders = tokio::task::JoinSet::new();
        for agent in enrolled {
            holders.spawn(agent.hold(events_tx.clone()));
        }
        let mut connected = vec![false; agents];
        let mut count = 0;
        let connecting = Instant::now();
        while count < agents {
            let (index, event) = tokio::time::timeout(REACH_TIMEOUT, events.recv())
                .await
                .expect("every agent connects")
                .expect("events");
            if matches!(event, Event::Answered { .. }) && !connected[index] {
                connected[index] = true;
                count += 1;
            }
        }
        let connect_time = connecting.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_held = rss(pid);

        // Idle: nothing changes; count answers and failures and the CPU used.
        while events.try_recv().is_ok() {}
        let (cpu_before, switches_before) = (Cpu::sample(pid), switches(pid));
        tokio::time::sleep(idle).await;
        let cpu_idle = Cpu::sample(pid).since(&cpu_before);
        let switches_idle = switches(pid).saturating_sub(switches_before);
        let (mut idle_answers, mut idle_failures, mut idle_woken) = (0u64, 0u64, 0u64);
        while let Ok((_, event)) = events.try_recv() {
            match event {
                Event::Answered { woken } => {
                    idle_answers += 1;
                    idle_woken += u64::from(woken);
                }
                Event::Failed => idle_failures += 1,
                _ => {}
            }
        }

        // The change, committed to the watched directory.
        let cpu_before = Cpu::sample(pid);
        let committed = Instant::now();
        std::fs::write(config.join("packages/push-bench.yaml"), PACKAGE).expect("write");
        let mut offered = vec![false; agents];
        let (mut offered_count, mut first_result, mut first_offer, mut all_offered) =
            (0, None, None, None);
        let mut reported = 0;
        let mut failures = 0;
        while offered_count < agents || reported < agents {
            let Ok(Some((index, event))) = tokio::time::timeout(REACH_TIMEOUT, events.recv()).await
            else {
                break;
            };
            match event {
                Event::Offered { at, .. } if !offered[index] => {
                    offered[index] = true;
                    offered_count += 1;
                    first_offer.get_or_insert(at - committed);
                    if offered_count == agents {
                        all_offered = Some(at - committed);
                    }
                }
                Event::Reported { at } => {
                    reported += 1;
                    first_result.get_or_insert(at - committed);
                }
                Event::Failed => failures += 1,
                _ => {}
            }
        }
        let all_reported = committed.elapsed();
        let cpu_wave = Cpu::sample(pid).since(&cpu_before);
        holders.abort_all();
        Figures {
            agents,
            enroll_time,
            connect_time,
            rss_before,
            rss_held,
            idle,
            baseline_window,
            cpu_baseline,
            switches_baseline,
            cpu_idle,
            switches_idle,
            idle_answers,
            idle_failures,
            idle_woken,
            first_offer,
            all_offered,
            offered_count,
            first_result,
            reported,
            all_reported,
            cpu_wave,
            failures,
        }
    });
    drop(server);
    figures.print(&load_average);
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let noted: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .collect();
    println!("tessera log: {} warnings or errors", noted.len());
    for line in noted.iter().take(5) {
        println!("  {line}");
    }
}

/// The change: a command-only package for every `lab` computer.
const PACKAGE: &str = "apiVersion: tessera.dev/v1alpha1
kind: Package
metadata:
  name: push-bench
spec:
  os: linux
  action:
    execute:
      command: 'true'
---
apiVersion: tessera.dev/v1alpha1
kind: Activation
metadata:
  name: push-bench
spec:
  packageRef:
    name: push-bench
---
apiVersion: tessera.dev/v1alpha1
kind: Affectation
metadata:
  name: push-bench
spec:
  activationRef:
    name: push-bench
  targets:
    tags: [lab]
    os: [linux]
";

struct Figures {
    agents: usize,
    enroll_time: Duration,
    connect_time: Duration,
    rss_before: Option<u64>,
    rss_held: Option<u64>,
    idle: Duration,
    /// The server alone (no agent connected) for this long: its CPU and thread switches.
    baseline_window: Duration,
    cpu_baseline: CpuUse,
    switches_baseline: u64,
    cpu_idle: CpuUse,
    /// Context switches of the server's threads (each is a thread waking up or preempted).
    switches_idle: u64,
    idle_answers: u64,
    idle_failures: u64,
    /// Answers with a new generation while nothing changed: should be none.
    idle_woken: u64,
    first_offer: Option<Duration>,
    all_offered: Option<Duration>,
    offered_count: usize,
    first_result: Option<Duration>,
    reported: usize,
    all_reported: Duration,
    cpu_wave: CpuUse,
    failures: u64,
}

impl Figures {
    fn print(&self, load_average: &str) {
        let n = self.agents as f64;
        let minutes = self.idle.as_secs_f64() / 60.0;
        let seconds =
            |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()));
        let goal = |d: Option<Duration>, goal: Duration| match d {
            Some(d) if d <= goal => "met",
            _ => "NOT met",
        };
        println!(
            "push: {} simulated native agents on loopback (load average before: {})",
            self.agents,
            load_average.trim()
        );
        println!(
            "  enrolled and checked in        {:.1} s",
            self.enroll_time.as_secs_f64()
        );
        println!(
            "  all holding the channel        {:.2} s after they started",
            self.connect_time.as_secs_f64()
        );
        println!(
            "idle, every agent connected ({:.0} s):",
            self.idle.as_secs_f64()
        );
        match (self.rss_before, self.rss_held) {
            (Some(before), Some(held)) => println!(
                "  server resident memory         {:.1} MiB before, {:.1} MiB holding: {:.1} KiB per connected agent",
                before as f64 / 1048576.0,
                held as f64 / 1048576.0,
                (held.saturating_sub(before)) as f64 / 1024.0 / n
            ),
            _ => println!("  server resident memory         ?"),
        }
        let baseline_minutes = self.baseline_window.as_secs_f64() / 60.0;
        let cpu_rate = self.cpu_baseline.server / baseline_minutes;
        let switch_rate = self.switches_baseline as f64 / baseline_minutes;
        println!(
            "  server CPU                     {:.2} s in {:.0} s ({:.2} s a minute with no agent connected): {:.2} ms per agent per minute",
            self.cpu_idle.server,
            self.idle.as_secs_f64(),
            cpu_rate,
            (self.cpu_idle.server / minutes - cpu_rate).max(0.0) * 1000.0 / n
        );
        println!(
            "  server thread wake-ups         {:.0} a minute ({:.0} with no agent connected): {:.2} per agent per minute",
            self.switches_idle as f64 / minutes,
            switch_rate,
            (self.switches_idle as f64 / minutes - switch_rate).max(0.0) / n
        );
        println!(
            "  wake-ups (answered waits)      {:.2} per agent per minute ({} failed, {} with a change)",
            self.idle_answers as f64 / n / minutes,
            self.idle_failures,
            self.idle_woken
        );
        println!(
            "  CPU elsewhere                  bench (the agents) {:.2} s, other processes {:.2} s",
            self.cpu_idle.bench, self.cpu_idle.others
        );
        println!("a Package committed to the watched directory:");
        println!(
            "  first agent offered it         {}",
            seconds(self.first_offer)
        );
        println!(
            "  every agent offered it         {} ({} of {}; goal {} s: {})",
            seconds(self.all_offered),
            self.offered_count,
            self.agents,
            OFFERED_GOAL.as_secs(),
            goal(self.all_offered, OFFERED_GOAL)
        );
        println!(
            "  first result                   {} (goal {} s: {})",
            seconds(self.first_result),
            FIRST_RESULT_GOAL.as_secs(),
            goal(self.first_result, FIRST_RESULT_GOAL)
        );
        println!(
            "  results                        {} of {} in {:.2} s ({} failed exchanges)",
            self.reported,
            self.agents,
            self.all_reported.as_secs_f64(),
            self.failures
        );
        println!(
            "  CPU meanwhile                  server {:.2} s, bench (the agents) {:.2} s, other processes {:.2} s",
            self.cpu_wave.server, self.cpu_wave.bench, self.cpu_wave.others
        );
    }
}

fn env_number(name: &str) -> Option<usize> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
}

/// `tessera token create` for `uses` enrollments.
fn token(binary: &Path, config: &Path, uses: usize) -> String {
    let output = Command::new(binary)
        .args([
            "token",
            "create",
            "--ttl",
            "1h",
            "--uses",
            &uses.to_string(),
        ])
        .arg("--state")
        .arg(config.join(".tessera"))
        .output()
        .expect("tessera token create");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Context switches of every thread of a process (voluntary and not): how often its
/// threads were woken or preempted.
fn switches(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| l.contains("ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// VmRSS of a process, in bytes.
fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

/// CPU seconds used by the server, this process, and everything else.
struct Cpu {
    server: u64,
    bench: u64,
    total: u64,
}

struct CpuUse {
    server: f64,
    bench: f64,
    others: f64,
}

impl Cpu {
    fn sample(server: u32) -> Self {
        Self {
            server: ticks(server).unwrap_or(0),
            bench: ticks(std::process::id()).unwrap_or(0),
            total: busy_ticks(),
        }
    }

    fn since(&self, before: &Self) -> CpuUse {
        // Linux reports CPU in clock ticks of 1/100 s (USER_HZ).
        let seconds = |t: u64| t as f64 / 100.0;
        let server = self.server.saturating_sub(before.server);
        let bench = self.bench.saturating_sub(before.bench);
        let total = self.total.saturating_sub(before.total);
        CpuUse {
            server: seconds(server),
            bench: seconds(bench),
            others: seconds(total.saturating_sub(server + bench)),
        }
    }
}

/// utime + stime of a process, in clock ticks.
fn ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// Busy clock ticks of the whole machine (user, nice, system, irq, softirq, steal).
fn busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find_map(|line| line.strip_prefix("cpu ")) else {
        return 0;
    };
    cpu.split_whitespace()
        .enumerate()
        .filter(|(i, _)| !matches!(i, 3 | 4))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .take(6)
        .sum()
}
