//! `kill -9` of `tessera serve` in the middle of a deployment wave loses no reported
//! result: simulated OCS agents register and are offered the wave's package, then report
//! their results (while late agents send their first inventories) over shared keep-alive
//! connections; the server is killed as soon as enough of both are acknowledged, with the
//! rest in flight or still queued. Restarted on the same state, the database file holds
//! every result and inventory an agent got a 200 for, and the server serves the rest of
//! the wave (the agents resend what was not acknowledged, as real agents do).
//!
//! The agents are the fleet simulator's (`benches/fleet/sim.rs`, through
//! `fleet_sim.rs`): its requests, inventories and HTTP client. Waits are for
//! conditions, checked while the server runs; `LAST_RESORT` only ends one that would
//! otherwise hang. The server is killed when the test ends, even by a panic.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tessera::store::db::{Database, State};
use tokio_rustls::TlsConnector;

use crate::fleet_sim::sim;
use crate::support::{Reaped, free_port, quickstart_copy};

/// Agents registered and offered the wave before the kill; their results are reported
/// under fire.
const AGENTS: usize = 40;
/// Agents whose first contact (PROLOG, then inventory) comes during the wave.
const LATE: usize = 12;
/// Results acknowledged before the kill: enough for the check to have something to find,
/// far enough short of `AGENTS` that the kill cuts the wave however the requests in flight
/// (at most `CONNECTIONS`) end.
const KILL_AFTER_RESULTS: usize = 12;
/// Inventories acknowledged before the kill (one late agent every third result, so a few
/// are done by the time `KILL_AFTER_RESULTS` results are).
const KILL_AFTER_INVENTORIES: usize = 3;
/// Keep-alive connections the agents share (a site's agents behind one proxy): several
/// requests are in flight when the server is killed.
const CONNECTIONS: usize = 4;
/// A wait this long is a hung server, not a slow one (the whole test takes seconds).
const LAST_RESORT: Duration = Duration::from_secs(120);
/// Name of the wave's Package, Activation and Affectation.
const WAVE: &str = "wave";

/// The wave, present from the start: a small package for every Linux computer.
fn wave_yaml() -> String {
    format!(
        "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: {WAVE}\nspec:\n  os: linux\n  priority: 5\n  content:\n    directory: {WAVE}\n  action:\n    execute:\n      command: sh install.sh\n---\napiVersion: tessera.dev/v1alpha1\nkind: Activation\nmetadata:\n  name: {WAVE}\nspec:\n  packageRef:\n    name: {WAVE}\n---\napiVersion: tessera.dev/v1alpha1\nkind: Affectation\nmetadata:\n  name: {WAVE}\nspec:\n  activationRef:\n    name: {WAVE}\n  targets:\n    all: true\n    os: [linux]\n"
    )
}

/// What a worker plays next.
#[derive(Clone, Copy, Debug)]
enum Job {
    /// Registered agent `n` reports SUCCESS for the wave's package.
    Result(usize),
    /// Agent `n` makes its first contact: PROLOG, then its inventory.
    FirstContact(usize),
}

/// What the agents got a 200 for, and the kill.
#[derive(Default)]
struct Tally {
    acked: Mutex<Acked>,
    /// Set (under `acked`'s lock) just before the kill: no job starts after it.
    killed: AtomicBool,
    /// Exchanges the kill cut (an error on the connection once it was set).
    cut: AtomicUsize,
}

#[derive(Default)]
struct Acked {
    results: BTreeSet<usize>,
    inventories: BTreeSet<usize>,
}

impl Tally {
    /// Notes a 200; when the kill's condition is met, kills the server there and then,
    /// still holding the lock, so no other acknowledgement is counted and no job starts
    /// between the condition and the kill.
    fn acked(&self, job: Job, server: &Mutex<Reaped>) {
        let mut acked = self.acked.lock().unwrap();
        match job {
            Job::Result(n) => acked.results.insert(n),
            Job::FirstContact(n) => acked.inventories.insert(n),
        };
        if acked.results.len() >= KILL_AFTER_RESULTS
            && acked.inventories.len() >= KILL_AFTER_INVENTORIES
            && !self.killed.swap(true, Ordering::SeqCst)
        {
            let mut server = server.lock().unwrap();
            server.0.kill().unwrap(); // SIGKILL
            server.0.wait().unwrap();
        }
    }
}

fn prolog(host: &str, device: &str) -> Vec<u8> {
    sim::ocs_post(
        host,
        &format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<REQUEST>\n  <DEVICEID>{device}</DEVICEID>\n  <QUERY>PROLOG</QUERY>\n</REQUEST>\n"
        ),
    )
}

