//! Two `tessera serve` processes on one PostgreSQL database: both serve agents, one
//! reconciles; `kill -9` of that one hands reconciling to the other within seconds while
//! agents keep being served.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ocs_agent::{self, OcsAgent};
use crate::support::{PATIENCE, free_port, quickstart_copy};

/// A fresh database on the test server (`TESSERA_TEST_POSTGRES`, which scripts/test.sh
/// starts): its URL. `None` (the test is skipped, with a message) when no server is set,
/// except in CI, where it must run.
fn scratch_database() -> Option<String> {
    let url = match std::env::var("TESSERA_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => url,
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI must run the PostgreSQL tests: run them through scripts/test.sh")
        }
        _ => {
            eprintln!("skipped: TESSERA_TEST_POSTGRES is not set (scripts/test.sh sets it)");
            return None;
        }
    };
    let name = format!(
        "cluster_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("test server");
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let mut config: postgres::Config = url.parse().unwrap();
    config.dbname(&name);
    let host = match &config.get_hosts()[0] {
        postgres::config::Host::Tcp(host) => host.clone(),
        #[cfg(unix)]
        postgres::config::Host::Unix(path) => path.display().to_string(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let user = config.get_user().unwrap_or("postgres").to_owned();
    Some(format!("postgres://{user}@{host}:{port}/{name}"))
}

/// One server process, its logs in `log`.
struct Server {
    child: Child,
    admin: u16,
}

impl Server {
    fn start(config: &Path, state: &Path, database: &str, log: &Path) -> Self {
        let admin = free_port();
        let child = Command::new(assert_cmd::cargo::cargo_bin("tessera"))
            .args(["serve", "--config"])
            .arg(config)
            .arg("--state")
            .arg(state)
            .args(["--database", database])
            .args(["--admin-address", &format!("127.0.0.1:{admin}")])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("tessera serve starts");
        Self { child, admin }
    }

    fn object(&self, kind: &str, name: &str) -> Option<Value> {
        let output = Command::new("curl")
            .args([
                "-sf",
                &format!(
                    "http://127.0.0.1:{}/api/v1/objects/{kind}/{name}",
                    self.admin
                ),
            ])
            .output()
            .expect("curl is installed by scripts/setup.sh");
        output
            .status
            .success()
            .then(|| serde_json::from_slice(&output.stdout).ok())
            .flatten()
    }

    /// The reason of the Ready condition of the quickstart's server certificate:
    /// `Following` on a follower.
    fn certificate_reason(&self) -> Option<String> {
        let certificate = self.object("Certificate", "tessera-server")?;
        certificate["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready" && c["status"] == "True")?["reason"]
            .as_str()
            .map(str::to_owned)
    }

    /// The HTTPS address once the Server listens.
    fn https(&self) -> Option<String> {
        let server = self.object("Server", "tessera")?;
        let list = server["details"]["addresses"].as_array()?;
        if list.len() != 2 {
            return None;
        }
        list[0].as_str().map(str::to_owned)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn until<T>(what: &str, logs: &[&Path], mut check: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(found) = check() {
            return (found, start.elapsed());
        }
        if start.elapsed() > PATIENCE * 3 {
            for log in logs {
                eprintln!(
                    "--- {}\n{}",
                    log.display(),
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The serial of the certificate `address` presents, as `openssl s_client` sees it.
fn served_serial(address: &str) -> String {
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {address} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .expect("openssl is installed by scripts/setup.sh");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// (activation, state) of every deployment of `device`, from the shared database through
/// `server`'s admin API.
fn states(server: &Server, device: &str) -> Vec<(String, String)> {
    let output = Command::new("curl")
        .args([
            "-sf",
            &format!(
                "http://127.0.0.1:{}/api/v1/computers/{device}",
                server.admin
            ),
        ])
        .output()
        .unwrap();
    let found: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    found[0]["deployments"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|d| {
                    (
                        d["activation"].as_str().unwrap_or_default().to_owned(),
                        d["state"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn two_servers_on_one_database_serve_agents_and_the_survivor_of_a_kill_9_reconciles() {
    let Some(database) = scratch_database() else {
        return;
    };
    let config = quickstart_copy();
    let (state_a, state_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let logs = tempfile::tempdir().unwrap();
    let (log_a, log_b) = (logs.path().join("a.log"), logs.path().join("b.log"));
    let all_logs = [log_a.as_path(), log_b.as_path()];

    let mut a = Server::start(config.path(), state_a.path(), &database, &log_a);
    let (https_a, _) = until("the first server to serve", &all_logs, || a.https());
    // The leader issued the certificate itself.
    until("the first server to lead", &all_logs, || {
        a.certificate_reason().filter(|r| r != "Following")
    });
    let b = Server::start(config.path(), state_b.path(), &database, &log_b);
    // The follower listens only once it has the leader's certificate (listeners fail
    // closed), and presents that very certificate.
    let (https_b, _) = until("the second server to serve", &all_logs, || b.https());
    assert_eq!(b.certificate_reason().as_deref(), Some("Following"));
    assert_eq!(
        served_serial(&https_a),
        served_serial(&https_b),
        "both servers present the leader's certificate"
    );
    assert!(served_serial(&https_a).starts_with("serial="));
    // Each server built the packages itself: the same id and digests everywhere.
    let package = |server: &Server| {
        until("the package to be built", &all_logs, || {
            let details = server.object("Package", "hello")?["details"].clone();
            details["packageId"].is_string().then_some(details)
        })
        .0
    };
    assert_eq!(package(&a), package(&b));

    // An agent served by the follower, then by the leader: one computer, one history, in
    // the shared database; the fragments each server built itself are the same.
    let ca = state_a
        .path()
        .join("certificates/default/tessera-server/ca.crt");
    let device = ocs_agent::device_id(7).unwrap();
    let via = |https: &str| {
        OcsAgent::new(&format!("https://{https}/ocsinventory"), &ca, &device).unwrap()
    };
    for _ in 0..2 {
        let run = via(&https_b).run().unwrap();
        assert!(run.completed(), "{}", run.stderr);
    }
    let deployed = states(&a, &device);
    assert!(!deployed.is_empty(), "the leader sees the follower's agent");
    assert!(
        deployed.iter().all(|(_, state)| state == "success"),
        "{deployed:?}"
    );
    assert_eq!(states(&b, &device), deployed);

    assert!(
        !state_b.path().join("status").exists(),
        "a follower writes no statuses"
    );

    // kill -9 of the leader: the follower takes over.
    a.child.kill().unwrap();
    a.child.wait().unwrap();
    let (_, handover) = until("the second server to lead", &all_logs, || {
        b.certificate_reason().filter(|r| r != "Following")
    });
    eprintln!("reconciling handed over {handover:?} after the leader was killed");
    assert!(
        state_b.path().join("status").is_dir(),
        "the new leader writes statuses"
    );

    // Agents keep being served, and reconciling (arming known computers for a new
    // Affectation) is the new leader's.
    let run = via(&https_b).run().unwrap();
    assert!(run.completed(), "{}", run.stderr);
    std::fs::write(config.path().join("again.yaml"), crate::ocs::HELLO_AGAIN).unwrap();
    until(
        "the new leader to arm the new Affectation",
        &all_logs,
        || {
            states(&b, &device)
                .iter()
                .any(|(activation, state)| {
                    activation == "default/hello-again" && state == "waiting"
                })
                .then_some(())
        },
    );
    drop(b);
}
