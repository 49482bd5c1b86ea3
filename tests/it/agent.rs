//! Tessera's own agent against `tessera serve` on the quickstart, through an HTTP proxy:
//! enrollment, every action kind, a resumed fragment and a corrupted one, the result in
//! the server's state, and the renewal of its certificate.

use serde_json::Value;
use tessera::agent::{self, Config};

use crate::support::{get, get_json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_enrolls_installs_every_kind_resumes_and_refetches_a_bad_fragment() {
    let (dir, running, https) = crate::support::quickstart_enrolling(None).await;
    let state = dir.path().join(".tessera");
    let token = crate::support::token(&state, 1, 600);

    // A cut download of hello's first fragment (the first 100 bytes, kept) and a corrupted
    // partial second one: the agent resumes the first and fetches the second again.
    let hello = get_json(running.admin_address, "/api/v1/objects/Package/hello").await;
    let hello_id = hello["details"]["packageId"].as_str().unwrap().to_owned();
    let store = state.join("download").join(&hello_id);
    let agent_state = tempfile::tempdir().unwrap();
    let partial = agent_state.path().join("packages").join(&hello_id);
    std::fs::create_dir_all(&partial).unwrap();
    let first = std::fs::read(store.join(format!("{hello_id}-1"))).unwrap();
    std::fs::write(partial.join("1.part"), &first[..100]).unwrap();
    std::fs::write(partial.join("2.part"), vec![0xAAu8; 100]).unwrap();

    // Through a corporate proxy, as roaming agents are.
    let (proxy, tunnels) = crate::support::connect_proxy().await;
    let config = Config {
        server: format!("https://{https}"),
        state_dir: agent_state.path().to_path_buf(),
        ca: Some(crate::support::server_ca(dir.path())),
        token: Some(token.reveal()),
        tags: vec!["lab".into()],
        proxy: Some(format!("http://{proxy}")),
        gateway: None,
        notify_address: None,
        clock: jiff::Timestamp::now,
    };
    let pass = agent::run_once(&config).await.expect("the first pass");
    let mut finished = pass.finished.clone();
    finished.sort();
    assert_eq!(finished.len(), 4, "{pass:?}");
    assert!(
        finished
            .iter()
            .all(|(_, code)| code == "EXIT_CODE_0" || code == "SUCCESS"),
        "{finished:?}"
    );
    assert!(
        agent_state.path().join("lab-tools/motd-lab.txt").is_file(),
        "store: files copied into INSTALL_PATH/lab-tools"
    );
    assert!(
        !agent_state
            .path()
            .join("results")
            .read_dir()
            .unwrap()
            .any(|_| true),
        "every result acknowledged"
    );

    // Bytes served: every fragment once, less the 100 resumed, plus the second fragment's
    // rest that did not verify.
    let mut expected: u64 = 0;
    for id in &pass.assigned {
        for entry in std::fs::read_dir(state.join("download").join(id))
            .unwrap()
            .flatten()
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&format!("{id}-")) {
                expected += entry.metadata().unwrap().len();
            }
        }
    }
    let second = std::fs::metadata(store.join(format!("{hello_id}-2")))
        .unwrap()
        .len();
    expected = expected - 100 + (second - 100);
    let (_, metrics) = get(running.admin_address, "/metrics").await;
    let served: u64 = metrics
        .lines()
        .find(|l| l.starts_with("tessera_download_bytes_total{listener=\"https\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert_eq!(served, expected, "{metrics}");

    // The server saw it all; a second pass has nothing to do.
    let agent_id: Value = serde_json::from_slice(
        &std::fs::read(agent_state.path().join("identity/agent.json")).unwrap(),
    )
    .unwrap();
    let found = get_json(
        running.admin_address,
        &format!(
            "/api/v1/computers/{}",
            agent_id["agentId"].as_str().unwrap()
        ),
    )
    .await;
    let states: Vec<&str> = found[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["success"; 4], "{found}");
    let again = agent::run_once(&config).await.unwrap();
    assert!(
        again.assigned.is_empty() && again.finished.is_empty(),
        "{again:?}"
    );

    // Two thirds into its lifetime the agent renews, with a new key, over mutual TLS.
    let before = std::fs::read_to_string(agent_state.path().join("identity/agent.crt")).unwrap();
    let later = Config {
        clock: || jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 25),
        ..config.clone()
    };
    agent::run_once(&later).await.expect("a pass that renews");
    let after = std::fs::read_to_string(agent_state.path().join("identity/agent.crt")).unwrap();
    assert_ne!(before, after, "a new certificate");
    let renewed: Value = serde_json::from_slice(
        &std::fs::read(agent_state.path().join("identity/agent.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(renewed["agentId"], agent_id["agentId"], "the same identity");
    agent::run_once(&config)
        .await
        .expect("the renewed certificate works");
    assert!(
        tunnels.load(std::sync::atomic::Ordering::SeqCst) > 0,
        "every exchange went through the proxy"
    );
    running.stop().await.unwrap();
}

#[test]
fn the_agent_binary_links_no_kubernetes_code() {
    let binary = assert_cmd::cargo::cargo_bin("tessera-agent");
    let symbols = std::process::Command::new("nm")
        .arg("-C")
        .arg(&binary)
        .output()
        .expect("nm (binutils) comes with the C toolchain");
    assert!(symbols.status.success());
    let symbols = String::from_utf8_lossy(&symbols.stdout);
    assert!(symbols.contains("tessera::agent::"), "the agent is in it");
    let kubernetes = symbols
        .lines()
        .filter(|l| l.contains("kube::") || l.contains("k8s_openapi::"))
        .count();
    assert_eq!(kubernetes, 0, "Kubernetes symbols in {}", binary.display());
    let help = std::process::Command::new(&binary)
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--token"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tessera_notify_asks_a_listening_agent_to_check_in_over_mutual_tls() {
    let (dir, running, https) = crate::support::quickstart_enrolling(None).await;
    let state = dir.path().join(".tessera");
    let token = crate::support::token(&state, 1, 600);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let agent_state = tempfile::tempdir().unwrap();
    let config = Config {
        server: format!("https://{https}"),
        state_dir: agent_state.path().to_path_buf(),
        ca: Some(crate::support::server_ca(dir.path())),
        token: Some(token.reveal()),
        tags: vec!["office".into()],
        proxy: None,
        gateway: None,
        notify_address: Some(address.to_string()),
        clock: jiff::Timestamp::now,
    };
    agent::run_once(&config)
        .await
        .expect("enrolled and checked in");
    let wake = std::sync::Arc::new(tokio::sync::Notify::new());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listening = {
        let (config, wake, shutdown) = (config.clone(), wake.clone(), shutdown.clone());
        tokio::spawn(async move { agent::listen(&config, listener, wake, shutdown).await })
    };
    let agent_id: Value = serde_json::from_slice(
        &std::fs::read(agent_state.path().join("identity/agent.json")).unwrap(),
    )
    .unwrap();
    let agent_id = agent_id["agentId"].as_str().unwrap().to_owned();

    let notify = |computer: String| {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
                .args(["notify", &computer, "--state"])
                .arg(&state)
                .output()
                .unwrap()
        })
    };
    let output = notify(agent_id.clone()).await.unwrap();
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("will check in now"));
    tokio::time::timeout(std::time::Duration::from_secs(5), wake.notified())
        .await
        .expect("the agent was woken");

    // Only the server may call: the agent's own certificate (same Issuer, but naming an
    // agent, not the server) gets no answer and wakes nothing.
    let identity = agent_state.path().join("identity");
    let refused = std::process::Command::new("curl")
        .args([
            "-sk",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-X", "POST", "--cert"])
        .arg(identity.join("agent.crt"))
        .arg("--key")
        .arg(identity.join("agent.key"))
        .arg(format!("https://{address}/v1/notify"))
        .output()
        .unwrap();
    let code = String::from_utf8_lossy(&refused.stdout).into_owned();
    assert_ne!(code, "202", "{refused:?}");
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(500), wake.notified())
            .await
            .is_err(),
        "a call from a certificate that is not the server's woke the agent"
    );
    // A computer whose agent does not listen is told so.
    let output = notify("nobody".into()).await.unwrap();
    assert!(!output.status.success());
    shutdown.cancel();
    listening.await.unwrap().unwrap();
    running.stop().await.unwrap();
}
