//! Issue 17's "Done when": an operator's day against the quickstart served, with the real
//! Debian OCS agent and Tessera's own agent (`tessera agent`, enrolled with a token from
//! `tessera token create`) both deployed, every command run through the `tessera` binary
//! and its tables and JSON checked: `get`, `describe`, `events`, `computers`, `suspend`
//! (neither agent is offered the suspended Activation) and `resume` (both get it and
//! succeed), `reconcile`, `renew` (the served serial changes), `completion`, and the fleet
//! series of `/metrics` counting both computers.

use std::io::{Read, Seek};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::metrics::value;
use crate::ocs_agent::{self, OcsAgent};
use crate::support::served_serial;
use crate::support::{Reaped, addresses, eventually, get, quickstart_copy, server_ca, start};

/// How long one CLI command may take, `tessera agent --once` included (it downloads and
/// installs the quickstart's four packages); generous for a loaded machine, and a stuck
/// command is killed rather than left to hang the suite.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// What a `tessera` command did.
pub(crate) struct Output {
    pub(crate) success: bool,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs the `tessera` binary with `args` (no admin address from the environment), bounded by
/// [`COMMAND_LIMIT`] and killed if the test panics meanwhile.
pub(crate) fn run_tessera<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    // Files rather than pipes: nothing to drain while polling for the end.
    let mut stdout = tempfile::tempfile().unwrap();
    let mut stderr = tempfile::tempfile().unwrap();
    let mut child = Reaped(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .env_remove("TESSERA_ADMIN")
            .env_remove("TESSERA_STATE")
            .stdin(Stdio::null())
            .stdout(stdout.try_clone().unwrap())
            .stderr(stderr.try_clone().unwrap())
            .spawn()
            .expect("the tessera binary runs"),
    );
    let start = Instant::now();
    // The server runs in this process: its tasks go on while this thread waits.
    let status = tokio::task::block_in_place(|| {
        loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(
                start.elapsed() < COMMAND_LIMIT,
                "`tessera {}` still running after {COMMAND_LIMIT:?}",
                display(args)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let read = |file: &mut std::fs::File| {
        file.rewind().unwrap();
        let mut text = String::new();
        file.read_to_string(&mut text).unwrap();
        text
    };
    Output {
        success: status.success(),
        stdout: read(&mut stdout),
        stderr: read(&mut stderr),
    }
}

fn display<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|a| a.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The CLI pointed at one running server's admin API.
struct Cli {
    admin: String,
}

impl Cli {
    /// `tessera ARGS --admin ADMIN`, which must succeed: its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--admin", &self.admin]);
        let out = run_tessera(&all);
        assert!(
            out.success,
            "tessera {} failed:\n{}{}",
            all.join(" "),
            out.stdout,
            out.stderr
        );
        out.stdout
    }

    /// `tessera ARGS -o json --admin ADMIN`, parsed.
    fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        let text = self.ok(&all);
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("tessera {}: not JSON ({e}):\n{text}", all.join(" ")))
    }

