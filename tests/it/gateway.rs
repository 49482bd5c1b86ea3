//! `tessera gateway` in passthrough mode between real clients (`curl`, `openssl s_client`,
//! the OCS agent) and `tessera serve`: TLS end to end, routes by server name, a slow
//! client holds up no one.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::ocs_agent::{self, OcsAgent};
use crate::support::{addresses, free_port, quickstart_copy, start, wait_for_port};

fn curl(ca: &std::path::Path, url: &str, resolve: Option<&str>) -> (bool, String) {
    let mut command = Command::new("curl");
    command
        .args(["-sf", "--max-time", "10", "--cacert"])
        .arg(ca);
    if let Some(resolve) = resolve {
        command.args(["--resolve", resolve]);
    }
    let output = command
        .arg(url)
        .output()
        .expect("curl is installed by scripts/setup.sh");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_relays_tls_end_to_end_by_server_name_for_real_clients() {
    let dir = quickstart_copy();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    let ca = crate::support::server_ca(dir.path());
    let id = crate::support::package_id(&running, "hello").await;

    let port = free_port();
    let config = tempfile::NamedTempFile::new().unwrap();
    write!(
        config.as_file(),
        "apiVersion: tessera.dev/v1alpha1\nkind: Gateway\nmetadata:\n  name: dmz\nspec:\n  listen: 127.0.0.1:{port}\n  mode: passthrough\n  backend: {https}\n  routes:\n    - serverName: elsewhere.tessera.local\n      backend: 127.0.0.1:1\n  limits:\n    handshakeTimeout: 3s\n"
    )
    .unwrap();
    let admin = free_port();
    let mut gateway = Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(["gateway", "--config"])
        .arg(config.path())
        .args(["--admin-address", &format!("127.0.0.1:{admin}")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_port(port, "tessera gateway");

    // A slow client that sends half a ClientHello and waits: the others are served.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();

    tokio::task::block_in_place(|| {
        let info = format!("/download/{id}/info");
        // No server name (an IP address): the default backend.
        let (ok, body) = curl(&ca, &format!("https://127.0.0.1:{port}{info}"), None);
        assert!(ok && body.contains(&format!("ID=\"{id}\"")), "{body}");
        // A name with no route: the default backend, and the server's certificate checks out
        // for that name through the gateway (TLS is end to end).
        let (ok, _) = curl(
            &ca,
            &format!("https://tessera.local:{port}{info}"),
            Some(&format!("tessera.local:{port}:127.0.0.1")),
        );
        assert!(ok);
        // A routed name goes to its own backend (here: nothing listens, so it fails).
        let (ok, _) = curl(
            &ca,
            &format!("https://elsewhere.tessera.local:{port}{info}"),
            Some(&format!("elsewhere.tessera.local:{port}:127.0.0.1")),
        );
        assert!(!ok, "routed by server name");
        let output = Command::new("openssl")
            .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
            .args(["-servername", "tessera.local", "-CAfile"])
            .arg(&ca)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.contains("Verify return code: 0 (ok)"), "{text}");

        // The real OCS agent deploys through the gateway.
        let agent = OcsAgent::new(
            &format!("https://127.0.0.1:{port}/ocsinventory"),
            &ca,
            &ocs_agent::device_id(3).unwrap(),
        )
        .unwrap();
        for _ in 0..2 {
            assert!(agent.run().unwrap().completed());
        }
        assert_eq!(
            agent.history().len(),
            4,
            "every quickstart package installed"
        );
    });
    drop(slow);
    let metrics = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{admin}/metrics")])
        .output()
        .unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let count = |outcome: &str| {
        metrics
            .lines()
            .find(|l| l.contains(&format!("outcome=\"{outcome}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    assert!(count("relayed") >= 3, "{metrics}");
    assert!(
        count("backend_failed") >= 1,
        "the routed name's dead backend: {metrics}"
    );
    let _ = gateway.kill();
    let output = gateway.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("mode=Passthrough"), "{log}");
    running.stop().await.unwrap();
}

/// Sends an OCS INVENTORY over TLS on `stream`, after `prefix` (a PROXY protocol header);
/// the HTTP status line of the answer, or why there was none.
async fn inventory_over(
    mut stream: tokio::net::TcpStream,
    prefix: &[u8],
    ca: &std::path::Path,
    device: &str,
) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(prefix).await.map_err(|e| e.to_string())?;
    let tls =
        tessera::pki::tls::client_config(&std::fs::read_to_string(ca).unwrap(), None).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let xml = format!(
        "<REQUEST><CONTENT><HARDWARE><NAME>roaming</NAME><OSNAME>Debian GNU/Linux 12</OSNAME></HARDWARE></CONTENT><DEVICEID>{device}</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>"
    );
    let body = tessera::protocol::ocs::encode_body(&xml, tessera::protocol::ocs::Encoding::Zlib);
    let head = format!(
        "POST /ocsinventory HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(&body).await.map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    Ok(String::from_utf8_lossy(&answer)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned())
}

/// A connection to `to` from the loopback address `from` (all of 127.0.0.0/8 is local).
async fn connect_from(from: &str, to: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to.parse().unwrap()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_relay_names_the_client_and_others_are_never_believed() {
    let dir = quickstart_copy();
    let server = dir.path().join("server.yaml");
    let text = std::fs::read_to_string(&server).unwrap();
    std::fs::write(
        &server,
        format!("{text}  trustedProxies: [\"127.0.0.1\"]\n"),
    )
    .unwrap();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    let ca = crate::support::server_ca(dir.path());
    let header = tessera::protocol::proxy::encode(
        "198.51.100.7:40000".parse().unwrap(),
        https.parse().unwrap(),
    );
    let db = tessera::store::db::Database::open(&dir.path().join(".tessera/state.db")).unwrap();

    // From the trusted relay (127.0.0.1): the header names the client, and that is stored.
    let relayed = connect_from("127.0.0.1", &https).await;
    let status = inventory_over(relayed, &header, &ca, "roaming-2026-01-01-00-00-00").await;
    assert!(
        status
            .as_deref()
            .is_ok_and(|s| s.starts_with("HTTP/1.1 200")),
        "{status:?}"
    );
    assert_eq!(
        db.address("roaming-2026-01-01-00-00-00")
            .unwrap()
            .as_deref(),
        Some("198.51.100.7")
    );

    // From an untrusted address (127.0.0.2) the same header is not believed: it is not
    // even parsed, so the connection is not TLS and nothing is stored.
    let forged = connect_from("127.0.0.2", &https).await;
    let status = inventory_over(forged, &header, &ca, "forged-2026-01-01-00-00-00").await;
    assert!(status.is_err(), "{status:?}");
    assert!(
        db.find_computers("forged-2026-01-01-00-00-00")
            .unwrap()
            .is_empty()
    );
    // ... while its own plain connection works, under its own address.
    let direct = connect_from("127.0.0.2", &https).await;
    let status = inventory_over(direct, b"", &ca, "direct-2026-01-01-00-00-00").await;
    assert!(
        status
            .as_deref()
            .is_ok_and(|s| s.starts_with("HTTP/1.1 200")),
        "{status:?}"
    );
    assert_eq!(
        db.address("direct-2026-01-01-00-00-00").unwrap().as_deref(),
        Some("127.0.0.2")
    );

    // From the trusted address a connection must start with the header: plain TLS is
    // refused rather than taken for the relay's own request.
    let plain = connect_from("127.0.0.1", &https).await;
    let status = inventory_over(plain, b"", &ca, "plain-2026-01-01-00-00-00").await;
    assert!(status.is_err(), "{status:?}");
    running.stop().await.unwrap();
}

/// A gateway configured from a git branch, like `tessera serve --git`: a push and a signed
/// webhook change its routes without a restart (a client is then relayed to the new route).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_follows_its_git_branch() {
    use crate::git::{SECRET, commit_and_push, git, github_signature, hook};
    let work = tempfile::tempdir().unwrap();
    let clone = work.path().join("clone");
    std::fs::create_dir_all(clone.join("dmz")).unwrap();
    let port = free_port();
    let yaml = |routes: &str| {
        format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Gateway\nmetadata:\n  name: dmz\nspec:\n  listen: 127.0.0.1:{port}\n  mode: passthrough\n  backend: 127.0.0.1:1\n{routes}"
        )
    };
    std::fs::write(clone.join("dmz/gateway.yaml"), yaml("")).unwrap();
    git(work.path(), &["init", "--quiet", "--bare", "remote.git"]);
    git(&clone, &["init", "--quiet", "--initial-branch", "main"]);
    let first = commit_and_push(&clone, "a gateway");
    let secret = work.path().join("secret");
    std::fs::write(&secret, SECRET).unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut gateway = Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(["gateway", "--git"])
        .arg(format!(
            "file://{}",
            work.path().join("remote.git").display()
        ))
        .args(["--path", "dmz", "--interval", "1h", "--state"])
        .arg(work.path().join("state"))
        .arg("--webhook-secret-file")
        .arg(&secret)
        .args(["--admin-address", &admin.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_port(admin.port(), "the gateway's admin API");
    let routes = async || {
        let (status, body) = crate::support::get(admin, "/api/v1/objects/Gateway/dmz").await;
        (status == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).unwrap())
    };
    let (object, _) = crate::support::eventually("the gateway from git", routes).await;
    assert_eq!(object["sourceRevision"], first);

    // The pushed commit routes tessera.local to a backend of its own.
    let routed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let second = {
        std::fs::write(
            clone.join("dmz/gateway.yaml"),
            yaml(&format!(
                "  routes:\n    - serverName: tessera.local\n      backend: {}\n",
                routed.local_addr().unwrap()
            )),
        )
        .unwrap();
        commit_and_push(&clone, "a route")
    };
    let body = r#"{"ref":"refs/heads/main"}"#;
    assert_eq!(hook(admin, &[], body).await, 401, "unsigned");
    assert_eq!(
        hook(
            admin,
            &[("X-Hub-Signature-256", github_signature(body))],
            body
        )
        .await,
        202
    );
    crate::support::eventually("the pushed commit in effect", async || {
        let object = routes().await?;
        (object["sourceRevision"] == second.as_str()).then_some(())
    })
    .await;
    // A client asking for tessera.local now reaches the new route's backend (the
    // handshake itself goes nowhere: only where the gateway sends it matters).
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("tessera.local").unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let hello = tokio::spawn(
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp),
    );
    tokio::time::timeout(std::time::Duration::from_secs(10), routed.accept())
        .await
        .expect("the routed backend is given the connection")
        .unwrap();
    hello.abort();
    let _ = gateway.kill();
    let _ = gateway.wait();
}