fn result(host: &str, device: &str, package: &str) -> Vec<u8> {
    sim::ocs_post(
        host,
        &format!(
            "<REQUEST DEVICEID=\"{device}\" ERR=\"SUCCESS\" ID=\"{package}\" QUERY=\"DOWNLOAD\" />"
        ),
    )
}

fn inflate(bytes: &[u8]) -> String {
    let mut xml = String::new();
    std::io::Read::read_to_string(&mut flate2::read::ZlibDecoder::new(bytes), &mut xml)
        .expect("a zlib reply");
    xml
}

/// Whether a PROLOG reply offers package `id`.
fn offers(reply: &str, id: &str) -> bool {
    reply
        .split("<PARAM ")
        .any(|param| param.contains("TYPE=\"PACK\"") && param.contains(&format!(" ID=\"{id}\"")))
}

fn tls(dir: &Path) -> TlsConnector {
    let config = rustls::ClientConfig::builder_with_provider(tessera::pki::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(sim::server_roots(&crate::support::server_ca(dir)))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// One exchange on a keep-alive connection, opened (again) when there is none or the
/// server closed it.
async fn exchange(
    connection: &mut Option<sim::Connection>,
    https: SocketAddr,
    tls: &TlsConnector,
    request: &[u8],
) -> std::io::Result<sim::Response> {
    for attempt in 0..2 {
        let open = match connection {
            Some(open) => open,
            None => connection.insert(sim::Connection::open(https, tls).await?),
        };
        match open.exchange(request).await {
            Ok(response) => {
                if response.closing {
                    *connection = None;
                }
                return Ok(response);
            }
            Err(error) => {
                *connection = None;
                if attempt == 1 {
                    return Err(error);
                }
            }
        }
    }
    unreachable!("the second attempt returns")
}

/// An exchange that must answer 200: its body.
async fn ok(
    connection: &mut Option<sim::Connection>,
    https: SocketAddr,
    tls: &TlsConnector,
    request: &[u8],
    what: &str,
) -> Vec<u8> {
    let response = exchange(connection, https, tls, request)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(
        response.status,
        200,
        "{what}: {}",
        String::from_utf8_lossy(&response.body)
    );
    response.body
}

/// Polls `check` while `server` runs, until it gives something.
async fn until<T, F, Fut>(what: &str, server: &Mutex<Reaped>, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        server.lock().unwrap().assert_running(what);
        assert!(
            start.elapsed() < LAST_RESORT,
            "still waiting for {what} after {LAST_RESORT:?}: the server hangs"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The server's HTTPS address, once it serves there; after a restart (`tls` given), once a
/// TLS handshake with the server's CA succeeds there: the Server's status may still name
/// the killed server's listeners, a port something else (even the new server's plain
/// HTTP) may hold now.
async fn https_address(
    admin: SocketAddr,
    tls: Option<&TlsConnector>,
    server: &Mutex<Reaped>,
) -> SocketAddr {
    until("the Server serving", server, || async {
        let found = sim::admin_json(admin, "/api/v1/objects/Server/tessera").await?;
        let address = found["details"]["addresses"][0].as_str()?.parse().ok()?;
        if let Some(tls) = tls {
            sim::Connection::open(address, tls).await.ok()?;
        }
        Some(address)
    })
    .await
}

fn ready(object: Option<&serde_json::Value>) -> bool {
    object.is_some_and(|o| {
        o["conditions"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        })
    })
}

/// The wave's package id, once it is built and its Activation ready.
async fn wave_package(admin: SocketAddr, server: &Mutex<Reaped>) -> String {
    until("the wave built", server, || async {
        let package = sim::admin_json(admin, &format!("/api/v1/objects/Package/{WAVE}")).await;
        let activation =
            sim::admin_json(admin, &format!("/api/v1/objects/Activation/{WAVE}")).await;
        if !ready(package.as_ref()) || !ready(activation.as_ref()) {
            return None;
        }
        package?["details"]["packageId"].as_str().map(str::to_owned)
    })
    .await
}

/// Agent `n`'s first contact: PROLOG (asked for an inventory), inventory.
async fn first_contact(
    connection: &mut Option<sim::Connection>,
    https: SocketAddr,
    tls: &TlsConnector,
    n: usize,
) -> std::io::Result<sim::Response> {
    let host = https.to_string();
    let reply = exchange(connection, https, tls, &prolog(&host, &sim::ocs_device(n))).await?;
    assert_eq!(reply.status, 200, "first PROLOG of agent {n}");
    assert!(
        inflate(&reply.body).contains("<RESPONSE>SEND</RESPONSE>"),
        "a new agent is asked for its inventory"
    );
    exchange(
        connection,
        https,
        tls,
        &sim::ocs_post(&host, &sim::inventory_xml(n)),
    )
    .await
}

/// Plays `jobs` on one connection until the queue is empty or the server was killed.
/// Any answer but a 200 fails the test; so does a broken connection before the kill.
async fn play(
    jobs: Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Job>>>,
    https: SocketAddr,
    tls: TlsConnector,
    package: String,
    tally: Arc<Tally>,
    server: Arc<Mutex<Reaped>>,
) {
    let host = https.to_string();
    let mut connection = None;
    loop {
        if tally.killed.load(Ordering::SeqCst) {
            return;
        }
        let Some(job) = jobs.lock().await.recv().await else {
            return;
        };
        if tally.killed.load(Ordering::SeqCst) {
            return;
        }
        let outcome = match job {
            Job::Result(n) => {
                let request = result(&host, &sim::ocs_device(n), &package);
                exchange(&mut connection, https, &tls, &request).await
            }
            Job::FirstContact(n) => first_contact(&mut connection, https, &tls, n).await,
        };
        match outcome {
            Ok(response) if response.status == 200 => tally.acked(job, &server),
            Ok(response) => panic!(
                "{job:?}: HTTP {}: {}",
                response.status,
                String::from_utf8_lossy(&response.body)
            ),
            Err(_) if tally.killed.load(Ordering::SeqCst) => {
                tally.cut.fetch_add(1, Ordering::SeqCst);
                return;
            }
            Err(e) => panic!("{job:?} before the kill: {e}"),
        }
    }
}

/// `tessera serve --config CONFIG` as a child process with its admin API on loopback port
/// `admin`, its log appended to `log`.
fn serve_child(config: &Path, admin: u16, log: &Path) -> Reaped {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    Reaped(
        std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--admin-address", &format!("127.0.0.1:{admin}")])
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tessera serve starts"),
    )
}

/// Prints the servers' log when the test fails (kept out of the watched directory).
struct LogOnPanic(tempfile::TempDir);

impl LogOnPanic {
    fn path(&self) -> std::path::PathBuf {
        self.0.path().join("serve.log")
    }
}

impl Drop for LogOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(self.path()).unwrap_or_default();
            eprintln!("--- the servers' log ---\n{log}");
        }
    }
}

