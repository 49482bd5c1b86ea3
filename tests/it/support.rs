//! Helpers shared by the integration tests.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for something that should happen within about a second.
pub(crate) const PATIENCE: Duration = Duration::from_secs(10);

/// A minimal HTTP/1.1 GET, enough for the admin API: (status, body).
pub(crate) async fn get(address: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(address).await.expect("connect");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

/// GET returning JSON.
pub(crate) async fn get_json(address: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = get(address, path).await;
    assert_eq!(status, 200, "GET {path}: {body}");
    serde_json::from_str(&body).expect("JSON body")
}

fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

/// Polls `check` until it returns Some, or panics after `PATIENCE` with `what`.
/// Returns the value and how long it took.
pub(crate) async fn eventually<T, F, Fut>(what: &str, mut check: F) -> (T, Duration)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return (value, start.elapsed());
        }
        assert!(start.elapsed() < PATIENCE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Copies a directory tree.
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The quickstart example, copied into a fresh temporary directory.
pub(crate) fn quickstart_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart"),
        dir.path(),
    );
    // A state directory left by a manual run of the example is not part of it.
    let _ = std::fs::remove_dir_all(dir.path().join(".tessera"));
    // Tests listen on loopback only, on free ports, and agents do not pause.
    let server = dir.path().join("server.yaml");
    let text = std::fs::read_to_string(&server).unwrap();
    let text = text
        .replace("https: 0.0.0.0:8443", "https: 127.0.0.1:0")
        .replace("http: 0.0.0.0:8080", "http: 127.0.0.1:0")
        .replace("fragLatency: 1s", "fragLatency: 0s")
        .replace("cycleLatency: 5s", "cycleLatency: 0s")
        .replace("periodLatency: 1s", "periodLatency: 0s");
    assert!(text.contains("127.0.0.1:0") && text.contains("cycleLatency: 0s"));
    std::fs::write(&server, text).unwrap();
    dir
}

