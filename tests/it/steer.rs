//! Steering a running server with `tessera suspend`, `resume`, `reconcile` and `renew`
//! (issue 17), the CLI binary against `tessera serve` on the quickstart, with the real
//! Debian OCS agent as the computer that is (or is not) offered a package.

use serde_json::Value;
use tessera::cli::Running;

use crate::ocs_agent::{self, OcsAgent};
use crate::support::served_serial;
use crate::support::{addresses, eventually, free_port, get, get_json, quickstart_copy, start};

/// `tessera ARGS --admin <running's admin API>`: (exit success, stdout, stderr).
fn tessera(running: &Running, args: &[&str]) -> (bool, String, String) {
    let admin = format!("http://{}", running.admin_address);
    tessera_at(&admin, args)
}

fn tessera_at(admin: &str, args: &[&str]) -> (bool, String, String) {
    // The server runs in this process: let its tasks go on while the CLI waits for a pass.
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .args(["--admin", admin])
            .output()
            .expect("the tessera binary runs")
    });
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// (Ready status, reason, `details.suspended`) of `kind/name` in the admin report.
async fn readiness(running: &Running, kind: &str, name: &str) -> (String, String, Option<String>) {
    // Not found before the first pass of a restarted server: nothing to read yet.
    let (_, body) = get(
        running.admin_address,
        &format!("/api/v1/objects/{kind}/{name}"),
    )
    .await;
    let object: Value = serde_json::from_str(&body).unwrap_or_default();
    let ready = object["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    (
        ready["status"].as_str().unwrap_or_default().to_owned(),
        ready["reason"].as_str().unwrap_or_default().to_owned(),
        object["details"]["suspended"].as_str().map(str::to_owned),
    )
}

/// Waits until `kind/name` reads `wanted` (Ready status, reason, what suspends it).
async fn until_reads(
    running: &Running,
    kind: &str,
    name: &str,
    wanted: (&str, &str, Option<&str>),
) {
    eventually(&format!("{kind}/{name} reading {wanted:?}"), || async {
        let (status, reason, by) = readiness(running, kind, name).await;
        (status == wanted.0 && reason == wanted.1 && by.as_deref() == wanted.2).then_some(())
    })
    .await;
}

/// The state of each of the computer's deployments, by activation (`default/NAME`).
async fn states(running: &Running, device: &str) -> Vec<(String, String)> {
    let found = get_json(
        running.admin_address,
        &format!("/api/v1/computers/{device}"),
    )
    .await;
    found[0]["deployments"]
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

fn state_of<'a>(states: &'a [(String, String)], activation: &str) -> &'a str {
    states
        .iter()
        .find(|(a, _)| a == &format!("default/{activation}"))
        .map_or("none", |(_, state)| state.as_str())
}

fn run_agent(agent: &OcsAgent) {
    let run = tokio::task::block_in_place(|| agent.run()).expect("the agent runs");
    assert!(run.completed(), "the agent did not finish: {run:?}");
}

