//! Hot reload: a listener built on `pki::tls::server_config` takes a renewed certificate and a
//! new set of trusted client CAs without restarting; open connections keep going.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use tessera::pki::authority::{Authority, LeafRequest, generate_key};
use tessera::pki::tls::{self, ClientAuth};
use tessera::pki::{KeyType, Names, Usage, facts};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// A leaf from `ca` for 127.0.0.1 with `usage`: (chain PEM, key PEM).
fn leaf(ca: &Authority, usage: Usage) -> (String, String) {
    let key = generate_key(KeyType::EcdsaP256).unwrap();
    let request = LeafRequest {
        names: Names {
            common_name: Some("test".into()),
            ip_addresses: vec!["127.0.0.1".parse().unwrap()],
            ..Names::default()
        },
        usages: vec![usage, Usage::DigitalSignature],
        is_ca: false,
        lifetime: jiff::SignedDuration::from_hours(1),
    };
    let issued = ca.issue(&request, &key, jiff::Timestamp::now()).unwrap();
    (issued.chain_pem, key.serialize_pem())
}

fn ca(name: &str) -> Authority {
    Authority::generate(
        name,
        KeyType::EcdsaP256,
        jiff::Timestamp::now(),
        jiff::SignedDuration::from_hours(24),
    )
    .unwrap()
}

/// An echo server over TLS: one line in, the same line out, until the client closes.
async fn echo_server(
    certificate: watch::Receiver<Option<Arc<CertifiedKey>>>,
    verifier: watch::Receiver<Arc<dyn ClientCertVerifier>>,
) -> SocketAddr {
    let acceptor = TlsAcceptor::from(tls::server_config(certificate, verifier).unwrap());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let acceptor = acceptor.clone();
            // The handshake runs in the connection's own task, never in the accept loop.
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    return;
                };
                let mut lines = BufReader::new(tls);
                let mut line = String::new();
                while lines.read_line(&mut line).await.is_ok_and(|n| n > 0) {
                    if lines.get_mut().write_all(line.as_bytes()).await.is_err() {
                        return;
                    }
                    line.clear();
                }
            });
        }
    });
    address
}

async fn connect(
    address: SocketAddr,
    root_pem: &str,
    identity: Option<&(String, String)>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(certificate.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(chain.as_bytes())
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let stream = TcpStream::connect(address).await?;
    let name = ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().unwrap().into());
    TlsConnector::from(Arc::new(config))
        .connect(name, stream)
        .await
}

/// Sends a line and reads the echo: proves the session works end to end (with TLS 1.3 a
/// refused client certificate only shows here, after the handshake).
async fn round_trip(stream: &mut TlsStream<TcpStream>, text: &str) -> std::io::Result<String> {
    stream.write_all(format!("{text}\n").as_bytes()).await?;
    let mut line = String::new();
    let mut reader = BufReader::new(stream);
    reader.read_line(&mut line).await?;
    if line.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed",
        ));
    }
    Ok(line.trim_end().to_owned())
}

fn peer_serial(stream: &TlsStream<TcpStream>) -> String {
    let peer = stream.get_ref().1.peer_certificates().unwrap();
    facts::read(&peer[0]).unwrap().serial
}

fn no_client_auth() -> watch::Receiver<Arc<dyn ClientCertVerifier>> {
    let verifier = tls::client_verifier(ClientAuth::None, &[], vec![]).unwrap();
    watch::channel(verifier).1
}

