//! `tessera doctor` against `openssl s_server`: each problem the issue lists gets its own
//! explanation and fix.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tessera::pki::authority::{Authority, LeafRequest, Revoked, generate_key};
use tessera::pki::{KeyType, Names, Usage};

/// An `openssl s_server` serving `chain` and `key` (files), killed on drop.
struct OpensslServer {
    child: Child,
    port: u16,
}

impl OpensslServer {
    fn start(chain: &Path, key: &Path, extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // -cert takes the first certificate; -cert_chain the rest (intermediates).
        let mut args: Vec<String> = vec![
            "s_server".into(),
            "-accept".into(),
            format!("127.0.0.1:{port}"),
            "-www".into(),
            "-quiet".into(),
            "-cert".into(),
            chain.display().to_string(),
            "-key".into(),
            key.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let child = Command::new("openssl")
            .args(&args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl");
        crate::support::wait_for_port(port, "openssl s_server");
        Self { child, port }
    }
}

impl Drop for OpensslServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn doctor(port: u16, args: &[&str]) -> (i32, String) {
    let output = Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .arg("doctor")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

fn root(dir: &Path, name: &str) -> (Authority, PathBuf) {
    let ca = Authority::generate(
        name,
        KeyType::EcdsaP256,
        now(),
        jiff::SignedDuration::from_hours(240),
    )
    .unwrap();
    let path = dir.join(format!("{name}.crt"));
    std::fs::write(&path, ca.root_pem()).unwrap();
    (ca, path)
}

/// Issues a server certificate for 127.0.0.1 and writes `<name>.crt` (chain) and `<name>.key`.
fn server(
    dir: &Path,
    ca: &Authority,
    name: &str,
    usages: Vec<Usage>,
    at: jiff::Timestamp,
) -> (PathBuf, PathBuf, String) {
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let request = LeafRequest {
        names: Names {
            dns_names: vec!["tessera.local".into()],
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            ..Names::default()
        },
        usages,
        is_ca: false,
        lifetime: jiff::SignedDuration::from_hours(24),
    };
    let issued = ca.issue(&request, &key, at).unwrap();
    let (chain, key_path) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&chain, &issued.chain_pem).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (chain, key_path, issued.facts.serial)
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn a_sound_server_is_reported_ok_with_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_file) = root(dir.path(), "ca");
    let (chain, key, serial) = server(dir.path(), &ca, "web", vec![Usage::ServerAuth], now());
    let openssl = OpensslServer::start(&chain, &key, &[]);
    let (code, out) = doctor(openssl.port, &["--ca", p(&ca_file)]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("serial  {serial}")), "{out}");
    assert!(
        out.contains("names   DNS:tessera.local, IP:127.0.0.1"),
        "{out}"
    );
    assert!(out.contains("OK: the chain verifies"), "{out}");
}

#[test]
fn name_expiry_issuer_and_usage_problems_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_file) = root(dir.path(), "ca");
    let (_, other_file) = root(dir.path(), "other");

    let (chain, key, _) = server(dir.path(), &ca, "web", vec![Usage::ServerAuth], now());
    let openssl = OpensslServer::start(&chain, &key, &[]);
    let (code, out) = doctor(
        openssl.port,
        &["--ca", p(&ca_file), "--server-name", "deploy.example.com"],
    );
    assert_eq!(code, 1);
    assert!(
        out.contains("PROBLEM (name-mismatch): `deploy.example.com` is not among"),
        "{out}"
    );
    assert!(
        out.contains("fix: add `deploy.example.com` to the Certificate's dnsNames"),
        "{out}"
    );
    let (code, out) = doctor(openssl.port, &["--ca", p(&other_file)]);
    assert_eq!(code, 1);
    assert!(
        out.contains("PROBLEM (missing-intermediate)") || out.contains("PROBLEM (unknown-issuer)"),
        "{out}"
    );
    assert!(
        out.contains("ca.crt"),
        "the fix names the file to give the client: {out}"
    );
    drop(openssl);

    let (chain, key, _) = server(
        dir.path(),
        &ca,
        "old",
        vec![Usage::ServerAuth],
        now() - jiff::SignedDuration::from_hours(48),
    );
    let openssl = OpensslServer::start(&chain, &key, &[]);
    let (code, out) = doctor(openssl.port, &["--ca", p(&ca_file)]);
    assert_eq!(code, 1);
    assert!(
        out.contains("PROBLEM (expired): the server certificate expired at"),
        "{out}"
    );
    drop(openssl);

    let (chain, key, _) = server(dir.path(), &ca, "client", vec![Usage::ClientAuth], now());
    let openssl = OpensslServer::start(&chain, &key, &[]);
    let (code, out) = doctor(openssl.port, &["--ca", p(&ca_file)]);
    assert_eq!(code, 1);
    assert!(
        out.contains("PROBLEM (wrong-usage)") && out.contains("add `server auth`"),
        "{out}"
    );
}