/// The state and code of `device`'s deployment of `package`, read from the database file.
fn filed(db: &Database, device: &str, package: &str) -> Option<(State, Option<String>)> {
    let (_, deployments) = db.computer(device).unwrap()?;
    deployments
        .into_iter()
        .find(|d| d.package_id == package)
        .map(|d| (d.state, d.code))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_deployment_wave_loses_no_reported_result() {
    let started = Instant::now();
    let log = LogOnPanic(tempfile::tempdir().unwrap());
    let dir = quickstart_copy();
    // Only the wave is deployed: the quickstart's own packages would be offered too.
    std::fs::remove_dir_all(dir.path().join("packages")).unwrap();
    std::fs::remove_file(dir.path().join("affectations.yaml")).unwrap();
    std::fs::create_dir_all(dir.path().join(WAVE)).unwrap();
    std::fs::write(
        dir.path().join(WAVE).join("install.sh"),
        "#!/bin/sh\nexit 0\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(format!("{WAVE}.yaml")), wave_yaml()).unwrap();
    let port = free_port();
    let admin: SocketAddr = ([127, 0, 0, 1], port).into();
    let server = Arc::new(Mutex::new(serve_child(dir.path(), port, &log.path())));
    let https = https_address(admin, None, &server).await;
    let package = wave_package(admin, &server).await;
    let tls = tls(dir.path());
    eprintln!(
        "wave kill: server up, package {package} built after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // Registration: every agent sends its inventory and is offered the wave.
    let mut registering = tokio::task::JoinSet::new();
    for worker in 0..CONNECTIONS {
        let (tls, package) = (tls.clone(), package.clone());
        registering.spawn(async move {
            let mut connection = None;
            for n in (worker..AGENTS).step_by(CONNECTIONS) {
                let inventory = first_contact(&mut connection, https, &tls, n)
                    .await
                    .unwrap_or_else(|e| panic!("inventory of agent {n}: {e}"));
                assert_eq!(inventory.status, 200, "inventory of agent {n}");
                let host = https.to_string();
                let reply = ok(
                    &mut connection,
                    https,
                    &tls,
                    &prolog(&host, &sim::ocs_device(n)),
                    "PROLOG",
                )
                .await;
                assert!(
                    offers(&inflate(&reply), &package),
                    "agent {n} is offered the wave"
                );
            }
        });
    }
    while let Some(done) = registering.join_next().await {
        done.expect("an agent registers");
    }
    let registered = started.elapsed();

    // The wave under fire: results, with a late agent's first contact every third one.
    let (queue, jobs) = tokio::sync::mpsc::unbounded_channel();
    let mut late = (AGENTS..AGENTS + LATE).peekable();
    for n in 0..AGENTS {
        queue.send(Job::Result(n)).unwrap();
        if n % 3 == 2
            && let Some(agent) = late.next()
        {
            queue.send(Job::FirstContact(agent)).unwrap();
        }
    }
    for agent in late {
        queue.send(Job::FirstContact(agent)).unwrap();
    }
    drop(queue);
    let jobs = Arc::new(tokio::sync::Mutex::new(jobs));
    let tally = Arc::new(Tally::default());
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        workers.spawn(play(
            jobs.clone(),
            https,
            tls.clone(),
            package.clone(),
            tally.clone(),
            server.clone(),
        ));
    }
    while let Some(done) = workers.join_next().await {
        done.expect("the agents play the wave");
    }
    assert!(
        tally.killed.load(Ordering::SeqCst),
        "the server was killed during the wave"
    );
    let (results, inventories) = {
        let acked = tally.acked.lock().unwrap();
        (acked.results.clone(), acked.inventories.clone())
    };
    eprintln!(
        "wave kill: killed after {} of {AGENTS} results and {} of {LATE} inventories \
         acknowledged, {} exchanges cut; registration took {:.1} s",
        results.len(),
        inventories.len(),
        tally.cut.load(Ordering::SeqCst),
        registered.as_secs_f64()
    );
    assert!(
        results.len() < AGENTS && inventories.len() < LATE,
        "the kill cut the wave"
    );

    // Restart on the same state: every acknowledged result and inventory is in the file.
    *server.lock().unwrap() = serve_child(dir.path(), port, &log.path());
    let https = https_address(admin, Some(&tls), &server).await;
    let db = Database::open_read_only(&dir.path().join(".tessera/state.db")).unwrap();
    let lost: Vec<_> = results
        .iter()
        .map(|&n| sim::ocs_device(n))
        .filter(|device| {
            filed(&db, device, &package) != Some((State::Success, Some("SUCCESS".into())))
        })
        .collect();
    assert!(lost.is_empty(), "acknowledged results lost: {lost:?}");
    let lost: Vec<_> = inventories
        .iter()
        .map(|&n| sim::ocs_device(n))
        .filter(|device| {
            db.computer(device)
                .unwrap()
                .is_none_or(|(c, _)| c.last_inventory.is_none())
        })
        .collect();
    assert!(lost.is_empty(), "acknowledged inventories lost: {lost:?}");

    // The restarted server serves: the reported are offered nothing more, the others
    // resend their result (the agent's way with one it got no 200 for) and it is filed.
    let host = https.to_string();
    let mut connection = None;
    for n in 0..AGENTS {
        let device = sim::ocs_device(n);
        let reply = ok(
            &mut connection,
            https,
            &tls,
            &prolog(&host, &device),
            "PROLOG after the restart",
        )
        .await;
        if results.contains(&n) {
            assert!(
                !offers(&inflate(&reply), &package),
                "agent {n}'s reported result stands"
            );
        } else {
            ok(
                &mut connection,
                https,
                &tls,
                &result(&host, &device, &package),
                "a result resent after the restart",
            )
            .await;
        }
    }
    // Read afresh: nothing read before the resends can answer for them.
    drop(db);
    let db = Database::open_read_only(&dir.path().join(".tessera/state.db")).unwrap();
    let missing: Vec<_> = (0..AGENTS)
        .map(sim::ocs_device)
        .filter(|device| filed(&db, device, &package).map(|(s, _)| s) != Some(State::Success))
        .collect();
    assert!(missing.is_empty(), "the wave completes: {missing:?}");
    eprintln!(
        "wave kill: done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(db);
    drop(server);
    // Removed here, so a failure to remove it (a process still writing) is seen.
    dir.close().expect("the temporary directory is removed");
}