    /// The state of each deployment of computer `device` (device id), by activation name.
    fn states(&self, device: &str) -> Vec<(String, String)> {
        let found = self.json(&["computers", device]);
        let reports = found.as_array().expect("a list of computers");
        assert_eq!(reports.len(), 1, "one computer {device}: {found}");
        assert_eq!(reports[0]["computer"]["deviceId"], device, "{found}");
        reports[0]["deployments"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| {
                (
                    d["activation"].as_str().unwrap_or_default().to_owned(),
                    d["state"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    }

    /// The Ready condition's reason of `kind/name`.
    fn reason(&self, what: &str) -> String {
        let object = self.json(&["get", what]);
        object["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready")
            .and_then(|c| c["reason"].as_str())
            .unwrap_or_default()
            .to_owned()
    }
}

fn state_of<'a>(states: &'a [(String, String)], activation: &str) -> &'a str {
    states
        .iter()
        .find(|(a, _)| a == &format!("default/{activation}"))
        .map_or("none", |(_, state)| state.as_str())
}

/// The quickstart's four activations.
const ACTIVATIONS: [&str; 4] = ["hello", "lab-tools", "check-disk", "baseline"];

/// One pass of Tessera's own agent, as an endpoint's cron job runs it: `tessera agent --once`.
pub(crate) fn native_pass(https: &str, state: &Path, ca: &Path, token: &str) {
    let server = format!("https://{https}");
    let args: Vec<&std::ffi::OsStr> = [
        "agent",
        "--once",
        "--server",
        &server,
        "--tag",
        ocs_agent::DEFAULT_TAG,
        "--token",
        token,
    ]
    .into_iter()
    .map(std::ffi::OsStr::new)
    .chain([
        "--state".as_ref(),
        state.as_os_str(),
        "--ca".as_ref(),
        ca.as_os_str(),
    ])
    .collect();
    let out = run_tessera(&args);
    assert!(
        out.success,
        "tessera agent --once:\n{}{}",
        out.stdout, out.stderr
    );
}

fn ocs_pass(agent: &OcsAgent) {
    let run = tokio::task::block_in_place(|| agent.run()).expect("the OCS agent runs");
    assert!(run.completed(), "the OCS agent did not finish: {run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_operator_sees_and_steers_a_fleet_of_ocs_and_native_agents_with_every_command() {
    let installed = Command::new("sh")
        .args(["-c", "command -v ocsinventory-agent"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        eprintln!("skipped: ocsinventory-agent is not installed (scripts/setup.sh installs it)");
        return;
    }
    let dir = quickstart_copy();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    let cli = Cli {
        admin: format!("http://{}", running.admin_address),
    };
    let state = dir.path().join(".tessera");
    let ca = server_ca(dir.path());
    eventually("the server's CA written", || async {
        ca.exists().then_some(())
    })
    .await;

    // A token for Tessera's own agent, as an operator makes one.
    let created = run_tessera(&[
        "token".as_ref(),
        "create".as_ref(),
        "--note".as_ref(),
        "operating test".as_ref(),
        "--state".as_ref(),
        state.as_os_str(),
    ]);
    assert!(created.success, "{}", created.stderr);
    let token = created.stdout.trim().to_owned();
    assert!(token.starts_with("tsr_"), "{token}");

    // Break-glass before any agent comes: hello is offered to nobody.
    let out = cli.ok(&["suspend", "activation/hello"]);
    assert!(out.contains("Activation/default/hello suspended"), "{out}");
    assert!(out.contains("suspended by: operator"), "{out}");
    // In force once a pass has applied it (the command waits for one unless it is queued).
    eventually("hello suspended", || async {
        (cli.reason("activation/hello") == "Suspended").then_some(())
    })
    .await;

    // Both agents deployed: the OCS one (an inventory, then a contact with offers) and the
    // native one (enrollment, check-in, downloads, results in one pass).
    let ocs = OcsAgent::new(
        &format!("https://{https}/ocsinventory"),
        &ca,
        &ocs_agent::device_id(1701).unwrap(),
    )
    .unwrap();
    let ocs_id = ocs.device_id().to_owned();
    ocs_pass(&ocs);
    ocs_pass(&ocs);
    let native_state = tempfile::tempdir().unwrap();
    native_pass(&https, native_state.path(), &ca, &token);
    let identity: Value = serde_json::from_slice(
        &std::fs::read(native_state.path().join("identity/agent.json")).unwrap(),
    )
    .unwrap();
    let native_id = identity["agentId"].as_str().unwrap().to_owned();
    assert_ne!(native_id, ocs_id);

    // While suspended, neither computer is offered hello, even when its agent comes again;
    // the rest is deployed.
    ocs_pass(&ocs);
    native_pass(&https, native_state.path(), &ca, &token);
    for device in [&ocs_id, &native_id] {
        let states = cli.states(device);
        assert_eq!(
            state_of(&states, "hello"),
            "waiting",
            "{device}: {states:?}"
        );
        for activation in ["lab-tools", "check-disk", "baseline"] {
            assert_eq!(
                state_of(&states, activation),
                "success",
                "{device}: {states:?}"
            );
        }
    }
    assert!(
        cli.ok(&["computers", "--activation", "hello", "--status", "success"])
            .lines()
            .skip(1)
            .all(|l| !l.contains(&ocs_id) && !l.contains(&native_id)),
        "nobody has hello yet"
    );

    // Resumed: both are offered it at their next contact, and install it.
    let out = cli.ok(&["resume", "activation/hello"]);
    assert!(out.contains("Activation/default/hello resumed"), "{out}");
    eventually("hello resumed", || async {
        (cli.reason("activation/hello") != "Suspended").then_some(())
    })
    .await;
    ocs_pass(&ocs);
    native_pass(&https, native_state.path(), &ca, &token);
    for device in [&ocs_id, &native_id] {
        let states = cli.states(device);
        for activation in ACTIVATIONS {
            assert_eq!(
                state_of(&states, activation),
                "success",
                "{device}: {states:?}"
            );
        }
    }

    // `computers`: both computers (they share this machine's name, so each row shows its
    // device id), one of each protocol.
    let fleet = cli.ok(&["computers"]);
    assert!(fleet.contains(&ocs_id), "{fleet}");
    assert!(fleet.contains(&native_id), "{fleet}");
    assert!(fleet.contains("hello=success"), "{fleet}");
    let page = cli.json(&["computers"]);
    let ids: Vec<&str> = page["computers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["deviceId"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&ocs_id.as_str()) && ids.contains(&native_id.as_str()),
        "{page}"
    );
    // Who has hello: both, in a table and as YAML.
    let done = cli.ok(&["computers", "--activation", "hello", "--status", "success"]);
    let rows: Vec<&str> = done.lines().skip(1).take_while(|l| !l.is_empty()).collect();
    assert_eq!(rows.len(), 2, "{done}");
    assert!(
        done.contains(&ocs_id) && done.contains(&native_id),
        "{done}"
    );
    let yaml = cli.ok(&[
        "computers",
        "--activation",
        "hello",
        "--status",
        "success",
        "-o",
        "yaml",
    ]);
    assert!(
        yaml.contains(&format!("deviceId: {ocs_id}")) && yaml.contains(&native_id),
        "{yaml}"
    );
    // Each computer in full, with its deployments and history.
    for device in [&ocs_id, &native_id] {
        let one = cli.ok(&["computers", device]);
        assert!(one.contains(device.as_str()), "{one}");
        assert!(one.contains("deployments:"), "{one}");
        assert!(one.contains("default/hello"), "{one}");
    }
    // The native agent's captured output is there (the OCS protocol carries none).
    let native = cli.json(&["computers", &native_id]);
    assert!(
        native[0]["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["output"].as_str().is_some_and(|o| !o.is_empty())),
        "{native}"
    );

    // `get`: every kind, one kind, one object (JSON and YAML).
    let all = cli.ok(&["get"]);
    for expected in [
        "NAME",
        "READY",
        "package/hello",
        "activation/hello",
        "affectation/lab-hello",
        "issuer/quickstart-ca",
        "certificate/tessera-server",
        "server/tessera",
    ] {
        assert!(all.contains(expected), "{expected}:\n{all}");
    }
    let activations = cli.ok(&["get", "activations"]);
    assert!(activations.starts_with("NAME "), "{activations}");
    for activation in ACTIVATIONS {
        let line = activations
            .lines()
            .find(|l| l.starts_with(&format!("{activation} ")))
            .unwrap_or_else(|| panic!("{activation}:\n{activations}"));
        assert!(line.contains("True"), "{activations}");
    }
    let hello = cli.json(&["get", "activation/hello"]);
    assert_eq!(hello["kind"], "Activation", "{hello}");
    assert_eq!(hello["name"], "hello", "{hello}");
    let certificate = cli.json(&["get", "certificate/tessera-server"]);
    assert!(
        certificate["details"]["notAfter"].is_string(),
        "{certificate}"
    );
    let yaml = cli.ok(&["get", "certificate/tessera-server", "-o", "yaml"]);
    assert!(yaml.contains("kind: Certificate"), "{yaml}");
    assert!(yaml.contains("notAfter:"), "{yaml}");

    // `describe`: related objects and the events of each.
    let described = cli.ok(&["describe", "activation/hello"]);
    for expected in [
        "Kind:        Activation",
        "Package/hello",
        "Affectation/lab-hello",
        "Events:",
        "Suspended",
        "Resumed",
    ] {
        assert!(described.contains(expected), "{expected}:\n{described}");
    }
    let described = cli.ok(&["describe", "certificate/tessera-server"]);
    for expected in [
        "Kind:        Certificate",
        "Issuer/quickstart-ca",
        "Server/tessera",
        "Events:",
        "Issued",
    ] {
        assert!(described.contains(expected), "{expected}:\n{described}");
    }

    // `events`: the operator's actions in order, and what both agents did.
    let events = cli.ok(&["events", "--for", "Activation/hello"]);
    let suspended = events.find("Suspended").expect(&events);
    let resumed = events.find("Resumed").expect(&events);
    assert!(suspended < resumed, "newest last:\n{events}");
    // Offered to both computers only after the resume, and installed by both protocols: the
    // OCS agent reports `SUCCESS…`, Tessera's agent the exit code.
    let journal = cli.json(&["events", "--for", "Activation/hello"]);
    let reasons: Vec<(&str, &str)> = journal["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["reason"].as_str().unwrap_or_default(),
                e["message"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let resumed_at = reasons
        .iter()
        .position(|(reason, _)| *reason == "Resumed")
        .expect("a Resumed event");
    let offers: Vec<usize> = (0..reasons.len())
        .filter(|&i| reasons[i].0 == "Offered")
        .collect();
    assert_eq!(offers.len(), 2, "{journal}");
    assert!(offers.iter().all(|&i| i > resumed_at), "{journal}");
    let results: Vec<&str> = reasons
        .iter()
        .filter(|(reason, _)| *reason == "Succeeded")
        .map(|(_, message)| *message)
        .collect();
    assert_eq!(results.len(), 2, "{journal}");
    assert!(results.iter().any(|m| m.contains(": SUCCESS")), "{journal}");
    assert!(
        results.iter().any(|m| m.contains(": EXIT_CODE_0")),
        "{journal}"
    );

    // `reconcile`: a pass now.
    let out = cli.ok(&["reconcile"]);
    assert!(out.contains("reconciled revision"), "{out}");

    // `renew`: a new certificate served at once, without a restart.
    let root = std::fs::read_to_string(&ca).unwrap();
    let (before, _) = eventually("the served certificate", || served_serial(&https, &root)).await;
    let out = cli.ok(&["renew", "tessera-server"]);
    assert!(out.contains("renewed"), "{out}");
    eventually("the renewed certificate served", || async {
        served_serial(&https, &root)
            .await
            .filter(|now| *now != before)
    })
    .await;

    // `completion`: a script naming the commands.
    let script = run_tessera(&["completion", "bash"]);
    assert!(script.success, "{}", script.stderr);
    for command in [
        "get",
        "describe",
        "events",
        "computers",
        "suspend",
        "resume",
        "reconcile",
        "renew",
    ] {
        assert!(script.stdout.contains(command), "{command}");
    }

    // `/metrics`: the fleet series count both computers.
    let series = ACTIVATIONS.map(|activation| {
        format!("tessera_fleet_computers{{activation=\"default/{activation}\",state=\"success\"}}")
    });
    let (metrics, _) = eventually("both computers in the fleet series", || async {
        let (status, metrics) = get(running.admin_address, "/metrics").await;
        (status == 200 && series.iter().all(|s| value(&metrics, s) == Some(2.0))).then_some(metrics)
    })
    .await;
    assert!(
        value(
            &metrics,
            "tessera_fleet_computers{activation=\"default/hello\",state=\"waiting\"}"
        ) == Some(0.0),
        "{metrics}"
    );
    running.stop().await.unwrap();
}
