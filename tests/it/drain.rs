//! Versions drain, they are not yanked: a Package edited while an agent downloads it keeps
//! its old version served (`info` and the remaining fragments) to that agent until it
//! reports, or until the Server's `download.drainGrace` ends; new offers name the new
//! version; both results are recorded; then the old version is pruned.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::Value;
use tessera::cli::Running;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::hostile_ocs::{post, prolog, result, zlib};
use crate::ocs_agent::{self, AgentRun, OcsAgent};
use crate::support::{addresses, eventually, get_json, package_id, quickstart_copy, start};

/// A GET over a fresh TLS connection: (status, body).
async fn fetch(https: SocketAddr, ca: &Path, path: &str) -> (u16, Vec<u8>) {
    let tls =
        tessera::pki::tls::client_config(&std::fs::read_to_string(ca).unwrap(), None).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let head = format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let status = String::from_utf8_lossy(&answer[..split])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, answer[split + 4..].to_vec())
}

/// An inventory that makes `device` a target of the quickstart's lab packages.
fn inventory(device: &str) -> Vec<u8> {
    zlib(&format!(
        "<REQUEST><CONTENT><ACCOUNTINFO><KEYNAME>TAG</KEYNAME><KEYVALUE>lab</KEYVALUE></ACCOUNTINFO><HARDWARE><NAME>drain-pc</NAME><OSNAME>Debian GNU/Linux 12</OSNAME></HARDWARE></CONTENT><DEVICEID>{device}</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>"
    ))
}

/// The quickstart served with `drainGrace` set: the directory, the server, its HTTPS
/// address, the CA its clients trust, and Package/hello's id.
async fn served(grace: &str) -> (tempfile::TempDir, Running, SocketAddr, PathBuf, String) {
    served_with(grace, "0s").await
}

/// [`served`] with agents pausing `frag_latency` after each fragment.
async fn served_with(
    grace: &str,
    frag_latency: &str,
) -> (tempfile::TempDir, Running, SocketAddr, PathBuf, String) {
    let dir = quickstart_copy();
    let server = dir.path().join("server.yaml");
    let text = std::fs::read_to_string(&server).unwrap();
    assert!(text.contains("    executionTimeout: 30m\n") && text.contains("fragLatency: 0s"));
    std::fs::write(
        &server,
        text.replace(
            "    executionTimeout: 30m\n",
            &format!("    executionTimeout: 30m\n    drainGrace: {grace}\n"),
        )
        .replace("fragLatency: 0s", &format!("fragLatency: {frag_latency}")),
    )
    .unwrap();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    let ca = crate::support::server_ca(dir.path());
    let (hello, _) = eventually("Package/hello built", || async {
        let object = get_json(running.admin_address, "/api/v1/objects/Package/hello").await;
        object["details"]["packageId"].as_str().map(str::to_owned)
    })
    .await;
    (dir, running, https.parse().unwrap(), ca, hello)
}

/// Sends `device`'s inventory, then a PROLOG: the ids offered.
async fn prolog_offers(https: SocketAddr, ca: &Path, device: &str) -> String {
    let (status, body, _) = post(https, ca, &prolog(device)).await;
    assert_eq!(status, 200);
    String::from_utf8(body).unwrap()
}

