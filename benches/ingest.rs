//! Resident memory of `tessera serve` while a fleet registers: does it stay flat?
//!
//! `cargo bench --bench ingest` starts the release `tessera serve` on loopback ports with the
//! quickstart configuration, then posts 50,000 small inventories over HTTPS, each from a
//! different device id (tag `lab`, Debian 12, so the quickstart's Affectations arm every
//! one), zlib-compressed as the Unix agent sends them, from 32 keep-alive connections at
//! once. It prints the server's resident memory (`VmRSS` of `/proc/PID/status`) before,
//! every 10,000 inventories, right after, and again once reconcile has had a few seconds to
//! count the fleet; with it the peak (`VmHWM`), the server's threads, and the size of the
//! SQLite file (`state.db` with its write-ahead log).
//!
//! `TESSERA_BENCH_INVENTORIES` sets the number of inventories (default 50,000; the step
//! between readings is a fifth of it when that is under 50,000), `TESSERA_BENCH_CONNECTIONS`
//! the connections, `TESSERA_BENCH_BINARY` another `tessera` to measure (an older build, to
//! compare). The server inherits the environment, so `TESSERA_BLOCKING_THREADS` or
//! `MALLOC_ARENA_MAX` set for the bench apply to it. Client and server share the machine's
//! cores: the rate depends on what else runs; memory much less. It prints figures; it
//! asserts nothing.

mod common;

use std::fmt::Write as _;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// The fleet registered: about what a large site has.
const INVENTORIES: usize = 50_000;
/// Inventories between two readings of resident memory.
const STEP: usize = 10_000;
/// Agents posting at once; the server's blocking pool grows with this.
const CONNECTIONS: usize = 32;
/// The quickstart's packages are built at start-up: seconds, unless the machine is busy.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Any single exchange taking longer than this is an error, not a slow sample.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// After the last inventory: long enough for a few reconcile passes (one a second while
/// agents report) to count the whole fleet, and for the server to go idle.
const SETTLE: Duration = Duration::from_secs(5);
/// Response heads larger than this are refused.
const MAX_HEAD: usize = 64 << 10;