#[tokio::test]
async fn a_renewed_certificate_reaches_new_connections_while_open_ones_keep_going() {
    let ca = ca("Reload CA");
    let first = leaf(&ca, Usage::ServerAuth);
    let (tx, rx) = watch::channel(Some(tls::certified_key(&first.0, &first.1).unwrap()));
    let address = echo_server(rx, no_client_auth()).await;

    let mut open = connect(address, ca.root_pem(), None).await.unwrap();
    assert_eq!(round_trip(&mut open, "before").await.unwrap(), "before");
    let first_serial = peer_serial(&open);

    let second = leaf(&ca, Usage::ServerAuth);
    tx.send_replace(Some(tls::certified_key(&second.0, &second.1).unwrap()));
    let second_serial = facts::read(&facts::pem_certificates(&second.0).unwrap()[0])
        .unwrap()
        .serial;
    assert_ne!(first_serial, second_serial);

    // The connection opened before the renewal still works, on its old certificate.
    assert_eq!(round_trip(&mut open, "after").await.unwrap(), "after");
    assert_eq!(peer_serial(&open), first_serial);
    // A new connection gets the renewed one.
    let mut fresh = connect(address, ca.root_pem(), None).await.unwrap();
    assert_eq!(round_trip(&mut fresh, "new").await.unwrap(), "new");
    assert_eq!(peer_serial(&fresh), second_serial);

    // openssl, as an independent client, sees the renewed serial too.
    let root = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(root.path(), ca.root_pem()).unwrap();
    let serial = tokio::task::spawn_blocking(move || {
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect {address} -CAfile {} -verify_return_error </dev/null 2>/dev/null | openssl x509 -noout -serial",
                root.path().display()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    })
    .await
    .unwrap();
    assert_eq!(
        serial.to_ascii_lowercase(),
        format!("serial={second_serial}")
    );
}

#[tokio::test]
async fn a_listener_without_a_certificate_fails_closed() {
    let (tx, rx) = watch::channel(None);
    let address = echo_server(rx, no_client_auth()).await;
    let ca = ca("Late CA");
    assert!(
        connect(address, ca.root_pem(), None).await.is_err(),
        "no certificate, no handshake"
    );
    let issued = leaf(&ca, Usage::ServerAuth);
    tx.send_replace(Some(tls::certified_key(&issued.0, &issued.1).unwrap()));
    let mut stream = connect(address, ca.root_pem(), None).await.unwrap();
    assert_eq!(round_trip(&mut stream, "hello").await.unwrap(), "hello");
}

#[tokio::test]
async fn trusted_client_cas_change_without_a_restart() {
    let server_ca = ca("Server CA");
    let server = leaf(&server_ca, Usage::ServerAuth);
    let (_certificate_tx, certificate_rx) =
        watch::channel(Some(tls::certified_key(&server.0, &server.1).unwrap()));
    let (old_ca, new_ca) = (ca("Old client CA"), ca("New client CA"));
    let old_client = leaf(&old_ca, Usage::ClientAuth);
    let new_client = leaf(&new_ca, Usage::ClientAuth);
    let trust = |cas: &[&Authority]| {
        let pems: Vec<String> = cas.iter().map(|c| c.root_pem().to_owned()).collect();
        tls::client_verifier(ClientAuth::Required, &pems, vec![]).unwrap()
    };
    let (verifier_tx, verifier_rx) = watch::channel(trust(&[&old_ca]));
    let address = echo_server(certificate_rx, verifier_rx).await;

    let root = server_ca.root_pem().to_owned();
    let accepted = |identity: Option<&(String, String)>| {
        let root = root.clone();
        let identity = identity.cloned();
        async move {
            match connect(address, &root, identity.as_ref()).await {
                Ok(mut stream) => round_trip(&mut stream, "x").await.is_ok(),
                Err(_) => false,
            }
        }
    };
    assert!(accepted(Some(&old_client)).await);
    assert!(
        !accepted(Some(&new_client)).await,
        "a CA not yet trusted is refused"
    );
    assert!(!accepted(None).await, "required means required");
    let mut open = connect(address, server_ca.root_pem(), Some(&old_client))
        .await
        .unwrap();
    assert_eq!(round_trip(&mut open, "kept").await.unwrap(), "kept");

    verifier_tx.send_replace(trust(&[&new_ca]));
    assert!(
        accepted(Some(&new_client)).await,
        "the new CA is trusted at once"
    );
    assert!(
        !accepted(Some(&old_client)).await,
        "the old CA no longer is"
    );
    // The session verified under the old set stays up.
    assert_eq!(round_trip(&mut open, "still").await.unwrap(), "still");
}

