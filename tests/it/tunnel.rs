//! `tessera gateway` in tunnel and terminate modes in front of `tessera serve`: client
//! certificates are verified at the edge (trusted CA, validity, revocation) before anything
//! reaches the inside; real clients (`curl`, `openssl s_client`, Tessera's agent with
//! `--gateway`) get through; the gateway's certificate is re-issued while tunnels stay
//! open; and a terminating gateway's word about the client is believed by the server, and
//! nobody else's.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tessera::agent::{self, Config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{eventually, free_port, get};

/// A TCP forwarder in front of the server that counts the connections it is given: the
/// inside as the gateway sees it.
pub(crate) async fn counting_forwarder(to: String) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let to = to.clone();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (address, count)
}

/// The inside, as the edge tests need it: the quickstart server (enrolling agents), two
/// agents enrolled with it directly, a TCP forwarder in front of it that counts the
/// connections it is given, and a gateway configuration directory holding a copy of the
/// inside's agent CA and its CRL (`inside-ca.crt`, `inside-crl.pem`).
pub(crate) struct Inside {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) running: tessera::cli::Running,
    pub(crate) https: String,
    pub(crate) state: PathBuf,
    pub(crate) server_ca: PathBuf,
    /// The package id of `hello`.
    pub(crate) id: String,
    pub(crate) agents: [tempfile::TempDir; 2],
    /// The forwarder's address, and the connections it was given.
    pub(crate) backend: String,
    pub(crate) seen: Arc<AtomicUsize>,
    pub(crate) gw: tempfile::TempDir,
}

impl Inside {
    pub(crate) async fn start() -> Self {
        let (dir, running, https) = crate::support::quickstart_enrolling(None).await;
        let state = dir.path().join(".tessera");
        let server_ca = crate::support::server_ca(dir.path());
        let id = crate::support::package_id(&running, "hello").await;
        let token = crate::support::token(&state, 2, 600).reveal();
        let agents = [
            enrolled_agent(&https, &server_ca, &token).await,
            enrolled_agent(&https, &server_ca, &token).await,
        ];
        let (backend, seen) = counting_forwarder(https.clone()).await;
        let gw = tempfile::tempdir().unwrap();
        let issuer = state.join("pki/issuers/default/quickstart-ca");
        std::fs::copy(issuer.join("ca.crt"), gw.path().join("inside-ca.crt")).unwrap();
        std::fs::copy(issuer.join("crl.pem"), gw.path().join("inside-crl.pem")).unwrap();
        Self {
            dir,
            running,
            https,
            state,
            server_ca,
            id,
            agents,
            backend,
            seen,
            gw,
        }
    }
}

/// The server learns of the DMZ: its CA as a trust-only Issuer `dmz-ca` (with `documents`
/// beside it in `dmz.yaml`), and `server` appended to the Server's spec.
pub(crate) fn trust_the_dmz(config: &Path, gateway: &Path, documents: &str, server: &str) {
    std::fs::copy(
        gateway.join(".tessera/pki/issuers/default/edge-ca/ca.crt"),
        config.join("dmz-ca.crt"),
    )
    .unwrap();
    std::fs::write(
        config.join("dmz.yaml"),
        format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: dmz-ca\nspec:\n  ca:\n    certFile: dmz-ca.crt\n{documents}"
        ),
    )
    .unwrap();
    let path = config.join("server.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{text}{server}")).unwrap();
}

/// An agent enrolled directly with the server (inside, before it roams).
pub(crate) async fn enrolled_agent(server: &str, ca: &Path, token: &str) -> tempfile::TempDir {
    let state = tempfile::tempdir().unwrap();
    let config = Config {
        server: format!("https://{server}"),
        state_dir: state.path().to_path_buf(),
        ca: Some(ca.to_path_buf()),
        token: Some(token.to_owned()),
        tags: vec![],
        proxy: None,
        gateway: None,
        notify_address: None,
        clock: jiff::Timestamp::now,
    };
    agent::run_once(&config).await.expect("enrolled directly");
    state
}

