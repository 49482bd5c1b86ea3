//! How fast `tessera serve` answers agents, next to nginx serving the same fragment files.
//!
//! `cargo bench --bench serve` starts the release `tessera serve` on loopback ports with the
//! quickstart configuration plus a 64 MiB package of incompressible content in 1 MiB
//! fragments, registers 10,000 computers (tag `lab`, Debian 12) with one inventory each, and
//! measures with one minimal HTTP/1.1 keep-alive client (tokio, rustls with ring):
//!
//! - PROLOG requests per second and p99 latency over HTTPS at 1, 4 and 64 connections, next
//!   to the floor: nginx answering the same requests with a fixed ~100-byte body over HTTPS
//!   with the same certificate (no work at all), and the ratio PROLOG/floor;
//! - small-inventory ingest (~2.7 KB zlib, each from a new computer, 4 connections): rate,
//!   p50 and p99;
//! - the time to ingest a ~350 KB inventory, zlib-compressed as the agent sends it;
//! - fragment throughput over HTTPS and plain HTTP at 1 and 16 connections, against nginx
//!   rooted at the same fragment store (started here on loopback ports, when installed:
//!   `scripts/bench-setup.sh` installs it);
//! - the server's peak resident memory (VmHWM);
//! - the cost of `tessera gateway` in passthrough mode, next to `socat` as a plain TCP relay
//!   (when installed: `scripts/bench-setup.sh` installs it): fragment throughput over HTTPS
//!   at 1 and 16 connections, and the time to open a new TLS connection and get the
//!   package's small `info` document, direct and through each relay.
//!
//! `TESSERA_BENCH_SECS` sets the seconds per measured level (default 5);
//! `TESSERA_BENCH_BINARY` measures another `tessera` build with the same client. Client and servers
//! share the machine's cores: each row shows the CPU the server, the client and every other
//! process used meanwhile (a build running alongside skews the figures). It prints figures;
//! it asserts nothing.

// A benchmark reads top to bottom as the run it measures; the 100-line limit is for `src/`.
#![allow(clippy::too_many_lines)]

mod common;

use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sha2::Digest as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Computers registered before PROLOG runs, so PROLOG looks up many different devices.
const COMPUTERS: usize = 10_000;
/// PROLOG should cost little more than the transport: at least this share of the rate of
/// nginx answering a fixed body over the same TLS (the "floor", issue 19).
const FLOOR_RATIO_TARGET: f64 = 0.8;
/// The floor's body: about the size of a PROLOG reply's headers and a short body.
const FLOOR_BODY: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><REPLY><RESPONSE>STOP</RESPONSE></REPLY>0123456789abcdefghij";
/// Small inventories posted for the ingest row, each from a computer not seen before.
const SMALL_INVENTORIES: usize = 3_000;
/// Connections posting them.
const SMALL_INVENTORY_CONNECTIONS: usize = 4;
/// About the compressed size of a small inventory (a server or a thin client).
const SMALL_INVENTORY_ZLIB: usize = 2_700;
/// Concurrent connections for PROLOG.
const PROLOG_LEVELS: [usize; 3] = [1, 4, 64];
/// Concurrent connections for fragments.
const FRAGMENT_LEVELS: [usize; 2] = [1, 16];
/// Inventory posts timed one after the other (after a few untimed ones).
const INVENTORY_POSTS: usize = 50;
const INVENTORY_WARMUP: usize = 3;
/// Size of the uncompressed inventory XML, about what an agent sends for a desktop with
/// its full software list.
const INVENTORY_BYTES: usize = 350_000;
/// The package served as fragments: incompressible, so fragments are its full size.
const PACKAGE_MIB: usize = 64;
const FRAGMENT_BYTES: u64 = 1 << 20;
/// The package built by `tessera serve` at start-up; the first build hashes 64 MiB.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
/// Any single exchange taking longer than this is an error, not a slow sample.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// New connections timed per target for the relay latency, interleaved across targets
/// (after a few untimed ones).
const RELAY_CONNECTS: usize = 200;
const RELAY_CONNECTS_WARMUP: usize = 5;
/// The gateway must move fragments at least this fast relative to socat.
const RELAY_RATIO_TARGET: f64 = 0.90;
/// How long before the end of a load the relay's CPU is read (see `measured`).
const RELAY_SAMPLE_MARGIN: Duration = Duration::from_millis(100);
/// Time allowed for a relay to accept connections after it is started.
const RELAY_START_TIMEOUT: Duration = Duration::from_secs(10);
/// Response heads larger than this are refused.
const MAX_HEAD: usize = 64 << 10;
/// The client's read buffer, also its scratch space for discarded bodies.
const READ_BUFFER: usize = 256 << 10;
const PACKAGE_NAME: &str = "bench-payload";

fn main() {
    let secs: u64 = std::env::var("TESSERA_BENCH_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&s| s > 0)
        .unwrap_or(5);
    let duration = Duration::from_secs(secs);
    // Another build may be measured with the same client (before/after comparisons).
    let binary = std::env::var_os("TESSERA_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_tessera")),
        PathBuf::from,
    );
    assert!(
        binary.exists(),
        "{} is missing: run `cargo bench --bench serve`",
        binary.display()
    );
    let load_average = std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    let work = tempfile::tempdir().expect("temporary directory");
    // nginx workers drop to `nobody` when started as root: let them walk to the store.
    set_mode(work.path(), 0o755);
    let config = work.path().join("config");
    let [https, http, admin] = common::free_ports();
    write_config(&config, https, http);
    let validate = Command::new(&binary)
        .arg("validate")
        .arg(&config)
        .output()
        .expect("run tessera validate");
    assert!(
        validate.status.success(),
        "the bench configuration does not validate:\n{}{}",
        String::from_utf8_lossy(&validate.stdout),
        String::from_utf8_lossy(&validate.stderr)
    );

    let log = work.path().join("tessera.log");
    let mut command = common::serve_command(&binary, &config, admin, &log);
    let server = Process::spawn("tessera serve", &mut command);

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let setup = Setup {
        duration,
        binary,
        config,
        admin,
        https,
        http,
        log,
        work: work.path().to_owned(),
        load_average,
    };
    let report = runtime.block_on(run(&setup, &server));
    drop(server);
    print!("{report}");
    let log = std::fs::read_to_string(&setup.log).unwrap_or_default();
    let noted: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .collect();
    println!("tessera log: {} warnings or errors", noted.len());
    for line in noted.iter().take(5) {
        println!("  {line}");
    }
}

/// Where things are, decided before the runtime starts.
struct Setup {
    duration: Duration,
    /// The release `tessera`, for `serve` and `gateway`.
    binary: PathBuf,
    config: PathBuf,
    admin: SocketAddr,
    https: SocketAddr,
    http: SocketAddr,
    log: PathBuf,
    work: PathBuf,
    /// `/proc/loadavg` before the server started: a busy machine skews every figure.
    load_average: String,
}

