//! `tessera gateway` in passthrough mode between real clients (`curl`, `openssl s_client`,
//! the OCS agent) and `tessera serve`: TLS end to end, routes by server name, a slow
//! client holds up no one.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::ocs_agent::{self, OcsAgent};
use crate::support::{addresses, free_port, get_json, quickstart_copy, start, wait_for_port};

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
    let ca = dir
        .path()
        .join(".tessera/certificates/default/tessera-server/ca.crt");
    let package = get_json(running.admin_address, "/api/v1/objects/Package/hello").await;
    let id = package["details"]["packageId"].as_str().unwrap().to_owned();

    let port = free_port();
    let config = tempfile::NamedTempFile::new().unwrap();
    write!(
        config.as_file(),
        "apiVersion: tessera.dev/v1alpha1\nkind: Gateway\nmetadata:\n  name: dmz\nspec:\n  listen: 127.0.0.1:{port}\n  mode: passthrough\n  backend: {https}\n  routes:\n    - serverName: elsewhere.tessera.local\n      backend: 127.0.0.1:1\n  limits:\n    handshakeTimeout: 3s\n"
    )
    .unwrap();
    let mut gateway = Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(["gateway", "--config"])
        .arg(config.path())
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
    let _ = gateway.kill();
    let output = gateway.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("relaying (passthrough)"), "{log}");
    running.stop().await.unwrap();
}