#[test]
fn a_missing_intermediate_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let (root_ca, root_file) = root(dir.path(), "root");
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let issued = root_ca
        .issue(
            &LeafRequest {
                names: Names {
                    common_name: Some("Site Intermediate".into()),
                    ..Names::default()
                },
                usages: vec![],
                is_ca: true,
                lifetime: jiff::SignedDuration::from_hours(100),
            },
            &key,
            now(),
        )
        .unwrap();
    let intermediate = Authority::from_pem(
        &issued.chain_pem,
        &key.serialize_pem(),
        Some(root_ca.root_pem()),
    )
    .unwrap();
    let (chain, key, _) = server(
        dir.path(),
        &intermediate,
        "web",
        vec![Usage::ServerAuth],
        now(),
    );
    // Serve the leaf alone, as a hand-made configuration might.
    let pem = std::fs::read_to_string(&chain).unwrap();
    let leaf_only = dir.path().join("leaf-only.crt");
    std::fs::write(
        &leaf_only,
        &pem[..pem.find("-----END CERTIFICATE-----").unwrap() + 26],
    )
    .unwrap();
    let openssl = OpensslServer::start(&leaf_only, &key, &[]);
    let (code, out) = doctor(openssl.port, &["--ca", p(&root_file)]);
    assert_eq!(code, 1);
    assert!(
        out.contains(
            "PROBLEM (missing-intermediate): `CN=Site Intermediate` signed the server's certificate"
        ),
        "{out}"
    );
    drop(openssl);
    // With the intermediate sent, all is well.
    let openssl = OpensslServer::start(&chain, &key, &["-cert_chain", p(&chain)]);
    let (code, out) = doctor(openssl.port, &["--ca", p(&root_file)]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn revocation_and_a_stale_crl_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, ca_file) = root(dir.path(), "ca");
    let (chain, key, serial) = server(dir.path(), &ca, "web", vec![Usage::ServerAuth], now());
    let crl = ca
        .crl(
            &[Revoked { serial, at: now() }],
            1,
            now() - jiff::SignedDuration::from_hours(3),
            jiff::SignedDuration::from_hours(1),
        )
        .unwrap();
    let crl_file = dir.path().join("crl.pem");
    std::fs::write(&crl_file, crl).unwrap();
    let openssl = OpensslServer::start(&chain, &key, &[]);
    let (code, out) = doctor(openssl.port, &["--ca", p(&ca_file), "--crl", p(&crl_file)]);
    assert_eq!(code, 1);
    assert!(out.contains("PROBLEM (revoked)"), "{out}");
    assert!(
        out.contains("PROBLEM (crl-expired)") && out.contains("revocation check failure"),
        "{out}"
    );
}

#[test]
fn an_old_tls_version_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, _) = root(dir.path(), "ca");
    let (chain, key, _) = server(dir.path(), &ca, "web", vec![Usage::ServerAuth], now());
    let openssl =
        OpensslServer::start(&chain, &key, &["-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"]);
    let (code, out) = doctor(openssl.port, &[]);
    assert_eq!(code, 2);
    assert!(
        out.contains("PROBLEM (tls-version)") && out.contains("enable TLS 1.2"),
        "{out}"
    );
}
