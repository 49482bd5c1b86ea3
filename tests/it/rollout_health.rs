//! Honest health of a rollout, as kstatus readers (`kubectl wait`, Flux, Argo CD) see it on
//! the admin API: an Affectation is `Reconciling` while targets are in flight, `Ready` only
//! once every target succeeded, and `DeploymentFailed` once they settled with failures.
//! Driven by OCS requests (inventory, PROLOG, DOWNLOAD results) against the in-process
//! server on the quickstart.

use std::net::SocketAddr;
use std::path::Path;

use serde_json::Value;

use crate::hostile_ocs::{post, prolog, result, zlib};
use crate::support::{addresses, eventually, get, get_json, quickstart_copy, start};

/// An Affectation of the quickstart's `hello` to the computers tagged `tag`.
fn affectation(name: &str, tag: &str, redeploy: Option<&str>) -> String {
    let redeploy = redeploy.map_or(String::new(), |r| format!("  redeploy: \"{r}\"\n"));
    format!(
        "apiVersion: tessera.dev/v1alpha1
kind: Affectation
metadata:
  name: {name}
spec:
  activationRef:
    name: hello
  targets:
    tags: [{tag}]
    os: [linux]
{redeploy}"
    )
}

/// An inventory that makes `device` (named `name`) a Linux computer tagged `tag`.
fn inventory(device: &str, name: &str, tag: &str) -> Vec<u8> {
    zlib(&format!(
        "<REQUEST><CONTENT><ACCOUNTINFO><KEYNAME>TAG</KEYNAME><KEYVALUE>{tag}</KEYVALUE></ACCOUNTINFO><HARDWARE><NAME>{name}</NAME><OSNAME>Debian GNU/Linux 12</OSNAME></HARDWARE></CONTENT><DEVICEID>{device}</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>"
    ))
}

/// The quickstart with `extra` written as `name`, served once Package/hello is built:
/// the directory, the server, its HTTPS address, the CA agents trust, hello's package id.
async fn serve(
    file: &str,
    extra: &str,
) -> (
    tempfile::TempDir,
    tessera::cli::Running,
    SocketAddr,
    std::path::PathBuf,
    String,
) {
    let dir = quickstart_copy();
    std::fs::write(dir.path().join(file), extra).unwrap();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    let ca = crate::support::server_ca(dir.path());
    let (hello, _) = eventually("Package/hello built", || async {
        let (status, body) = get(running.admin_address, "/api/v1/objects/Package/hello").await;
        let object: Value = (status == 200).then(|| serde_json::from_str(&body).ok())??;
        object["details"]["packageId"].as_str().map(str::to_owned)
    })
    .await;
    (dir, running, https.parse().unwrap(), ca, hello)
}

/// The condition `type_` of `object`: (status, reason, message).
fn condition(object: &Value, type_: &str) -> (String, String, String) {
    let found = object["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition: {object}"));
    let text = |name: &str| found[name].as_str().unwrap().to_owned();
    (text("status"), text("reason"), text("message"))
}

/// What `kubectl wait --for=condition=Ready` and kstatus call done: `Ready=True` for the
/// current generation.
fn kubectl_wait_done(object: &Value) -> bool {
    condition(object, "Ready").0 == "True" && object["observedGeneration"] == object["generation"]
}

/// Affectation/`name` once its counts are `expected` (targets, waiting, notified, success,
/// error).
async fn when_counted(
    running: &tessera::cli::Running,
    name: &str,
    expected: (i64, i64, i64, i64, i64),
) -> Value {
    let path = format!("/api/v1/objects/Affectation/{name}");
    eventually(&format!("{name} counted as {expected:?}"), || async {
        let object = get_json(running.admin_address, &path).await;
        let count = |state: &str| object["details"]["counts"][state].as_i64().unwrap_or(-1);
        let found = (
            object["details"]["targets"].as_i64().unwrap_or(-1),
            count("waiting"),
            count("notified"),
            count("success"),
            count("error"),
        );
        (found == expected).then_some(object)
    })
    .await
    .0
}