/// Edits Package/hello's spec (a new priority gives it a new id) and waits for the new id.
async fn edit_hello(dir: &Path, running: &Running, old: &str) -> String {
    let file = dir.join("packages/hello.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("  priority: 5\n"));
    std::fs::write(&file, text.replace("  priority: 5\n", "  priority: 6\n")).unwrap();
    eventually("Package/hello rebuilt under a new id", || async {
        let object = get_json(running.admin_address, "/api/v1/objects/Package/hello").await;
        object["details"]["packageId"]
            .as_str()
            .filter(|id| *id != old)
            .map(str::to_owned)
    })
    .await
    .0
}

/// The history of `device`: (package id, state, code) of every result.
async fn results(running: &Running, device: &str) -> Vec<(String, String, String)> {
    let found = get_json(
        running.admin_address,
        &format!("/api/v1/computers/{device}"),
    )
    .await;
    found[0]["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["code"].is_string())
        .map(|e| {
            (
                e["packageId"].as_str().unwrap().to_owned(),
                e["state"].as_str().unwrap().to_owned(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The draining versions on Package/hello's status.
async fn draining(running: &Running) -> Vec<Value> {
    let object = get_json(running.admin_address, "/api/v1/objects/Package/hello").await;
    object["details"]["draining"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_edited_package_stays_served_to_the_agent_downloading_it_until_it_reports() {
    let (dir, running, https, ca, old) = served("72h").await;
    let device = "drain-pc-2026-01-01-00-00-00";
    let (status, _, _) = post(https, &ca, &inventory(device)).await;
    assert_eq!(status, 200);
    let offered = prolog_offers(https, &ca, device).await;
    assert!(offered.contains(&format!("ID=\"{old}\"")), "{offered}");
    // The agent fetches the info file and its first fragment...
    let (status, info) = fetch(https, &ca, &format!("/download/{old}/info")).await;
    assert_eq!(status, 200);
    let fragments: usize = String::from_utf8_lossy(&info)
        .split("FRAGS=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .and_then(|n| n.parse().ok())
        .expect("FRAGS in the info file");
    assert!(fragments >= 2, "{}", String::from_utf8_lossy(&info));
    let fragment = |n: usize| format!("/download/{old}/{old}-{n}");
    assert_eq!(fetch(https, &ca, &fragment(1)).await.0, 200);

    // ... and the Package is edited under it.
    let new = edit_hello(dir.path(), &running, &old).await;

    // The old version is still served to it, whole: info and every remaining fragment.
    assert_eq!(
        fetch(https, &ca, &format!("/download/{old}/info")).await.0,
        200
    );
    for n in 2..=fragments {
        assert_eq!(fetch(https, &ca, &fragment(n)).await.0, 200, "{old}-{n}");
    }
    // The status says so: the new version is Ready, the old one drains for one computer.
    let hello = get_json(running.admin_address, "/api/v1/objects/Package/hello").await;
    let ready = hello["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True", "{hello}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains(&format!("draining package {old}")),
        "{ready}"
    );
    let shown = draining(&running).await;
    assert_eq!(shown.len(), 1, "{hello}");
    assert_eq!(shown[0]["packageId"], old.as_str());
    assert_eq!(shown[0]["downloading"], 1);
    assert!(shown[0]["until"].is_string(), "{shown:?}");
    let table = get_json(running.admin_address, "/api/v1/deployments").await;
    assert_eq!(table["draining"][0]["packageId"], old.as_str(), "{table}");

    // The next PROLOG offers the new version only.
    let offered = prolog_offers(https, &ca, device).await;
    assert!(offered.contains(&format!("ID=\"{new}\"")), "{offered}");
    assert!(!offered.contains(&format!("ID=\"{old}\"")), "{offered}");

    // The agent reports on the version it started: recorded against it, and the old
    // version is pruned at once (nobody else was notified of it).
    let (status, _, _) = post(https, &ca, &result(device, &old, "SUCCESS_0")).await;
    assert_eq!(status, 200);
    eventually("the old version pruned", || async {
        let gone = fetch(https, &ca, &format!("/download/{old}/info")).await.0 == 404
            && !dir.path().join(".tessera/download").join(&old).exists();
        gone.then_some(())
    })
    .await;
    eventually("the drain gone from the status", || async {
        draining(&running).await.is_empty().then_some(())
    })
    .await;

    // Then the new version, downloaded and reported.
    assert_eq!(
        fetch(https, &ca, &format!("/download/{new}/info")).await.0,
        200
    );
    let (status, _, _) = post(https, &ca, &result(device, &new, "SUCCESS_0")).await;
    assert_eq!(status, 200);
    let recorded = results(&running, device).await;
    assert_eq!(
        recorded,
        [
            (old.clone(), "success".to_owned(), "SUCCESS_0".to_owned()),
            (new.clone(), "success".to_owned(), "SUCCESS_0".to_owned()),
        ]
    );
    assert_eq!(package_id(&running, "hello").await, new);
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drain_ends_with_its_grace_period_though_the_agent_never_reports() {
    let (dir, running, https, ca, old) = served("6s").await;
    let device = "silent-pc-2026-01-01-00-00-00";
    let (status, _, _) = post(https, &ca, &inventory(device)).await;
    assert_eq!(status, 200);
    let offered = prolog_offers(https, &ca, device).await;
    assert!(offered.contains(&format!("ID=\"{old}\"")), "{offered}");
    let new = edit_hello(dir.path(), &running, &old).await;
    assert_ne!(new, old);
    // Served right after the edit (the grace has just begun)...
    assert_eq!(
        fetch(https, &ca, &format!("/download/{old}/info")).await.0,
        200
    );
    // ... and pruned when the grace ends, without a report: a pass is due then.
    eventually("the old version pruned after its grace", || async {
        let gone = fetch(https, &ca, &format!("/download/{old}/info")).await.0 == 404
            && !dir.path().join(".tessera/download").join(&old).exists();
        gone.then_some(())
    })
    .await;
    eventually("the drain gone from the status", || async {
        draining(&running).await.is_empty().then_some(())
    })
    .await;
    // A late answer on it is still true, and recorded against it.
    let (status, _, _) = post(https, &ca, &result(device, &old, "ERR_TIMEOUT")).await;
    assert_eq!(status, 200);
    assert_eq!(
        results(&running, device).await,
        [(old.clone(), "error".to_owned(), "ERR_TIMEOUT".to_owned())]
    );
    running.stop().await.unwrap();
}

/// The one Affectation the real-agent test keeps: only `hello` goes to the agent, so its
/// download worker has one package to pace.
const HELLO_ONLY: &str = "apiVersion: tessera.dev/v1alpha1
kind: Affectation
metadata:
  name: lab-hello
spec:
  activationRef:
    name: hello
  targets:
    tags: [lab]
    os: [linux]
";

/// Runs the agent once on the blocking pool, waiting for its download worker.
async fn agent_run(agent: &std::sync::Arc<OcsAgent>) -> AgentRun {
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || agent.run())
        .await
        .unwrap()
        .expect("the agent runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_real_agent_finishes_the_version_it_started_when_the_package_is_edited_under_it() {
    if std::process::Command::new("ocsinventory-agent")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: ocsinventory-agent is not installed");
        return;
    }
    // 4 s after each fragment: the edit below lands between the agent's first fragment and
    // its next ones (hello has several fragments of 4 KiB).
    let (dir, running, https, ca, old) = served_with("72h", "4s").await;
    std::fs::write(dir.path().join("affectations.yaml"), HELLO_ONLY).unwrap();
    eventually("only lab-hello declared", || async {
        let (status, _) = crate::support::get(
            running.admin_address,
            "/api/v1/objects/Affectation/lab-tools",
        )
        .await;
        (status == 404).then_some(())
    })
    .await;
    let agent = std::sync::Arc::new(
        OcsAgent::new(
            &format!("https://{https}/ocsinventory"),
            &ca,
            &ocs_agent::device_id(15).unwrap(),
        )
        .unwrap(),
    );
    let device = agent.device_id().to_owned();

    // First contact: an inventory makes it a target.
    let first = agent_run(&agent).await;
    assert!(first.completed(), "{first:?}");

    // Second contact: offered the current version; edited once its first fragment is in.
    let second = tokio::spawn({
        let agent = agent.clone();
        async move { agent_run(&agent).await }
    });
    let first_fragment = agent.vardir().join(format!("download/{old}/{old}-1"));
    let (_, took) = eventually("the agent's first fragment of the old version", || async {
        first_fragment.is_file().then_some(())
    })
    .await;
    println!("the agent had its first fragment {took:?} into the run");
    let new = edit_hello(dir.path(), &running, &old).await;
    let shown = draining(&running).await;
    let second = second.await.unwrap();
    assert!(
        second.completed(),
        "the agent finishes the version it started: {second:?}"
    );
    assert!(
        !second.stderr.contains("404"),
        "no fragment of the old version was refused:\n{}",
        second.stderr
    );
    // The edit did land mid-download: the old version was draining for this agent.
    assert!(
        shown
            .iter()
            .any(|d| d["packageId"] == old.as_str() && d["downloading"] == 1),
        "edited while the agent downloads the old version: {shown:?}"
    );
    assert_eq!(agent.history(), std::slice::from_ref(&old));
    eventually(
        "the old version pruned once its only agent reported",
        || async { (!dir.path().join(".tessera/download").join(&old).exists()).then_some(()) },
    )
    .await;

    // Third contact: the new version, offered, installed and reported.
    let third = agent_run(&agent).await;
    assert!(third.completed(), "{third:?}");
    assert_eq!(agent.history(), [old.clone(), new.clone()]);
    assert_eq!(
        results(&running, &device).await,
        [
            (old.clone(), "success".to_owned(), "SUCCESS_0".to_owned()),
            (new.clone(), "success".to_owned(), "SUCCESS_0".to_owned()),
        ]
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removed_activation_keeps_its_version_served_to_the_agent_downloading_it() {
    let (dir, running, https, ca, id) = served("72h").await;
    let device = "removed-pc-2026-01-01-00-00-00";
    let (status, _, _) = post(https, &ca, &inventory(device)).await;
    assert_eq!(status, 200);
    let offered = prolog_offers(https, &ca, device).await;
    assert!(offered.contains(&format!("ID=\"{id}\"")), "{offered}");
    // The Activation (and the Affectation through it) removed: nothing offers it any more.
    let file = dir.path().join("packages/hello.yaml");
    let text = std::fs::read_to_string(&file).unwrap();
    let (package, _) = text
        .split_once("\n---\n")
        .expect("Package, then Activation");
    std::fs::write(&file, package).unwrap();
    eventually("Activation/hello removed", || async {
        let (status, _) =
            crate::support::get(running.admin_address, "/api/v1/objects/Activation/hello").await;
        (status == 404).then_some(())
    })
    .await;
    let offered = prolog_offers(https, &ca, device).await;
    assert!(!offered.contains(&format!("ID=\"{id}\"")), "{offered}");
    // Still served to the computer that was notified of it, and shown as draining.
    assert_eq!(
        fetch(https, &ca, &format!("/download/{id}/info")).await.0,
        200
    );
    assert_eq!(
        fetch(https, &ca, &format!("/download/{id}/{id}-1")).await.0,
        200
    );
    let shown = draining(&running).await;
    assert_eq!(shown.len(), 1, "{shown:?}");
    assert_eq!(shown[0]["packageId"], id.as_str());
    // Its result is recorded; then it is no longer served (the Package keeps its files).
    let (status, _, _) = post(https, &ca, &result(device, &id, "SUCCESS_0")).await;
    assert_eq!(status, 200);
    assert_eq!(
        results(&running, device).await,
        [(id.clone(), "success".to_owned(), "SUCCESS_0".to_owned())]
    );
    eventually("no longer served once its computer reported", || async {
        (fetch(https, &ca, &format!("/download/{id}/info")).await.0 == 404).then_some(())
    })
    .await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_api_keeps_serving_the_version_an_agent_started_after_an_edit() {
    use crate::enroll::{curl, enrolled};
    let (dir, running, https) = crate::support::quickstart_enrolling(None).await;
    let state = dir.path().join(".tessera");
    let ca = crate::support::server_ca(dir.path());
    let (old, _) = eventually("Package/hello built", || async {
        let object = get_json(running.admin_address, "/api/v1/objects/Package/hello").await;
        object["details"]["packageId"].as_str().map(str::to_owned)
    })
    .await;
    let work = tempfile::tempdir().unwrap();
    let check_in =
        r#"{"hostname": "lab-01", "osName": "Debian GNU/Linux 12", "tags": ["lab"]}"#.to_owned();
    let (cert, key, agent) =
        tokio::task::block_in_place(|| enrolled(&https, &ca, &state, work.path(), "lab-01"));
    let client = Some((cert.as_path(), key.as_path()));
    let call = |path: &str, body: Option<&str>| {
        tokio::task::block_in_place(|| curl(&https, &ca, path, body, client))
    };
    // Fragments are binary: only their status is read.
    let fragment = |id: &str, n: usize| -> u16 {
        let output = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .arg(format!("https://{https}/v1/packages/{id}/fragments/{n}"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    };
    let assigned = |body: &str| -> Vec<String> {
        let answer: Value = serde_json::from_str(body).unwrap();
        answer["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["packageId"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, body) = call("/v1/checkin", Some(&check_in));
    assert_eq!(status, 200, "{body}");
    assert!(assigned(&body).contains(&old), "{body}");
    let (status, body) = call(&format!("/v1/packages/{old}/manifest"), None);
    assert_eq!(status, 200, "{body}");
    let fragments = serde_json::from_str::<Value>(&body).unwrap()["fragments"]
        .as_array()
        .unwrap()
        .len();
    assert!(fragments >= 2, "{body}");
    assert_eq!(fragment(&old, 1), 200);
    let downloading = format!(r#"{{"packageId": "{old}", "state": "downloading"}}"#);
    assert_eq!(call("/v1/results", Some(&downloading)).0, 204);

    let new = edit_hello(dir.path(), &running, &old).await;

    // The manifest and every remaining fragment of the version it started.
    let (status, body) = call(&format!("/v1/packages/{old}/manifest"), None);
    assert_eq!(status, 200, "{body}");
    for n in 2..=fragments {
        assert_eq!(fragment(&old, n), 200, "fragment {n}");
    }
    // New check-ins name the new version only.
    let (status, body) = call("/v1/checkin", Some(&check_in));
    assert_eq!(status, 200, "{body}");
    let now = assigned(&body);
    assert!(now.contains(&new) && !now.contains(&old), "{body}");
    // Its report on the old version is filed under it; then the old version goes.
    let done = |id: &str| format!(r#"{{"packageId": "{id}", "state": "done", "exitCode": 0}}"#);
    assert_eq!(call("/v1/results", Some(&done(&old))).0, 204);
    eventually("the old version pruned", || async {
        (!state.join("download").join(&old).exists()).then_some(())
    })
    .await;
    assert_eq!(
        call(&format!("/v1/packages/{old}/manifest"), None).0,
        404,
        "no longer offered nor draining"
    );
    assert_eq!(call(&format!("/v1/packages/{new}/manifest"), None).0, 200);
    assert_eq!(call("/v1/results", Some(&done(&new))).0, 204);
    assert_eq!(
        results(&running, &agent).await,
        [
            (old.clone(), "success".to_owned(), "EXIT_CODE_0".to_owned()),
            (new.clone(), "success".to_owned(), "EXIT_CODE_0".to_owned()),
        ]
    );
    running.stop().await.unwrap();
}