#[tokio::test]
async fn a_connection_survives_a_renewal_made_by_the_reconciler() {
    use tessera::reconcile::{Config, Reconciler};
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("pki.yaml"),
        "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: ca\nspec:\n  selfSigned: {}\n---\napiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: server\nspec:\n  issuerRef:\n    name: ca\n  ipAddresses: [127.0.0.1]\n  usages: [server auth]\n  duration: 1h\n  renewBefore: 20m\n",
    )
    .unwrap();
    let mut reconciler = Reconciler::new(Config {
        state_dir: state.path().to_path_buf(),
        config_dir: config.path().to_path_buf(),
        options: Default::default(),
        environment: Default::default(),
        clock: Default::default(),
        runtime: None,
        gateway: None,
        secrets: None,
        leadership: tessera::leader::Leadership::always(),
        shared_database: false,
    });
    let snapshot = tessera::sources::dir::DirSource::new(config.path(), vec![])
        .unwrap()
        .scan();
    let files = state.path().join("certificates/default/server");
    let load = || {
        let chain = std::fs::read_to_string(files.join("tls.crt")).unwrap();
        let key = std::fs::read_to_string(files.join("tls.key")).unwrap();
        tls::certified_key(&chain, &key).unwrap()
    };
    // Issued 40 minutes ago, so the renewal time is now and both certificates are valid to
    // the real clock the handshakes check.
    let start = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(40);
    let renew_at = reconciler.pass(&snapshot, start).unwrap().wake.unwrap();
    let root = std::fs::read_to_string(files.join("ca.crt")).unwrap();
    let (tx, rx) = watch::channel(Some(load()));
    let address = echo_server(rx, no_client_auth()).await;
    let mut open = connect(address, &root, None).await.unwrap();
    assert_eq!(round_trip(&mut open, "one").await.unwrap(), "one");
    let before = peer_serial(&open);

    // The clock reaches the renewal time (one-hour certificate, renewed 20 minutes before its end).
    reconciler.pass(&snapshot, renew_at).unwrap();
    tx.send_replace(Some(load()));
    assert_eq!(
        round_trip(&mut open, "two").await.unwrap(),
        "two",
        "the open connection survives"
    );
    let fresh = connect(address, &root, None).await.unwrap();
    assert_ne!(
        peer_serial(&fresh),
        before,
        "a new connection sees the renewed certificate"
    );
}

#[tokio::test]
async fn a_revoked_client_certificate_is_refused_at_the_handshake() {
    use rustls::pki_types::CertificateRevocationListDer;
    use tessera::pki::authority::Revoked;
    let server_ca = ca("Server CA");
    let server = leaf(&server_ca, Usage::ServerAuth);
    let (_certificate_tx, certificate_rx) =
        watch::channel(Some(tls::certified_key(&server.0, &server.1).unwrap()));
    let clients = ca("Client CA");
    let good = leaf(&clients, Usage::ClientAuth);
    let bad = leaf(&clients, Usage::ClientAuth);
    let bad_serial = facts::read(&facts::pem_certificates(&bad.0).unwrap()[0])
        .unwrap()
        .serial;
    let crl_pem = clients
        .crl(
            &[Revoked {
                serial: bad_serial,
                at: jiff::Timestamp::now(),
            }],
            1,
            jiff::Timestamp::now(),
            jiff::SignedDuration::from_hours(24),
        )
        .unwrap();
    let crl = CertificateRevocationListDer::from_pem_slice(crl_pem.as_bytes()).unwrap();
    let verifier = tls::client_verifier(
        ClientAuth::Required,
        &[clients.root_pem().to_owned()],
        vec![crl],
    )
    .unwrap();
    let address = echo_server(certificate_rx, watch::channel(verifier).1).await;

    let mut accepted = connect(address, server_ca.root_pem(), Some(&good))
        .await
        .unwrap();
    assert_eq!(round_trip(&mut accepted, "ok").await.unwrap(), "ok");
    let refused = match connect(address, server_ca.root_pem(), Some(&bad)).await {
        Ok(mut stream) => round_trip(&mut stream, "no").await.is_err(),
        Err(_) => true,
    };
    assert!(refused, "a revoked client certificate is refused");
}