/// Waits until something accepts connections on `port` of 127.0.0.1 (a server a test
/// started as a separate process), or panics after `PATIENCE` naming `what`.
pub(crate) fn wait_for_port(port: u16, what: &str) {
    let start = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < PATIENCE, "{what} did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A port of 127.0.0.1 that was free a moment ago (for servers started as processes, which
/// must be told their port).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process a test started (a `tessera serve`), killed and reaped when dropped: a
/// test that panics leaves no process behind, and none still writing into its temporary
/// directory while that is being removed. Declare it after the directory it writes into, so
/// it is dropped first.
pub(crate) struct Reaped(pub(crate) std::process::Child);

impl Reaped {
    /// Panics, naming `what` it was waiting for, when the process has exited.
    pub(crate) fn assert_running(&mut self, what: &str) {
        if let Ok(Some(status)) = self.0.try_wait() {
            panic!("the child process exited ({status}) while waiting for {what}");
        }
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `tessera serve --config CONFIG` as a child process with its admin API on loopback port
/// `admin`, its output discarded.
pub(crate) fn serve_child(config: &std::path::Path, admin: u16) -> Reaped {
    Reaped(
        std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
            .args(["serve", "--config"])
            .arg(config)
            .args(["--admin-address", &format!("127.0.0.1:{admin}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("tessera serve starts"),
    )
}

/// A static web server (`python3 -m http.server`) on loopback serving `dir`, killed when
/// dropped.
pub(crate) struct StaticServer {
    pub port: u16,
    child: std::process::Child,
}

impl StaticServer {
    /// Starts it and waits until it accepts connections.
    pub(crate) fn start(dir: &Path) -> Self {
        let port = free_port();
        let child = std::process::Command::new("python3")
            .args([
                "-m",
                "http.server",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--directory")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 is installed by scripts/setup.sh");
        wait_for_port(port, "static server");
        Self { port, child }
    }
}

impl Drop for StaticServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP CONNECT proxy on loopback, as a corporate proxy looks to an agent.
/// Returns its address and the number of tunnels it has opened so far.
pub(crate) async fn connect_proxy() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let (address, tunnels, _) = recording_connect_proxy().await;
    (address, tunnels)
}

/// Request heads a proxy was sent, in order.
pub(crate) type Heads = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// [`connect_proxy`], also recording every request head it is sent (credentials included).
pub(crate) async fn recording_connect_proxy() -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
    Heads,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let tunnels = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = tunnels.clone();
    let heads = Heads::default();
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (counted, seen) = (counted.clone(), seen.clone());
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
                    if client.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                seen.lock().unwrap().push(head.clone());
                let Some(target) = head
                    .strip_prefix("CONNECT ")
                    .and_then(|rest| rest.split_whitespace().next())
                else {
                    let _ = client.write_all(b"HTTP/1.1 405 CONNECT only\r\n\r\n").await;
                    return;
                };
                let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let _ = client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await;
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
    });
    (address, tunnels, heads)
}

/// `tessera serve` in-process on `config`, its admin API on a free loopback port.
pub(crate) async fn start(config: &Path) -> tessera::cli::Running {
    tessera::cli::start(tessera::cli::ServeArgs::for_config(config))
        .await
        .expect("serve starts")
}

/// The Server's bound addresses once it is ready: (HTTPS, plain HTTP).
pub(crate) async fn addresses(running: &tessera::cli::Running) -> (String, String) {
    eventually("the Server serving", || async {
        let (status, body) = get(running.admin_address, "/api/v1/objects/Server/tessera").await;
        let server: serde_json::Value =
            (status == 200).then(|| serde_json::from_str(&body).unwrap())?;
        let list = server["details"]["addresses"].as_array()?.clone();
        (list.len() == 2).then(|| {
            (
                list[0].as_str().unwrap().to_owned(),
                list[1].as_str().unwrap().to_owned(),
            )
        })
    })
    .await
    .0
}

/// The quickstart (whose Server enrolls agents with its CA), served, with its Server's
/// `certificateDuration` for agents replaced when `duration` is given: the directory, the
/// running server and its HTTPS address.
pub(crate) async fn quickstart_enrolling(
    duration: Option<&str>,
) -> (tempfile::TempDir, tessera::cli::Running, String) {
    let dir = quickstart_copy();
    if let Some(duration) = duration {
        let server = dir.path().join("server.yaml");
        let text = std::fs::read_to_string(&server).unwrap();
        assert!(text.contains("certificateDuration: 720h"));
        std::fs::write(
            &server,
            text.replace(
                "certificateDuration: 720h",
                &format!("certificateDuration: {duration}"),
            ),
        )
        .unwrap();
    }
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    (dir, running, https)
}

/// Stores an enrollment token in the state database under `state`, as
/// `tessera token create` does, usable `max_uses` times for `expires_in` seconds.
pub(crate) fn token(state: &Path, max_uses: i64, expires_in: i64) -> tessera::pki::token::Token {
    let token = tessera::pki::token::Token::generate();
    let now = jiff::Timestamp::now().as_second();
    tessera::store::db::Database::open(&state.join("state.db"))
        .unwrap()
        .create_token(&tessera::store::db::TokenRecord {
            id: token.id.clone(),
            secret_sha256: token.secret_sha256(),
            note: String::new(),
            created_at: now,
            expires_at: now + expires_in,
            max_uses,
            uses: 0,
            last_used_at: None,
            revoked_at: None,
        })
        .unwrap();
    token
}

/// The CA certificate agents trust for the quickstart's server, once issued.
pub(crate) fn server_ca(config: &Path) -> std::path::PathBuf {
    config.join(".tessera/certificates/default/tessera-server/ca.crt")
}

/// The package id of Package/`name`, as the admin API shows it.
pub(crate) async fn package_id(running: &tessera::cli::Running, name: &str) -> String {
    let package = get_json(
        running.admin_address,
        &format!("/api/v1/objects/Package/{name}"),
    )
    .await;
    package["details"]["packageId"]
        .as_str()
        .unwrap_or_else(|| panic!("Package/{name} has no id: {package}"))
        .to_owned()
}

/// The serial of the certificate the TLS server at `address` presents, verified against
/// `root_pem`; `None` while it does not answer or presents none.
pub(crate) async fn served_serial(address: &str, root_pem: &str) -> Option<String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(root_pem.as_bytes()) {
        roots.add(certificate.ok()?).ok()?;
    }
    let config = rustls::ClientConfig::builder_with_provider(tessera::pki::tls::provider())
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let name = ServerName::IpAddress("127.0.0.1".parse::<std::net::IpAddr>().ok()?.into());
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, stream)
        .await
        .ok()?;
    let peer = tls.get_ref().1.peer_certificates()?;
    Some(tessera::pki::facts::read(&peer[0]).ok()?.serial)
}