async fn run(setup: &Setup, server: &Process) -> String {
    let started = Instant::now();
    let package_id = wait_ready(setup, server).await;
    let state = setup.config.join(".tessera");
    let tls_dir = state.join("certificates/default/tessera-server");
    let tls = tls_connector(&tls_dir.join("ca.crt"), Handshake::Resumed);
    let https = Target::new(setup.https, Some(tls.clone()));
    let http = Target::new(setup.http, None);
    let hwm_ready = peak_memory(server.id());
    let mut cpu = Cpu::new(server.id());
    eprintln!(
        "serve bench: tessera ready in {:.1} s (package {package_id}, {PACKAGE_MIB} MiB)",
        started.elapsed().as_secs_f64()
    );

    // Every computer sends a small inventory first, so PROLOG has targeting to do.
    let host = setup.https.to_string();
    let register: Vec<Vec<u8>> = (0..COMPUTERS)
        .map(|i| ocs_post(&host, &inventory_xml(i, 0)))
        .collect();
    let started = Instant::now();
    let registered = send_each(&https, 8, &register).await;
    assert_eq!(
        registered.errors,
        0,
        "registering computers failed; see {}",
        setup.log.display()
    );
    eprintln!(
        "serve bench: {COMPUTERS} computers registered in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let nginx = match Nginx::start(&setup.work, &state, &tls_dir) {
        Ok(nginx) => Some(nginx),
        Err(NginxMissing) => {
            eprintln!(
                "serve bench: nginx is not installed; skipping the nginx column. Run scripts/bench-setup.sh to install it."
            );
            None
        }
    };
    if let Some(nginx) = &nginx {
        cpu.nginx = nginx.pids();
    }
    let nginx_targets = nginx.as_ref().map(|n| {
        (
            Target::new(n.https, Some(tls.clone())),
            Target::new(n.http, None),
        )
    });
    let prologs: Vec<Vec<u8>> = (0..COMPUTERS)
        .map(|i| ocs_post(&host, &prolog_xml(i)))
        .collect();
    let offered = check_prolog(&https, &prologs[0]).await;
    // One untimed round: first notifications are written once, later PROLOGs repeat them.
    send_each(&https, 4, &prologs).await;
    let mut prolog_rows = Vec::new();
    for connections in PROLOG_LEVELS {
        // The floor first, then PROLOG, at each level: both see the same machine.
        let floor = match &nginx_targets {
            Some((nginx_https, _)) => {
                let before = cpu.sample();
                let load = load_for(nginx_https, connections, setup.duration, &prologs).await;
                let used = cpu.used(before, load.elapsed);
                Some((load, used))
            }
            None => None,
        };
        let before = cpu.sample();
        let load = load_for(&https, connections, setup.duration, &prologs).await;
        let used = cpu.used(before, load.elapsed);
        eprintln!(
            "serve bench: PROLOG x{connections}: {:.0} req/s, floor {}",
            load.rate(),
            floor
                .as_ref()
                .map_or("-".to_owned(), |(f, _)| format!("{:.0} req/s", f.rate()))
        );
        prolog_rows.push((connections, load, used, floor));
    }

    // Small inventories, each from a computer not seen before, on 4 connections.
    let mut small_bytes = 1_000;
    while zlib(inventory_xml(COMPUTERS, small_bytes).as_bytes()).len() < SMALL_INVENTORY_ZLIB {
        small_bytes += 500;
    }
    let small: Vec<Vec<u8>> = (COMPUTERS..COMPUTERS + SMALL_INVENTORIES)
        .map(|i| ocs_post(&host, &inventory_xml(i, small_bytes)))
        .collect();
    let small_zlib = zlib(inventory_xml(COMPUTERS, small_bytes).as_bytes()).len();
    let before = cpu.sample();
    let small_ingest = send_each(&https, SMALL_INVENTORY_CONNECTIONS, &small).await;
    let small_cpu = cpu.used(before, small_ingest.elapsed);
    eprintln!(
        "serve bench: small inventories x{SMALL_INVENTORY_CONNECTIONS}: {:.0}/s, p99 {} ms",
        small_ingest.rate(),
        millis(small_ingest.percentile(99.0))
    );

    let big = inventory_xml(0, INVENTORY_BYTES);
    let inventories: Vec<Vec<u8>> = (0..INVENTORY_WARMUP + INVENTORY_POSTS)
        .map(|i| ocs_post(&host, &inventory_xml(i % COMPUTERS, INVENTORY_BYTES)))
        .collect();
    let compressed = zlib(big.as_bytes()).len();
    send_each(&https, 1, &inventories[..INVENTORY_WARMUP]).await;
    let ingest = send_each(&https, 1, &inventories[INVENTORY_WARMUP..]).await;
    check_inventory(&https, &inventories[0]).await;
    let hwm_agents = peak_memory(server.id());

    let fragments = fragment_paths(&state.join("download").join(&package_id));
    if let Some((nginx_https, _)) = &nginx_targets {
        same_bytes(&https, nginx_https, "nginx", &host, &fragments[0]).await;
    }
    let mut fragment_rows = Vec::new();
    for (scheme, tessera) in [("HTTPS", &https), ("HTTP", &http)] {
        let requests: Vec<Vec<u8>> = fragments.iter().map(|f| get(&host, f)).collect();
        for connections in FRAGMENT_LEVELS {
            let before = cpu.sample();
            let ours = load_for(tessera, connections, setup.duration, &requests).await;
            let ours_cpu = cpu.used(before, ours.elapsed);
            let theirs = match &nginx_targets {
                Some((nginx_https, nginx_http)) => {
                    let target = if scheme == "HTTPS" {
                        nginx_https
                    } else {
                        nginx_http
                    };
                    let before = cpu.sample();
                    let load = load_for(target, connections, setup.duration, &requests).await;
                    let used = cpu.used(before, load.elapsed);
                    Some((load, used))
                }
                None => None,
            };
            eprintln!(
                "serve bench: fragments {scheme} x{connections}: tessera {:.0} MB/s, nginx {}",
                ours.megabytes(),
                theirs.as_ref().map_or("-".to_owned(), |(l, _)| format!(
                    "{:.0} MB/s",
                    l.megabytes()
                ))
            );
            fragment_rows.push((scheme, connections, (ours, ours_cpu), theirs));
        }
    }
    let hwm_end = peak_memory(server.id());
    let nginx_memory = nginx.as_ref().and_then(|n| n.peak_memory());
    let suite = cipher_suite(&https).await;
    drop(nginx);
    cpu.nginx.clear();
    let relays = measure_relays(
        setup,
        &mut cpu,
        &tls_dir.join("ca.crt"),
        &package_id,
        &fragments,
    )
    .await;

    let mut table = Table::new([
        "",
        "Tessera",
        "CPU srv/cli/oth",
        "nginx",
        "CPU srv/cli/oth",
        "target",
        "met",
    ]);
    for (connections, load, used, floor) in &prolog_rows {
        let (floor_figure, floor_cpu, check) = match floor {
            Some((floor, floor_used)) => {
                let ratio = load.rate() / floor.rate();
                (
                    format!("{:.0} (floor)", floor.rate()),
                    floor_used.to_string(),
                    format!("{} ({ratio:.2}x)", verdict(ratio >= FLOOR_RATIO_TARGET)),
                )
            }
            None => ("-".to_owned(), String::new(), String::new()),
        };
        table.row([
            &format!("PROLOG HTTPS, {connections} conn: req/s"),
            &format!("{:.0}", load.rate()),
            &used.to_string(),
            &floor_figure,
            &floor_cpu,
            &format!(">= {FLOOR_RATIO_TARGET}x floor"),
            &check,
        ]);
        let p99 = load.percentile(99.0);
        table.row([
            &format!("PROLOG HTTPS, {connections} conn: p99 ms"),
            &millis(p99),
            "",
            "-",
            "",
            "< 5",
            verdict(p99 < Duration::from_millis(5)),
        ]);
    }
    table.row([
        &format!(
            "Inventory {:.1} KB zlib, new computers, {SMALL_INVENTORY_CONNECTIONS} conn: /s",
            small_zlib as f64 / 1000.0
        ),
        &format!("{:.0}", small_ingest.rate()),
        &small_cpu.to_string(),
        "-",
        "",
        "",
        "",
    ]);
    table.row([
        "  same: p50 ms",
        &millis(small_ingest.percentile(50.0)),
        "",
        "-",
        "",
        "",
        "",
    ]);
    let small_p99 = small_ingest.percentile(99.0);
    table.row([
        "  same: p99 ms",
        &millis(small_p99),
        "",
        "-",
        "",
        "< 20",
        verdict(small_p99 < Duration::from_millis(20)),
    ]);
    let median = ingest.percentile(50.0);
    table.row([
        "Inventory 350 KB: median ms",
        &millis(median),
        "",
        "-",
        "",
        "< 20",
        verdict(median < Duration::from_millis(20)),
    ]);
    table.row([
        "Inventory 350 KB: p99 ms",
        &millis(ingest.percentile(99.0)),
        "",
        "-",
        "",
        "",
        "",
    ]);
    for (scheme, connections, (ours, ours_cpu), theirs) in &fragment_rows {
        let (nginx_figure, nginx_cpu, check) = match theirs {
            Some((theirs, used)) => {
                // Judged at the precision shown: 1.00x is as fast as nginx.
                let ratio = (100.0 * ours.megabytes() / theirs.megabytes()).round() / 100.0;
                (
                    format!("{:.0}", theirs.megabytes()),
                    used.to_string(),
                    format!("{} ({ratio:.2}x)", verdict(ratio >= 1.0)),
                )
            }
            None => ("-".to_owned(), String::new(), String::new()),
        };
        table.row([
            &format!("Fragments {scheme}, {connections} conn: MB/s"),
            &format!("{:.0}", ours.megabytes()),
            &ours_cpu.to_string(),
            &nginx_figure,
            &nginx_cpu,
            ">= nginx",
            &check,
        ]);
    }
    table.row([
        "Peak RSS (VmHWM) MiB",
        &mib(hwm_end),
        "",
        &nginx_memory.map_or("-".to_owned(), |m| mib(Some(m))),
        "",
        "",
        "",
    ]);

    let errors: u64 = prolog_rows
        .iter()
        .map(|(_, l, _, f)| l.errors + f.as_ref().map_or(0, |(f, _)| f.errors))
        .sum::<u64>()
        + ingest.errors
        + small_ingest.errors
        + fragment_rows
            .iter()
            .map(|(_, _, (o, _), t)| o.errors + t.as_ref().map_or(0, |(t, _)| t.errors))
            .sum::<u64>()
        + relays.errors();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    writeln!(
        out,
        "\nserve bench: {cores} CPU cores shared by client and servers, {} s per level, {COMPUTERS} computers",
        setup.duration.as_secs()
    )
    .unwrap();
    writeln!(
        out,
        "  PROLOG reply offers {offered} packages; inventory {} bytes of XML, {} bytes zlib ({} SOFTWARES rows), {INVENTORY_POSTS} posts on one connection",
        big.len(),
        compressed,
        big.matches("<SOFTWARES>").count()
    )
    .unwrap();
    writeln!(
        out,
        "  fragments: {} of {} bytes, TLS {suite}; nginx: {}",
        fragments.len(),
        FRAGMENT_BYTES,
        if nginx_targets.is_some() {
            "sendfile on, 2 workers, TLSv1.3, same files and certificate"
        } else {
            "not installed (scripts/bench-setup.sh)"
        }
    )
    .unwrap();
    writeln!(
        out,
        "  tessera VmHWM: {} MiB after start-up and package build, {} MiB after PROLOG and inventories, {} MiB at the end",
        mib(hwm_ready),
        mib(hwm_agents),
        mib(hwm_end)
    )
    .unwrap();
    let other = prolog_rows
        .iter()
        .flat_map(|(_, _, used, floor)| {
            std::iter::once(used).chain(floor.as_ref().map(|(_, used)| used))
        })
        .chain(fragment_rows.iter().flat_map(|(_, _, (_, ours), theirs)| {
            std::iter::once(ours).chain(theirs.as_ref().map(|(_, used)| used))
        }))
        .chain(relays.cpu())
        .map(|used| used.other)
        .fold(0.0, f64::max);
    writeln!(
        out,
        "  request errors: {errors}; other processes used at most {other:.0}% of one core during a measurement (load average before start: {})\n",
        setup.load_average
    )
    .unwrap();
    out.push_str(&table.render());
    out.push_str(&relays.render());
    out
}

