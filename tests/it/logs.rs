//! What `tessera` writes, read the way an operator and a log pipeline read it: with
//! `--log-format json` every line of `serve` is a JSON object; each new computer, first
//! offer and result of both agent protocols is one INFO line with the same fields, and a
//! PROLOG with nothing new writes none; the `serving` line comes once; notify's inotify
//! chatter stays out unless asked for; `plan` writes only its plan to standard output; and
//! a closed pipe ends a command quietly.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::hostile_ocs::{post, prolog, result, zlib};
use crate::support::{Reaped, eventually, free_port, get, quickstart_copy, wait_for_port};

/// `tessera serve` on a copy of the quickstart as a child process, its standard error in a
/// file; killed when dropped.
struct Served {
    /// Declared first: killed before the directories are removed.
    _child: Reaped,
    config: tempfile::TempDir,
    /// Outside the configuration directory, which the server watches.
    logs: tempfile::TempDir,
    admin: SocketAddr,
}

impl Served {
    /// Started with `args` after `serve --config DIR --admin-address ADDR`, and
    /// `TESSERA_LOG=log`; `prepare` edits the configuration first.
    fn start(args: &[&str], log: &str, prepare: impl FnOnce(&Path)) -> Self {
        let config = quickstart_copy();
        prepare(config.path());
        let logs = tempfile::tempdir().unwrap();
        let stderr = std::fs::File::create(logs.path().join("stderr")).unwrap();
        let port = free_port();
        let child = Command::new(assert_cmd::cargo::cargo_bin("tessera"))
            .arg("serve")
            .arg("--config")
            .arg(config.path())
            .arg(format!("--admin-address=127.0.0.1:{port}"))
            .args(args)
            .env("TESSERA_LOG", log)
            .env_remove("RUST_LOG")
            .env_remove("TESSERA_LOG_FORMAT")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the tessera binary runs");
        let served = Self {
            _child: Reaped(child),
            config,
            logs,
            admin: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        wait_for_port(port, "tessera serve");
        served
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr")).unwrap()
    }

    /// Every line of the log as JSON; a panic naming the first that is not an object with
    /// `timestamp`, `level`, `target` and `fields.message`.
    fn json_lines(&self) -> Vec<Value> {
        self.log()
            .lines()
            .map(|line| {
                let value: Value = serde_json::from_str(line)
                    .unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
                assert!(
                    value["timestamp"].is_string()
                        && value["level"].is_string()
                        && value["target"].is_string()
                        && value["fields"]["message"].is_string(),
                    "{line}"
                );
                value
            })
            .collect()
    }

    /// Waits until a line of the log contains `what`.
    async fn logged(&self, what: &str) {
        eventually(what, || async { self.log().contains(what).then_some(()) }).await;
    }

    /// The HTTPS address of the Server, once it serves.
    async fn https(&self) -> SocketAddr {
        let admin = self.admin;
        eventually("the Server serving", || async move {
            let (status, body) = get(admin, "/api/v1/objects/Server/tessera").await;
            let server: Value = (status == 200).then(|| serde_json::from_str(&body).ok())??;
            server["details"]["addresses"][0].as_str()?.parse().ok()
        })
        .await
        .0
    }

    fn ca(&self) -> PathBuf {
        crate::support::server_ca(self.config.path())
    }
}

/// An OCS inventory of `device` named `name`: a lab Linux computer (the quickstart's four
/// packages target it) or, with `lab` false, a Windows computer nothing targets.
fn inventory(device: &str, name: &str, lab: bool) -> Vec<u8> {
    let (tag, os) = if lab {
        ("lab", "Debian GNU/Linux 12")
    } else {
        ("office", "Microsoft Windows 11 Pro")
    };
    zlib(&format!(
        "<REQUEST><CONTENT><ACCOUNTINFO><KEYNAME>TAG</KEYNAME><KEYVALUE>{tag}</KEYVALUE></ACCOUNTINFO><HARDWARE><NAME>{name}</NAME><OSNAME>{os}</OSNAME></HARDWARE></CONTENT><DEVICEID>{device}</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>"
    ))
}

/// The package ids a PROLOG reply offers.
fn offered_ids(reply: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(reply);
    text.split("TYPE=\"PACK\" ID=\"")
        .skip(1)
        .filter_map(|rest| rest.split_once('"').map(|(id, _)| id.to_owned()))
        .collect()
}

/// The lines whose message is `message` and whose `device_id` is `device`.
fn lines_of<'a>(lines: &'a [Value], message: &str, device: &str) -> Vec<&'a Value> {
    lines
        .iter()
        .filter(|l| l["fields"]["message"] == message && l["fields"]["device_id"] == device)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_new_computer_first_offer_and_result_of_both_protocols() {
    let served = Served::start(&["--log-format", "json"], "info", |_| {});
    let https = served.https().await;
    let ca = served.ca();
    let (lab, office) = (
        "logs-lab-2026-01-01-00-00-00",
        "logs-office-2026-01-01-00-00-00",
    );

    // An OCS computer the quickstart targets: first contact, inventory, offers (the second
    // PROLOG repeats them, as OCS does until the agent answers), results.
    assert_eq!(post(https, &ca, &prolog(lab)).await.0, 200);
    assert_eq!(
        post(https, &ca, &inventory(lab, "logs-lab", true)).await.0,
        200
    );
    let (status, reply, _) = post(https, &ca, &prolog(lab)).await;
    assert_eq!(status, 200);
    let ids = offered_ids(&reply);
    assert_eq!(ids.len(), 4, "{}", String::from_utf8_lossy(&reply));
    let (_, again, _) = post(https, &ca, &prolog(lab)).await;
    assert_eq!(offered_ids(&again), ids);
    for id in &ids {
        assert_eq!(post(https, &ca, &result(lab, id, "SUCCESS")).await.0, 200);
    }
    // One that nothing targets: its PROLOGs are ordinary ones, with nothing to say.
    assert_eq!(post(https, &ca, &prolog(office)).await.0, 200);
    assert_eq!(
        post(https, &ca, &inventory(office, "logs-office", false))
            .await
            .0,
        200
    );
    for _ in 0..3 {
        let (status, reply, _) = post(https, &ca, &prolog(office)).await;
        assert_eq!((status, offered_ids(&reply).len()), (200, 0));
    }

    // Tessera's own agent, once: enrollment, check-in, offers, results.
    let token = crate::support::token(&served.config.path().join(".tessera"), 1, 600);
    let agent_state = tempfile::tempdir().unwrap();
    let output = tokio::task::block_in_place(|| {
        Command::new(assert_cmd::cargo::cargo_bin("tessera"))
            .args(["agent", "--once", "--tag", "lab", "--server"])
            .arg(format!("https://{https}"))
            .arg("--state")
            .arg(agent_state.path())
            .arg("--ca")
            .arg(&ca)
            .args(["--token", &token.reveal()])
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    });
    let agent_log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{agent_log}");
    served.logged("\"protocol\":\"native\"").await;
    eventually("the native agent's four results", || async {
        let lines = served.json_lines();
        let results = lines
            .iter()
            .filter(|l| {
                l["fields"]["message"] == "deployment result" && l["fields"]["protocol"] == "native"
            })
            .count();
        (results == 4).then_some(())
    })
    .await;

    let lines = served.json_lines();
    let info = |l: &&Value| l["level"] == "INFO";
    // The OCS computers: one line each when first known, by name.
    let new = lines_of(&lines, "new computer", lab);
    assert_eq!(new.len(), 1, "{new:?}");
    assert_eq!(new[0]["fields"]["computer"], "logs-lab");
    assert_eq!(new[0]["fields"]["protocol"], "ocs");
    assert_eq!(new[0]["target"], "tessera::server::fleet_log");
    // Each package offered once at INFO, though two PROLOGs carried it.
    let offers = lines_of(&lines, "offered a package", lab);
    assert_eq!(offers.len(), 4, "{offers:#?}");
    let mut offered: Vec<_> = offers
        .iter()
        .map(|l| {
            assert_eq!(l["fields"]["computer"], "logs-lab", "{l}");
            assert!(
                l["fields"]["activation"]
                    .as_str()
                    .unwrap()
                    .starts_with("default/"),
                "{l}"
            );
            l["fields"]["package_id"].as_str().unwrap().to_owned()
        })
        .collect();
    offered.sort();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(offered, sorted);
    let results = lines_of(&lines, "deployment result", lab);
    assert_eq!(results.len(), 4, "{results:#?}");
    for line in &results {
        let fields = &line["fields"];
        assert_eq!(
            (&fields["computer"], &fields["code"], &fields["state"]),
            (&"logs-lab".into(), &"SUCCESS".into(), &"success".into()),
            "{line}"
        );
        assert!(
            fields["activation"]
                .as_str()
                .unwrap()
                .starts_with("default/"),
            "{line}"
        );
    }
    // The computer nothing targets: known once, and its PROLOGs write nothing at INFO.
    let office_lines: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["device_id"] == office)
        .filter(info)
        .collect();
    assert_eq!(office_lines.len(), 1, "{office_lines:#?}");
    assert_eq!(office_lines[0]["fields"]["message"], "new computer");

    // The native agent: the same lines, with the same fields.
    let native: Vec<_> = lines
        .iter()
        .filter(|l| l["fields"]["protocol"] == "native")
        .collect();
    let count = |message: &str| {
        native
            .iter()
            .filter(|l| l["fields"]["message"] == message)
            .count()
    };
    assert_eq!(
        (
            count("new computer"),
            count("offered a package"),
            count("deployment result")
        ),
        (1, 4, 4),
        "{native:#?}"
    );
    let device = native[0]["fields"]["device_id"].as_str().unwrap();
    for line in &native {
        let fields = &line["fields"];
        assert_eq!(fields["device_id"], device, "{line}");
        assert!(!fields["computer"].as_str().unwrap().is_empty(), "{line}");
        if fields["message"] == "deployment result" {
            assert!(
                fields["code"].is_string() && fields["package_id"].is_string(),
                "{line}"
            );
            assert!(
                fields["activation"]
                    .as_str()
                    .unwrap()
                    .starts_with("default/"),
                "{line}"
            );
        }
    }

    // And the serving line, once.
    let serving = lines
        .iter()
        .filter(|l| l["fields"]["message"] == "serving")
        .count();
    assert_eq!(serving, 1);
}

