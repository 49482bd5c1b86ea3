//! The real Debian `ocsinventory-agent` against `tessera serve` on the quickstart: every
//! package kind is deployed, and what the server records matches what the agent reported.

use serde_json::Value;
use tessera::cli::Running;

use crate::ocs_agent::{self, AgentRun, OcsAgent};
use crate::support::{addresses, eventually, get, get_json, quickstart_copy, start};

/// A package whose command fails: its error must be recorded as such.
const FAILING: &str = "apiVersion: tessera.dev/v1alpha1
kind: Package
metadata:
  name: failing
spec:
  os: linux
  action:
    execute:
      command: sh -c 'exit 3'
---
apiVersion: tessera.dev/v1alpha1
kind: Activation
metadata:
  name: failing
spec:
  packageRef:
    name: failing
---
apiVersion: tessera.dev/v1alpha1
kind: Affectation
metadata:
  name: failing
spec:
  activationRef:
    name: failing
  targets:
    tags: [lab]
";

/// A second activation of the quickstart's `hello`, added once the agent has installed it.
pub(crate) const HELLO_AGAIN: &str = "apiVersion: tessera.dev/v1alpha1
kind: Activation
metadata:
  name: hello-again
spec:
  packageRef:
    name: hello
---
apiVersion: tessera.dev/v1alpha1
kind: Affectation
metadata:
  name: hello-again
spec:
  activationRef:
    name: hello-again
  targets:
    all: true
";

/// Runs the agent once and waits for its download worker.
async fn run(agent: &OcsAgent) -> AgentRun {
    let run = tokio::task::block_in_place(|| agent.run()).expect("the agent runs");
    assert!(
        run.completed(),
        "the agent or its download worker did not finish: {run:?}"
    );
    println!(
        "agent run of {} took {:?}; its output:\n{}",
        agent.device_id(),
        run.elapsed,
        run.stdout
    );
    run
}

