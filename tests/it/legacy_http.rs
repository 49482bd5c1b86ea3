//! OCS agents still configured with an `http://` URL: told to use HTTPS when the Server
//! does not serve them there, served when `spec.ocs.plainHttp` allows it, and moved to
//! verified HTTPS by the package `tessera migration-package` writes, as the same computer.
//! And `spec.inventoryFrequency` through PROLOG.
//!
//! The real Debian agent reads its configuration only from fixed places
//! (`/etc/ocsinventory/ocsinventory-agent.cfg` first, which the tests must not touch), so
//! [`CfgAgent`] keeps the file in a temporary directory and passes its `server`, `ca` and
//! `ssl` to the agent as the flags of the same names, as `Ocsinventory::Agent::Config`
//! would have read them; the migration script finds it through `TESSERA_OCS_AGENT_CFG`.

use std::fs;
use std::io::{Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::ocs_agent::{self, AGENT_LIMIT, DEFAULT_TAG, OcsAgent, WORKER_LIMIT, WorkerEnd};
use crate::support::{addresses, eventually, get, get_json, quickstart_copy, server_ca, start};

/// Whether the Debian agent is installed; the tests that need it say so and pass without.
fn agent_installed() -> bool {
    let found = Command::new("ocsinventory-agent")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !found {
        println!("skipped: ocsinventory-agent is not installed (scripts/setup.sh installs it)");
    }
    found
}

/// The quickstart with `spec` lines added to its Server and, with `packages`, without its
/// packages and Affectations (so an agent gets only what a test adds).
fn config(spec: &str, packages: bool) -> tempfile::TempDir {
    let dir = quickstart_copy();
    let server = dir.path().join("server.yaml");
    let text = fs::read_to_string(&server).unwrap();
    fs::write(&server, format!("{text}{spec}")).unwrap();
    if !packages {
        fs::remove_dir_all(dir.path().join("packages")).unwrap();
        fs::remove_file(dir.path().join("affectations.yaml")).unwrap();
    }
    dir
}

/// A POST of `xml` (zlib, as agents send it) to `/ocsinventory` at `address` over plain
/// HTTP: (status line, body inflated when it is an OCS reply).
async fn ocs_post(address: &str, xml: &str) -> (String, String) {
    let body = tessera::protocol::ocs::encode_body(xml, tessera::protocol::ocs::Encoding::Zlib);
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /ocsinventory HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/x-compress\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let body = &raw[split + 4..];
    let status = head.lines().next().unwrap_or_default().to_owned();
    let text = match tessera::protocol::ocs::decode_body(body) {
        Ok((xml, _)) if status.contains(" 200 ") => String::from_utf8_lossy(&xml).into_owned(),
        _ => String::from_utf8_lossy(body).into_owned(),
    };
    (status, text)
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

async fn metrics(running: &tessera::cli::Running) -> String {
    get(running.admin_address, "/metrics").await.1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ocs_agent_on_plain_http_is_told_to_use_https_and_logged_once() {
    let dir = config("", true);
    let running = start(dir.path()).await;
    let (https, http) = addresses(&running).await;

    // A request that cannot be read is answered the same way.
    let (status, body) = ocs_post(&http, "not OCS").await;
    let url = format!("https://{https}/ocsinventory");
    assert_eq!(status, format!("HTTP/1.1 403 Use HTTPS {url}"), "{body}");
    assert!(body.contains(&url), "{body}");

    if agent_installed() {
        let device = ocs_agent::device_id(11).unwrap();
        let agent = OcsAgent::new(
            &format!("http://{http}/ocsinventory"),
            &server_ca(dir.path()),
            &device,
        )
        .unwrap();
        let run = tokio::task::block_in_place(|| agent.run()).unwrap();
        assert!(
            run.stderr.contains(&format!(
                "Cannot establish communication : 403 Use HTTPS {url}"
            )),
            "the agent's log says what to do: {}",
            run.stderr
        );
        let (status, body) = get(
            running.admin_address,
            &format!("/api/v1/computers/{device}"),
        )
        .await;
        assert!(
            status == 404 || body.trim() == "[]",
            "nothing served over plain HTTP: {status} {body}"
        );
    }
    let text = metrics(&running).await;
    assert!(
        metric(
            &text,
            "tessera_ocs_plain_http_requests_total{outcome=\"refused\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{text}"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prolog_asks_for_inventories_as_spec_inventory_frequency_says() {
    let dir = config(
        "  inventoryFrequency: 0\n  ocs:\n    plainHttp: true\n",
        true,
    );
    let running = start(dir.path()).await;
    let (_, http) = addresses(&running).await;
    let device = "freq-2026-01-01-00-00-00";
    let prolog = format!("<REQUEST><DEVICEID>{device}</DEVICEID><QUERY>PROLOG</QUERY></REQUEST>");
    let inventory = format!(
        "<REQUEST><CONTENT><HARDWARE><NAME>freq</NAME><OSNAME>Debian GNU/Linux 12</OSNAME></HARDWARE></CONTENT><DEVICEID>{device}</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>"
    );
    let send = |reply: &str| reply.contains("<RESPONSE>SEND</RESPONSE>");

    // 0: at every contact, a fresh inventory notwithstanding.
    let (status, reply) = ocs_post(&http, &prolog).await;
    assert!(status.contains(" 200 ") && send(&reply), "{status} {reply}");
    let (status, _) = ocs_post(&http, &inventory).await;
    assert!(status.contains(" 200 "), "{status}");
    let (_, reply) = ocs_post(&http, &prolog).await;
    assert!(send(&reply), "0 asks at every contact: {reply}");

    // -1: never again.
    let server = dir.path().join("server.yaml");
    let text = fs::read_to_string(&server).unwrap();
    fs::write(
        &server,
        text.replace("inventoryFrequency: 0", "inventoryFrequency: -1"),
    )
    .unwrap();
    eventually("inventoryFrequency -1 in effect", || async {
        let (_, reply) = ocs_post(&http, &prolog).await;
        reply.contains("<RESPONSE>STOP</RESPONSE>").then_some(())
    })
    .await;

    running.stop().await.unwrap();
}

/// One OCS Unix agent whose configuration file is kept in a temporary directory (see the
/// module's comment).
struct CfgAgent {
    dir: tempfile::TempDir,
}

impl CfgAgent {
    /// An agent configured with `server`, reporting `device_id`, that already trusts `ca`
    /// for that server (a `cacert.pem` in its state directory): what an OCS fleet that
    /// deploys packages has, since `info` files always come over HTTPS.
    fn new(server: &str, ca: &Path, device_id: &str) -> Self {
        let agent = Self {
            dir: tempfile::Builder::new()
                .prefix("ocs-cfg-agent-")
                .tempdir()
                .unwrap(),
        };
        fs::create_dir_all(agent.dir.path().join("etc")).unwrap();
        fs::write(
            agent.cfg(),
            format!("# the fleet's configuration\nserver={server}\n"),
        )
        .unwrap();
        let vardir = agent.vardir(server);
        fs::create_dir_all(&vardir).unwrap();
        fs::write(
            vardir.join("ocsinv.conf"),
            format!("<CONF>\n  <DEVICEID>{device_id}</DEVICEID>\n</CONF>\n"),
        )
        .unwrap();
        fs::copy(ca, vardir.join("cacert.pem")).unwrap();
        agent
    }

    fn cfg(&self) -> PathBuf {
        self.dir.path().join("etc/ocsinventory-agent.cfg")
    }

    fn basevardir(&self) -> PathBuf {
        self.dir.path().join("var")
    }

    /// The agent's state directory for `server`.
    fn vardir(&self, server: &str) -> PathBuf {
        self.basevardir().join(server.replace('/', "_"))
    }

    /// The last value of `key` in the configuration file, read as the agent reads it.
    fn setting(&self, key: &str) -> Option<String> {
        fs::read_to_string(self.cfg())
            .unwrap()
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .filter(|(k, _)| k.trim().eq_ignore_ascii_case(key))
            .map(|(_, v)| v.trim().to_owned())
            .next_back()
    }

    /// Runs the agent once with its configuration (and `extra` flags), waits for its
    /// download worker: (stdout, stderr), after checking both ended by themselves.
    fn run(&self, extra: &[&str]) -> (String, String) {
        let mut stdout = tempfile::tempfile().unwrap();
        let mut stderr = tempfile::tempfile().unwrap();
        let mut command = Command::new("ocsinventory-agent");
        command
            .arg(format!("--basevardir={}", self.basevardir().display()))
            .args(["--nolocal", "--debug", "--nosoftware"])
            .arg(format!("--tag={DEFAULT_TAG}"));
        for key in ["server", "ca", "ssl"] {
            if let Some(value) = self.setting(key) {
                command.arg(format!("--{key}={value}"));
            }
        }
        command
            .args(extra)
            .env("TESSERA_OCS_AGENT_CFG", self.cfg())
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().unwrap())
            .stderr(stderr.try_clone().unwrap())
            .process_group(0);
        let started = Instant::now();
        let mut child = command.spawn().unwrap();
        let group = child.id();
        // Killed with its group whatever happens, a panic included.
        let guard = GroupGuard(group);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if started.elapsed() > AGENT_LIMIT {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let worker = ocs_agent::wait_for_group(group, WORKER_LIMIT).unwrap();
        drop(guard);
        let read = |file: &mut fs::File| {
            file.rewind().unwrap();
            let mut text = String::new();
            file.read_to_string(&mut text).unwrap();
            text
        };
        let (out, err) = (read(&mut stdout), read(&mut stderr));
        assert!(
            status.is_some() && worker == WorkerEnd::Finished,
            "the agent or its worker did not finish: {status:?} {worker:?}\n{err}"
        );
        (out, err)
    }
}

/// Kills a process group when dropped.
struct GroupGuard(u32);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        let _ = ocs_agent::kill_group(self.0);
    }
}

/// The computers `tessera status --computer` finds for `wanted` (a device id or a name).
fn status_computers(config: &Path, wanted: &str) -> Vec<serde_json::Value> {
    let output = Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(["status", "--output", "json", "--computer", wanted])
        .arg("--config")
        .arg(config)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

const MOVE_EVERY_LINUX_COMPUTER: &str = "apiVersion: tessera.dev/v1alpha1
kind: Affectation
metadata:
  name: ocs-https-migration
spec:
  activationRef:
    name: ocs-https-migration
  targets:
    all: true
    os: [linux]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_ocs_agent_on_plain_http_moves_to_verified_https_as_the_same_computer() {
    if !agent_installed() {
        return;
    }
    let dir = config("  ocs:\n    plainHttp: true\n", false);
    let running = start(dir.path()).await;
    let (https, http) = addresses(&running).await;
    let server = get_json(running.admin_address, "/api/v1/objects/Server/tessera").await;
    let conditions = server["conditions"].as_array().unwrap();
    let condition = |type_: &str| conditions.iter().find(|c| c["type"] == type_).cloned();
    assert_eq!(condition("Ready").unwrap()["status"], "True", "{server}");
    let warning = condition("PlainHttp").expect("a PlainHttp condition");
    assert_eq!(
        (&warning["status"], &warning["reason"]),
        (&"True".into(), &"PlainHttpEnabled".into()),
        "{warning}"
    );

    // The package, as a user makes it.
    let https_url = format!("https://{https}/ocsinventory");
    let ca = server_ca(dir.path());
    let output = Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(["migration-package", "--https-url", &https_url, "--ca"])
        .arg(&ca)
        .arg("--out")
        .arg(dir.path().join("packages"))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    fs::write(
        dir.path().join("migration-affectation.yaml"),
        MOVE_EVERY_LINUX_COMPUTER,
    )
    .unwrap();
    let (package, _) = eventually("the migration package built", || async {
        let (status, body) = get(
            running.admin_address,
            "/api/v1/objects/Package/ocs-https-migration",
        )
        .await;
        let object: serde_json::Value =
            (status == 200).then(|| serde_json::from_str(&body))?.ok()?;
        object["details"]["packageId"].as_str().map(str::to_owned)
    })
    .await;

    // Day one: the agent, unchanged, over plain HTTP. Its first contact sends the inventory.
    let http_url = format!("http://{http}/ocsinventory");
    let device = ocs_agent::device_id(4242).unwrap();
    let agent = CfgAgent::new(&http_url, &ca, &device);
    let (_, log) = tokio::task::block_in_place(|| agent.run(&[]));
    assert!(!log.contains("Cannot establish communication"), "{log}");
    let found = get_json(
        running.admin_address,
        &format!("/api/v1/computers/{device}"),
    )
    .await;
    let name = found[0]["computer"]["name"].as_str().unwrap().to_owned();
    let text = metrics(&running).await;
    assert_eq!(
        metric(&text, "tessera_ocs_plain_http_computers"),
        Some(1.0),
        "{text}"
    );

    // Its next contact gets the migration package, which runs and reports over HTTP.
    let (out, log) = tokio::task::block_in_place(|| agent.run(&[]));
    println!("second run's output:\n{out}");
    assert!(log.contains(&package), "offered the package: {log}");
    assert_eq!(agent.setting("server").as_deref(), Some(https_url.as_str()));
    assert_eq!(agent.setting("ssl").as_deref(), Some("1"));
    let installed_ca = PathBuf::from(agent.setting("ca").unwrap());
    assert_eq!(fs::read(&installed_ca).unwrap(), fs::read(&ca).unwrap());
    eventually("the migration's result recorded", || async {
        let found = get_json(
            running.admin_address,
            &format!("/api/v1/computers/{device}"),
        )
        .await;
        let state = found[0]["deployments"][0]["state"]
            .as_str()
            .map(str::to_owned);
        (state.as_deref() == Some("success")).then_some(())
    })
    .await;
    let served_over_http = metric(
        &metrics(&running).await,
        "tessera_ocs_plain_http_requests_total{outcome=\"served\"}",
    )
    .unwrap();

    // The run after: over HTTPS, the server verified with the installed CA, same DEVICEID.
    let (_, log) = tokio::task::block_in_place(|| agent.run(&[]));
    assert!(!log.contains("Cannot establish communication"), "{log}");
    let state = agent.vardir(&https_url);
    assert!(
        log.contains(&format!("Accountinfo file: {}/ocsinv.adm", state.display()))
            && log.contains("=BEGIN=SERVER RET"),
        "the new URL's state, and a reply: {log}"
    );
    let text = metrics(&running).await;
    assert_eq!(
        metric(
            &text,
            "tessera_ocs_plain_http_requests_total{outcome=\"served\"}"
        ),
        Some(served_over_http),
        "nothing more over plain HTTP: {text}"
    );
    assert_eq!(
        metric(&text, "tessera_ocs_plain_http_computers"),
        Some(0.0),
        "{text}"
    );
    let computers = tokio::task::block_in_place(|| status_computers(dir.path(), &name));
    assert_eq!(
        computers.len(),
        1,
        "one computer, not a new one: {computers:?}"
    );
    assert_eq!(computers[0]["computer"]["deviceId"], device.as_str());
    assert!(
        fs::read_to_string(state.join("ocsinv.conf"))
            .unwrap()
            .contains(&device)
    );

    // Verified: with a CA that did not sign the server's certificate, the agent gets nowhere.
    let stranger = rcgen::generate_simple_self_signed(vec!["stranger.example".into()]).unwrap();
    let other_ca = agent.dir.path().join("other-ca.pem");
    fs::write(&other_ca, stranger.cert.pem()).unwrap();
    let cfg = fs::read_to_string(agent.cfg()).unwrap();
    fs::write(
        agent.cfg(),
        cfg.replace(
            &installed_ca.display().to_string(),
            &other_ca.display().to_string(),
        ),
    )
    .unwrap();
    let (_, log) = tokio::task::block_in_place(|| agent.run(&[]));
    assert!(log.contains("Cannot establish communication"), "{log}");
    running.stop().await.unwrap();
}