/// A Package content directory that the server watches, removed while served: notify's
/// inotify backend then says, at INFO, that it could not remove a watch that the kernel
/// already dropped.
const NOBODY: &str = "apiVersion: tessera.dev/v1alpha1
kind: Affectation
metadata:
  name: nobody
spec:
  activationRef:
    name: hello
  targets:
    names: [nobody]
";

/// Serves with `log` as the filter, removes a watched subdirectory, and returns the log once
/// the removal is reconciled (notify's line, if any, comes before: it is written while the
/// event that triggers the rescan is read).
async fn log_after_removing_a_watched_directory(log: &str) -> String {
    let served = Served::start(&[], log, |config| {
        std::fs::create_dir(config.join("extra")).unwrap();
        std::fs::write(config.join("extra/nobody.yaml"), NOBODY).unwrap();
    });
    served.logged("Affectation/nobody").await;
    std::fs::remove_dir_all(served.config.path().join("extra")).unwrap();
    served.logged("-Affectation/nobody").await;
    served.log()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_inotify_chatter_is_left_out_unless_the_filter_names_it() {
    let asked = log_after_removing_a_watched_directory("info,notify=info").await;
    assert!(asked.contains("notify::inotify"), "{asked}");
    let default = log_after_removing_a_watched_directory("info").await;
    assert!(!default.contains("notify"), "{default}");
}

#[test]
fn plan_writes_only_its_plan_to_standard_output() {
    let config = quickstart_copy();
    let output = Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .arg("plan")
        .arg(config.path())
        .args(["--output", "json", "--log", "trace"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    let plan: Value = serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|error| panic!("{error}: {}", String::from_utf8_lossy(&output.stdout)));
    assert_eq!(plan["changes"], true);
    // The logs went to standard error.
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("built a package"), "{stderr}");
}

/// Runs `tessera args` with its standard output a pipe whose reader is already closed.
fn into_a_closed_pipe(args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let config = quickstart_copy();
    let dir = config.path().to_str().unwrap();
    let state = config.path().join(".tessera");
    // A state database for `status` to read.
    std::fs::create_dir_all(&state).unwrap();
    tessera::store::db::Database::open_state(&state, false).unwrap();
    let state = state.to_str().unwrap();
    for args in [
        vec!["crds"],
        vec!["plan", dir],
        vec!["status", "--state", state],
        vec!["validate", dir],
    ] {
        let output = into_a_closed_pipe(&args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(
            !stderr.contains("Broken pipe") && !stderr.contains("panicked"),
            "{args:?}: {stderr}"
        );
    }
}
