//! The fleet simulator's core: OCS agents and Tessera's own agents playing a fleet's hours
//! against one running server, shared by `cargo bench --bench fleet` and the test that
//! keeps it working (`tests/it/fleet_sim.rs` includes this file and `native.rs`).
//!
//! A run is three or more simulated hours, each compressed into `Plan::hour` of real time:
//!
//! 1. first contact: every OCS agent sends a PROLOG, is asked for an inventory and sends one
//!    (a small desktop's, 2-3 KB zlib); every native agent enrolls with a token and checks
//!    in;
//! 2. steady hours (`Plan::steady_hours`): every agent makes its hourly contact (PROLOG, or
//!    a native check-in), nothing to deploy;
//! 3. the wave: an Activation (with its Package and an Affectation for every Linux
//!    computer) is written into the configuration directory; once it is built, every agent
//!    makes its hourly contact, is offered the package, fetches it (OCS: `info` and
//!    fragments; native: manifest and fragments) and reports success.
//!
//! Within an hour each agent contacts at its own moment, spread evenly in a shuffled order,
//! from a pool of workers: OCS agents share `Plan::connections` keep-alive HTTPS
//! connections (a site's agents behind one proxy; the server's per-request cost, not its
//! TLS handshakes), native agents open a connection of their own per contact (their client
//! certificate is their identity), as the agent does. A late contact (all workers busy) is
//! counted as lag, so a run shows whether the simulated rate was kept.

// Both users include this file; neither uses every item.
#![allow(dead_code)]

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::native;

/// Any single exchange taking longer than this is an error, not a slow sample.
pub(crate) const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Response heads larger than this are refused.
const MAX_HEAD: usize = 64 << 10;
/// The wave's package must be built within this (a few KiB: seconds at most).
const WAVE_BUILD_TIMEOUT: Duration = Duration::from_secs(120);
/// After the wave's hour, results still in flight get this long to be counted.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Memory readings per simulated hour.
const SAMPLES_PER_HOUR: u32 = 12;
/// Names of the wave's objects in the configuration directory.
pub(crate) const WAVE: &str = "fleet-wave";
/// Software rows of a simulated inventory: with the rest of the sections, about 2.5 KB
/// once zlib-compressed, what the Unix agent sends for a small server.
const SOFTWARE_ROWS: usize = 200;

/// What to play.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub ocs: usize,
    pub native: usize,
    /// Real time of one simulated hour.
    pub hour: Duration,
    /// Hours of hourly contacts between first contact and the wave.
    pub steady_hours: u32,
    /// Keep-alive connections (and workers) the OCS agents share.
    pub connections: usize,
    /// Workers playing native agents at once (each with its own connection).
    pub native_workers: usize,
}

/// Where the server is and what the agents need to reach it.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    pub https: SocketAddr,
    pub admin: SocketAddr,
    /// The CA certificate agents trust for the server (PEM file).
    pub server_ca: PathBuf,
    /// The configuration directory the server watches (the wave is written there).
    pub config: PathBuf,
    /// An enrollment token good for every native agent.
    pub token: String,
    /// The server's process, for memory and CPU readings (`None`: in this process).
    pub pid: Option<u32>,
}

/// A kind of request, timed on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Prolog,
    Inventory,
    Info,
    Fragment,
    Result,
    Enroll,
    CheckIn,
    Manifest,
    NativeFragment,
    Report,
}

impl Kind {
    pub(crate) const ALL: [Self; 10] = [
        Self::Prolog,
        Self::Inventory,
        Self::Info,
        Self::Fragment,
        Self::Result,
        Self::Enroll,
        Self::CheckIn,
        Self::Manifest,
        Self::NativeFragment,
        Self::Report,
    ];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Prolog => "OCS PROLOG",
            Self::Inventory => "OCS inventory",
            Self::Info => "OCS info",
            Self::Fragment => "OCS fragment",
            Self::Result => "OCS result",
            Self::Enroll => "native enroll",
            Self::CheckIn => "native check-in",
            Self::Manifest => "native manifest",
            Self::NativeFragment => "native fragment",
            Self::Report => "native report",
        }
    }
}