/// The computer's deployments by activation name: (state, code).
async fn deployments(running: &Running, device: &str) -> Vec<(String, String, String)> {
    let found = get_json(
        running.admin_address,
        &format!("/api/v1/computers/{device}"),
    )
    .await;
    found[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["activation"].as_str().unwrap().to_owned(),
                d["state"].as_str().unwrap().to_owned(),
                d["code"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn affectation_counts(object: &Value) -> (i64, i64, i64) {
    let counts = &object["details"]["counts"];
    (
        object["details"]["targets"].as_i64().unwrap_or(-1),
        counts["success"].as_i64().unwrap_or(-1),
        counts["error"].as_i64().unwrap_or(-1),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_real_ocs_agent_deploys_every_package_kind_of_the_quickstart() {
    let dir = quickstart_copy();
    std::fs::write(dir.path().join("failing.yaml"), FAILING).unwrap();
    let running = start(dir.path()).await;
    let (https, http) = addresses(&running).await;

    // Fragments of lab-tools come from the plain-HTTP listener, as from a site mirror.
    let tools = dir.path().join("packages/tools.yaml");
    let text = std::fs::read_to_string(&tools).unwrap().replace(
        "  # packLocation: http://mirror.lab.example:8080/download",
        &format!("  packLocation: http://{http}/download"),
    );
    std::fs::write(&tools, text).unwrap();
    eventually("the mirror location in effect", || async {
        let activation = get_json(
            running.admin_address,
            "/api/v1/objects/Activation/lab-tools",
        )
        .await;
        (activation["generation"] == 2 && activation["observedGeneration"] == 2).then_some(())
    })
    .await;

    let ca = crate::support::server_ca(dir.path());
    let agent = OcsAgent::new(
        &format!("https://{https}/ocsinventory"),
        &ca,
        &ocs_agent::device_id(1).unwrap(),
    )
    .unwrap();
    let device = agent.device_id().to_owned();

    // First contact: unknown, so asked for an inventory; its facts make it a target.
    let first = run(&agent).await;
    let found = get_json(
        running.admin_address,
        &format!("/api/v1/computers/{device}"),
    )
    .await;
    let computer = &found[0]["computer"];
    assert_eq!(computer["tags"], serde_json::json!(["lab"]), "{first:?}");
    assert!(
        computer["osName"].as_str().unwrap().contains("Linux"),
        "{computer}"
    );
    let waiting = deployments(&running, &device).await;
    assert_eq!(waiting.len(), 5, "{waiting:?}");
    assert!(
        waiting.iter().all(|(_, state, _)| state == "waiting"),
        "{waiting:?}"
    );

    // Second contact: every package offered, downloaded, run and reported.
    let second = run(&agent).await;
    let states = deployments(&running, &device).await;
    let expect = |activation: &str, state: &str, code: &str| {
        let found = states
            .iter()
            .find(|(a, _, _)| a == &format!("default/{activation}"))
            .unwrap_or_else(|| panic!("no deployment of {activation}: {states:?}"));
        assert_eq!(
            (found.1.as_str(), found.2.as_str()),
            (state, code),
            "{activation}: {states:?}\nagent stderr:\n{}",
            second.stderr
        );
    };
    expect("hello", "success", "SUCCESS_0"); // LAUNCH, 3 fragments, priority 5
    expect("check-disk", "success", "SUCCESS"); // EXECUTE, no fragments
    expect("lab-tools", "success", "SUCCESS"); // STORE, fragments over plain HTTP
    expect("baseline", "success", "SUCCESS"); // priority 0
    expect("failing", "error", "ERR_EXECUTE");
    assert!(
        agent.vardir().join("lab-tools/motd-lab.txt").is_file(),
        "STORE put the files in INSTALL_PATH/lab-tools"
    );
    let installed = agent.history();
    assert_eq!(installed.len(), 4, "{installed:?}");

    // Priority 0 goes first and alone: its result precedes every other.
    let found = get_json(
        running.admin_address,
        &format!("/api/v1/computers/{device}"),
    )
    .await;
    let results: Vec<&str> = found[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["code"].is_string())
        .map(|e| e["activation"].as_str().unwrap())
        .collect();
    assert_eq!(results.first(), Some(&"default/baseline"), "{results:?}");

    // Statuses count what the agent reported.
    let (hello, _) = eventually("counts in the Affectation status", || async {
        let object = get_json(
            running.admin_address,
            "/api/v1/objects/Affectation/lab-hello",
        )
        .await;
        (affectation_counts(&object) == (1, 1, 0)).then_some(object)
    })
    .await;
    assert_eq!(hello["details"]["counts"]["waiting"], 0, "{hello}");
    eventually("the failure counted", || async {
        let object = get_json(running.admin_address, "/api/v1/objects/Affectation/failing").await;
        (affectation_counts(&object) == (1, 0, 1)).then_some(())
    })
    .await;
    let table = get_json(running.admin_address, "/api/v1/deployments").await;
    assert_eq!(table["packages"].as_array().unwrap().len(), 5, "{table}");
    let (_, metrics) = get(running.admin_address, "/metrics").await;
    let http_bytes = metrics
        .lines()
        .find(|l| l.starts_with("tessera_download_bytes_total{listener=\"http\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap();
    assert!(http_bytes > 0, "{metrics}");
    assert!(
        metrics.contains("tessera_deployment_results_total{code=\"ERR_EXECUTE\"} 1"),
        "{metrics}"
    );

    // A third contact: nothing is offered again, and the agent is asked for an inventory,
    // which lists what it installed.
    let third = run(&agent).await;
    assert!(
        !third.stderr.contains("TYPE=\"PACK\""),
        "settled packages are not offered again:\n{}",
        third.stderr
    );
    let found = get_json(
        running.admin_address,
        &format!("/api/v1/computers/{device}"),
    )
    .await;
    let listed = found[0]["computer"]["history"].as_array().unwrap().len();
    assert_eq!(listed, 4, "{found}");
    // The same package through a second activation: the agent's report says it is
    // installed already, so it is settled without being offered.
    std::fs::write(dir.path().join("hello-again.yaml"), HELLO_AGAIN).unwrap();
    eventually("hello-again settled from the agent's report", || async {
        let states = deployments(&running, &device).await;
        states
            .contains(&(
                "default/hello-again".into(),
                "success".into(),
                "SUCCESS_ALREADY_IN_HISTORY".into(),
            ))
            .then_some(())
    })
    .await;
    let fourth = run(&agent).await;
    assert!(
        !fourth.stderr.contains("TYPE=\"PACK\""),
        "{}",
        fourth.stderr
    );
    running.stop().await.unwrap();
}

/// The serial of the certificate `address` presents, as `openssl s_client` sees it.
fn served_serial(address: &str) -> String {
    let output = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {address} </dev/null 2>/dev/null | openssl x509 -noout -serial"
        ))
        .output()
        .expect("openssl is installed by scripts/setup.sh");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_holds_up_no_one_and_a_renewed_certificate_is_served_without_restart() {
    let dir = quickstart_copy();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    let ca = crate::support::server_ca(dir.path());
    let id = crate::support::package_id(&running, "hello").await;

    // Connections that never start their handshake.
    let silent: Vec<_> = (0..8)
        .map(|_| std::net::TcpStream::connect(&https).unwrap())
        .collect();
    let curl = |path: &str| {
        std::process::Command::new("curl")
            .args(["-sf", "--max-time", "5", "--cacert"])
            .arg(&ca)
            .arg(format!("https://{https}{path}"))
            .output()
            .expect("curl is installed by scripts/setup.sh")
    };
    let info = curl(&format!("/download/{id}/info"));
    assert!(info.status.success(), "{info:?}");
    assert!(String::from_utf8_lossy(&info.stdout).contains(&format!("ID=\"{id}\"")));

    let before = tokio::task::block_in_place(|| served_serial(&https));
    assert!(before.starts_with("serial="), "{before}");
    // A changed Certificate is re-issued; the listener serves it from the next handshake.
    let pki = dir.path().join("pki.yaml");
    let text = std::fs::read_to_string(&pki).unwrap().replace(
        "    - tessera.local\n",
        "    - tessera.local\n    - deploy.tessera.local\n",
    );
    std::fs::write(&pki, text).unwrap();
    eventually("the renewed certificate served", || async {
        let now = tokio::task::block_in_place(|| served_serial(&https));
        (now.starts_with("serial=") && now != before).then_some(())
    })
    .await;
    let info = curl(&format!("/download/{id}/info"));
    assert!(
        info.status.success(),
        "the new certificate is trusted: {info:?}"
    );
    // Shutting down does not wait for them.
    running.stop().await.unwrap();
    drop(silent);
}

const STAGED: &str = "apiVersion: tessera.dev/v1alpha1
kind: Affectation
metadata:
  name: staged
spec:
  activationRef:
    name: check-disk
  targets:
    tags: [fleet]
  rollout:
    stages:
      - percent: 20
      - percent: 100
        after: 24h
    maxErrors: 1
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_staged_rollout_reaches_its_share_and_pauses_on_errors() {
    let dir = quickstart_copy();
    std::fs::write(dir.path().join("staged.yaml"), STAGED).unwrap();
    let running = start(dir.path()).await;
    addresses(&running).await;
    // A fleet of 200 computers that have sent an inventory.
    let db = tessera::store::db::Database::open(&dir.path().join(".tessera/state.db")).unwrap();
    let now = jiff::Timestamp::now().as_second();
    for i in 0..200 {
        let facts = tessera::store::db::Facts {
            name: format!("pc-{i:03}"),
            os_name: "Debian GNU/Linux 12".into(),
            tags: vec!["fleet".into()],
            ..Default::default()
        };
        db.record_inventory(&format!("pc-{i:03}-2026-01-01-00-00-00"), &facts, b"", now)
            .unwrap();
    }
    // Any change makes a pass; the counts then cover the new computers. (The listeners are
    // up before the first pass has finished, so a pass may also count part of the fleet
    // while it is being inserted: wait for the count of the whole fleet.)
    std::fs::write(dir.path().join("touch.yaml"), "# touched\n").unwrap();
    let (staged, _) = eventually("the first stage counted", || async {
        let object = get_json(running.admin_address, "/api/v1/objects/Affectation/staged").await;
        (object["details"]["targets"].as_i64().unwrap_or(0) >= 20).then_some(object)
    })
    .await;
    let targets = staged["details"]["targets"].as_i64().unwrap();
    assert!((20..=65).contains(&targets), "about 20% of 200: {staged}");
    assert_eq!(staged["details"]["rollout"]["percent"], 20, "{staged}");
    assert!(
        staged["details"]["rollout"]["nextStage"].is_string(),
        "{staged}"
    );

    // One error among them reaches maxErrors: the rollout pauses and says so.
    let rows = db.deployments().unwrap();
    let first = rows
        .iter()
        .find(|d| d.activation == "default/check-disk")
        .expect("the first stage is armed");
    // Offered (a result is only filed for a package offered to the computer), then failed.
    db.apply(
        &first.device_id,
        &[tessera::store::db::Change::Notify {
            activation: first.activation.clone(),
        }],
        now,
    )
    .unwrap();
    let filed = db
        .record_result(
            &first.device_id,
            &first.package_id,
            tessera::store::db::State::Error,
            Some("ERR_EXECUTE"),
            None,
            now,
        )
        .unwrap();
    assert!(
        matches!(filed, tessera::store::db::Filed::Recorded(_)),
        "{filed:?}"
    );
    std::fs::write(dir.path().join("touch.yaml"), "# touched again\n").unwrap();
    let (paused, _) = eventually("the rollout paused", || async {
        let object = get_json(running.admin_address, "/api/v1/objects/Affectation/staged").await;
        (object["details"]["rollout"]["paused"] == true).then_some(object)
    })
    .await;
    let ready = &paused["conditions"][0];
    assert_eq!(ready["reason"], "RolloutPaused", "{paused}");
    assert_eq!(ready["status"], "False", "{paused}");
    running.stop().await.unwrap();
}