fn agent_installed() -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v ocsinventory-agent"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("skipped: ocsinventory-agent is not installed (scripts/setup.sh installs it)");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_suspended_activation_or_affectation_offers_nothing_until_resumed_and_says_who_holds_it()
{
    if !agent_installed() {
        return;
    }
    let dir = quickstart_copy();
    // GitOps: the Affectation of check-disk suspended in the configuration.
    let affectations = dir.path().join("affectations.yaml");
    let declared = std::fs::read_to_string(&affectations).unwrap();
    let suspended = declared.replace(
        "    name: check-disk\n",
        "    name: check-disk\n  suspend: true\n",
    );
    assert_ne!(declared, suspended);
    std::fs::write(&affectations, &suspended).unwrap();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    until_reads(
        &running,
        "Affectation",
        "lab-check-disk",
        ("False", "Suspended", Some("spec")),
    )
    .await;

    // Break-glass: the Activation hello suspended by an operator, at once.
    let (ok, out, err) = tessera(&running, &["suspend", "activation/hello"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Activation/default/hello suspended"), "{out}");
    assert!(out.contains("Ready=False Suspended"), "{out}");
    assert!(out.contains("suspended by: operator"), "{out}");
    until_reads(
        &running,
        "Activation",
        "hello",
        ("False", "Suspended", Some("operator")),
    )
    .await;
    // Its Affectation is held with it.
    until_reads(
        &running,
        "Affectation",
        "lab-hello",
        ("False", "Suspended", Some("operator")),
    )
    .await;
    // `resume` cannot lift what the configuration says.
    let (ok, out, err) = tessera(
        &running,
        &["resume", "affectation/lab-check-disk", "-n", "default"],
    );
    assert!(ok, "{out}{err}");
    assert!(out.contains("spec.suspend is true"), "{out}");

    let ca = crate::support::server_ca(dir.path());
    let agent = OcsAgent::new(
        &format!("https://{https}/ocsinventory"),
        &ca,
        &ocs_agent::device_id(17).unwrap(),
    )
    .unwrap();
    let device = agent.device_id().to_owned();
    // Inventory, then a contact where everything not suspended is offered and installed.
    run_agent(&agent);
    run_agent(&agent);
    let held = states(&running, &device).await;
    assert_eq!(state_of(&held, "lab-tools"), "success", "{held:?}");
    assert_eq!(state_of(&held, "hello"), "waiting", "{held:?}");
    assert_eq!(state_of(&held, "check-disk"), "waiting", "{held:?}");

    // Resumed both ways: offered at the next contact.
    let (ok, out, err) = tessera(&running, &["resume", "activation/hello", "-o", "json"]);
    assert!(ok, "{out}{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["queued"], false, "{answer}");
    assert!(
        answer["after"]["details"]["suspended"].is_null(),
        "{answer}"
    );
    std::fs::write(&affectations, &declared).unwrap();
    eventually("the suspensions lifted", || async {
        let hello = readiness(&running, "Activation", "hello").await;
        let disk = readiness(&running, "Affectation", "lab-check-disk").await;
        (hello.1 != "Suspended" && disk.1 != "Suspended" && disk.2.is_none()).then_some(())
    })
    .await;
    run_agent(&agent);
    let after = states(&running, &device).await;
    assert_eq!(state_of(&after, "hello"), "success", "{after:?}");
    assert_eq!(state_of(&after, "check-disk"), "success", "{after:?}");
    // Both actions are in the events, on the object they were taken on.
    let (ok, out, err) = tessera(&running, &["events", "--for", "Activation/hello"]);
    assert!(ok, "{out}{err}");
    let suspended = out.find("Suspended").expect(&out);
    let resumed = out.find("Resumed").expect(&out);
    assert!(suspended < resumed, "newest last:\n{out}");

    // The override is kept in the state database: a restarted server still holds it.
    let (ok, out, err) = tessera(&running, &["suspend", "activation/baseline"]);
    assert!(ok, "{out}{err}");
    running.stop().await.unwrap();
    let running = start(dir.path()).await;
    until_reads(
        &running,
        "Activation",
        "baseline",
        ("False", "Suspended", Some("operator")),
    )
    .await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconcile_runs_a_pass_and_renew_changes_the_served_serial_without_restart() {
    let dir = quickstart_copy();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;

    // A pass now, reported when it ends.
    let revision = get_json(running.admin_address, "/api/v1/objects").await["revision"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, out, err) = tessera(&running, &["reconcile"]);
    assert!(ok, "{out}{err}");
    assert!(
        out.contains(&format!("reconciled revision {revision}")),
        "{out}"
    );
    let (ok, out, err) = tessera(&running, &["reconcile", "--source", "-o", "json"]);
    assert!(ok, "{out}{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(answer["queued"], false, "{answer}");
    assert!(
        answer["pass"]["objects"].as_u64().unwrap() >= 10,
        "{answer}"
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("nothing to fetch"),
        "a directory has no fetch: {answer}"
    );

    // A new certificate now, served without a restart.
    let root = std::fs::read_to_string(crate::support::server_ca(dir.path())).unwrap();
    let (before, _) = eventually("the served certificate", || served_serial(&https, &root)).await;
    let (ok, out, err) = tessera(&running, &["renew", "tessera-server", "-o", "json"]);
    assert!(ok, "{out}{err}");
    let answer: Value = serde_json::from_str(&out).unwrap();
    assert!(
        answer["message"]
            .as_str()
            .unwrap()
            .contains("renewed: revision 2"),
        "{answer}"
    );
    eventually("the renewed certificate served", || async {
        served_serial(&https, &root)
            .await
            .filter(|now| *now != before)
    })
    .await;
    // The request and the renewal are in the events (the renewal once reports settle).
    eventually("the request and the renewal in the events", || async {
        let (ok, out, err) = tessera(&running, &["events", "--for", "Certificate/tessera-server"]);
        assert!(ok, "{out}{err}");
        (out.contains("RenewalRequested") && out.contains("Renewed")).then_some(())
    })
    .await;
    // Honoured: the next pass issues nothing more.
    let (ok, out, err) = tessera(&running, &["reconcile"]);
    assert!(ok, "{out}{err}");
    let certificate = get_json(
        running.admin_address,
        "/api/v1/objects/Certificate/tessera-server",
    )
    .await;
    assert_eq!(certificate["details"]["revision"], 2, "{certificate}");

    // Unknown objects are named; a server that is not there is named too.
    let (ok, _, err) = tessera(&running, &["renew", "nope"]);
    assert!(!ok && err.contains("no Certificate nope"), "{err}");
    running.stop().await.unwrap();
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let (ok, _, err) = tessera_at(&nowhere, &["reconcile"]);
    assert!(!ok, "{err}");
    assert!(
        err.contains(&nowhere) && err.contains("tessera serve"),
        "{err}"
    );
}