/// Latencies per kind of request (microseconds), and the errors.
#[derive(Default)]
pub(crate) struct Timings {
    latencies: Mutex<Vec<Vec<u32>>>,
    pub errors: AtomicUsize,
    /// The first few errors, in words.
    pub first_errors: Mutex<Vec<String>>,
}

impl Timings {
    pub(crate) fn record(&self, kind: Kind, took: Duration) {
        let micros = u32::try_from(took.as_micros()).unwrap_or(u32::MAX);
        let mut latencies = self.latencies.lock().expect("timings");
        if latencies.is_empty() {
            latencies.resize(Kind::ALL.len(), Vec::new());
        }
        latencies[kind as usize].push(micros);
    }

    pub(crate) fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut first = self.first_errors.lock().expect("errors");
        if first.len() < 5 {
            first.push(what);
        }
    }

    /// Requests of `kind` so far: where the next hour's start.
    pub(crate) fn mark(&self, kind: Kind) -> usize {
        let latencies = self.latencies.lock().expect("timings");
        latencies.get(kind as usize).map_or(0, Vec::len)
    }

    /// Requests of `kind`, its median and 99th percentile.
    pub(crate) fn summary(&self, kind: Kind) -> (usize, Duration, Duration) {
        self.summary_since(kind, 0)
    }

    /// As [`Self::summary`], for the requests after the first `from`.
    pub(crate) fn summary_since(&self, kind: Kind, from: usize) -> (usize, Duration, Duration) {
        let latencies = self.latencies.lock().expect("timings");
        let Some(list) = latencies.get(kind as usize) else {
            return (0, Duration::ZERO, Duration::ZERO);
        };
        let mut sorted = list.get(from..).unwrap_or_default().to_vec();
        sorted.sort_unstable();
        let at = |p: f64| {
            if sorted.is_empty() {
                return Duration::ZERO;
            }
            // Nearest rank.
            let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            Duration::from_micros(u64::from(sorted[rank.clamp(1, sorted.len()) - 1]))
        };
        (sorted.len(), at(50.0), at(99.0))
    }
}

/// One reading of the server's memory during a run.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub phase: String,
    /// Since the start of the run.
    pub at: Duration,
    pub rss: u64,
    pub hwm: u64,
}

/// One simulated hour, as it went.
#[derive(Clone, Debug)]
pub(crate) struct Hour {
    pub name: String,
    /// Agent contacts made (one per agent per hour).
    pub contacts: usize,
    pub requests: usize,
    pub took: Duration,
    /// Server CPU seconds during the hour (`None` when the server is this process).
    pub server_cpu: Option<f64>,
    /// CPU seconds of every process but the server and this one, from `/proc/stat`.
    pub other_cpu: Option<f64>,
    /// How late the latest contact started after its moment.
    pub max_lag: Duration,
    /// PROLOGs and native check-ins of this hour: count, median, 99th percentile.
    pub prolog: (usize, Duration, Duration),
    pub check_in: (usize, Duration, Duration),
}

/// What a run gave.
pub(crate) struct Outcome {
    pub hours: Vec<Hour>,
    pub timings: Arc<Timings>,
    pub samples: Vec<Sample>,
    /// Computers the wave targets, as the server counts them: every agent registered.
    pub registered: i64,
    /// Successes of the wave, as the server counts them.
    pub wave_successes: i64,
    /// Successful reports the agents got a 200 for.
    pub wave_reported: usize,
    /// Size of one simulated inventory, zlib-compressed.
    pub inventory_bytes: usize,
}

/// The agents, their state between contacts.
pub(crate) struct Fleet {
    pub plan: Plan,
    pub target: Target,
    pub timings: Arc<Timings>,
    pub tls: TlsConnector,
    pub natives: Vec<Mutex<native::Agent>>,
    /// Package ids each OCS agent has finished (so a later offer is not fetched again).
    ocs_done: Vec<Mutex<Vec<String>>>,
    /// Successful results reported (both kinds).
    pub reported: AtomicUsize,
    pub requests: AtomicUsize,
}