/// Sends `body` over OCS and checks it was taken.
async fn ocs(https: SocketAddr, ca: &Path, body: &[u8]) -> String {
    let (status, reply, _) = post(https, ca, body).await;
    let reply = String::from_utf8_lossy(&reply).to_string();
    assert_eq!(status, 200, "{reply}");
    reply
}

fn device(n: usize) -> String {
    format!("canary-{n}-2026-01-01-00-00-00")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_affectation_is_reconciling_while_targets_are_in_flight_and_failed_once_settled_with_errors()
 {
    let (dir, running, https, ca, hello) =
        serve("canary.yaml", &affectation("canary", "canary", None)).await;

    // No target yet: nothing to do, done.
    let object = when_counted(&running, "canary", (0, 0, 0, 0, 0)).await;
    assert_eq!(condition(&object, "Ready").0, "True", "{object}");
    assert_eq!(condition(&object, "Ready").1, "Deployed", "{object}");

    // Three computers send their inventory: three targets waiting.
    for n in 0..3 {
        ocs(
            https,
            &ca,
            &inventory(&device(n), &format!("canary-{n}"), "canary"),
        )
        .await;
    }
    let object = when_counted(&running, "canary", (3, 3, 0, 0, 0)).await;
    let ready = condition(&object, "Ready");
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("False", "Deploying"),
        "{object}"
    );
    let reconciling = condition(&object, "Reconciling");
    assert_eq!(reconciling.0, "True", "{object}");
    assert_eq!(reconciling.1, "Deploying", "{object}");
    assert!(
        reconciling.2.starts_with(&format!(
            "3 of 3 in flight; package {hello} to 3 targets: 0 success, 0 error, 3 waiting, 0 notified"
        )),
        "{object}"
    );
    assert_eq!(condition(&object, "Stalled").0, "False", "{object}");
    assert!(!kubectl_wait_done(&object));

    // Each is offered the package at its next PROLOG: notified.
    for n in 0..3 {
        let reply = ocs(https, &ca, &prolog(&device(n))).await;
        assert!(reply.contains(&format!("ID=\"{hello}\"")), "{reply}");
    }
    let object = when_counted(&running, "canary", (3, 0, 3, 0, 0)).await;
    let reconciling = condition(&object, "Reconciling");
    assert_eq!(reconciling.0, "True", "{object}");
    assert!(reconciling.2.contains("0 waiting, 3 notified"), "{object}");
    assert_eq!(condition(&object, "Ready").0, "False", "{object}");
    assert!(!kubectl_wait_done(&object));

    // One fails; two are still in flight: still reconciling, the failure counted and named.
    ocs(https, &ca, &result(&device(0), &hello, "ERR_EXECUTE")).await;
    let object = when_counted(&running, "canary", (3, 0, 2, 0, 1)).await;
    let reconciling = condition(&object, "Reconciling");
    assert_eq!(reconciling.0, "True", "{object}");
    assert!(reconciling.2.starts_with("2 of 3 in flight; "), "{object}");
    assert!(reconciling.2.contains("0 success, 1 error"), "{object}");
    assert!(
        reconciling.2.ends_with("error codes: \"ERR_EXECUTE\" ×1"),
        "{object}"
    );
    assert_eq!(condition(&object, "Ready").1, "Deploying", "{object}");
    assert_eq!(condition(&object, "Stalled").0, "False", "{object}");
    assert!(!kubectl_wait_done(&object));

    // The other two succeed: every target settled, one failed.
    for n in 1..3 {
        ocs(https, &ca, &result(&device(n), &hello, "SUCCESS")).await;
    }
    let object = when_counted(&running, "canary", (3, 0, 0, 2, 1)).await;
    let ready = condition(&object, "Ready");
    assert_eq!(
        (ready.0.as_str(), ready.1.as_str()),
        ("False", "DeploymentFailed"),
        "{object}"
    );
    assert!(ready.2.starts_with("1 of 3 failed; "), "{object}");
    assert!(
        ready.2.ends_with("error codes: \"ERR_EXECUTE\" ×1"),
        "{object}"
    );
    assert_eq!(condition(&object, "Reconciling").0, "False", "{object}");
    let stalled = condition(&object, "Stalled");
    assert_eq!(
        (stalled.0.as_str(), stalled.1.as_str()),
        ("True", "DeploymentFailed")
    );
    assert!(!kubectl_wait_done(&object));

    // The status file says the same.
    let file = dir
        .path()
        .join(".tessera/status/default/affectation/canary.yaml");
    eventually("the status file written", || async {
        let text = std::fs::read_to_string(&file).ok()?;
        text.contains("reason: DeploymentFailed").then_some(())
    })
    .await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_wait_for_ready_succeeds_only_once_the_rollout_succeeded() {
    let file = "wave.yaml";
    let (dir, running, https, ca, hello) = serve(file, &affectation("wave", "wave", None)).await;
    let path = "/api/v1/objects/Affectation/wave";
    for n in 0..2 {
        ocs(
            https,
            &ca,
            &inventory(&device(n), &format!("wave-{n}"), "wave"),
        )
        .await;
    }
    // Every state a failing rollout goes through: never done.
    let object = when_counted(&running, "wave", (2, 2, 0, 0, 0)).await;
    assert!(!kubectl_wait_done(&object), "waiting: {object}");
    for n in 0..2 {
        ocs(https, &ca, &prolog(&device(n))).await;
    }
    let object = when_counted(&running, "wave", (2, 0, 2, 0, 0)).await;
    assert!(!kubectl_wait_done(&object), "notified: {object}");
    ocs(https, &ca, &result(&device(0), &hello, "SUCCESS")).await;
    let object = when_counted(&running, "wave", (2, 0, 1, 1, 0)).await;
    assert!(!kubectl_wait_done(&object), "half done: {object}");
    ocs(https, &ca, &result(&device(1), &hello, "ERR_DOWNLOAD")).await;
    let object = when_counted(&running, "wave", (2, 0, 0, 1, 1)).await;
    assert!(
        !kubectl_wait_done(&object),
        "settled with a failure: {object}"
    );

    // A redeploy token (generation 2) re-arms both; until the new generation is observed
    // and both succeeded, the wait goes on.
    std::fs::write(
        dir.path().join(file),
        affectation("wave", "wave", Some("2")),
    )
    .unwrap();
    let object = when_counted(&running, "wave", (2, 2, 0, 0, 0)).await;
    assert_eq!(object["generation"], 2, "{object}");
    assert!(!kubectl_wait_done(&object), "re-armed: {object}");
    for n in 0..2 {
        let reply = ocs(https, &ca, &prolog(&device(n))).await;
        assert!(
            reply.contains(&format!("ID=\"{hello}\"")),
            "offered again: {reply}"
        );
    }
    ocs(https, &ca, &result(&device(0), &hello, "SUCCESS")).await;
    let object = when_counted(&running, "wave", (2, 0, 1, 1, 0)).await;
    assert!(!kubectl_wait_done(&object), "one left: {object}");
    ocs(https, &ca, &result(&device(1), &hello, "SUCCESS")).await;
    let (object, _) = eventually("kubectl wait --for=condition=Ready to succeed", || async {
        let object = get_json(running.admin_address, path).await;
        kubectl_wait_done(&object).then_some(object)
    })
    .await;
    assert_eq!(object["details"]["counts"]["success"], 2, "{object}");
    assert_eq!(condition(&object, "Ready").1, "Deployed", "{object}");
    assert_eq!(condition(&object, "Reconciling").0, "False", "{object}");
    running.stop().await.unwrap();
}
