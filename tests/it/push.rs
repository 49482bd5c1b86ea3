//! Push: real `tessera-agent` processes on an hourly schedule get a change within seconds
//! over the push channel; when the server goes away they keep running on their schedule, and
//! when it returns on the same state they reconnect and the next change reaches them too.
//! And `tessera notify` goes through the channel when the agent holds one; a wait is held
//! through a terminating gateway, and the push reaches agents through a tunnel gateway and
//! over a dial-out connection.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{free_port, get};

/// How long a change may take to reach every agent here: generous (the goal is seconds; a
/// loaded CI machine builds and serves slower).
const REACH: Duration = Duration::from_secs(60);
/// How long agents may take to notice the server is gone, or back (their backoff is at most
/// 30 s, plus a hold of up to 75 s for a connection that died silently).
const NOTICE: Duration = Duration::from_secs(90);

/// A `tessera-agent` process, killed when dropped (even when a test panics), its log in a
/// file.
struct Agent {
    child: std::process::Child,
    state: tempfile::TempDir,
    log: PathBuf,
}

impl Agent {
    fn start(server: &str, ca: &Path, token: &str) -> Self {
        let state = tempfile::tempdir().unwrap();
        let log = state.path().join("agent.log");
        let child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera-agent"))
            .args(["--server", server, "--state"])
            .arg(state.path())
            .arg("--ca")
            .arg(ca)
            .args(["--token", token, "--tag", "lab", "--interval", "1h"])
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env("TESSERA_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("tessera-agent starts");
        Self { child, state, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn installed(&self) -> Vec<String> {
        std::fs::read(self.state.path().join("installed.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn id(&self) -> Option<String> {
        let kept: serde_json::Value = serde_json::from_slice(
            &std::fs::read(self.state.path().join("identity/agent.json")).ok()?,
        )
        .ok()?;
        kept["agentId"].as_str().map(str::to_owned)
    }

    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("the agent exited ({status}):\n{}", self.log());
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `check` every 100 ms until it holds, or panics after `limit` naming `what` and
/// the agents' logs.
async fn within(what: &str, limit: Duration, agents: &[Agent], mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > limit {
            let logs: Vec<String> = agents.iter().map(Agent::log).collect();
            panic!("timed out waiting for: {what}\n{}", logs.join("\n---\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A command-only Package, its Activation, and an Affectation to the Linux computers that
/// `targets` (a line of the Affectation's `targets`) selects.
fn add_package(config: &Path, name: &str, targets: &str) {
    std::fs::write(
        config.join(format!("packages/{name}.yaml")),
        format!(
            "apiVersion: tessera.dev/v1alpha1
kind: Package
metadata:
  name: {name}
spec:
  os: linux
  action:
    execute:
      command: echo {name}
---
apiVersion: tessera.dev/v1alpha1
kind: Activation
metadata:
  name: {name}
spec:
  packageRef:
    name: {name}
---
apiVersion: tessera.dev/v1alpha1
kind: Affectation
metadata:
  name: {name}
spec:
  activationRef:
    name: {name}
  targets:
    {targets}
    os: [linux]
"
        ),
    )
    .unwrap();
}

/// The id of Package/`name` once it is built.
async fn built(running: &tessera::cli::Running, name: &str) -> String {
    let start = Instant::now();
    loop {
        let (status, body) = get(
            running.admin_address,
            &format!("/api/v1/objects/Package/{name}"),
        )
        .await;
        let package: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        if status == 200
            && let Some(id) = package["details"]["packageId"].as_str()
        {
            return id.to_owned();
        }
        assert!(start.elapsed() < REACH, "{name} was never built: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The quickstart with its HTTPS listener on a fixed free port (the agents must find the
/// server at the same address after a restart).
fn quickstart_on_fixed_port() -> (tempfile::TempDir, u16) {
    let dir = crate::support::quickstart_copy();
    let port = free_port();
    let server = dir.path().join("server.yaml");
    let text = std::fs::read_to_string(&server).unwrap();
    let text = text.replacen("https: 127.0.0.1:0", &format!("https: 127.0.0.1:{port}"), 1);
    std::fs::write(&server, text).unwrap();
    (dir, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_on_disk_reaches_hourly_agents_at_once_and_again_after_a_server_restart() {
    let (dir, port) = quickstart_on_fixed_port();
    let running = crate::support::start(dir.path()).await;
    crate::support::addresses(&running).await;
    let state = dir.path().join(".tessera");
    let token = crate::support::token(&state, 3, 600).reveal();
    let server = format!("https://127.0.0.1:{port}");
    let ca = crate::support::server_ca(dir.path());
    let mut agents: Vec<Agent> = (0..3).map(|_| Agent::start(&server, &ca, &token)).collect();
    within("each agent's first pass", REACH, &agents, || {
        agents.iter().all(|a| a.log().contains("pass done"))
    })
    .await;

    // A new package for the lab: on an hourly schedule, only the push brings it now.
    add_package(dir.path(), "pushed-1", "tags: [lab]");
    let first = built(&running, "pushed-1").await;
    within("pushed-1 installed by every agent", REACH, &agents, || {
        agents.iter().all(|a| a.installed().contains(&first))
    })
    .await;
    assert!(
        agents.iter().all(|a| a
            .log()
            .contains("the server asked for a check-in now (push)")),
        "woken by the push channel"
    );

    // The server goes away: the agents notice, keep running, and fall back to their schedule.
    running.stop().await.unwrap();
    within(
        "every agent noticing the server is gone",
        NOTICE,
        &agents,
        || agents.iter().all(|a| a.log().contains("push channel lost")),
    )
    .await;
    for agent in &mut agents {
        agent.assert_running();
    }

    // Back on the same state and address: they reconnect, and the next change reaches them.
    let running = crate::support::start(dir.path()).await;
    crate::support::addresses(&running).await;
    within("every agent reconnecting", NOTICE, &agents, || {
        agents
            .iter()
            .all(|a| a.log().contains("push channel restored"))
    })
    .await;
    add_package(dir.path(), "pushed-2", "tags: [lab]");
    let second = built(&running, "pushed-2").await;
    within("pushed-2 installed by every agent", REACH, &agents, || {
        agents.iter().all(|a| a.installed().contains(&second))
    })
    .await;

    // `tessera notify` goes through the channel the agent holds, and says so.
    let id = agents[0].id().expect("enrolled");
    let admin = format!("http://{}", running.admin_address);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
            .args(["notify", &id, "--admin", &admin])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert!(stdout.contains("push channel"), "{stdout}");
    let before = agents[0].log().matches("pass done").count();
    within("the notified agent's pass", REACH, &agents, || {
        agents[0].log().matches("pass done").count() > before
    })
    .await;

    running.stop().await.unwrap();
    drop(agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_enrolled_agent_may_hold_a_wait() {
    let (dir, running, https) = crate::support::quickstart_enrolling(None).await;
    // Without a client certificate: refused at once, nothing held.
    let started = Instant::now();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args([
                "-sk",
                "--max-time",
                "10",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ])
            .arg(format!("https://{https}/v1/wait?seen=1"))
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "403");
    assert!(started.elapsed() < Duration::from_secs(10));
    running.stop().await.unwrap();
    drop(dir);
}

/// A gateway process on `dir`'s configuration whose connection budget checks progress every
/// second (a held request that were not parked would be closed within two), once Ready.
async fn quick_gateway(dir: &Path) -> crate::tunnel::Gateway {
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway = crate::tunnel::Gateway {
        child: std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
            .args(["gateway", "--config"])
            .arg(dir)
            .args(["--admin-address", &admin.to_string()])
            .env(tessera::budget::BUDGET_ENV, "progress_window=1s")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
        admin,
    };
    crate::support::wait_for_port(admin.port(), "the gateway's admin API");
    crate::support::eventually("the gateway to be Ready", async || {
        crate::tunnel::ready(&gateway.object("Gateway", "dmz").await).then_some(())
    })
    .await;
    gateway
}

/// `curl` of `/v1/wait` through a terminating gateway with an agent's certificate: the HTTP
/// status and the body.
fn curl_wait(url: &str, gateway_ca: &Path, agent: &Path) -> std::process::Child {
    let (cert, key) = crate::tunnel::identity(agent);
    std::process::Command::new("curl")
        .args(["-sS", "--max-time", "80", "-o", "-", "-w", "\n%{http_code}"])
        .arg("--cacert")
        .arg(gateway_ca)
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .arg(url)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// `POST path` with an empty JSON body to the admin API: the status and the body.
async fn post(admin: std::net::SocketAddr, path: &str) -> (String, String) {
    let url = format!("http://{admin}{path}");
    let output = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
        ])
        .args(["-H", "content-type: application/json", "-d", "{}"])
        .arg(url)
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "000"));
    (status.trim().to_owned(), body.to_owned())
}

/// A child process killed when dropped.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The status and the body a finished `curl_wait` printed.
fn waited(child: &mut Killed) -> (String, String) {
    use std::io::Read;
    let mut text = String::new();
    child
        .0
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let _ = child.0.wait();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "000"));
    (status.trim().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_is_held_through_a_terminating_gateway_and_a_tunnel_carries_the_push() {
    let crate::tunnel::Inside {
        dir,
        running,
        https,
        agents: [roaming, walker],
        backend,
        gw,
        ..
    } = crate::tunnel::Inside::start().await;

    // Terminate mode: the gateway forwards each request, naming the verified agent.
    let port = free_port();
    std::fs::write(
        gw.path().join("gateway.yaml"),
        crate::tunnel::mode_gateway_yaml("terminate", port, &backend, "localhost"),
    )
    .unwrap();
    let terminating = quick_gateway(gw.path()).await;
    crate::tunnel::trust_the_dmz(
        dir.path(),
        gw.path(),
        "",
        "  trustedGateways:\n    - issuerRef:\n        name: dmz-ca\n      names: [gateway.dmz]\n",
    );
    let gateway_ca = gw
        .path()
        .join(".tessera/certificates/default/gateway-tls/ca.crt");
    let url = format!("https://127.0.0.1:{port}/v1/wait");
    let (generation, _) =
        crate::support::eventually("the server to believe the gateway", async || {
            let (status, body) = tokio::task::block_in_place(|| {
                waited(&mut Killed(curl_wait(&url, &gateway_ca, walker.path())))
            });
            let answer: serde_json::Value = serde_json::from_str(&body).ok()?;
            (status == "200")
                .then(|| answer["generation"].as_u64())
                .flatten()
        })
        .await;
    let mut held = Killed(curl_wait(
        &format!("{url}?seen={generation}"),
        &gateway_ca,
        walker.path(),
    ));
    // Three of the gateway's progress windows: a request that were not parked would be
    // closed by now.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        assert!(
            held.0.try_wait().unwrap().is_none(),
            "the held wait ended early"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let walker_id = crate::tunnel::agent_id(walker.path());
    let (status, body) = post(
        running.admin_address,
        &format!("/api/v1/computers/{walker_id}/wake"),
    )
    .await;
    assert_eq!(status, "200", "{body}");
    assert!(body.contains("\"held\""), "{body}");
    let (status, body) = tokio::task::block_in_place(|| waited(&mut held));
    assert_eq!(status, "200", "{body}");
    let answer: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_ne!(answer["generation"].as_u64(), Some(generation), "{body}");
    drop(terminating);

    // Tunnel mode: a real agent on an hourly schedule, its channel inside the tunnel.
    let tunnel = tempfile::tempdir().unwrap();
    for file in ["inside-ca.crt", "inside-crl.pem"] {
        std::fs::copy(gw.path().join(file), tunnel.path().join(file)).unwrap();
    }
    let port = free_port();
    std::fs::write(
        tunnel.path().join("gateway.yaml"),
        crate::tunnel::mode_gateway_yaml("tunnel", port, &backend, "localhost"),
    )
    .unwrap();
    let _tunnel_gateway = quick_gateway(tunnel.path()).await;
    let tunnel_ca = tunnel
        .path()
        .join(".tessera/certificates/default/gateway-tls/ca.crt");
    let agent = hourly_agent(
        roaming.path(),
        &[
            "--server".into(),
            format!("https://{https}"),
            "--gateway".into(),
            format!("127.0.0.1:{port}"),
            "--gateway-ca".into(),
            tunnel_ca.display().to_string(),
        ],
    )
    .await;
    add_package(dir.path(), "roamed", "all: true");
    let id = built(&running, "roamed").await;
    installed_by_push(roaming.path(), &id).await;
    drop(agent);
    running.stop().await.unwrap();
}

/// A `tessera-agent` on an hourly schedule with the identity in `state` and `args`, its log
/// in `state/agent.log`, once its first pass is done.
async fn hourly_agent(state: &Path, args: &[String]) -> Killed {
    let log = state.join("agent.log");
    let mut agent = Killed(
        std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera-agent"))
            .arg("--state")
            .arg(state)
            .args(args)
            .args(["--interval", "1h"])
            .env_remove("HTTPS_PROXY")
            .env_remove("https_proxy")
            .env("TESSERA_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let start = Instant::now();
    while !read_log().contains("pass done") {
        assert!(start.elapsed() < REACH, "no first pass:\n{}", read_log());
        assert!(agent.0.try_wait().unwrap().is_none(), "{}", read_log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent
}

/// Waits until the agent with `state` has installed `package`, woken by the push channel.
async fn installed_by_push(state: &Path, package: &str) {
    let read_log = || std::fs::read_to_string(state.join("agent.log")).unwrap_or_default();
    let installed = || {
        std::fs::read_to_string(state.join("installed.json"))
            .unwrap_or_default()
            .contains(package)
    };
    let start = Instant::now();
    while !installed() {
        assert!(
            start.elapsed() < REACH,
            "{package} never came:\n{}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(read_log().contains("the server asked for a check-in now (push)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_push_reaches_an_agent_over_a_dial_out_connection() {
    let crate::tunnel::Inside {
        dir,
        running,
        agents: [agent, _],
        gw,
        ..
    } = crate::tunnel::Inside::start().await;
    // A passthrough gateway with no way in (its backend is a dead port): the server dials
    // out to it, and each agent connection takes one of those connections for its life.
    let (port, dial_port) = (free_port(), free_port());
    std::fs::write(
        gw.path().join("gateway.yaml"),
        format!(
            "{edge}apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: inside-servers\nspec:\n  ca:\n    certFile: inside-ca.crt\n---\napiVersion: tessera.dev/v1alpha1\nkind: Gateway\nmetadata:\n  name: dmz\nspec:\n  listen: 127.0.0.1:{port}\n  mode: passthrough\n  backend: 127.0.0.1:1\n  certificateRef:\n    name: gateway-tls\n  dialOut:\n    listen: 127.0.0.1:{dial_port}\n    trustedServerIssuers:\n      - name: inside-servers\n    names: [inside.tessera]\n",
            edge = crate::tunnel::edge_pki("")
        ),
    )
    .unwrap();
    let _gateway = quick_gateway(gw.path()).await;
    crate::tunnel::trust_the_dmz(
        dir.path(),
        gw.path(),
        "---\napiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: inside-dialer\nspec:\n  issuerRef:\n    name: quickstart-ca\n  commonName: inside.tessera\n  usages: [client auth, digital signature]\n",
        &format!(
            "  dialOut:\n    gateway: 127.0.0.1:{dial_port}\n    gatewayIssuerRef:\n      name: dmz-ca\n    certificateRef:\n      name: inside-dialer\n    connections: 2\n"
        ),
    );
    let _agent = hourly_agent(
        agent.path(),
        &["--server".into(), format!("https://127.0.0.1:{port}")],
    )
    .await;
    add_package(dir.path(), "dialed", "all: true");
    let id = built(&running, "dialed").await;
    installed_by_push(agent.path(), &id).await;
    running.stop().await.unwrap();
}
