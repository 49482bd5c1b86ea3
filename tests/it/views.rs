//! `tessera get`, `describe`, `computers` and `completion` as an operator runs them: against
//! the quickstart served, with the real OCS agent's computer and one whose deployment
//! failed, through the admin API and then, the server stopped, from its state directory.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use crate::ocs_agent::{self, OcsAgent};
use crate::support::{
    Reaped, addresses, eventually, package_id, quickstart_copy, server_ca, start,
};
use tessera::store::db::{Change, Database, Facts, State};

/// Runs `tessera ARGS` and returns its standard output; panics, with its error output, when
/// it fails.
fn tessera<S: AsRef<str>>(args: &[S]) -> String {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let out = tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(&args)
            // No server at the default admin address is asked by accident.
            .env_remove("TESSERA_ADMIN")
            .output()
            .unwrap()
    });
    assert!(
        out.status.success(),
        "tessera {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A computer whose hello deployment failed with EXIT_CODE_1, written into the state
/// database as an agent's result would be.
fn failed_computer(state: &Path, hello_id: &str) {
    let db = Database::open(&state.join("state.db")).unwrap();
    let now = jiff::Timestamp::now().as_second();
    let device = "broken-01-2026-01-01-00-00-00";
    let facts = Facts {
        name: "broken-01".into(),
        os_name: "Linux".into(),
        os_version: "6.1".into(),
        tags: vec!["lab".into()],
        ..Facts::default()
    };
    db.record_inventory(device, &facts, b"", now).unwrap();
    let changes = [
        Change::Arm {
            activation: "default/hello".into(),
            package: "default/hello".into(),
            package_id: hello_id.into(),
            token: String::new(),
        },
        Change::Notify {
            activation: "default/hello".into(),
        },
    ];
    db.apply(device, &changes, now).unwrap();
    db.record_result(
        device,
        hello_id,
        State::Error,
        Some("EXIT_CODE_1"),
        Some("boom\n"),
        now,
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn get_describe_and_computers_read_the_server_then_its_state_directory() {
    let dir = quickstart_copy();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    let admin = format!("http://{}", running.admin_address);
    let state = dir.path().join(".tessera");
    let hello = package_id(&running, "hello").await;

    // The real agent's computer, when the agent is installed.
    let installed = Command::new("ocsinventory-agent")
        .arg("--version")
        .output()
        .is_ok();
    let agent = if installed {
        let ca = server_ca(dir.path());
        eventually("the server's CA written", || async {
            ca.exists().then_some(())
        })
        .await;
        let agent = OcsAgent::new(
            &format!("https://{https}/ocsinventory"),
            &ca,
            &ocs_agent::device_id(17).unwrap(),
        )
        .unwrap();
        let run = tokio::task::block_in_place(|| agent.run()).unwrap();
        assert!(run.completed(), "{run:?}");
        Some(agent)
    } else {
        println!("skipping the real agent: ocsinventory-agent is not installed");
        None
    };
    tokio::task::block_in_place(|| failed_computer(&state, &hello));

    let with = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| (*a).to_owned())
            .chain(["--admin".to_owned(), admin.clone()])
            .collect()
    };

    // Every kind, one table each.
    let all = tessera(&with(&["get"]));
    for expected in [
        "certificate/tessera-server",
        "issuer/quickstart-ca",
        "READY",
        "MESSAGE",
    ] {
        assert!(all.contains(expected), "{expected}:\n{all}");
    }
    // One kind, by its short name: the package id and fragments.
    let packages = tessera(&with(&["get", "pkg"]));
    assert!(packages.starts_with("NAME "), "{packages}");
    assert!(packages.contains("PACKAGE ID"), "{packages}");
    let line = packages.lines().find(|l| l.starts_with("hello ")).unwrap();
    assert!(line.contains(&hello), "{packages}");
    // One object as JSON, as tools read it.
    let json = tessera(&with(&["get", "Certificate/tessera-server", "-o", "json"]));
    let certificate: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(certificate["kind"], "Certificate");
    assert!(certificate["details"]["notAfter"].is_string(), "{json}");

    // An Activation adds up the counts of its Affectations.
    let activations = tessera(&with(&["get", "activations"]));
    let line = activations
        .lines()
        .find(|l| l.starts_with("hello "))
        .unwrap();
    let targets = line.split_whitespace().nth(4).unwrap();
    assert!(targets.parse::<u32>().is_ok(), "{activations}");

    // Watching: an edit's row is printed again, without a header.
    let mut watcher = Reaped(
        Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(with(&["get", "aff", "-w"]))
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let printed = Arc::new(Mutex::new(String::new()));
    let stdout = watcher.0.stdout.take().unwrap();
    let sink = printed.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&format!("{line}\n"));
        }
    });
    eventually("the first table", || async {
        printed.lock().unwrap().contains("lab-tools").then_some(())
    })
    .await;
    let affectations = dir.path().join("affectations.yaml");
    let text = std::fs::read_to_string(&affectations).unwrap();
    std::fs::write(
        &affectations,
        text.replace("redeploy: \"1\"", "redeploy: \"2\""),
    )
    .unwrap();
    let watched = eventually("the edited Affectation printed again", || async {
        let text = printed.lock().unwrap().clone();
        text.lines()
            .any(|l| l.starts_with("affectation/lab-tools ") && l.contains(" 2/2 "))
            .then_some(text)
    })
    .await
    .0;
    assert_eq!(
        watched.matches("NAME ").count(),
        1,
        "one header:\n{watched}"
    );
    drop(watcher);

    // An Activation described: its spec, conditions, the Package it names and the
    // Affectation that names it.
    let described = tessera(&with(&["describe", "activation/hello"]));
    for expected in [
        "Kind:        Activation",
        "Spec:",
        "packageRef:",
        "Ready",
        "Package/hello",
        "Affectation/lab-hello",
        "names this in spec.activationRef",
        "Events:",
    ] {
        assert!(described.contains(expected), "{expected}:\n{described}");
    }

    // The fleet, and its result codes per activation.
    let fleet = tessera(&with(&["computers"]));
    assert!(fleet.contains("broken-01"), "{fleet}");
    assert!(fleet.contains("hello=error(EXIT_CODE_1)"), "{fleet}");
    assert!(fleet.contains("default/hello: EXIT_CODE_1 ×1"), "{fleet}");
    if let Some(agent) = &agent {
        let real = tessera(&with(&["computers", agent.device_id()]));
        assert!(real.contains(agent.device_id()), "{real}");
        assert!(real.contains("deployments:"), "{real}");
        assert!(fleet.lines().count() >= 5, "two computers:\n{fleet}");
    }
    // Who failed hello: only the broken computer.
    let failed = tessera(&with(&[
        "computers",
        "--activation",
        "hello",
        "--status",
        "error",
    ]));
    let rows: Vec<&str> = failed
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(rows.len(), 1, "{failed}");
    assert!(
        rows[0].starts_with("broken-01 ") && rows[0].contains("EXIT_CODE_1"),
        "{failed}"
    );
    let one = tessera(&with(&["computers", "broken-01"]));
    assert!(one.contains("| boom"), "the command's output:\n{one}");
    let json = tessera(&with(&["computers", "--status", "error", "-o", "json"]));
    let page: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(page["computers"].as_array().unwrap().len(), 1, "{json}");

    running.stop().await.unwrap();

    // No server: the status files and the state database.
    let state_arg = state.to_str().unwrap();
    let local = |args: &[&str]| -> Vec<String> {
        args.iter()
            .map(|a| (*a).to_owned())
            .chain(["--state".to_owned(), state_arg.to_owned()])
            .collect()
    };
    let run = |args: Vec<String>| tessera(&args);
    let packages = run(local(&["get", "packages"]));
    let line = packages.lines().find(|l| l.starts_with("hello ")).unwrap();
    assert!(line.contains(&hello) && line.contains("True"), "{packages}");
    let json = run(local(&["get", "cert/tessera-server", "-o", "json"]));
    let offline_certificate: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(
        offline_certificate["details"]["notAfter"],
        certificate["details"]["notAfter"]
    );
    // The spec and related objects from what the last pass applied; the events from the
    // state database.
    let described = run(local(&["describe", "activation/hello"]));
    for expected in ["Ready", "packageRef:", "Affectation/lab-hello", "Events:"] {
        assert!(described.contains(expected), "{expected}:\n{described}");
    }
    assert!(
        !described.contains("<needs a running server>"),
        "{described}"
    );
    let activations = run(local(&["get", "act"]));
    let line = activations
        .lines()
        .find(|l| l.starts_with("hello "))
        .unwrap();
    let targets = line.split_whitespace().nth(4).unwrap();
    assert!(targets.parse::<u32>().is_ok(), "{activations}");
    let failed = run(local(&[
        "computers",
        "--activation",
        "hello",
        "--status",
        "error",
    ]));
    assert!(failed.contains("broken-01"), "{failed}");
    assert!(failed.contains("EXIT_CODE_1 ×1"), "{failed}");
    let one = run(local(&["computers", "broken-01"]));
    assert!(one.contains("| boom"), "{one}");
}

#[test]
fn completions_and_help_name_the_commands() {
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["completion", "bash"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    for command in ["get", "describe", "computers", "completion"] {
        assert!(
            script.contains(command),
            "{command} missing from the bash completion"
        );
    }
    let out = Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["get", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.contains("Examples:") && help.contains("Server:"),
        "{help}"
    );
}