/// Polls the admin API until the listeners are bound and the bench package is built;
/// returns the package id used in download URLs.
async fn wait_ready(setup: &Setup, server: &Process) -> String {
    let admin = Target::new(setup.admin, None);
    let host = setup.admin.to_string();
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(id) = ready_package(&admin, &host).await {
            return id;
        }
        assert!(
            server.running(),
            "tessera serve exited; its log:\n{}",
            tail(&setup.log)
        );
        assert!(
            Instant::now() < deadline,
            "tessera serve not ready after {READY_TIMEOUT:?}; its log:\n{}",
            tail(&setup.log)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ready_package(admin: &Target, host: &str) -> Option<String> {
    let mut connection = Connection::open(admin).await.ok()?;
    let server = connection
        .json(&get(host, "/api/v1/objects/Server/tessera"))
        .await?;
    if server["details"]["addresses"].as_array()?.len() != 2 {
        return None;
    }
    let package = connection
        .json(&get(
            host,
            &format!("/api/v1/objects/Package/{PACKAGE_NAME}"),
        ))
        .await?;
    let ready = package["conditions"]
        .as_array()?
        .iter()
        .any(|c| c["type"] == "Ready" && c["status"] == "True");
    let id = package["details"]["packageId"].as_str()?;
    ready.then(|| id.to_owned())
}

/// One PROLOG, decoded: the number of packages offered.
async fn check_prolog(target: &Target, request: &[u8]) -> usize {
    let reply = exchange_once(target, request).await;
    assert!(
        reply.contains("<RESPONSE>"),
        "unexpected PROLOG reply: {reply}"
    );
    let offered = reply.matches("TYPE=\"PACK\"").count();
    assert!(offered > 0, "the PROLOG reply offers nothing: {reply}");
    offered
}

async fn check_inventory(target: &Target, request: &[u8]) {
    let reply = exchange_once(target, request).await;
    assert!(
        reply.contains("ACCOUNT_UPDATE"),
        "unexpected INVENTORY reply: {reply}"
    );
}

/// Sends one OCS request and inflates the reply.
async fn exchange_once(target: &Target, request: &[u8]) -> String {
    let mut connection = Connection::open(target).await.expect("connect");
    let response = connection
        .exchange(request, Body::Keep)
        .await
        .expect("exchange");
    assert_eq!(
        response.status, 200,
        "OCS request answered {}",
        response.status
    );
    let mut xml = String::new();
    flate2::read::ZlibDecoder::new(&response.body[..])
        .read_to_string(&mut xml)
        .expect("zlib reply");
    xml
}

/// Tessera and `other` (another server, or a relay in front of Tessera) give the same bytes
/// for the same URL.
async fn same_bytes(tessera: &Target, other: &Target, name: &str, host: &str, path: &str) {
    let mut digests = Vec::new();
    for target in [tessera, other] {
        let mut connection = Connection::open(target).await.expect("connect");
        let response = connection
            .exchange(&get(host, path), Body::Keep)
            .await
            .expect("fragment");
        assert_eq!(
            response.status, 200,
            "GET {path} answered {}",
            response.status
        );
        digests.push(sha2::Sha256::digest(&response.body));
    }
    assert_eq!(
        digests[0], digests[1],
        "tessera and {name} differ on {path}"
    );
}

async fn cipher_suite(target: &Target) -> String {
    let Some(tls) = &target.tls else {
        return "none".to_owned();
    };
    let tcp = TcpStream::connect(target.address).await.expect("connect");
    let stream = tls
        .connect(ServerName::from(Ipv4Addr::LOCALHOST), tcp)
        .await
        .expect("handshake");
    let (_, session) = stream.get_ref();
    session
        .negotiated_cipher_suite()
        .map_or("?".to_owned(), |s| format!("{:?}", s.suite()))
}

// --- relays -------------------------------------------------------------------------

/// A load and the CPU it took.
type Measured = (Load, CpuUse);

/// Tessera's HTTPS listener reached directly, through `tessera gateway` (passthrough) and
/// through socat (absent when socat is not installed).
struct RelayFigures {
    /// Per level of `FRAGMENT_LEVELS`: connections, then direct, gateway, socat and the
    /// gateway in tunnel mode.
    fragments: Vec<(usize, Measured, Measured, Option<Measured>, Measured)>,
    /// A new TLS connection and one `info` exchange on it: direct, gateway, socat, tunnel.
    connects: (Load, Load, Option<Load>, Load),
    /// Size of the `info` body.
    info_bytes: usize,
    /// Warnings and errors the gateway logged.
    gateway_log: Vec<String>,
}

/// Starts both relays in front of the HTTPS listener, measures, stops them.
async fn measure_relays(
    setup: &Setup,
    cpu: &mut Cpu,
    ca: &Path,
    package_id: &str,
    fragments: &[String],
) -> RelayFigures {
    let gateway = Relay::gateway(&setup.binary, &setup.work, setup.https);
    let state = setup.config.join(".tessera");
    let (tunnel, tunnel_ca) = Relay::tunnel(&setup.binary, &setup.work, setup.https, &state);
    let socat = match Relay::socat(&setup.work, setup.https) {
        Ok(socat) => Some(socat),
        Err(RelayMissing) => {
            eprintln!(
                "serve bench: socat is not installed; skipping the socat column. Run scripts/bench-setup.sh to install it."
            );
            None
        }
    };
    // The relays pass TLS through untouched: the client still verifies Tessera's
    // certificate (IP SAN 127.0.0.1), whichever address it connects to.
    let tls = tls_connector(ca, Handshake::Resumed);
    let direct = Target::new(setup.https, Some(tls.clone()));
    let through_gateway = Target::new(gateway.address, Some(tls.clone()));
    let through_socat = socat
        .as_ref()
        .map(|s| (s, Target::new(s.address, Some(tls.clone()))));
    let host = setup.https.to_string();
    // The tunnel relays once its certificate is issued and its trust in place.
    let deadline = Instant::now() + RELAY_START_TIMEOUT;
    let through_tunnel = loop {
        if tunnel_ca.is_file() {
            let target = Target::tunnel(
                tunnel.address,
                tunnel_connector(&tunnel_ca, &state, Handshake::Resumed),
                tls.clone(),
            );
            let opened = Connection::open(&target).await;
            if let Ok(mut connection) = opened
                && connection
                    .exchange(&get(&host, &fragments[0]), Body::Discard)
                    .await
                    .is_ok_and(|r| r.status == 200)
            {
                break target;
            }
        }
        assert!(
            tunnel.process.running() && Instant::now() < deadline,
            "the tunnel did not start relaying; {}:\n{}",
            tunnel.log.display(),
            tail(&tunnel.log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    same_bytes(
        &direct,
        &through_gateway,
        "tessera gateway",
        &host,
        &fragments[0],
    )
    .await;
    if let Some((_, target)) = &through_socat {
        same_bytes(&direct, target, "socat", &host, &fragments[0]).await;
    }
    same_bytes(&direct, &through_tunnel, "the tunnel", &host, &fragments[0]).await;

    let requests: Vec<Vec<u8>> = fragments.iter().map(|f| get(&host, f)).collect();
    let mut rows = Vec::new();
    for connections in FRAGMENT_LEVELS {
        let level = (connections, setup.duration, &requests[..]);
        let ours = measured(cpu, None, &direct, level).await;
        let gatewayed = measured(cpu, Some(&gateway), &through_gateway, level).await;
        let socated = match &through_socat {
            Some((relay, target)) => Some(measured(cpu, Some(relay), target, level).await),
            None => None,
        };
        let tunnelled = measured(cpu, Some(&tunnel), &through_tunnel, level).await;
        eprintln!(
            "serve bench: fragments via relays x{connections}: direct {:.0} MB/s, gateway {:.0} MB/s, socat {}, tunnel {:.0} MB/s",
            ours.0.megabytes(),
            gatewayed.0.megabytes(),
            socated.as_ref().map_or("-".to_owned(), |(l, _)| format!(
                "{:.0} MB/s",
                l.megabytes()
            )),
            tunnelled.0.megabytes(),
        );
        rows.push((connections, ours, gatewayed, socated, tunnelled));
    }

    let info = get(&host, &format!("/download/{package_id}/info"));
    let info_bytes = check_info(&direct, &info).await;
    let fresh = tls_connector(ca, Handshake::Full);
    let mut targets = vec![
        Target::new(setup.https, Some(fresh.clone())),
        Target::new(gateway.address, Some(fresh.clone())),
    ];
    targets.push(Target::tunnel(
        tunnel.address,
        tunnel_connector(&tunnel_ca, &state, Handshake::Full),
        fresh.clone(),
    ));
    if let Some((relay, _)) = &through_socat {
        targets.push(Target::new(relay.address, Some(fresh.clone())));
    }
    let mut loads = connect_each(&targets, &info).await.into_iter();
    let direct_connects = loads.next().expect("direct connections");
    let gateway_connects = loads.next().expect("gateway connections");
    let tunnel_connects = loads.next().expect("tunnel connections");
    let connects = (
        direct_connects,
        gateway_connects,
        loads.next(),
        tunnel_connects,
    );
    eprintln!(
        "serve bench: new connection + info, median: direct {} ms, gateway {} ms, socat {}, tunnel {} ms",
        millis(connects.0.percentile(50.0)),
        millis(connects.1.percentile(50.0)),
        connects.2.as_ref().map_or("-".to_owned(), |l| format!(
            "{} ms",
            millis(l.percentile(50.0))
        )),
        millis(connects.3.percentile(50.0)),
    );
    let gateway_log = std::fs::read_to_string(&gateway.log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .map(str::to_owned)
        .collect();
    RelayFigures {
        fragments: rows,
        connects,
        info_bytes,
        gateway_log,
    }
}

impl RelayFigures {
    fn errors(&self) -> u64 {
        let (direct, gateway, socat, tunnel) = &self.connects;
        self.fragments
            .iter()
            .map(|(_, (d, _), (g, _), s, (t, _))| {
                d.errors + g.errors + s.as_ref().map_or(0, |(s, _)| s.errors) + t.errors
            })
            .sum::<u64>()
            + direct.errors
            + gateway.errors
            + socat.as_ref().map_or(0, |s| s.errors)
            + tunnel.errors
    }

    /// The CPU of every measured row.
    fn cpu(&self) -> impl Iterator<Item = &CpuUse> {
        self.fragments
            .iter()
            .flat_map(|(_, (_, d), (_, g), s, (_, t))| {
                [d, g, t]
                    .into_iter()
                    .chain(s.as_ref().map(|(_, used)| used))
            })
    }

    fn render(&self) -> String {
        let mut table = Table::new([
            "",
            "direct",
            "CPU srv/cli/oth",
            "gateway",
            "CPU gw/srv/cli/oth",
            "socat",
            "CPU socat/srv/cli/oth",
            "target",
            "met",
            "tunnel",
            "CPU gw/srv/cli/oth",
        ]);
        let target = format!(">= {RELAY_RATIO_TARGET:.2}x socat");
        for (
            connections,
            (direct, direct_cpu),
            (gateway, gateway_cpu),
            socat,
            (tunnel, tunnel_cpu),
        ) in &self.fragments
        {
            let (socat_figure, socat_cpu, check) = match socat {
                Some((socat, used)) => {
                    // Judged at the precision shown, as for nginx.
                    let ratio = (100.0 * gateway.megabytes() / socat.megabytes()).round() / 100.0;
                    (
                        format!("{:.0}", socat.megabytes()),
                        used.to_string(),
                        format!("{} ({ratio:.2}x)", verdict(ratio >= RELAY_RATIO_TARGET)),
                    )
                }
                None => ("-".to_owned(), String::new(), String::new()),
            };
            table.row([
                &format!("Fragments HTTPS, {connections} conn: MB/s"),
                &format!("{:.0}", direct.megabytes()),
                &direct_cpu.to_string(),
                &format!("{:.0}", gateway.megabytes()),
                &gateway_cpu.to_string(),
                &socat_figure,
                &socat_cpu,
                &target,
                &check,
                &format!("{:.0}", tunnel.megabytes()),
                &tunnel_cpu.to_string(),
            ]);
        }
        let (direct, gateway, socat, tunnel) = &self.connects;
        for (what, p) in [("median", 50.0), ("p99", 99.0)] {
            table.row([
                &format!("New TLS conn + info: {what} ms"),
                &millis(direct.percentile(p)),
                "",
                &millis(gateway.percentile(p)),
                "",
                &socat
                    .as_ref()
                    .map_or("-".to_owned(), |s| millis(s.percentile(p))),
                "",
                "",
                "",
                &millis(tunnel.percentile(p)),
                "",
            ]);
        }
        let added = |relay: &Load| {
            let ms = (relay.percentile(50.0).as_secs_f64() - direct.percentile(50.0).as_secs_f64())
                * 1e3;
            format!("{ms:+.2} ms")
        };
        let mut out = String::new();
        writeln!(
            out,
            "\n  relays in front of the HTTPS listener: tessera gateway (passthrough, no SNI: default backend; {} warnings or errors logged) and socat ({})",
            self.gateway_log.len(),
            if socat.is_some() {
                "TCP-LISTEN fork to TCP, nodelay, default 8 KiB buffer"
            } else {
                "not installed (scripts/bench-setup.sh)"
            }
        )
        .unwrap();
        writeln!(
            out,
            "  new connections: {RELAY_CONNECTS} per target, interleaved, each a full TLS handshake (no resumption) then GET /download/<id>/info ({} bytes); median added over direct: gateway {}, socat {}, tunnel {} (two handshakes: the agent's certificate checked at the edge, then TLS with the server inside)\n",
            self.info_bytes,
            added(gateway),
            socat.as_ref().map_or("-".to_owned(), added),
            added(tunnel)
        )
        .unwrap();
        out.push_str(&table.render());
        for line in self.gateway_log.iter().take(5) {
            writeln!(out, "  gateway: {line}").unwrap();
        }
        out
    }
}

/// `load_for` at `(connections, duration, requests)`, with the CPU it took; `relay` is the
/// process between client and server, if any.
async fn measured(
    cpu: &mut Cpu,
    relay: Option<&Relay>,
    target: &Target,
    (connections, duration, requests): (usize, Duration, &[Vec<u8>]),
) -> Measured {
    cpu.relay = relay.map(|r| r.process.id());
    let before = cpu.sample();
    let started = Instant::now();
    // socat's children exit with their connections at the end of the load, and their CPU
    // time can go with them: the relay is read once more shortly before.
    let late = async {
        tokio::time::sleep(duration.saturating_sub(RELAY_SAMPLE_MARGIN)).await;
        (cpu.sample()[2], started.elapsed())
    };
    let (load, (late_seconds, late_elapsed)) =
        tokio::join!(load_for(target, connections, duration, requests), late);
    let mut used = cpu.used(before, load.elapsed);
    if let Some(relay) = &mut used.relay {
        let late_percent = 100.0 * (late_seconds - before[2]) / late_elapsed.as_secs_f64();
        used.other = (used.other + *relay - late_percent).max(0.0);
        *relay = late_percent;
    }
    cpu.relay = None;
    (load, used)
}

/// GETs the package's `info` once; its size.
async fn check_info(target: &Target, request: &[u8]) -> usize {
    let mut connection = Connection::open(target).await.expect("connect");
    let response = connection
        .exchange(request, Body::Keep)
        .await
        .expect("info");
    assert_eq!(response.status, 200, "info answered {}", response.status);
    response.body.len()
}

/// For each target, `RELAY_CONNECTS` new connections (after `RELAY_CONNECTS_WARMUP` untimed
/// ones), each timed from the TCP connect to the end of one response and then dropped. The
/// targets take turns, the first of each round rotating, so a disturbance (or waking an idle
/// core) hits them all alike.
async fn connect_each(targets: &[Target], request: &[u8]) -> Vec<Load> {
    let mut loads: Vec<Load> = targets.iter().map(|_| Load::default()).collect();
    let started = Instant::now();
    for round in 0..RELAY_CONNECTS_WARMUP + RELAY_CONNECTS {
        for turn in 0..targets.len() {
            let i = (round + turn) % targets.len();
            let (target, load) = (&targets[i], &mut loads[i]);
            let sent = Instant::now();
            let outcome = tokio::time::timeout(EXCHANGE_TIMEOUT, async {
                let mut connection = Connection::open(target).await?;
                connection.exchange(request, Body::Discard).await
            })
            .await;
            let elapsed = sent.elapsed();
            if round < RELAY_CONNECTS_WARMUP {
                continue;
            }
            match outcome {
                Ok(Ok(response)) if response.status == 200 => {
                    load.latencies.push(elapsed);
                    load.requests += 1;
                    load.bytes += response.length as u64;
                }
                _ => load.errors += 1,
            }
        }
    }
    for load in &mut loads {
        load.elapsed = started.elapsed();
    }
    loads
}

// --- load ---------------------------------------------------------------------------

/// What a run of requests gave.
#[derive(Default)]
struct Load {
    requests: u64,
    bytes: u64,
    errors: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Load {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.elapsed.as_secs_f64()
    }

    fn megabytes(&self) -> f64 {
        self.bytes as f64 / 1e6 / self.elapsed.as_secs_f64()
    }

    /// Nearest-rank percentile.
    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
        sorted[rank.clamp(1, sorted.len()) - 1]
    }

    fn merge(&mut self, other: Self) {
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.errors += other.errors;
        self.latencies.extend(other.latencies);
    }
}

/// `connections` keep-alive connections, each sending requests back to back (cycling
/// through `requests` from its own offset) for `duration`.
async fn load_for(
    target: &Target,
    connections: usize,
    duration: Duration,
    requests: &[Vec<u8>],
) -> Load {
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(requests.to_vec());
    let mut opened = Vec::new();
    for _ in 0..connections {
        opened.push(Connection::open(target).await.expect("connect"));
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = tokio::task::JoinSet::new();
    for (worker, mut connection) in opened.into_iter().enumerate() {
        let requests = requests.clone();
        let target = target.clone();
        workers.spawn(async move {
            let mut load = Load::default();
            let mut next = worker * requests.len() / connections;
            while Instant::now() < deadline {
                let request = &requests[next % requests.len()];
                next += 1;
                exchange_counted(&mut load, &mut connection, &target, request).await;
            }
            load
        });
    }
    let mut total = Load::default();
    while let Some(load) = workers.join_next().await {
        total.merge(load.expect("load worker"));
    }
    total.elapsed = started.elapsed();
    total
}

/// Sends every request once over `connections` connections, each taking the next unsent.
async fn send_each(target: &Target, connections: usize, requests: &[Vec<u8>]) -> Load {
    let requests: Arc<Vec<Vec<u8>>> = Arc::new(requests.to_vec());
    let cursor = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let requests = requests.clone();
        let cursor = cursor.clone();
        let target = target.clone();
        workers.spawn(async move {
            let mut load = Load::default();
            let mut connection = reconnect(&target).await;
            loop {
                let next = cursor.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(request) = requests.get(next) else {
                    break;
                };
                exchange_counted(&mut load, &mut connection, &target, request).await;
            }
            load
        });
    }
    let mut total = Load::default();
    while let Some(load) = workers.join_next().await {
        total.merge(load.expect("send worker"));
    }
    total.elapsed = started.elapsed();
    total
}

/// One timed exchange on `connection`, counted in `load`; the connection is opened again
/// when the server closes it or the exchange fails.
async fn exchange_counted(
    load: &mut Load,
    connection: &mut Connection,
    target: &Target,
    request: &[u8],
) {
    let sent = Instant::now();
    match timed_exchange(connection, request).await {
        Ok(response) if response.status == 200 => {
            load.latencies.push(sent.elapsed());
            load.requests += 1;
            load.bytes += response.length as u64;
            if response.closing {
                *connection = reconnect(target).await;
            }
        }
        Ok(_) => load.errors += 1,
        Err(_) => {
            load.errors += 1;
            *connection = reconnect(target).await;
        }
    }
}

async fn timed_exchange(connection: &mut Connection, request: &[u8]) -> std::io::Result<Response> {
    tokio::time::timeout(
        EXCHANGE_TIMEOUT,
        connection.exchange(request, Body::Discard),
    )
    .await
    .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "exchange timed out"))?
}

/// A fresh connection, retrying: a failed request must not end the measurement.
async fn reconnect(target: &Target) -> Connection {
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    loop {
        match Connection::open(target).await {
            Ok(connection) => return connection,
            Err(e) if Instant::now() >= deadline => panic!("reconnect to {}: {e}", target.address),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

// --- the client ---------------------------------------------------------------------

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A server to connect to, over TLS when `tls` is set.
#[derive(Clone)]
struct Target {
    address: SocketAddr,
    tls: Option<TlsConnector>,
    /// A tunnel's outer session (the client certificate shown to the gateway), inside which
    /// `tls` runs.
    outer: Option<TlsConnector>,
}

impl Target {
    fn new(address: SocketAddr, tls: Option<TlsConnector>) -> Self {
        Self {
            address,
            tls,
            outer: None,
        }
    }

    /// Through a tunnel: `outer` to the gateway, `tls` with the server inside it.
    fn tunnel(address: SocketAddr, outer: TlsConnector, tls: TlsConnector) -> Self {
        Self {
            address,
            tls: Some(tls),
            outer: Some(outer),
        }
    }
}

/// What to do with a response body.
#[derive(Clone, Copy, PartialEq)]
enum Body {
    Keep,
    Discard,
}

struct Response {
    status: u16,
    length: usize,
    /// Empty when the body was discarded.
    body: Vec<u8>,
    /// The server said `Connection: close`.
    closing: bool,
}

/// One HTTP/1.1 keep-alive connection: a request written, a head read, exactly
/// `Content-Length` bytes of body read, and again.
struct Connection {
    io: Box<dyn Io>,
    buffer: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Connection {
    async fn open(target: &Target) -> std::io::Result<Self> {
        let tcp = TcpStream::connect(target.address).await?;
        tcp.set_nodelay(true)?;
        let name = ServerName::from(Ipv4Addr::LOCALHOST);
        let io: Box<dyn Io> = match (&target.outer, &target.tls) {
            (Some(outer), Some(tls)) => {
                let outer = outer.connect(name.clone(), tcp).await?;
                Box::new(tls.connect(name, outer).await?)
            }
            (None, Some(tls)) => Box::new(tls.connect(name, tcp).await?),
            (_, None) => Box::new(tcp),
        };
        Ok(Self {
            io,
            buffer: vec![0; READ_BUFFER].into_boxed_slice(),
            start: 0,
            end: 0,
        })
    }

    async fn exchange(&mut self, request: &[u8], body: Body) -> std::io::Result<Response> {
        self.io.write_all(request).await?;
        self.io.flush().await?;
        let head_end = loop {
            if let Some(i) = find(&self.buffer[self.start..self.end], b"\r\n\r\n") {
                break self.start + i + 4;
            }
            if self.end - self.start >= MAX_HEAD {
                return Err(invalid("response head too large"));
            }
            if self.end == self.buffer.len() {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let n = self.io.read(&mut self.buffer[self.end..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.end += n;
        };
        let head = parse_head(&self.buffer[self.start..head_end])?;
        self.start = head_end;
        let buffered = (self.end - self.start).min(head.length);
        let mut kept = Vec::new();
        if body == Body::Keep {
            kept.reserve_exact(head.length);
            kept.extend_from_slice(&self.buffer[self.start..self.start + buffered]);
        }
        self.start += buffered;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let mut remaining = head.length - buffered;
        // Something left to read means the buffer was emptied above: it is scratch space.
        match body {
            Body::Keep => {
                kept.resize(head.length, 0);
                self.io.read_exact(&mut kept[buffered..]).await?;
            }
            Body::Discard => {
                while remaining > 0 {
                    let limit = remaining.min(self.buffer.len());
                    let n = self.io.read(&mut self.buffer[..limit]).await?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    remaining -= n;
                }
            }
        }
        Ok(Response {
            status: head.status,
            length: head.length,
            body: kept,
            closing: head.closing,
        })
    }

    /// GETs JSON; `None` on anything but a 200 with a JSON body.
    async fn json(&mut self, request: &[u8]) -> Option<serde_json::Value> {
        let response = self.exchange(request, Body::Keep).await.ok()?;
        if response.status != 200 {
            return None;
        }
        serde_json::from_slice(&response.body).ok()
    }
}

struct Head {
    status: u16,
    length: usize,
    closing: bool,
}

fn parse_head(head: &[u8]) -> std::io::Result<Head> {
    let text = std::str::from_utf8(head).map_err(|_| invalid("response head not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("bad status line"))?;
    let mut length = None;
    let mut closing = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse().map_err(|_| invalid("bad Content-Length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(invalid("chunked responses are not supported"));
        } else if name.eq_ignore_ascii_case("connection") {
            closing = value.eq_ignore_ascii_case("close");
        }
    }
    let length = length.ok_or_else(|| invalid("no Content-Length"))?;
    Ok(Head {
        status,
        length,
        closing,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn invalid(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, message.to_owned())
}

/// Whether new connections resume an earlier TLS session when they can.
#[derive(Clone, Copy, PartialEq)]
enum Handshake {
    Resumed,
    /// Every connection pays for a full handshake, as a freshly started agent does.
    Full,
}

/// The outer session of a tunnel: trusts the gateway's CA and shows a client certificate
/// the server's agent CA signed (as an enrolled agent's), made here from that CA's key.
fn tunnel_connector(gateway_ca: &Path, state: &Path, handshake: Handshake) -> TlsConnector {
    use tessera::pki::authority::{Authority, LeafRequest, generate_key};
    let issuer = state.join("pki/issuers/default/quickstart-ca");
    let read = |name: &str| std::fs::read_to_string(issuer.join(name)).expect("the agent CA");
    let authority = Authority::from_pem(&read("ca.crt"), &read("ca.key"), None).expect("a CA");
    let key = generate_key(tessera::pki::KeyType::EcdsaP256).expect("a key");
    let issued = authority
        .issue(
            &LeafRequest::client("bench-agent", jiff::SignedDuration::from_hours(24)),
            &key,
            jiff::Timestamp::now(),
        )
        .expect("an agent certificate");
    let roots = roots_of(gateway_ca);
    let chain = CertificateDer::pem_slice_iter(issued.chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("the chain");
    let private = rustls::pki_types::PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
        .expect("the key");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, private)
    .expect("a client identity");
    if handshake == Handshake::Full {
        config.resumption = rustls::client::Resumption::disabled();
    }
    TlsConnector::from(Arc::new(config))
}

/// The CA certificates in the PEM file `ca`.
fn roots_of(ca: &Path) -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read ca.crt") {
        roots.add(cert.expect("a PEM certificate")).expect("a CA");
    }
    roots
}

fn tls_connector(ca: &Path, handshake: Handshake) -> TlsConnector {
    let roots = roots_of(ca);
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    if handshake == Handshake::Full {
        config.resumption = rustls::client::Resumption::disabled();
    }
    TlsConnector::from(Arc::new(config))
}

// --- requests -----------------------------------------------------------------------

fn get(host: &str, path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: tessera-bench\r\n\r\n").into_bytes()
}

/// An OCS POST as the Unix agent sends it: the XML zlib-compressed.
fn ocs_post(host: &str, xml: &str) -> Vec<u8> {
    let body = zlib(xml.as_bytes());
    let mut request = format!(
        "POST /ocsinventory HTTP/1.1\r\nHost: {host}\r\nUser-Agent: OCS-NG_unified_unix_agent_v2.10.0\r\nContent-Type: application/x-compress\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

fn zlib(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).expect("compress");
    encoder.finish().expect("compress")
}

fn device_id(computer: usize) -> String {
    format!("bench-{computer:05}-2026-01-01-00-00-00")
}

fn prolog_xml(computer: usize) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<REQUEST>\n  <DEVICEID>{}</DEVICEID>\n  <QUERY>PROLOG</QUERY>\n</REQUEST>\n",
        device_id(computer)
    )
}

/// Package name stems for SOFTWARES rows, as a Debian desktop lists them.
const SOFTWARE: [&str; 24] = [
    "libc6",
    "libssl3",
    "python3",
    "perl-base",
    "libgtk-3",
    "firefox-esr",
    "libreoffice-core",
    "openssh-client",
    "systemd",
    "libglib2.0",
    "fonts-dejavu",
    "libx11",
    "gnome-shell",
    "libqt5core5a",
    "cups-client",
    "libpulse0",
    "vim-tiny",
    "libcurl4",
    "git",
    "linux-image-6.1.0",
    "libmesa",
    "libxml2",
    "zlib1g",
    "ocsinventory-agent",
];

/// Words for package descriptions.
const WORDS: [&str; 40] = [
    "library",
    "shared",
    "runtime",
    "GNU",
    "development",
    "files",
    "for",
    "the",
    "client",
    "server",
    "utilities",
    "support",
    "plugin",
    "module",
    "Python",
    "bindings",
    "graphical",
    "toolkit",
    "X11",
    "Wayland",
    "daemon",
    "kernel",
    "headers",
    "documentation",
    "fonts",
    "data",
    "common",
    "core",
    "network",
    "protocol",
    "audio",
    "video",
    "codec",
    "driver",
    "firmware",
    "printing",
    "system",
    "tools",
    "interface",
    "transitional",
];

/// A small deterministic generator (xorshift64), enough for varied test data.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

/// An agent-shaped inventory: the usual sections, then SOFTWARES rows until the XML
/// reaches about `bytes` (none when 0).
fn inventory_xml(computer: usize, bytes: usize) -> String {
    let name = format!("bench-{computer:04}");
    let mut xml = String::with_capacity(bytes + 8192);
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<REQUEST>\n  <CONTENT>\n");
    xml.push_str("    <ACCOUNTINFO>\n      <KEYNAME>TAG</KEYNAME>\n      <KEYVALUE>lab</KEYVALUE>\n    </ACCOUNTINFO>\n");
    write!(
        xml,
        "    <BIOS>\n      <BDATE>03/14/2024</BDATE>\n      <BMANUFACTURER>LENOVO</BMANUFACTURER>\n      <BVERSION>N3HET87W (1.64 )</BVERSION>\n      <SMANUFACTURER>LENOVO</SMANUFACTURER>\n      <SMODEL>21AH00F5GE</SMODEL>\n      <SSN>PF{computer:06}</SSN>\n      <TYPE>Notebook</TYPE>\n    </BIOS>\n"
    )
    .unwrap();
    write!(
        xml,
        "    <HARDWARE>\n      <NAME>{name}</NAME>\n      <OSNAME>Debian GNU/Linux 12</OSNAME>\n      <OSVERSION>12</OSVERSION>\n      <OSCOMMENTS>#1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-20)</OSCOMMENTS>\n      <ARCH>x86_64</ARCH>\n      <CHECKSUM>262143</CHECKSUM>\n      <IPADDR>10.20.{}.{}</IPADDR>\n      <MEMORY>15729</MEMORY>\n      <SWAP>976</SWAP>\n      <PROCESSORN>1</PROCESSORN>\n      <PROCESSORS>2600</PROCESSORS>\n      <PROCESSORT>12th Gen Intel(R) Core(TM) i7-1260P</PROCESSORT>\n      <USERID>user{computer}</USERID>\n      <WORKGROUP>lab.example.lan</WORKGROUP>\n      <UUID>4c4c4544-0042-{computer:04}-8051-b4c04f4e3732</UUID>\n    </HARDWARE>\n",
        computer / 250,
        computer % 250 + 1
    )
    .unwrap();
    for cpu in 0..2 {
        write!(
            xml,
            "    <CPUS>\n      <CORES>12</CORES>\n      <CPUARCH>x86_64</CPUARCH>\n      <MANUFACTURER>Intel</MANUFACTURER>\n      <SPEED>2600</SPEED>\n      <THREADS>16</THREADS>\n      <TYPE>12th Gen Intel(R) Core(TM) i7-1260P</TYPE>\n      <SERIALNUMBER>CPU{cpu}</SERIALNUMBER>\n    </CPUS>\n"
        )
        .unwrap();
    }
    for slot in 0..2 {
        write!(
            xml,
            "    <MEMORIES>\n      <CAPACITY>8192</CAPACITY>\n      <DESCRIPTION>SODIMM</DESCRIPTION>\n      <NUMSLOTS>{slot}</NUMSLOTS>\n      <SPEED>4800</SPEED>\n      <TYPE>DDR5</TYPE>\n    </MEMORIES>\n"
        )
        .unwrap();
    }
    for (i, nic) in ["enp0s31f6", "wlp0s20f3", "docker0"].iter().enumerate() {
        write!(
            xml,
            "    <NETWORKS>\n      <DESCRIPTION>{nic}</DESCRIPTION>\n      <IPADDRESS>10.{i}.{}.{}</IPADDRESS>\n      <IPMASK>255.255.255.0</IPMASK>\n      <MACADDR>8c:8c:aa:{i:02x}:{:02x}:{:02x}</MACADDR>\n      <STATUS>Up</STATUS>\n      <TYPE>ethernet</TYPE>\n      <VIRTUALDEV>0</VIRTUALDEV>\n    </NETWORKS>\n",
            computer / 250,
            computer % 250 + 1,
            computer / 256,
            computer % 256
        )
        .unwrap();
    }
    for (volume, free) in [("/", 40_211), ("/boot", 301), ("/home", 310_553)] {
        write!(
            xml,
            "    <DRIVES>\n      <FILESYSTEM>ext4</FILESYSTEM>\n      <FREE>{free}</FREE>\n      <TOTAL>476940</TOTAL>\n      <TYPE>{volume}</TYPE>\n      <VOLUMN>/dev/nvme0n1p2</VOLUMN>\n    </DRIVES>\n"
        )
        .unwrap();
    }
    let tail = format!(
        "  </CONTENT>\n  <DEVICEID>{}</DEVICEID>\n  <QUERY>INVENTORY</QUERY>\n</REQUEST>\n",
        device_id(computer)
    );
    // Varied descriptions and figures, so the XML compresses about as well as an agent's.
    let mut random = Xorshift(0x9e37_79b9_7f4a_7c15 ^ computer as u64);
    let mut row = 0usize;
    while bytes > 0 && xml.len() + tail.len() < bytes {
        let stem = SOFTWARE[row % SOFTWARE.len()];
        let variant = row / SOFTWARE.len();
        let mut comments = String::new();
        for _ in 0..6 + random.below(8) {
            comments.push_str(WORDS[random.below(WORDS.len())]);
            comments.push(' ');
        }
        write!(
            xml,
            "    <SOFTWARES>\n      <ARCH>amd64</ARCH>\n      <COMMENTS>{}</COMMENTS>\n      <FILESIZE>{}</FILESIZE>\n      <FROM>deb</FROM>\n      <INSTALLDATE>2025/{:02}/{:02} {:02}:{:02}:{:02}</INSTALLDATE>\n      <NAME>{stem}-{variant}</NAME>\n      <PUBLISHER>Debian Maintainers &lt;debian-devel@lists.debian.org&gt;</PUBLISHER>\n      <VERSION>{}.{}.{}-{}+deb12u{}</VERSION>\n    </SOFTWARES>\n",
            comments.trim_end(),
            random.below(900_000) + 16,
            random.below(12) + 1,
            random.below(28) + 1,
            random.below(24),
            random.below(60),
            random.below(60),
            random.below(9) + 1,
            random.below(31),
            random.below(17),
            random.below(5) + 1,
            random.below(4) + 1
        )
        .unwrap();
        row += 1;
    }
    xml.push_str(&tail);
    xml
}

// --- the Tessera configuration --------------------------------------------------------

/// The quickstart, listening on `https` and `http`, plus a package of incompressible
/// content affected to every `lab` computer.
fn write_config(config: &Path, https: SocketAddr, http: SocketAddr) {
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    common::copy_tree(&quickstart, config);
    let server = config.join("server.yaml");
    let text = std::fs::read_to_string(&server).expect("read server.yaml");
    let mut replaced = 0;
    let rewritten: Vec<String> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            if trimmed.starts_with("https:") {
                replaced += 1;
                format!("{indent}https: {https}")
            } else if trimmed.starts_with("http:") {
                replaced += 1;
                format!("{indent}http: {http}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    assert_eq!(
        replaced, 2,
        "server.yaml: expected listen.https and listen.http"
    );
    std::fs::write(&server, rewritten.join("\n") + "\n").expect("write server.yaml");

    let content = config.join("packages/bench");
    std::fs::create_dir_all(&content).expect("create the content directory");
    let mut random = Vec::with_capacity(PACKAGE_MIB << 20);
    std::fs::File::open("/dev/urandom")
        .expect("open /dev/urandom")
        .take((PACKAGE_MIB << 20) as u64)
        .read_to_end(&mut random)
        .expect("read /dev/urandom");
    std::fs::write(content.join("payload.bin"), random).expect("write the payload");
    std::fs::write(
        config.join("packages/bench.yaml"),
        format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: {PACKAGE_NAME}\nspec:\n  displayName: Serve bench payload\n  os: linux\n  priority: 5\n  content:\n    directory: bench\n  action:\n    store:\n      path: INSTALL_PATH/bench\n  fragmentSize: 1Mi\n\
             ---\napiVersion: tessera.dev/v1alpha1\nkind: Activation\nmetadata:\n  name: {PACKAGE_NAME}\nspec:\n  packageRef:\n    name: {PACKAGE_NAME}\n\
             ---\napiVersion: tessera.dev/v1alpha1\nkind: Affectation\nmetadata:\n  name: lab-{PACKAGE_NAME}\nspec:\n  activationRef:\n    name: {PACKAGE_NAME}\n  targets:\n    tags: [lab]\n    os: [linux]\n"
        ),
    )
    .expect("write packages/bench.yaml");
    let ignore = config.join(".tesseraignore");
    let mut rules = std::fs::read_to_string(&ignore).unwrap_or_default();
    rules.push_str("packages/bench/\n");
    std::fs::write(&ignore, rules).expect("write .tesseraignore");
}

/// The fragment files of the package that are exactly `FRAGMENT_BYTES` long, as URL paths.
fn fragment_paths(package: &Path) -> Vec<String> {
    let id = package
        .file_name()
        .and_then(|n| n.to_str())
        .expect("package id");
    let mut numbers: Vec<u32> = std::fs::read_dir(package)
        .expect("read the package's fragments")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let number = entry
                .file_name()
                .to_str()?
                .strip_prefix(id)?
                .strip_prefix('-')?
                .parse()
                .ok()?;
            (entry.metadata().ok()?.len() == FRAGMENT_BYTES).then_some(number)
        })
        .collect();
    numbers.sort_unstable();
    assert!(
        !numbers.is_empty(),
        "no 1 MiB fragment in {}",
        package.display()
    );
    numbers
        .into_iter()
        .map(|n| format!("/download/{id}/{id}-{n}"))
        .collect()
}

// --- processes ------------------------------------------------------------------------

/// A child process, stopped with SIGTERM (then SIGKILL) when dropped.
struct Process {
    name: &'static str,
    child: std::cell::RefCell<Child>,
}

impl Process {
    fn spawn(name: &'static str, command: &mut Command) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Self {
            name,
            child: std::cell::RefCell::new(child),
        }
    }

    fn id(&self) -> u32 {
        self.child.borrow().id()
    }

    fn running(&self) -> bool {
        matches!(self.child.borrow_mut().try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let child = self.child.get_mut();
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "serve bench: {} did not stop on SIGTERM; killing it",
            self.name
        );
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// nginx, started as a child on two loopback ports with a generated configuration.
struct Nginx {
    http: SocketAddr,
    https: SocketAddr,
    process: Process,
}

/// nginx is not installed.
struct NginxMissing;

impl Nginx {
    /// Serves `<state>/download` at `/download/` over HTTP and HTTPS (TLS 1.3, Tessera's own
    /// server certificate), with the usual static-file settings.
    fn start(work: &Path, state: &Path, tls: &Path) -> Result<Self, NginxMissing> {
        let binary = nginx_binary().ok_or(NginxMissing)?;
        let dir = work.join("nginx");
        std::fs::create_dir_all(&dir).expect("create the nginx directory");
        let [http, https] = common::free_ports();
        let root = state.display();
        let d = dir.display();
        let cert = tls.join("tls.crt");
        let key = tls.join("tls.key");
        let locations = "    location /download/ { }\n    location / { return 404; }\n";
        // The floor: the PROLOG requests answered with a fixed body, no work at all.
        let floor = format!(
            "    location = /ocsinventory {{ default_type application/x-compressed; return 200 '{FLOOR_BODY}'; }}\n"
        );
        let config = format!(
            "daemon off;\nmaster_process on;\nworker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  sendfile on;\n  tcp_nopush on;\n  keepalive_requests 100000;\n  keepalive_timeout 300s;\n  access_log off;\n  default_type application/octet-stream;\n\
             \x20 client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             \x20 server {{\n    listen {http};\n    root {root};\n{locations}  }}\n\
             \x20 server {{\n    listen {https} ssl;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    ssl_protocols TLSv1.3;\n    root {root};\n{floor}{locations}  }}\n}}\n",
            cert.display(),
            key.display()
        );
        let file = dir.join("nginx.conf");
        std::fs::write(&file, config).expect("write nginx.conf");
        let log = std::fs::File::create(dir.join("stderr.log")).expect("create the nginx log");
        let process = Process::spawn(
            "nginx",
            Command::new(binary)
                .arg("-p")
                .arg(&dir)
                .arg("-e")
                .arg(dir.join("error.log"))
                .arg("-c")
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(http).is_err()
            || std::net::TcpStream::connect(https).is_err()
        {
            assert!(
                process.running() && Instant::now() < deadline,
                "nginx did not start; {}:\n{}",
                dir.display(),
                tail(&dir.join("error.log"))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            http,
            https,
            process,
        })
    }

    /// The master and its workers.
    fn pids(&self) -> Vec<u32> {
        let master = self.process.id();
        std::iter::once(master).chain(children(master)).collect()
    }

    /// The sum of VmHWM over the master and its workers.
    fn peak_memory(&self) -> Option<u64> {
        self.pids().into_iter().map(peak_memory).sum()
    }
}

fn nginx_binary() -> Option<PathBuf> {
    installed("nginx")
}

/// A program on `PATH`, or in `/usr/sbin` or `/usr/bin` (often missing from `PATH` for users).
fn installed(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// A TCP relay started as a child on a loopback port, in front of Tessera's HTTPS listener.
struct Relay {
    address: SocketAddr,
    log: PathBuf,
    process: Process,
}

/// socat is not installed.
struct RelayMissing;

impl Relay {
    /// `tessera gateway` in passthrough mode, configured by a Gateway resource.
    fn gateway(binary: &Path, work: &Path, backend: SocketAddr) -> Self {
        let dir = work.join("gateway");
        std::fs::create_dir_all(&dir).expect("create the gateway directory");
        let [address] = common::free_ports();
        let config = dir.join("gateway.yaml");
        std::fs::write(
            &config,
            format!(
                "apiVersion: tessera.dev/v1alpha1\nkind: Gateway\nmetadata:\n  name: bench\nspec:\n  listen: {address}\n  mode: passthrough\n  backend: {backend}\n"
            ),
        )
        .expect("write gateway.yaml");
        let log = dir.join("gateway.log");
        let process = Process::spawn(
            "tessera gateway",
            Command::new(binary)
                .arg("gateway")
                .arg("--config")
                .arg(&config)
                .env("TESSERA_LOG", "warn")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create the gateway log")),
        );
        Self::accepting(address, log, process)
    }

    /// `tessera gateway` in tunnel mode: its own CA and certificate, and the server's agent CA
    /// (with its CRL) as a trust-only Issuer, as a DMZ would have them. Returns the relay and
    /// the CA file of the gateway's certificate, once issued.
    fn tunnel(binary: &Path, work: &Path, backend: SocketAddr, state: &Path) -> (Self, PathBuf) {
        let dir = work.join("tunnel");
        std::fs::create_dir_all(&dir).expect("create the tunnel directory");
        let issuer = state.join("pki/issuers/default/quickstart-ca");
        for (from, to) in [("ca.crt", "inside-ca.crt"), ("crl.pem", "inside-crl.pem")] {
            std::fs::copy(issuer.join(from), dir.join(to)).expect("copy the inside CA");
        }
        let [address, admin] = common::free_ports();
        std::fs::write(
            dir.join("gateway.yaml"),
            format!(
                "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: edge-ca\nspec:\n  selfSigned: {{}}\n---\napiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: gateway-tls\nspec:\n  issuerRef:\n    name: edge-ca\n  ipAddresses: [127.0.0.1]\n  usages: [server auth, digital signature]\n---\napiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: inside\nspec:\n  ca:\n    certFile: inside-ca.crt\n    crlFile: inside-crl.pem\n---\napiVersion: tessera.dev/v1alpha1\nkind: Gateway\nmetadata:\n  name: bench\nspec:\n  listen: {address}\n  mode: tunnel\n  backend: {backend}\n  certificateRef:\n    name: gateway-tls\n  trustedClientIssuers:\n    - name: inside\n"
            ),
        )
        .expect("write the tunnel's gateway.yaml");
        let log = dir.join("gateway.log");
        let process = Process::spawn(
            "tessera gateway (tunnel)",
            Command::new(binary)
                .arg("gateway")
                .arg("--config")
                .arg(&dir)
                .arg("--admin-address")
                .arg(admin.to_string())
                .env("TESSERA_LOG", "warn")
                .env("RUST_LOG", "warn")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create the tunnel log")),
        );
        let ca = dir.join(".tessera/certificates/default/gateway-tls/ca.crt");
        (Self::accepting(address, log, process), ca)
    }

    /// socat forking a plain TCP relay per connection, with its default 8 KiB buffer.
    /// `nodelay` on both sides, as the gateway does: without it Nagle's algorithm meets the
    /// peer's delayed ACK and each small exchange waits ~40 ms, which measures the socket
    /// option, not the relay.
    fn socat(work: &Path, backend: SocketAddr) -> Result<Self, RelayMissing> {
        let binary = installed("socat").ok_or(RelayMissing)?;
        let [address] = common::free_ports();
        let log = work.join("socat.log");
        let process = Process::spawn(
            "socat",
            Command::new(binary)
                .arg(format!(
                    "TCP-LISTEN:{},bind={},reuseaddr,fork,nodelay",
                    address.port(),
                    address.ip()
                ))
                .arg(format!("TCP:{backend},nodelay"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create the socat log")),
        );
        Ok(Self::accepting(address, log, process))
    }

    /// Waits until the relay accepts connections.
    fn accepting(address: SocketAddr, log: PathBuf, process: Process) -> Self {
        let deadline = Instant::now() + RELAY_START_TIMEOUT;
        while std::net::TcpStream::connect(address).is_err() {
            assert!(
                process.running() && Instant::now() < deadline,
                "{} did not start; {}:\n{}",
                process.name,
                log.display(),
                tail(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            address,
            log,
            process,
        }
    }
}

/// VmHWM of a process, in bytes.
fn peak_memory(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status_field(&status, "VmHWM:").map(|kib| kib * 1024)
}

fn status_field(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix(name))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

// --- the report -----------------------------------------------------------------------

/// Columns: what, then figures with the CPU they took, then target and met.
struct Table<const N: usize> {
    header: [&'static str; N],
    rows: Vec<[String; N]>,
}

impl<const N: usize> Table<N> {
    fn new(header: [&'static str; N]) -> Self {
        Self {
            header,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, cells: [&str; N]) {
        self.rows.push(cells.map(str::to_owned));
    }

    fn render(&self) -> String {
        let header = self.header.map(str::to_owned);
        let all: Vec<&[String; N]> = std::iter::once(&header).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..N)
            .map(|c| all.iter().map(|r| r[c].len()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for (i, row) in all.iter().enumerate() {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                let width = widths[c];
                // The label and the target/met columns read left to right; figures align right.
                if c == 0 || c + 2 >= N {
                    write!(line, "{cell:<width$}  ").unwrap();
                } else {
                    write!(line, "{cell:>width$}  ").unwrap();
                }
            }
            writeln!(out, "{}", line.trim_end()).unwrap();
            if i == 0 {
                writeln!(
                    out,
                    "{}",
                    "-".repeat(widths.iter().sum::<usize>() + 2 * (N - 1))
                )
                .unwrap();
            }
        }
        out
    }
}

/// CPU used by the relay (when one is measured), by the server, by this client and by every
/// other process on the machine (noise: a build running alongside skews figures), as
/// `[relay%/]server%/client%/other%` of one core.
struct CpuUse {
    relay: Option<f64>,
    server: f64,
    client: f64,
    other: f64,
}

impl std::fmt::Display for CpuUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(relay) = self.relay {
            write!(f, "{relay:.0}%/")?;
        }
        write!(
            f,
            "{:.0}%/{:.0}%/{:.0}%",
            self.server, self.client, self.other
        )
    }
}

/// Reads CPU time of the server processes and of this process from `/proc`.
struct Cpu {
    tessera: u32,
    /// nginx's master and workers, once started.
    nginx: Vec<u32>,
    /// The relay being measured, with the children it forks.
    relay: Option<u32>,
    ticks_per_second: f64,
}

/// CPU seconds so far: Tessera, nginx, the relay, this client, the whole machine.
type CpuSample = [f64; 5];

impl Cpu {
    fn new(tessera: u32) -> Self {
        let ticks_per_second = Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0);
        Self {
            tessera,
            nginx: Vec::new(),
            relay: None,
            ticks_per_second,
        }
    }

    fn sample(&self) -> CpuSample {
        let seconds = |pids: &[u32]| {
            pids.iter().filter_map(|&pid| cpu_ticks(pid)).sum::<u64>() as f64
                / self.ticks_per_second
        };
        [
            seconds(&[self.tessera]),
            seconds(&self.nginx),
            self.relay.map_or(0, tree_ticks) as f64 / self.ticks_per_second,
            seconds(&[std::process::id()]),
            machine_busy_ticks() as f64 / self.ticks_per_second,
        ]
    }

    /// Percent of one core since `before`; the server is whichever of the two was busy.
    fn used(&self, before: CpuSample, elapsed: Duration) -> CpuUse {
        let after = self.sample();
        let percent = |i: usize| 100.0 * (after[i] - before[i]) / elapsed.as_secs_f64();
        let known = percent(0) + percent(1) + percent(2) + percent(3);
        CpuUse {
            relay: self.relay.map(|_| percent(2)),
            server: percent(0) + percent(1),
            client: percent(3),
            other: (percent(4) - known).max(0.0),
        }
    }
}

/// Time all CPUs spent running processes (user, nice, system), in clock ticks: interrupt
/// time is left out, as loopback traffic is processed there on no process's account.
fn machine_busy_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find_map(|line| line.strip_prefix("cpu ")) else {
        return 0;
    };
    // user nice system idle iowait irq softirq steal ...; guest time is already in user.
    cpu.split_whitespace()
        .take(3)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum()
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// CPU of a process and of its children, in clock ticks: its own utime + stime, the children
/// it has reaped (cutime + cstime), and those still running (socat forks one per connection).
fn tree_ticks(pid: u32) -> u64 {
    let reaped = stat_fields(pid).map_or(0, |fields| {
        fields[11..15]
            .iter()
            .filter_map(|v| v.parse::<u64>().ok())
            .sum()
    });
    reaped + children(pid).into_iter().filter_map(cpu_ticks).sum::<u64>()
}

/// The fields of `/proc/<pid>/stat` after the command name, which may hold spaces: state is
/// the first, then utime, stime, cutime and cstime are the 12th to the 15th.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<String> = stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    (fields.len() >= 15).then_some(fields)
}

/// The processes whose parent is `parent`.
fn children(parent: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let status = std::fs::read_to_string(entry.path().join("status")).unwrap_or_default();
        if status_field(&status, "PPid:") == Some(u64::from(parent)) {
            pids.push(pid);
        }
    }
    pids
}

fn verdict(met: bool) -> &'static str {
    if met { "yes" } else { "NO" }
}

fn millis(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1e3)
}

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("?".to_owned(), |b| {
        format!("{:.0}", b as f64 / f64::from(1 << 20))
    })
}