pub(crate) fn identity(agent: &Path) -> (PathBuf, PathBuf) {
    (
        agent.join("identity/agent.crt"),
        agent.join("identity/agent.key"),
    )
}

fn serial_of(pem_file: &Path) -> String {
    let pem = std::fs::read_to_string(pem_file).unwrap();
    let certs = tessera::pki::facts::pem_certificates(&pem).unwrap();
    tessera::pki::facts::read(&certs[0]).unwrap().serial
}

/// The documents of a gateway's own PKI: a self-signed CA `edge-ca`, and `gateway-tls`
/// for 127.0.0.1 (and `dns_names`, comma-separated, when given). Ends with `---`.
pub(crate) fn edge_pki(dns_names: &str) -> String {
    let dns = if dns_names.is_empty() {
        String::new()
    } else {
        format!("  dnsNames: [{dns_names}]\n")
    };
    format!(
        "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: edge-ca\nspec:\n  selfSigned: {{}}\n---\napiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: gateway-tls\nspec:\n  issuerRef:\n    name: edge-ca\n{dns}  ipAddresses: [127.0.0.1]\n  usages: [server auth, digital signature]\n---\n"
    )
}

/// The gateway's configuration: its own CA and certificate, a stranger's client
/// certificate from that CA (not trusted for clients), and the inside's agent CA as a
/// trust-only Issuer with its CRL.
fn gateway_yaml(port: u16, backend: &str, extra_dns: &str, revision: u32) -> String {
    format!(
        r#"# revision {revision}
{edge}apiVersion: tessera.dev/v1alpha1
kind: Certificate
metadata:
  name: stranger
spec:
  issuerRef:
    name: edge-ca
  commonName: stranger
  usages: [client auth, digital signature]
---
apiVersion: tessera.dev/v1alpha1
kind: Issuer
metadata:
  name: inside-agents
spec:
  ca:
    certFile: inside-ca.crt
    crlFile: inside-crl.pem
---
apiVersion: tessera.dev/v1alpha1
kind: Gateway
metadata:
  name: dmz
spec:
  listen: 127.0.0.1:{port}
  mode: tunnel
  backend: {backend}
  routes:
    - serverName: tessera.local
      backend: {backend}
  certificateRef:
    name: gateway-tls
  trustedClientIssuers:
    - name: inside-agents
  limits:
    handshakeTimeout: 3s
"#,
        edge = edge_pki(&format!("localhost{extra_dns}"))
    )
}

