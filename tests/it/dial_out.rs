//! Dial-out: `tessera serve` keeps connections open to `tessera gateway` in the DMZ, and
//! agents reach the server over them while the gateway has no way in (its `backend` is a
//! dead port). Real clients (`curl`, `openssl s_client`) through it, the client's address
//! carried to the server, an impostor refused on the dial-out port, and a fast failure
//! once the inside is gone.

use std::process::{Command, Stdio};

use crate::support::{eventually, free_port};
use crate::tunnel::{
    Gateway, Inside, agent_id, curl_check_in, edge_pki, identity, s_client_get, trust_the_dmz,
};

fn gateway_yaml(port: u16, dial_port: u16) -> String {
    format!(
        r#"{edge}apiVersion: tessera.dev/v1alpha1
kind: Issuer
metadata:
  name: inside-servers
spec:
  ca:
    certFile: inside-ca.crt
---
apiVersion: tessera.dev/v1alpha1
kind: Gateway
metadata:
  name: dmz
spec:
  listen: 127.0.0.1:{port}
  mode: passthrough
  backend: 127.0.0.1:1
  certificateRef:
    name: gateway-tls
  dialOut:
    listen: 127.0.0.1:{dial_port}
    trustedServerIssuers:
      - name: inside-servers
    names: [inside.tessera]
  limits:
    connectTimeout: 2s
"#,
        edge = edge_pki("")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inside_dials_out_and_agents_reach_it_with_no_path_in() {
    let Inside {
        dir,
        running,
        state,
        server_ca,
        id,
        agents: [agent, _],
        gw,
        ..
    } = Inside::start().await;

    // The gateway trusts the inside's CA for inside servers named inside.tessera.
    let (port, dial_port) = (free_port(), free_port());
    std::fs::write(
        gw.path().join("gateway.yaml"),
        gateway_yaml(port, dial_port),
    )
    .unwrap();
    let (gateway, _) = Gateway::start(gw.path()).await;

    // The server dials out: it trusts the gateway's CA, and presents inside.tessera.
    trust_the_dmz(
        dir.path(),
        gw.path(),
        "---\napiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: inside-dialer\nspec:\n  issuerRef:\n    name: quickstart-ca\n  commonName: inside.tessera\n  usages: [client auth, digital signature]\n",
        &format!(
            "  dialOut:\n    gateway: 127.0.0.1:{dial_port}\n    gatewayIssuerRef:\n      name: dmz-ca\n    certificateRef:\n      name: inside-dialer\n    connections: 2\n"
        ),
    );
    eventually(
        "two dial-out connections in the gateway's pool",
        async || {
            let accepted = tokio::task::block_in_place(|| {
                gateway.metric_of("tessera_gateway_dial_out_connections_total", "accepted")
            });
            (accepted >= 2).then_some(())
        },
    )
    .await;

    let (cert, key) = identity(agent.path());
    let db = tessera::store::db::Database::open(&state.join("state.db")).unwrap();
    tokio::task::block_in_place(|| {
        // curl through the gateway: TLS end to end with the server, over a dial-out link.
        let output = Command::new("curl")
            .args(["-sS", "-f", "--max-time", "10", "--cacert"])
            .arg(&server_ca)
            .arg(format!("https://127.0.0.1:{port}/download/{id}/info"))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && body.contains(&format!("ID=\"{id}\"")),
            "{body}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        // openssl s_client verifies the server's own certificate through it.
        let text = s_client_get(port, &server_ca, None, &format!("/download/{id}/info"));
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        // A check-in from 127.0.0.3: the server learns that address from the gateway.
        let (status, body) = curl_check_in(
            &format!("https://127.0.0.1:{port}/v1/checkin"),
            &server_ca,
            Some((&cert, &key)),
            "127.0.0.3",
            None,
        );
        assert_eq!(status, "200", "{body}");
    });
    assert_eq!(
        db.address(&agent_id(agent.path())).unwrap().as_deref(),
        Some("127.0.0.3")
    );

    // An agent's certificate is from the trusted CA but names no inside server: refused on
    // the dial-out port.
    let refused_before = gateway.metric_of("tessera_gateway_dial_out_connections_total", "refused");
    tokio::task::block_in_place(|| {
        let _ = Command::new("openssl")
            .args(["s_client", "-quiet"])
            .args(["-connect", &format!("127.0.0.1:{dial_port}")])
            .arg("-cert")
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    });
    eventually("the impostor to be refused", async || {
        let refused = tokio::task::block_in_place(|| {
            gateway.metric_of("tessera_gateway_dial_out_connections_total", "refused")
        });
        (refused > refused_before).then_some(())
    })
    .await;

    // The inside goes away: agents get a fast failure, not a hung connection.
    running.stop().await.unwrap();
    let failed_before = gateway.metric("backend_failed");
    tokio::task::block_in_place(|| {
        let output = Command::new("curl")
            .args(["-sS", "-f", "--max-time", "20", "--cacert"])
            .arg(&server_ca)
            .arg(format!("https://127.0.0.1:{port}/download/{id}/info"))
            .output()
            .unwrap();
        assert!(!output.status.success());
    });
    assert!(gateway.metric("backend_failed") > failed_before);
    drop(gateway);
}