fn main() {
    let total = env_count("TESSERA_BENCH_INVENTORIES", INVENTORIES);
    let connections = env_count("TESSERA_BENCH_CONNECTIONS", CONNECTIONS);
    let step = STEP.min(total.div_ceil(5)).max(1);
    let binary = std::env::var_os("TESSERA_BENCH_BINARY").map_or_else(
        || PathBuf::from(env!("CARGO_BIN_EXE_tessera")),
        PathBuf::from,
    );
    let work = tempfile::tempdir().expect("temporary directory");
    let config = work.path().join("config");
    let [https, http, admin] = common::free_ports();
    write_config(&config, https, http);
    let log = work.path().join("tessera.log");
    let mut command = common::serve_command(&binary, &config, admin, &log);
    let server = Server(command.spawn().expect("start tessera serve"));
    let pid = server.0.id();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let state = config.join(".tessera");
    let readings = runtime.block_on(async {
        wait_ready(admin, &log).await;
        let tls = tls_connector(&state.join("certificates/default/tessera-server/ca.crt"));
        ingest(https, tls, pid, &state, total, step, connections).await
    });
    drop(server);
    println!(
        "ingest bench: {total} inventories over HTTPS from {connections} connections (`{}`)",
        binary.display()
    );
    println!();
    println!(
        "| moment | inventories | resident (VmRSS) | peak (VmHWM) | threads | state.db + WAL |"
    );
    println!("| --- | --- | --- | --- | --- | --- |");
    for r in &readings {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            r.moment,
            r.done,
            mib(r.rss),
            mib(r.hwm),
            r.threads.map_or("-".into(), |t| t.to_string()),
            mib(Some(r.database)),
        );
    }
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let noted: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("WARN") || line.contains("ERROR"))
        .collect();
    println!();
    println!("tessera log: {} warnings or errors", noted.len());
    for line in noted.iter().take(5) {
        println!("  {line}");
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

/// One reading of the server's memory.
struct Reading {
    moment: String,
    done: usize,
    rss: Option<u64>,
    hwm: Option<u64>,
    threads: Option<u64>,
    database: u64,
}

impl Reading {
    fn take(moment: &str, done: usize, pid: u32, state: &Path) -> Self {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let kib = |name| status_field(&status, name).map(|k| k * 1024);
        let database = ["state.db", "state.db-wal"]
            .iter()
            .filter_map(|f| std::fs::metadata(state.join(f)).ok())
            .map(|m| m.len())
            .sum();
        let reading = Self {
            moment: moment.to_owned(),
            done,
            rss: kib("VmRSS:"),
            hwm: kib("VmHWM:"),
            threads: status_field(&status, "Threads:"),
            database,
        };
        eprintln!(
            "ingest bench: {moment}: {done} inventories, resident {}, {} threads",
            mib(reading.rss),
            reading.threads.unwrap_or(0)
        );
        reading
    }
}

/// Posts `total` inventories from `connections` connections, reading memory every `step`.
async fn ingest(
    https: SocketAddr,
    tls: TlsConnector,
    pid: u32,
    state: &Path,
    total: usize,
    step: usize,
    connections: usize,
) -> Vec<Reading> {
    let mut readings = vec![Reading::take("before", 0, pid, state)];
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections {
        let (next, done, tls) = (next.clone(), done.clone(), tls.clone());
        workers.spawn(async move {
            let host = https.to_string();
            let mut connection = connect(https, &tls).await;
            loop {
                let computer = next.fetch_add(1, Ordering::Relaxed);
                if computer >= total {
                    break;
                }
                let request = ocs_post(&host, &inventory_xml(computer));
                loop {
                    match exchange(&mut connection, &request).await {
                        Ok(200) => break,
                        Ok(status) => panic!("an inventory was answered {status}"),
                        // The server closed an idle or old connection: open another.
                        Err(_) => connection = connect(https, &tls).await,
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let mut mark = step;
    while mark <= total {
        while done.load(Ordering::Relaxed) < mark {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        readings.push(Reading::take("during", mark, pid, state));
        mark += step;
    }
    while let Some(worker) = workers.join_next().await {
        worker.expect("an ingest worker");
    }
    let elapsed = started.elapsed();
    eprintln!(
        "ingest bench: {total} inventories in {:.1} s ({:.0}/s)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    let mut after = Reading::take("after", total, pid, state);
    after.moment = format!("after ({:.0}/s)", total as f64 / elapsed.as_secs_f64());
    readings.push(after);
    tokio::time::sleep(SETTLE).await;
    readings.push(Reading::take(
        &format!("{} s later", SETTLE.as_secs()),
        total,
        pid,
        state,
    ));
    readings
}

/// Polls the admin API until the listeners are up and every quickstart package is built.
async fn wait_ready(admin: SocketAddr, log: &Path) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(mut tcp) = TcpStream::connect(admin).await {
            let request = format!(
                "GET /api/v1/objects HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
            );
            let mut response = Vec::new();
            if tcp.write_all(request.as_bytes()).await.is_ok()
                && tcp.read_to_end(&mut response).await.is_ok()
                && ready(&response)
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "tessera serve not ready after {READY_TIMEOUT:?}; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the objects list shows the Server and every Package `Ready`.
fn ready(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((_, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let Ok(objects) = serde_json::from_str::<serde_json::Value>(body) else {
        return false;
    };
    let Some(objects) = objects.as_array().or_else(|| objects["objects"].as_array()) else {
        return false;
    };
    let ready = |o: &serde_json::Value| {
        o["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    };
    objects.iter().any(|o| o["kind"] == "Server" && ready(o))
        && objects.iter().filter(|o| o["kind"] == "Package").all(ready)
}

// --- the client ---------------------------------------------------------------------

async fn connect(address: SocketAddr, tls: &TlsConnector) -> TlsStream<TcpStream> {
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    loop {
        let attempt = async {
            let tcp = TcpStream::connect(address).await?;
            tcp.set_nodelay(true)?;
            tls.connect(ServerName::from(Ipv4Addr::LOCALHOST), tcp)
                .await
        };
        match attempt.await {
            Ok(stream) => return stream,
            Err(e) if Instant::now() >= deadline => panic!("connect to {address}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// One request on a keep-alive connection; the response's status, its body read and
/// dropped.
async fn exchange(connection: &mut TlsStream<TcpStream>, request: &[u8]) -> std::io::Result<u16> {
    let exchange = async {
        connection.write_all(request).await?;
        connection.flush().await?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > MAX_HEAD || connection.read(&mut byte).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            head.push(byte[0]);
        }
        let (status, length) = parse_head(&head).ok_or(std::io::ErrorKind::InvalidData)?;
        let mut body = vec![0; length];
        connection.read_exact(&mut body).await?;
        Ok(status)
    };
    tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// The status and `Content-Length` of a response head.
fn parse_head(head: &[u8]) -> Option<(u16, usize)> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
        .map_or(Some(0), |(_, value)| value.trim().parse().ok())?;
    Some((status, length))
}

fn tls_connector(ca: &Path) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("read the server's CA") {
        roots
            .add(cert.expect("a CA certificate"))
            .expect("add the CA");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// An OCS POST as the Unix agent sends it: the XML zlib-compressed.
fn ocs_post(host: &str, xml: &str) -> Vec<u8> {
    let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(xml.as_bytes()).expect("compress");
    let body = encoder.finish().expect("compress");
    let mut request = format!(
        "POST /ocsinventory HTTP/1.1\r\nHost: {host}\r\nUser-Agent: OCS-NG_unified_unix_agent_v2.10.0\r\nContent-Type: application/x-compress\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

/// A small agent-shaped inventory (about 2 KB of XML): the usual sections, a handful of
/// installed packages, a distinct device id, name, serial number and addresses.
fn inventory_xml(computer: usize) -> String {
    let name = format!("ingest-{computer:06}");
    let mut xml = String::with_capacity(4096);
    xml.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<REQUEST>\n  <CONTENT>\n");
    xml.push_str("    <ACCOUNTINFO>\n      <KEYNAME>TAG</KEYNAME>\n      <KEYVALUE>lab</KEYVALUE>\n    </ACCOUNTINFO>\n");
    write!(
        xml,
        "    <BIOS>\n      <BMANUFACTURER>LENOVO</BMANUFACTURER>\n      <SMODEL>21AH00F5GE</SMODEL>\n      <SSN>PF{computer:06}</SSN>\n      <TYPE>Notebook</TYPE>\n    </BIOS>\n"
    )
    .unwrap();
    write!(
        xml,
        "    <HARDWARE>\n      <NAME>{name}</NAME>\n      <OSNAME>Debian GNU/Linux 12</OSNAME>\n      <OSVERSION>12</OSVERSION>\n      <ARCH>x86_64</ARCH>\n      <IPADDR>10.{}.{}.{}</IPADDR>\n      <MEMORY>15729</MEMORY>\n      <PROCESSORT>12th Gen Intel(R) Core(TM) i7-1260P</PROCESSORT>\n      <USERID>user{computer}</USERID>\n      <UUID>4c4c4544-0042-{computer:06}-8051-b4c04f4e3732</UUID>\n    </HARDWARE>\n",
        computer / 65_536,
        computer / 256 % 256,
        computer % 256
    )
    .unwrap();
    write!(
        xml,
        "    <NETWORKS>\n      <DESCRIPTION>enp0s31f6</DESCRIPTION>\n      <IPADDRESS>10.{}.{}.{}</IPADDRESS>\n      <IPMASK>255.255.0.0</IPMASK>\n      <MACADDR>8c:8c:aa:{:02x}:{:02x}:{:02x}</MACADDR>\n      <STATUS>Up</STATUS>\n    </NETWORKS>\n",
        computer / 65_536,
        computer / 256 % 256,
        computer % 256,
        computer / 65_536,
        computer / 256 % 256,
        computer % 256
    )
    .unwrap();
    for (package, version) in [
        ("libc6", "2.36-9+deb12u13"),
        ("openssh-client", "1:9.2p1-2+deb12u7"),
        ("ocsinventory-agent", "2:2.10.0-2"),
        ("systemd", "252.39-1~deb12u1"),
        ("firefox-esr", "140.5.0esr-1~deb12u1"),
    ] {
        write!(
            xml,
            "    <SOFTWARES>\n      <ARCH>amd64</ARCH>\n      <FROM>deb</FROM>\n      <NAME>{package}</NAME>\n      <VERSION>{version}</VERSION>\n    </SOFTWARES>\n"
        )
        .unwrap();
    }
    write!(
        xml,
        "  </CONTENT>\n  <DEVICEID>{name}-2026-01-01-00-00-00</DEVICEID>\n  <QUERY>INVENTORY</QUERY>\n</REQUEST>\n"
    )
    .unwrap();
    xml
}

// --- the server ---------------------------------------------------------------------

/// `tessera serve`, stopped with SIGTERM (then SIGKILL) when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The quickstart, listening on `https` and `http`.
fn write_config(config: &Path, https: SocketAddr, http: SocketAddr) {
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    common::copy_tree(&quickstart, config);
    let server = config.join("server.yaml");
    let text = std::fs::read_to_string(&server).expect("read server.yaml");
    let rewritten: Vec<String> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            if trimmed.starts_with("https:") {
                format!("{indent}https: {https}")
            } else if trimmed.starts_with("http:") {
                format!("{indent}http: {http}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    std::fs::write(&server, rewritten.join("\n") + "\n").expect("write server.yaml");
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

fn mib(bytes: Option<u64>) -> String {
    bytes.map_or("-".into(), |b| {
        format!("{:.0} MiB", b as f64 / f64::from(1 << 20))
    })
}
