//! The admin API's authentication (issue 18): `tessera serve` refuses an open admin listener
//! off loopback; with `--admin-auth token` every API path but the probes needs a token, a
//! viewer cannot steer, an operator can and is named in the event, and the CLI sends the
//! token. The listener is bound to 0.0.0.0, and the tests only ever connect to 127.0.0.1.

use std::net::SocketAddr;
use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Reaped, eventually, free_port, quickstart_copy};

/// `tessera ARGS` as a process: (exit success, stdout, stderr).
fn tessera(args: &[&str]) -> (bool, String, String) {
    // The server may run in this process: let its tasks go on while the CLI waits.
    let output = tokio::task::block_in_place(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(args)
            .env_remove("TESSERA_TOKEN")
            .env_remove("TESSERA_ADMIN_AUTH")
            .output()
            .expect("the tessera binary runs")
    });
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `METHOD path` on 127.0.0.1 at `port`, with `token` as a bearer: (status, body).
pub(crate) async fn call(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, body.to_owned())
}

/// `tessera admin-token create` on the state of `config`: the token printed.
pub(crate) fn create_token(config: &Path, role: &str, name: &str) -> String {
    let config = config.to_str().unwrap();
    let (ok, out, err) = tessera(&[
        "admin-token",
        "create",
        "--config",
        config,
        "--role",
        role,
        "--name",
        name,
    ]);
    assert!(ok, "{err}");
    assert!(err.contains("shown only now"), "{err}");
    let token = out.trim().to_owned();
    assert!(token.starts_with("tsa_"), "{out}");
    token
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_refuses_an_open_admin_listener_off_loopback_and_names_the_flags() {
    let dir = quickstart_copy();
    let port = free_port();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
        .args(["serve", "--config"])
        .arg(dir.path())
        .args(["--admin-address", &format!("0.0.0.0:{port}")])
        .env_remove("TESSERA_ADMIN_AUTH")
        .env_remove("TESSERA_ADMIN_INSECURE")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Reaped(child);
    let (status, _) = eventually("serve exiting", || {
        let exited = child.0.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.0.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    for flag in ["--admin-auth token", "--admin-insecure", "--admin-address"] {
        assert!(stderr.contains(flag), "{flag}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_token_auth_only_tokens_open_the_api_and_only_an_operator_steers() {
    let dir = quickstart_copy();
    let mut args = tessera::cli::ServeArgs::for_config(dir.path());
    args.admin.address = Some(SocketAddr::from(([0, 0, 0, 0], 0)));
    args.admin.auth = tessera::cli::AdminAuthMode::Token;
    let running = tessera::cli::start(args).await.expect("serve starts");
    let port = running.admin_address.port();
    let viewer = create_token(dir.path(), "viewer", "vera");
    let operator = create_token(dir.path(), "operator", "otto");

    // The probes stay open (readiness may still be 503, never 401).
    assert_eq!(call(port, "GET", "/healthz", None).await.0, 200);
    assert_ne!(call(port, "GET", "/readyz", None).await.0, 401);
    for (method, path) in [
        ("GET", "/api/v1/objects"),
        ("GET", "/api/v1/objects/Activation/hello"),
        ("GET", "/api/v1/problems"),
        ("GET", "/api/v1/deployments"),
        ("GET", "/api/v1/computers"),
        ("GET", "/api/v1/computers/nobody"),
        ("GET", "/api/v1/events"),
        ("GET", "/metrics"),
        ("POST", "/api/v1/reconcile"),
        ("POST", "/api/v1/objects/Activation/hello/suspend"),
        ("POST", "/api/v1/objects/Activation/hello/resume"),
        ("POST", "/api/v1/certificates/server/renew"),
    ] {
        let (status, body) = call(port, method, path, None).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
    }
    // Before the first pass the objects are 503; with a token, never 401.
    let (status, body) = call(port, "GET", "/api/v1/objects", Some(&viewer)).await;
    assert!(status == 200 || status == 503, "{status}: {body}");

    // Wait for the first pass, so that the Activation exists.
    eventually("the Activation hello reported", || async {
        let (status, _) = call(
            port,
            "GET",
            "/api/v1/objects/Activation/hello",
            Some(&viewer),
        )
        .await;
        (status == 200).then_some(())
    })
    .await;

    let admin = format!("http://127.0.0.1:{port}");
    let (ok, _, err) = tessera(&["get", "--admin", &admin]);
    assert!(!ok);
    assert!(err.contains("--token"), "a 401 names the flag: {err}");
    let (ok, out, err) = tessera(&["get", "--admin", &admin, "--token", &viewer]);
    assert!(ok, "{err}");
    assert!(out.contains("hello"), "{out}");

    let (ok, _, err) = tessera(&[
        "suspend",
        "activation/hello",
        "--admin",
        &admin,
        "--token",
        &viewer,
    ]);
    assert!(!ok);
    assert!(err.contains("403") && err.contains("operator"), "{err}");

    let token_file = dir.path().join("operator.token");
    std::fs::write(&token_file, format!("{operator}\n")).unwrap();
    let (ok, out, err) = tessera(&[
        "suspend",
        "activation/hello",
        "--admin",
        &admin,
        "--token-file",
        token_file.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    eventually("the suspension's event naming its operator", || async {
        let (_, body) = call(port, "GET", "/api/v1/events", Some(&viewer)).await;
        body.contains("suspended by operator otto").then_some(())
    })
    .await;

    // Revoked, the operator's token opens nothing any more; the list never shows secrets.
    let config = dir.path().to_str().unwrap();
    let id = operator.split('_').nth(1).unwrap();
    let (ok, _, err) = tessera(&["admin-token", "revoke", "--config", config, id]);
    assert!(ok, "{err}");
    let (status, _) = call(port, "GET", "/api/v1/objects", Some(&operator)).await;
    assert_eq!(status, 401);
    let (ok, out, err) = tessera(&["admin-token", "list", "--config", config]);
    assert!(ok, "{err}");
    assert!(out.contains("otto") && out.contains("revoked"), "{out}");
    let secret = &operator["tsa_0123456789ab_".len()..];
    assert!(!out.contains(secret), "{out}");
    running.stop().await.unwrap();
}

/// `curl` `method` `path` at 127.0.0.1:`port` over TLS trusting `ca`, with the client
/// certificate `identity` (certificate and key files) if any: the status ("000" when the
/// handshake failed) and the body.
fn curl(
    port: u16,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
    method: &str,
    path: &str,
) -> (String, String) {
    let mut command = std::process::Command::new("curl");
    command
        .args(["-sS", "-w", "\n%{http_code}", "-X", method, "--cacert"])
        .arg(ca);
    if let Some((cert, key)) = identity {
        command.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    command.arg(format!("https://127.0.0.1:{port}{path}"));
    let output = tokio::task::block_in_place(|| command.output().expect("curl runs"));
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.to_owned(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn with_mtls_a_client_certificate_names_the_caller_and_its_role_uri_the_role() {
    let dir = quickstart_copy();
    let pki = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = pki.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let authority = |name: &str| {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let certificate = params.self_signed(&key).unwrap();
        (certificate.pem(), key)
    };
    let (ca_pem, ca_key) = authority("admin clients and server");
    let (other_pem, other_key) = authority("someone else");
    let issue = |ca_pem: &str, ca_key: &rcgen::KeyPair, name: &str, sans| {
        let issuer = rcgen::Issuer::from_ca_cert_pem(ca_pem, ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.subject_alt_names = sans;
        let certificate = params.signed_by(&key, &issuer).unwrap();
        (
            write(&format!("{name}.crt"), &certificate.pem()),
            write(&format!("{name}.key"), &key.serialize_pem()),
        )
    };
    let ca = write("ca.crt", &ca_pem);
    let server = issue(
        &ca_pem,
        &ca_key,
        "server",
        vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())],
    );
    let role = |role: &str| {
        rcgen::SanType::URI(format!("tessera:role:{role}").as_str().try_into().unwrap())
    };
    let alice = issue(&ca_pem, &ca_key, "alice", vec![role("operator")]);
    let bob = issue(&ca_pem, &ca_key, "bob", vec![]);
    let mallory = issue(&other_pem, &other_key, "mallory", vec![role("operator")]);

    let mut args = tessera::cli::ServeArgs::for_config(dir.path());
    args.admin.address = Some(SocketAddr::from(([0, 0, 0, 0], 0)));
    args.admin.auth = tessera::cli::AdminAuthMode::Mtls;
    args.admin.tls_cert = Some(server.0.clone());
    args.admin.tls_key = Some(server.1.clone());
    let error = tessera::cli::start(args.clone()).await.err().unwrap();
    assert!(
        format!("{error:#}").contains("--admin-client-ca"),
        "{error:#}"
    );
    args.admin.client_ca = Some(ca.clone());
    let running = tessera::cli::start(args).await.expect("serve starts");
    let port = running.admin_address.port();
    let as_of =
        |(cert, key): &(std::path::PathBuf, std::path::PathBuf)| Some((cert.clone(), key.clone()));
    let call = |who: Option<(std::path::PathBuf, std::path::PathBuf)>, method: &str, path: &str| {
        curl(
            port,
            &ca,
            who.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            method,
            path,
        )
    };

    assert_eq!(
        call(None, "GET", "/healthz").0,
        "200",
        "the probes need no certificate"
    );
    assert_eq!(call(None, "GET", "/api/v1/objects").0, "401");
    let (status, _) = call(as_of(&mallory), "GET", "/api/v1/objects");
    assert!(
        status == "000" || status == "401",
        "another CA's client: {status}"
    );
    eventually("the objects, read by a viewer's certificate", || async {
        (call(as_of(&bob), "GET", "/api/v1/objects").0 == "200").then_some(())
    })
    .await;
    assert_eq!(call(as_of(&bob), "POST", "/api/v1/reconcile").0, "403");
    let (status, body) = call(as_of(&alice), "POST", "/api/v1/reconcile");
    assert_eq!(status, "200", "{body}");
    let (_, events) = call(as_of(&bob), "GET", "/api/v1/events");
    assert!(
        events.contains("operator alice asked for a pass"),
        "{events}"
    );

    // The CLI speaks TLS with --admin-ca, and presents --admin-cert.
    let admin = format!("https://127.0.0.1:{port}");
    let ca = ca.to_str().unwrap();
    let (ok, _, err) = tessera(&["get", "--admin", &admin, "--admin-ca", ca]);
    assert!(!ok && err.contains("401"), "{err}");
    let (ok, out, err) = tessera(&[
        "reconcile",
        "--admin",
        &admin,
        "--admin-ca",
        ca,
        "--admin-cert",
        bob.0.to_str().unwrap(),
        "--admin-key",
        bob.1.to_str().unwrap(),
    ]);
    assert!(
        !ok && err.contains("403"),
        "a viewer's certificate: {out}{err}"
    );
    let (ok, out, err) = tessera(&[
        "reconcile",
        "--admin",
        &admin,
        "--admin-ca",
        ca,
        "--admin-cert",
        alice.0.to_str().unwrap(),
        "--admin-key",
        alice.1.to_str().unwrap(),
    ]);
    assert!(ok, "{out}{err}");
    running.stop().await.unwrap();
}