/// Plays the whole run: first contact, the steady hours, the wave; then waits for the
/// server to count every result.
pub(crate) async fn run(plan: Plan, target: Target) -> Outcome {
    let fleet = Arc::new(Fleet {
        tls: tls_connector(&target.server_ca),
        natives: (0..plan.native)
            .map(|i| Mutex::new(native::Agent::new(i)))
            .collect(),
        ocs_done: (0..plan.ocs).map(|_| Mutex::new(Vec::new())).collect(),
        timings: Arc::new(Timings::default()),
        reported: AtomicUsize::new(0),
        requests: AtomicUsize::new(0),
        plan,
        target,
    });
    let started = Instant::now();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let phase = Arc::new(Mutex::new(String::from("first contact")));
    let sampler = tokio::spawn(sample_memory(
        fleet.target.pid,
        fleet.plan.hour / SAMPLES_PER_HOUR,
        started,
        phase.clone(),
        samples.clone(),
    ));
    let mut hours = Vec::new();
    hours.push(play_hour(&fleet, "first contact").await);
    for n in 1..=fleet.plan.steady_hours {
        let name = format!("steady hour {n}");
        name.clone_into(&mut phase.lock().expect("phase"));
        hours.push(play_hour(&fleet, &name).await);
    }
    "wave (building)".clone_into(&mut phase.lock().expect("phase"));
    let package_id = start_wave(&fleet.target).await;
    "wave".clone_into(&mut phase.lock().expect("phase"));
    hours.push(play_hour(&fleet, "wave").await);
    let expected = fleet.plan.ocs + fleet.plan.native;
    let (registered, wave_successes) = settle(&fleet.target, &package_id, expected).await;
    sampler.abort();
    let samples = samples.lock().expect("samples").clone();
    Outcome {
        hours,
        timings: fleet.timings.clone(),
        samples,
        registered,
        wave_successes,
        wave_reported: fleet.reported.load(Ordering::Relaxed),
        inventory_bytes: zlib(inventory_xml(0).as_bytes()).len(),
    }
}

/// Every agent contacts once, at its moment of the hour.
async fn play_hour(fleet: &Arc<Fleet>, name: &str) -> Hour {
    let plan = &fleet.plan;
    let agents = plan.ocs + plan.native;
    let before = Cpu::read(fleet.target.pid);
    let requests_before = fleet.requests.load(Ordering::Relaxed);
    let marks = (
        fleet.timings.mark(Kind::Prolog),
        fleet.timings.mark(Kind::CheckIn),
    );
    let started = Instant::now();
    // Contacts in a shuffled order (a stride coprime with the count), evenly spread.
    let stride = coprime_stride(agents);
    let (ocs_queue, ocs_jobs) = tokio::sync::mpsc::channel::<(usize, Instant)>(agents.max(1));
    let (native_queue, native_jobs) = tokio::sync::mpsc::channel::<(usize, Instant)>(agents.max(1));
    let ocs_jobs = Arc::new(tokio::sync::Mutex::new(ocs_jobs));
    let native_jobs = Arc::new(tokio::sync::Mutex::new(native_jobs));
    let max_lag = Arc::new(Mutex::new(Duration::ZERO));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..plan.connections.max(1) {
        let (fleet, jobs, max_lag) = (fleet.clone(), ocs_jobs.clone(), max_lag.clone());
        workers.spawn(async move {
            let mut connection: Option<Connection> = None;
            loop {
                let Some((agent, due)) = jobs.lock().await.recv().await else {
                    return;
                };
                note_lag(&max_lag, due);
                ocs_contact(&fleet, agent, &mut connection).await;
            }
        });
    }
    for _ in 0..plan.native_workers.max(1) {
        let (fleet, jobs, max_lag) = (fleet.clone(), native_jobs.clone(), max_lag.clone());
        workers.spawn(async move {
            loop {
                let Some((agent, due)) = jobs.lock().await.recv().await else {
                    return;
                };
                note_lag(&max_lag, due);
                native::contact(&fleet, agent).await;
            }
        });
    }
    for slot in 0..agents {
        let agent = slot * stride % agents;
        let due = started + plan.hour.mul_f64(slot as f64 / agents as f64);
        tokio::time::sleep_until(due.into()).await;
        let sent = if agent < plan.ocs {
            ocs_queue.send((agent, due)).await
        } else {
            native_queue.send((agent - plan.ocs, due)).await
        };
        sent.expect("the workers are running");
    }
    drop((ocs_queue, native_queue));
    while let Some(worker) = workers.join_next().await {
        worker.expect("a simulated agent panicked");
    }
    // The hour lasts its length even when the last contact ended early.
    tokio::time::sleep_until((started + plan.hour).into()).await;
    let after = Cpu::read(fleet.target.pid);
    let took = started.elapsed();
    let max_lag = *max_lag.lock().expect("lag");
    let hour = Hour {
        name: name.to_owned(),
        contacts: agents,
        requests: fleet.requests.load(Ordering::Relaxed) - requests_before,
        took,
        server_cpu: before.server.zip(after.server).map(|(b, a)| a - b),
        other_cpu: before.other.zip(after.other).map(|(b, a)| (a - b).max(0.0)),
        max_lag,
        prolog: fleet.timings.summary_since(Kind::Prolog, marks.0),
        check_in: fleet.timings.summary_since(Kind::CheckIn, marks.1),
    };
    eprintln!(
        "fleet sim: {name}: {agents} contacts, {} requests in {:.1} s, latest contact {:.1} s behind",
        hour.requests,
        took.as_secs_f64(),
        max_lag.as_secs_f64()
    );
    hour
}