pub(crate) struct Gateway {
    pub(crate) child: std::process::Child,
    pub(crate) admin: SocketAddr,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// `tessera gateway --config DIR` with its admin API on a free port, once its Gateway
    /// `dmz` is Ready (certificates issued, trust in place); the Gateway as reported.
    pub(crate) async fn start(dir: &Path) -> (Self, serde_json::Value) {
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let gateway = Self {
            child: Command::new(assert_cmd::cargo::cargo_bin("tessera"))
                .args(["gateway", "--config"])
                .arg(dir)
                .args(["--admin-address", &admin.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
            admin,
        };
        crate::support::wait_for_port(admin.port(), "the gateway's admin API");
        let (object, _) = eventually("the gateway to be Ready", async || {
            let object = gateway.object("Gateway", "dmz").await;
            ready(&object).then_some(object)
        })
        .await;
        (gateway, object)
    }

    /// The object as the gateway's admin API shows it (`null` before the first pass).
    pub(crate) async fn object(&self, kind: &str, name: &str) -> serde_json::Value {
        let (status, body) = get(self.admin, &format!("/api/v1/objects/{kind}/{name}")).await;
        if status == 404 {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&body).unwrap()
    }

    pub(crate) fn metric(&self, outcome: &str) -> u64 {
        self.metric_of("tessera_gateway_connections_total", outcome)
    }

    pub(crate) fn metric_of(&self, name: &str, outcome: &str) -> u64 {
        let output = Command::new("curl")
            .args(["-sf", &format!("http://{}/metrics", self.admin)])
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find(|l| l.starts_with(name) && l.contains(&format!("outcome=\"{outcome}\"")))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }
}

pub(crate) fn ready(object: &serde_json::Value) -> bool {
    object["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

/// `curl` through the tunnel as an HTTPS proxy, presenting `certificate` to the gateway.
fn curl_through(
    port: u16,
    gateway_ca: &Path,
    certificate: Option<(&Path, &Path)>,
    server_ca: &Path,
    url: &str,
) -> (bool, String) {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "-f", "--max-time", "10"])
        .args(["--proxy", &format!("https://127.0.0.1:{port}")])
        .arg("--proxy-cacert")
        .arg(gateway_ca)
        .arg("--cacert")
        .arg(server_ca);
    if let Some((cert, key)) = certificate {
        command
            .arg("--proxy-cert")
            .arg(cert)
            .arg("--proxy-key")
            .arg(key);
    }
    let output = command
        .arg(url)
        .output()
        .expect("curl is installed by scripts/setup.sh");
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// `openssl s_client` to the gateway with `certificate`, sending a CONNECT: the first line
/// of the gateway's answer, if any came within a few seconds.
fn s_client_connect(port: u16, gateway_ca: &Path, certificate: (&Path, &Path)) -> Option<String> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-quiet", "-verify_return_error"])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(gateway_ca)
        .arg("-cert")
        .arg(certificate.0)
        .arg("-key")
        .arg(certificate.1)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed by scripts/setup.sh");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"CONNECT tessera.local:443 HTTP/1.1\r\nHost: tessera.local:443\r\n\r\n")
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(10)).ok();
    let _ = child.kill();
    let _ = child.wait();
    drop(stdin);
    line.filter(|l| !l.is_empty()).map(|l| l.trim().to_owned())
}

/// `openssl s_client` to 127.0.0.1:`port` (trusting `ca`, presenting `certificate`), one
/// `GET path` with `Connection: close`: everything that came back.
pub(crate) fn s_client_get(
    port: u16,
    ca: &Path,
    certificate: Option<(&Path, &Path)>,
    path: &str,
) -> String {
    let mut command = Command::new("openssl");
    command
        .args(["s_client", "-quiet", "-ign_eof", "-verify_return_error"])
        .args(["-connect", &format!("127.0.0.1:{port}")])
        .arg("-CAfile")
        .arg(ca);
    if let Some((cert, key)) = certificate {
        command.arg("-cert").arg(cert).arg("-key").arg(key);
    }
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("openssl is installed by scripts/setup.sh");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .unwrap();
    let output = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

type Inner =
    tokio_rustls::client::TlsStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// A tunnel opened by hand: the outer session (agent certificate to the gateway), a
/// CONNECT, and the inner session with the server. Returns it with the serial of the
/// certificate the gateway presented.
async fn open_tunnel(
    port: u16,
    gateway_ca: &Path,
    agent: &Path,
    server_ca: &Path,
) -> (Inner, String) {
    let (cert, key) = identity(agent);
    let outer_tls = tessera::pki::tls::client_config(
        &std::fs::read_to_string(gateway_ca).unwrap(),
        Some((
            &std::fs::read_to_string(cert).unwrap(),
            &std::fs::read_to_string(key).unwrap(),
        )),
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut outer = tokio_rustls::TlsConnector::from(outer_tls)
        .connect(name, tcp)
        .await
        .expect("the gateway admits an enrolled agent");
    let serial = {
        let der = &outer.get_ref().1.peer_certificates().unwrap()[0];
        tessera::pki::facts::read(der).unwrap().serial
    };
    outer
        .write_all(b"CONNECT tessera.local:443 HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        outer.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{head:?}");
    let inner_tls =
        tessera::pki::tls::client_config(&std::fs::read_to_string(server_ca).unwrap(), None)
            .unwrap();
    let name = rustls::pki_types::ServerName::try_from("tessera.local").unwrap();
    let inner = tokio_rustls::TlsConnector::from(inner_tls)
        .connect(name, outer)
        .await
        .expect("TLS with the server, inside the tunnel");
    (inner, serial)
}

/// One keep-alive GET on `stream`: the status line and the body.
async fn get_on(stream: &mut Inner, path: &str) -> (String, String) {
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nhost: tessera.local\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).await.unwrap();
    (
        head.lines().next().unwrap().to_owned(),
        String::from_utf8_lossy(&body).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_verifies_clients_at_the_edge_and_the_inside_sees_only_the_admitted() {
    let Inside {
        dir,
        running,
        https,
        state,
        server_ca,
        id,
        agents: [roaming, doomed],
        backend,
        seen: inside,
        gw,
    } = Inside::start().await;
    let issuer = state.join("pki/issuers/default/quickstart-ca");
    let port = free_port();
    std::fs::write(
        gw.path().join("gateway.yaml"),
        gateway_yaml(port, &backend, "", 1),
    )
    .unwrap();
    let (gateway, first) = Gateway::start(gw.path()).await;
    let first_serial = first["details"]["certificateSerial"]
        .as_str()
        .unwrap()
        .to_owned();
    let gateway_ca = gw
        .path()
        .join(".tessera/certificates/default/gateway-tls/ca.crt");
    let stranger = gw.path().join(".tessera/certificates/default/stranger");
    let (cert, key) = identity(roaming.path());
    let info = format!("https://tessera.local:443/download/{id}/info");

    // A slow client sends half a ClientHello and waits: the others are served meanwhile.
    let mut slow = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .unwrap();

    // Tessera's agent with --gateway: outer session with its certificate, its own TLS
    // session with the server inside.
    let through = Config {
        server: format!("https://{https}"),
        state_dir: roaming.path().to_path_buf(),
        ca: None,
        token: None,
        tags: vec![],
        proxy: None,
        gateway: Some((format!("127.0.0.1:{port}"), Some(gateway_ca.clone()))),
        notify_address: None,
        clock: jiff::Timestamp::now,
    };
    agent::run_once(&through)
        .await
        .expect("a check-in through the tunnel");
    let after_agent = inside.load(Ordering::SeqCst);
    assert!(after_agent >= 1, "the agent's session reached the inside");

    tokio::task::block_in_place(|| {
        // curl, with the gateway as an HTTPS proxy: CONNECT, then TLS with the server.
        let (ok, body) = curl_through(port, &gateway_ca, Some((&cert, &key)), &server_ca, &info);
        assert!(ok && body.contains(&format!("ID=\"{id}\"")), "{body}");
        // openssl s_client with the agent's certificate: the CONNECT is answered.
        let line = s_client_connect(port, &gateway_ca, (&cert, &key));
        assert_eq!(line.as_deref(), Some("HTTP/1.1 200 Connection established"));
    });
    // The counting forwarder counts a connection when its accept loop takes it, which can
    // be just after s_client has its answer (the kernel completes the connect first).
    let (admitted, _) = eventually("curl and s_client reached the inside", || {
        let count = inside.load(Ordering::SeqCst);
        async move { (count >= after_agent + 2).then_some(count) }
    })
    .await;
    assert_eq!(
        admitted,
        after_agent + 2,
        "curl and s_client reached the inside, and nothing else"
    );

    // Refused at the edge: no certificate, a CA the gateway does not trust for clients, an
    // expired certificate. The inside sees none of them.
    let expired = tempfile::tempdir().unwrap();
    {
        let authority = tessera::pki::authority::Authority::from_pem(
            &std::fs::read_to_string(issuer.join("ca.crt")).unwrap(),
            &std::fs::read_to_string(issuer.join("ca.key")).unwrap(),
            None,
        )
        .unwrap();
        let key_pair =
            tessera::pki::authority::generate_key(tessera::pki::KeyType::EcdsaP256).unwrap();
        let issued = authority
            .issue(
                &tessera::pki::authority::LeafRequest::client(
                    "expired",
                    jiff::SignedDuration::from_hours(24),
                ),
                &key_pair,
                jiff::Timestamp::now() - jiff::SignedDuration::from_hours(72),
            )
            .unwrap();
        std::fs::write(expired.path().join("tls.crt"), issued.chain_pem).unwrap();
        std::fs::write(expired.path().join("tls.key"), key_pair.serialize_pem()).unwrap();
    }
    tokio::task::block_in_place(|| {
        let (ok, out) = curl_through(port, &gateway_ca, None, &server_ca, &info);
        assert!(!ok, "no certificate: {out}");
        let (ok, out) = curl_through(
            port,
            &gateway_ca,
            Some((&stranger.join("tls.crt"), &stranger.join("tls.key"))),
            &server_ca,
            &info,
        );
        assert!(!ok, "wrong CA: {out}");
        let (ok, out) = curl_through(
            port,
            &gateway_ca,
            Some((
                &expired.path().join("tls.crt"),
                &expired.path().join("tls.key"),
            )),
            &server_ca,
            &info,
        );
        assert!(!ok, "expired: {out}");
        assert_eq!(
            s_client_connect(
                port,
                &gateway_ca,
                (&stranger.join("tls.crt"), &stranger.join("tls.key"))
            ),
            None,
            "s_client with an untrusted certificate gets no answer"
        );
    });

    // Revoked at the inside: the server publishes a new CRL, the DMZ gets a copy, and the
    // gateway refuses that agent from its next pass.
    let (doomed_cert, doomed_key) = identity(doomed.path());
    let doomed_serial = serial_of(&doomed_cert);
    let crl_before = std::fs::read_to_string(issuer.join("crl.pem")).unwrap();
    let pki = dir.path().join("pki.yaml");
    let text = std::fs::read_to_string(&pki).unwrap();
    std::fs::write(
        &pki,
        text.replacen(
            "  selfSigned:\n",
            &format!("  revokedSerials: [\"{doomed_serial}\"]\n  selfSigned:\n"),
            1,
        ),
    )
    .unwrap();
    let (crl, _) = eventually(
        "the inside to publish a CRL with the revoked agent",
        async || {
            let crl = std::fs::read_to_string(issuer.join("crl.pem")).ok()?;
            (crl != crl_before).then_some(crl)
        },
    )
    .await;
    std::fs::write(gw.path().join("inside-crl.pem"), crl).unwrap();
    let crl_number = |object: &serde_json::Value| object["details"]["crlNumber"].as_u64();
    let number_before = crl_number(&gateway.object("Issuer", "inside-agents").await);
    std::fs::write(
        gw.path().join("gateway.yaml"),
        gateway_yaml(port, &backend, "", 2),
    )
    .unwrap();
    eventually("the gateway to take the new CRL", async || {
        let number = crl_number(&gateway.object("Issuer", "inside-agents").await);
        (number != number_before).then_some(())
    })
    .await;
    tokio::task::block_in_place(|| {
        let (ok, out) = curl_through(
            port,
            &gateway_ca,
            Some((&doomed_cert, &doomed_key)),
            &server_ca,
            &info,
        );
        assert!(!ok, "revoked: {out}");
    });
    let mut doomed_config = through.clone();
    doomed_config.state_dir = doomed.path().to_path_buf();
    assert!(agent::run_once(&doomed_config).await.is_err());

    assert_eq!(
        inside.load(Ordering::SeqCst),
        admitted,
        "a refused client never causes a connection to the inside"
    );
    for outcome in [
        "refused_no_certificate",
        "refused_untrusted",
        "refused_expired",
        "refused_revoked",
    ] {
        assert!(gateway.metric(outcome) >= 1, "{outcome}");
    }
    drop(slow);

    // The gateway's certificate is re-issued (a name added) while a tunnel is open: the
    // open tunnel goes on, new ones see the new certificate.
    let (mut open, serial) = open_tunnel(port, &gateway_ca, roaming.path(), &server_ca).await;
    assert_eq!(serial, first_serial);
    let (status, body) = get_on(&mut open, &format!("/download/{id}/info")).await;
    assert!(
        status.starts_with("HTTP/1.1 200") && body.contains(&id),
        "{status}"
    );
    std::fs::write(
        gw.path().join("gateway.yaml"),
        gateway_yaml(port, &backend, ", gateway.dmz.example", 3),
    )
    .unwrap();
    let (renewed, _) = eventually("the gateway's certificate to be re-issued", async || {
        let object = gateway.object("Gateway", "dmz").await;
        let serial = object["details"]["certificateSerial"].as_str()?.to_owned();
        (serial != first_serial).then_some(serial)
    })
    .await;
    let (status, _) = get_on(&mut open, &format!("/download/{id}/info")).await;
    assert!(
        status.starts_with("HTTP/1.1 200"),
        "the open tunnel goes on"
    );
    let (_, serial) = open_tunnel(port, &gateway_ca, roaming.path(), &server_ca).await;
    assert_eq!(serial, renewed, "a new tunnel sees the new certificate");

    drop(gateway);
    running.stop().await.unwrap();
}

/// The terminate-mode gateway's configuration: its own CA, its certificate towards agents
/// and its client certificate towards the server, and the inside CA (which signs both the
/// server's certificate and the agents') as a trust-only Issuer.
fn terminating_gateway_yaml(port: u16, backend: &str) -> String {
    mode_gateway_yaml("terminate", port, backend, "")
}

/// A Gateway `dmz` in `mode` on `port` in front of `backend`, admitting the inside's agents
/// (`inside-ca.crt`), its edge certificate naming `edge_dns` too; terminate mode also has
/// its client certificate towards the server.
pub(crate) fn mode_gateway_yaml(mode: &str, port: u16, backend: &str, edge_dns: &str) -> String {
    let terminate = if mode == "terminate" {
        "  backendCertificateRef:\n    name: gateway-backend\n  backendIssuerRef:\n    name: inside\n"
    } else {
        ""
    };
    format!(
        r#"{edge}apiVersion: tessera.dev/v1alpha1
kind: Certificate
metadata:
  name: gateway-backend
spec:
  issuerRef:
    name: edge-ca
  commonName: gateway.dmz
  usages: [client auth, digital signature]
---
apiVersion: tessera.dev/v1alpha1
kind: Issuer
metadata:
  name: inside
spec:
  ca:
    certFile: inside-ca.crt
    crlFile: inside-crl.pem
---
apiVersion: tessera.dev/v1alpha1
kind: Gateway
metadata:
  name: dmz
spec:
  listen: 127.0.0.1:{port}
  mode: {mode}
  backend: {backend}
  certificateRef:
    name: gateway-tls
{terminate}  trustedClientIssuers:
    - name: inside
"#,
        edge = edge_pki(edge_dns)
    )
}

pub(crate) fn agent_id(agent: &Path) -> String {
    let pem = std::fs::read_to_string(agent.join("identity/agent.crt")).unwrap();
    let certs = tessera::pki::facts::pem_certificates(&pem).unwrap();
    tessera::pki::AgentId::from_certificate(&certs[0])
        .unwrap()
        .as_str()
        .to_owned()
}

pub(crate) fn base64_der(pem_file: &Path) -> String {
    use base64::Engine;
    let pem = std::fs::read_to_string(pem_file).unwrap();
    let certs = tessera::pki::facts::pem_certificates(&pem).unwrap();
    base64::engine::general_purpose::STANDARD.encode(certs[0].as_ref())
}

/// A check-in by `curl` from the loopback address `from`: the HTTP status and the body.
pub(crate) fn curl_check_in(
    url: &str,
    ca: &Path,
    certificate: Option<(&Path, &Path)>,
    from: &str,
    forged: Option<&str>,
) -> (String, String) {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}"])
        .args(["--interface", from])
        .arg("--cacert")
        .arg(ca)
        .args(["-H", "content-type: application/json"])
        .args([
            "-d",
            r#"{"hostname":"roamer","osName":"Debian GNU/Linux 12","tags":["roaming"]}"#,
        ]);
    if let Some((cert, key)) = certificate {
        command.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    if let Some(forged) = forged {
        command.args(["-H", &format!("X-Tessera-Client-Certificate: {forged}")]);
    }
    let output = command.arg(url).output().expect("curl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "000"));
    (status.trim().to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminating_gateway_passes_the_verified_identity_that_only_it_is_believed_about() {
    let Inside {
        dir,
        running,
        https,
        state,
        server_ca,
        id,
        agents: [roaming, other],
        backend,
        seen: inside,
        gw,
    } = Inside::start().await;
    let port = free_port();
    std::fs::write(
        gw.path().join("gateway.yaml"),
        terminating_gateway_yaml(port, &backend),
    )
    .unwrap();
    let (gateway, _) = Gateway::start(gw.path()).await;
    let gateway_ca = gw
        .path()
        .join(".tessera/certificates/default/gateway-tls/ca.crt");

    // The server learns of the gateway: a trust-only Issuer with the DMZ's CA, and the
    // gateway's certificate name.
    trust_the_dmz(
        dir.path(),
        gw.path(),
        "",
        "  trustedGateways:\n    - issuerRef:\n        name: dmz-ca\n      names: [gateway.dmz]\n",
    );

    let (cert, key) = identity(roaming.path());
    let (other_cert, _) = identity(other.path());
    let url = format!("https://127.0.0.1:{port}/v1/checkin");
    let db = tessera::store::db::Database::open(&state.join("state.db")).unwrap();
    let roaming_id = agent_id(roaming.path());
    let other_id = agent_id(other.path());
    // From 127.0.0.3, with another agent's certificate slipped into the header: the server
    // sees the verified agent, at the client's address.
    let forged = base64_der(&other_cert);
    eventually("the server to believe the gateway", async || {
        let (status, _) = tokio::task::block_in_place(|| {
            curl_check_in(
                &url,
                &gateway_ca,
                Some((&cert, &key)),
                "127.0.0.3",
                Some(&forged),
            )
        });
        (status == "200").then_some(())
    })
    .await;
    assert_eq!(
        db.address(&roaming_id).unwrap().as_deref(),
        Some("127.0.0.3"),
        "the address the gateway named"
    );
    assert_eq!(
        db.address(&other_id).unwrap().as_deref(),
        Some("127.0.0.1"),
        "the forged header changed nothing for the other agent"
    );
    let admitted = inside.load(Ordering::SeqCst);
    assert!(admitted >= 1);

    tokio::task::block_in_place(|| {
        // No certificate at the edge: refused there, the inside sees nothing.
        let (status, _) = curl_check_in(&url, &gateway_ca, None, "127.0.0.1", None);
        assert_eq!(status, "000", "refused during the handshake");
        // The same header sent straight to the server, by someone who is not a gateway, is
        // not believed.
        let (status, _) = curl_check_in(
            &format!("https://{https}/v1/checkin"),
            &server_ca,
            None,
            "127.0.0.1",
            Some(&base64_der(&cert)),
        );
        assert_eq!(status, "401");
        // openssl s_client: any request passes, here an OCS download's info file.
        let text = s_client_get(
            port,
            &gateway_ca,
            Some((&cert, &key)),
            &format!("/download/{id}/info"),
        );
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains(&format!("ID=\"{id}\"")), "{text}");
    });
    assert_eq!(
        inside.load(Ordering::SeqCst),
        admitted + 1,
        "only s_client's connection reached the inside"
    );
    assert!(gateway.metric("refused_no_certificate") >= 1);
    drop(gateway);
    running.stop().await.unwrap();
}
