//! Tessera's own agent against `tessera serve` on the quickstart, through an HTTP proxy:
//! enrollment, every action kind, a resumed fragment and a corrupted one, the result in
//! the server's state, and the renewal of its certificate. And the `tessera-agent` binary
//! as an endpoint runs it: `HTTPS_PROXY` with percent-encoded credentials and `NO_PROXY`,
//! progress logged as it goes, and `--listen` open before the first pass.

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
        proxy: Some(agent::Proxy::new(&format!("http://{proxy}"), "").unwrap()),
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

/// A `tessera-agent` process, killed when dropped (even when a test panics), its log lines
/// (stderr) arriving on a channel as they are written.
struct AgentProcess {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl AgentProcess {
    /// `tessera-agent ARGS` with only the proxy variables of `env` (the test's own
    /// environment may have some), logging at `info`.
    fn start(args: &[String], env: &[(&str, String)]) -> Self {
        use std::io::BufRead;
        let mut command = std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera-agent"));
        command.args(args);
        for name in [
            "HTTPS_PROXY",
            "https_proxy",
            "NO_PROXY",
            "no_proxy",
            "RUST_LOG",
            "TESSERA_LOG",
        ] {
            command.env_remove(name);
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let mut child = command
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits up to `timeout` for a `--once` run to end; whether it ended successfully, and
    /// what it wrote.
    fn finish(&mut self, timeout: std::time::Duration) -> (bool, String) {
        // Blocking: the runtime moves its other tasks (the server's) off this thread.
        tokio::task::block_in_place(|| self.finish_blocking(timeout))
    }

    fn finish_blocking(&mut self, timeout: std::time::Duration) -> (bool, String) {
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break Some(status);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        };
        let lines: Vec<String> = self.lines.try_iter().collect();
        (status.is_some_and(|s| s.success()), lines.join("\n"))
    }

    /// The lines up to and including the first one containing `what`, or a panic naming it
    /// (and what came) after `timeout`.
    fn until(&self, what: &str, timeout: std::time::Duration) -> Vec<String> {
        tokio::task::block_in_place(|| self.until_blocking(what, timeout))
    }

    fn until_blocking(&self, what: &str, timeout: std::time::Duration) -> Vec<String> {
        let deadline = std::time::Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(what);
                    seen.push(line);
                    if found {
                        return seen;
                    }
                }
                Err(_) => panic!("no `{what}` from the agent; it wrote:\n{}", seen.join("\n")),
            }
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_binary_honours_no_proxy_and_decodes_proxy_credentials() {
    let (dir, running, https) = crate::support::quickstart_enrolling(None).await;
    let state = dir.path().join(".tessera");
    let (proxy, _, heads) = crate::support::recording_connect_proxy().await;
    let agent_state = tempfile::tempdir().unwrap();
    let args = |token: &str| {
        let mut args = vec![
            "--server".to_owned(),
            format!("https://{https}"),
            "--state".to_owned(),
            agent_state.path().display().to_string(),
            "--ca".to_owned(),
            crate::support::server_ca(dir.path()).display().to_string(),
            "--once".to_owned(),
        ];
        if !token.is_empty() {
            args.extend(["--token".to_owned(), token.to_owned()]);
        }
        args
    };
    let proxy_url = format!("http://roaming:p%40ss%3Aw%25rd@{proxy}");

    // NO_PROXY names the server: enrollment and the whole pass go straight to it.
    let token = crate::support::token(&state, 1, 600);
    let mut agent = AgentProcess::start(
        &args(&token.reveal()),
        &[
            ("HTTPS_PROXY", proxy_url.clone()),
            ("NO_PROXY", "localhost,127.0.0.1".to_owned()),
        ],
    );
    let (succeeded, log) = agent.finish(crate::support::PATIENCE * 6);
    assert!(succeeded, "{log}");
    assert!(
        heads.lock().unwrap().is_empty(),
        "NO_PROXY=127.0.0.1, yet the agent tunnelled through the proxy: {:?}",
        heads.lock().unwrap()
    );
    drop(agent);

    // Without it, the same agent goes through the proxy, the password decoded (`p@ss:w%rd`).
    let mut agent = AgentProcess::start(&args(""), &[("https_proxy", proxy_url)]);
    let (succeeded, log) = agent.finish(crate::support::PATIENCE * 6);
    assert!(succeeded, "{log}");
    use base64::Engine;
    let credentials = base64::engine::general_purpose::STANDARD.encode("roaming:p@ss:w%rd");
    let seen = heads.lock().unwrap().clone();
    assert!(!seen.is_empty(), "the agent did not use the proxy");
    for head in &seen {
        assert!(head.starts_with(&format!("CONNECT {https} ")), "{head}");
        assert!(
            head.to_ascii_lowercase().contains(&format!(
                "proxy-authorization: basic {}",
                credentials.to_ascii_lowercase()
            )),
            "{head}"
        );
    }
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_logs_progress_as_it_goes_and_listens_before_its_first_pass() {
    // A second between fragments, as in the quickstart: a pass lasts several seconds.
    let dir = crate::support::quickstart_copy();
    let server = dir.path().join("server.yaml");
    let text = std::fs::read_to_string(&server).unwrap();
    std::fs::write(&server, text.replace("fragLatency: 0s", "fragLatency: 1s")).unwrap();
    let running = crate::support::start(dir.path()).await;
    let (https, _) = crate::support::addresses(&running).await;
    let token = crate::support::token(&dir.path().join(".tessera"), 1, 600);
    let agent_state = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", crate::support::free_port());
    let agent = AgentProcess::start(
        &[
            "--server".to_owned(),
            format!("https://{https}"),
            "--state".to_owned(),
            agent_state.path().display().to_string(),
            "--ca".to_owned(),
            crate::support::server_ca(dir.path()).display().to_string(),
            "--token".to_owned(),
            token.reveal(),
            "--listen".to_owned(),
            listen.clone(),
            "--tag".to_owned(),
            "lab".to_owned(),
        ],
        &[],
    );
    let patience = crate::support::PATIENCE * 6;
    // The listener's address comes first, before the pass checks in.
    let before = agent.until("listening for the server's check-in calls", patience);
    assert!(before.last().unwrap().contains(&listen), "{before:?}");
    // The first fragment is logged while the pass goes on: the listener answers already.
    let mut lines = agent.until("fragment verified", patience);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("checked in") && l.contains("to_install=4")),
        "{lines:?}"
    );
    assert!(
        std::net::TcpStream::connect(&listen).is_ok(),
        "--listen is open during the first pass"
    );
    lines.extend(agent.until("pass done", patience));
    let last = lines.last().unwrap();
    assert!(
        last.contains("assigned=4") && last.contains("installed=4") && last.contains("failed=0"),
        "{last}"
    );
    // Each package: started, each of its fragments kept, then its result; nothing saved for
    // the end.
    let position = |what: &dyn Fn(&str) -> bool| lines.iter().position(|l| what(l));
    for id in lines
        .iter()
        .filter(|l| l.contains("downloading"))
        .filter_map(|l| l.split("package=").nth(1)?.split_whitespace().next())
    {
        let of = |event: &str, line: &str| {
            line.contains(event) && line.contains(&format!("package={id} "))
        };
        let started = position(&|l| of("downloading", l)).unwrap();
        let fragments: Vec<usize> = lines
            .iter()
            .enumerate()
            .filter(|(_, l)| of("fragment verified", l))
            .map(|(i, _)| i)
            .collect();
        let installed =
            position(&|l| of("installed", l) || l.contains(&format!("package={id} code=")))
                .unwrap();
        assert!(
            fragments.iter().all(|&f| started < f && f < installed),
            "{id}: {lines:#?}"
        );
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains("installed") && l.contains("code="))
            .count(),
        4,
        "{lines:#?}"
    );
    drop(agent);
    running.stop().await.unwrap();
}