fn note_lag(max_lag: &Mutex<Duration>, due: Instant) {
    let lag = Instant::now().saturating_duration_since(due);
    let mut max = max_lag.lock().expect("lag");
    if lag > *max {
        *max = lag;
    }
}

/// The smallest stride above `n / 3` that visits every slot of `n` once.
fn coprime_stride(n: usize) -> usize {
    if n < 3 {
        return 1;
    }
    let gcd = |mut a: usize, mut b: usize| {
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    };
    (n / 3..n).find(|&s| gcd(s, n) == 1).unwrap_or(1)
}

// --- OCS agents ----------------------------------------------------------------------

/// The device id of OCS agent `n`.
pub(crate) fn ocs_device(n: usize) -> String {
    format!("fleet-{n:06}-2026-01-01-00-00-00")
}

/// One OCS agent's hourly run: PROLOG; an inventory when asked; each package offered and
/// not yet done fetched (`info`, fragments) and reported.
async fn ocs_contact(fleet: &Fleet, agent: usize, connection: &mut Option<Connection>) {
    let device = ocs_device(agent);
    let host = fleet.target.https.to_string();
    let prolog = ocs_post(
        &host,
        &format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<REQUEST>\n  <DEVICEID>{device}</DEVICEID>\n  <QUERY>PROLOG</QUERY>\n</REQUEST>\n"
        ),
    );
    let Some(reply) = fleet.ocs_exchange(connection, Kind::Prolog, &prolog).await else {
        return;
    };
    let reply = inflate(&reply);
    if reply.contains("<RESPONSE>SEND</RESPONSE>") {
        let inventory = ocs_post(&host, &inventory_xml(agent));
        if fleet
            .ocs_exchange(connection, Kind::Inventory, &inventory)
            .await
            .is_none()
        {
            return;
        }
    }
    for id in offered_packs(&reply) {
        if fleet.ocs_done[agent]
            .lock()
            .expect("done")
            .contains(&id.to_owned())
        {
            continue;
        }
        let Some(info) = fleet
            .ocs_exchange(
                connection,
                Kind::Info,
                &get(&host, &format!("/download/{id}/info")),
            )
            .await
        else {
            return;
        };
        let frags = attribute(&String::from_utf8_lossy(&info), "FRAGS")
            .and_then(|f| f.parse::<usize>().ok())
            .unwrap_or(0);
        for n in 1..=frags {
            let path = format!("/download/{id}/{id}-{n}");
            if fleet
                .ocs_exchange(connection, Kind::Fragment, &get(&host, &path))
                .await
                .is_none()
            {
                return;
            }
        }
        let result = ocs_post(
            &host,
            &format!(
                "<REQUEST DEVICEID=\"{device}\" ERR=\"SUCCESS\" ID=\"{id}\" QUERY=\"DOWNLOAD\" />"
            ),
        );
        if fleet
            .ocs_exchange(connection, Kind::Result, &result)
            .await
            .is_some()
        {
            fleet.ocs_done[agent]
                .lock()
                .expect("done")
                .push(id.to_owned());
            fleet.reported.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Fleet {
    /// One timed OCS exchange on the shared keep-alive connection (opened again when the
    /// server closed it); the body of a 2xx, else `None` with the error counted.
    async fn ocs_exchange(
        &self,
        connection: &mut Option<Connection>,
        kind: Kind,
        request: &[u8],
    ) -> Option<Vec<u8>> {
        for attempt in 0..2 {
            let open = match connection {
                Some(open) => open,
                None => match Connection::open(self.target.https, &self.tls).await {
                    Ok(open) => connection.insert(open),
                    Err(e) => {
                        self.timings.error(format!("{}: connect: {e}", kind.name()));
                        return None;
                    }
                },
            };
            let sent = Instant::now();
            match open.exchange(request).await {
                Ok(response) => {
                    self.requests.fetch_add(1, Ordering::Relaxed);
                    if response.closing {
                        *connection = None;
                    }
                    if (200..300).contains(&response.status) {
                        self.timings.record(kind, sent.elapsed());
                        return Some(response.body);
                    }
                    self.timings.error(format!(
                        "{}: HTTP {}: {}",
                        kind.name(),
                        response.status,
                        String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
                    ));
                    return None;
                }
                // A keep-alive connection the server closed meanwhile: once more, fresh.
                Err(_) if attempt == 0 => *connection = None,
                Err(e) => {
                    *connection = None;
                    self.timings.error(format!("{}: {e}", kind.name()));
                }
            }
        }
        None
    }
}

/// The ids of the `PARAM TYPE="PACK"` of a PROLOG reply.
fn offered_packs(reply: &str) -> Vec<&str> {
    reply
        .split("<PARAM ")
        .filter(|param| param.contains("TYPE=\"PACK\""))
        .filter_map(|param| attribute(param, "ID"))
        .collect()
}

/// The value of attribute `name` (` NAME="value"`) in `xml`.
fn attribute<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = xml[start..].find('"')? + start;
    Some(&xml[start..end])
}

/// A small agent-shaped inventory: the usual sections, `SOFTWARE_ROWS` installed
/// packages, a distinct name, serial number and addresses; tag `fleet`, Debian 12.
pub(crate) fn inventory_xml(computer: usize) -> String {
    let name = format!("fleet-{computer:06}");
    let (a, b, c) = (computer / 65_536, computer / 256 % 256, computer % 256);
    let mut xml = String::with_capacity(32 << 10);
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<REQUEST>\n  <CONTENT>\n");
    xml.push_str("    <ACCOUNTINFO>\n      <KEYNAME>TAG</KEYNAME>\n      <KEYVALUE>fleet</KEYVALUE>\n    </ACCOUNTINFO>\n");
    let _ = write!(
        xml,
        "    <BIOS>\n      <BMANUFACTURER>LENOVO</BMANUFACTURER>\n      <SMODEL>21AH00F5GE</SMODEL>\n      <SSN>PF{computer:06}</SSN>\n      <TYPE>Notebook</TYPE>\n    </BIOS>\n"
    );
    let _ = write!(
        xml,
        "    <HARDWARE>\n      <NAME>{name}</NAME>\n      <OSNAME>Debian GNU/Linux 12</OSNAME>\n      <OSVERSION>12</OSVERSION>\n      <ARCH>x86_64</ARCH>\n      <IPADDR>10.{a}.{b}.{c}</IPADDR>\n      <MEMORY>15729</MEMORY>\n      <PROCESSORT>12th Gen Intel(R) Core(TM) i7-1260P</PROCESSORT>\n      <USERID>user{computer}</USERID>\n      <UUID>4c4c4544-0042-{computer:06}-8051-b4c04f4e3732</UUID>\n    </HARDWARE>\n"
    );
    let _ = write!(
        xml,
        "    <NETWORKS>\n      <DESCRIPTION>enp0s31f6</DESCRIPTION>\n      <IPADDRESS>10.{a}.{b}.{c}</IPADDRESS>\n      <IPMASK>255.255.0.0</IPMASK>\n      <MACADDR>8c:8c:aa:{a:02x}:{b:02x}:{c:02x}</MACADDR>\n      <STATUS>Up</STATUS>\n    </NETWORKS>\n"
    );
    const STEMS: [&str; 12] = [
        "lib", "python3-", "perl-", "fonts-", "x11-", "gir1.2-", "node-", "golang-", "ruby-",
        "texlive-", "gnome-", "kde-",
    ];
    const WORDS: [&str; 10] = [
        "core", "utils", "common", "data", "dev", "doc", "tools", "base", "extra", "runtime",
    ];
    for row in 0..SOFTWARE_ROWS {
        // Distinct names and versions, varying a little between computers.
        let package = format!("{}{}{}", STEMS[row % 12], WORDS[row / 12 % 10], row % 7);
        let version = format!(
            "{}.{}.{}-{}",
            row % 5,
            (row * 7 + computer) % 13,
            row % 11,
            row % 3 + 1
        );
        let _ = write!(
            xml,
            "    <SOFTWARES>\n      <ARCH>amd64</ARCH>\n      <FROM>deb</FROM>\n      <NAME>{package}</NAME>\n      <VERSION>{version}</VERSION>\n    </SOFTWARES>\n"
        );
    }
    let _ = write!(
        xml,
        "  </CONTENT>\n  <DEVICEID>{}</DEVICEID>\n  <QUERY>INVENTORY</QUERY>\n</REQUEST>\n",
        ocs_device(computer)
    );
    xml
}

/// An OCS POST as the Unix agent sends it: the XML zlib-compressed.
pub(crate) fn ocs_post(host: &str, xml: &str) -> Vec<u8> {
    let body = zlib(xml.as_bytes());
    let mut request = format!(
        "POST /ocsinventory HTTP/1.1\r\nHost: {host}\r\nUser-Agent: OCS-NG_unified_unix_agent_v2.10.0\r\nContent-Type: application/x-compress\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

pub(crate) fn get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").into_bytes()
}

/// A JSON request of the native API.
pub(crate) fn json_request(method: &str, host: &str, path: &str, body: &str) -> Vec<u8> {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("compress")
}

fn inflate(bytes: &[u8]) -> String {
    let mut xml = String::new();
    let _ = flate2::read::ZlibDecoder::new(bytes).read_to_string(&mut xml);
    xml
}

// --- the wave ------------------------------------------------------------------------

/// Writes the wave (a Package of a few KiB in 4 KiB fragments, its Activation, an
/// Affectation for every Linux computer) into the configuration directory and waits until
/// the server has built it; its package id.
async fn start_wave(target: &Target) -> String {
    let content = target.config.join("packages").join(WAVE);
    std::fs::create_dir_all(&content).expect("create the wave's content");
    // Incompressible-looking text, so the package keeps a few fragments once compressed.
    let mut script = String::from("#!/bin/sh\n# fleet simulator wave\nexit 0\n");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..256 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = writeln!(script, "# {x:016x}{:016x}", x.rotate_left(29));
    }
    std::fs::write(content.join("install.sh"), script).expect("write the wave's content");
    let yaml = format!(
        "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: {WAVE}\nspec:\n  os: linux\n  priority: 5\n  content:\n    directory: packages/{WAVE}\n  action:\n    execute:\n      command: sh install.sh\n  fragmentSize: 4Ki\n---\napiVersion: tessera.dev/v1alpha1\nkind: Activation\nmetadata:\n  name: {WAVE}\nspec:\n  packageRef:\n    name: {WAVE}\n---\napiVersion: tessera.dev/v1alpha1\nkind: Affectation\nmetadata:\n  name: {WAVE}\nspec:\n  activationRef:\n    name: {WAVE}\n  targets:\n    all: true\n    os: [linux]\n"
    );
    // Written whole under another name, then renamed: the watcher never reads half of it.
    let file = target.config.join(format!("{WAVE}.yaml"));
    let partial = target.config.join(format!(".{WAVE}.yaml.partial"));
    std::fs::write(&partial, yaml).expect("write the wave");
    std::fs::rename(&partial, &file).expect("write the wave");
    let started = Instant::now();
    loop {
        let package = admin_json(target.admin, &format!("/api/v1/objects/Package/{WAVE}")).await;
        let ready = package.as_ref().is_some_and(|p| {
            p["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
        });
        let id = package
            .as_ref()
            .and_then(|p| p["details"]["packageId"].as_str().map(str::to_owned));
        if let (true, Some(id)) = (ready, id) {
            let activation =
                admin_json(target.admin, &format!("/api/v1/objects/Activation/{WAVE}")).await;
            if activation.as_ref().is_some_and(|a| {
                a["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                })
            }) {
                eprintln!(
                    "fleet sim: the wave (package {id}) is built, {:.1} s after it was written",
                    started.elapsed().as_secs_f64()
                );
                return id;
            }
        }
        assert!(
            started.elapsed() < WAVE_BUILD_TIMEOUT,
            "the wave was not built within {WAVE_BUILD_TIMEOUT:?}: {package:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the server counts `expected` successes of the wave (or `SETTLE_TIMEOUT`
/// passes); the computers it targets and its successes.
async fn settle(target: &Target, package_id: &str, expected: usize) -> (i64, i64) {
    let started = Instant::now();
    loop {
        let counts = admin_json(target.admin, "/api/v1/deployments")
            .await
            .and_then(|table| {
                table["packages"].as_array()?.iter().find_map(|line| {
                    (line["packageId"] == package_id).then(|| line["counts"].clone())
                })
            });
        let targets = counts
            .as_ref()
            .and_then(|c| c["targets"].as_i64())
            .unwrap_or(0);
        let success = counts
            .as_ref()
            .and_then(|c| c["success"].as_i64())
            .unwrap_or(0);
        if usize::try_from(success).is_ok_and(|s| s >= expected)
            || started.elapsed() > SETTLE_TIMEOUT
        {
            return (targets, success);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GETs `path` of the admin API (plain HTTP on loopback); the JSON of a 200.
pub(crate) async fn admin_json(admin: SocketAddr, path: &str) -> Option<serde_json::Value> {
    serde_json::from_slice(&admin_get(admin, path).await?).ok()
}

/// GETs `path` of the admin API (plain HTTP on loopback); the body of a 200.
pub(crate) async fn admin_get(admin: SocketAddr, path: &str) -> Option<Vec<u8>> {
    let mut tcp = TcpStream::connect(admin).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n");
    tcp.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(EXCHANGE_TIMEOUT, tcp.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let (status, length, chunked, _) = parse_head(&response[..split + 4])?;
    if status != 200 {
        return None;
    }
    let mut body = response[split + 4..].to_vec();
    if chunked {
        body = dechunk(&body)?;
    } else if let Some(length) = length {
        body.truncate(length);
    }
    Some(body)
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line = data.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[..line])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        data = &data[line + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

// --- memory and CPU ------------------------------------------------------------------

/// Reads the server's memory every `every` until aborted.
async fn sample_memory(
    pid: Option<u32>,
    every: Duration,
    started: Instant,
    phase: Arc<Mutex<String>>,
    samples: Arc<Mutex<Vec<Sample>>>,
) {
    let Some(pid) = pid else {
        return;
    };
    let mut ticks = tokio::time::interval(every.max(Duration::from_millis(100)));
    loop {
        ticks.tick().await;
        if let Some((rss, hwm)) = memory(pid) {
            let phase = phase.lock().expect("phase").clone();
            samples.lock().expect("samples").push(Sample {
                phase,
                at: started.elapsed(),
                rss,
                hwm,
            });
        }
    }
}

/// `VmRSS` and `VmHWM` of `pid`, in bytes.
pub(crate) fn memory(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse::<u64>()
            .ok()
            .map(|kib| kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds so far: the server's, and every other process's but ours.
struct Cpu {
    server: Option<f64>,
    other: Option<f64>,
}

/// Linux's `USER_HZ`: `/proc` counts CPU time in 1/100 s on every architecture.
const TICKS_PER_SECOND: f64 = 100.0;

impl Cpu {
    fn read(pid: Option<u32>) -> Self {
        let server = pid.and_then(process_cpu);
        let ours = process_cpu(std::process::id());
        let busy = std::fs::read_to_string("/proc/stat").ok().and_then(|stat| {
            let line = stat.lines().next()?;
            let fields: Vec<f64> = line
                .split_whitespace()
                .skip(1)
                .filter_map(|f| f.parse().ok())
                .collect();
            // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
            let total: f64 = fields.iter().take(8).sum();
            Some((total - fields.get(3)? - fields.get(4)?) / TICKS_PER_SECOND)
        });
        let other = busy.map(|busy| busy - server.unwrap_or(0.0) - ours.unwrap_or(0.0));
        Self { server, other }
    }
}

/// User and system CPU seconds of `pid` (its threads included).
pub(crate) fn process_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces: fields are counted after its closing parenthesis.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

// --- the client ----------------------------------------------------------------------

pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One HTTP/1.1 keep-alive connection over TLS.
pub(crate) struct Connection {
    stream: Box<dyn Io>,
    buffer: Vec<u8>,
}

/// A response: its status, whole body, and whether the server closes the connection.
pub(crate) struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    pub closing: bool,
}

impl Connection {
    pub(crate) async fn open(address: SocketAddr, tls: &TlsConnector) -> std::io::Result<Self> {
        let connect = async {
            let tcp = TcpStream::connect(address).await?;
            tcp.set_nodelay(true)?;
            tls.connect(ServerName::from(Ipv4Addr::LOCALHOST), tcp)
                .await
        };
        let stream = tokio::time::timeout(EXCHANGE_TIMEOUT, connect)
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        Ok(Self {
            stream: Box::new(stream),
            buffer: Vec::with_capacity(16 << 10),
        })
    }

    /// Sends `request` and reads the whole response.
    pub(crate) async fn exchange(&mut self, request: &[u8]) -> std::io::Result<Response> {
        tokio::time::timeout(EXCHANGE_TIMEOUT, self.exchange_untimed(request))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
    }

    async fn exchange_untimed(&mut self, request: &[u8]) -> std::io::Result<Response> {
        self.stream.write_all(request).await?;
        self.stream.flush().await?;
        let end = loop {
            if let Some(end) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if self.buffer.len() > MAX_HEAD {
                return Err(std::io::ErrorKind::InvalidData.into());
            }
            self.fill().await?;
        };
        let (status, length, chunked, closing) =
            parse_head(&self.buffer[..end]).ok_or(std::io::ErrorKind::InvalidData)?;
        self.buffer.drain(..end);
        let body = if chunked {
            loop {
                if let Some(end) = chunked_end(&self.buffer) {
                    let body =
                        dechunk(&self.buffer[..end]).ok_or(std::io::ErrorKind::InvalidData)?;
                    self.buffer.drain(..end);
                    break body;
                }
                self.fill().await?;
            }
        } else {
            let length = length.unwrap_or(0);
            while self.buffer.len() < length {
                self.fill().await?;
            }
            self.buffer.drain(..length).collect()
        };
        Ok(Response {
            status,
            body,
            closing,
        })
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 16 << 10];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

/// Where a complete chunked body ends in `data`, if it is all there.
fn chunked_end(data: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line = data[at..].windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(
            std::str::from_utf8(&data[at..at + line])
                .ok()?
                .split(';')
                .next()?
                .trim(),
            16,
        )
        .ok()?;
        at += line + 2;
        if size == 0 {
            // The last chunk, then an empty trailer line.
            return (data.len() >= at + 2).then_some(at + 2);
        }
        at += size + 2;
        if at > data.len() {
            return None;
        }
    }
}

/// Status, `Content-Length`, whether chunked, whether the server closes the connection.
fn parse_head(head: &[u8]) -> Option<(u16, Option<usize>, bool, bool)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let (mut length, mut chunked, mut closing) = (None, false, false);
    for (name, value) in lines.filter_map(|line| line.split_once(':')) {
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().ok()?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
        } else if name.eq_ignore_ascii_case("connection") {
            closing = value.eq_ignore_ascii_case("close");
        }
    }
    Some((status, length, chunked, closing))
}

/// The roots agents trust for the server: its CA certificate file.
pub(crate) fn server_roots(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the server's CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("add the CA");
    }
    roots
}

/// A client trusting the server's CA, without a client certificate.
fn tls_connector(ca: &Path) -> TlsConnector {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(server_roots(ca))
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}
