//! A hostile client against the real `tessera` binary: values with newlines stay escaped in
//! its log, token guessing is rate-limited and logged once, and the admin API answers only
//! under local names.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{eventually, free_port, get, quickstart_copy, server_ca, wait_for_port};

/// What a hostile client puts after a newline: a line of its own, if the log let it.
const FORGED: &str = "2026-01-01T00:00:00Z  INFO forged: deployment result";

/// `tessera serve` on the quickstart as a child process, its stderr in a file; killed when
/// dropped.
struct Served {
    child: Child,
    config: tempfile::TempDir,
    /// Outside the configuration directory, which the server watches.
    logs: tempfile::TempDir,
    admin: SocketAddr,
    https: String,
}

impl Served {
    async fn start() -> Self {
        let config = quickstart_copy();
        let logs = tempfile::tempdir().unwrap();
        let stderr = std::fs::File::create(logs.path().join("stderr")).unwrap();
        let port = free_port();
        let child = Command::new(assert_cmd::cargo::cargo_bin("tessera"))
            .arg("serve")
            .arg("--config")
            .arg(config.path())
            .arg(format!("--admin-address=127.0.0.1:{port}"))
            .env("TESSERA_ADMIN_HOSTS", "tessera.internal,admin.example")
            .env("TESSERA_LOG", "info")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("the tessera binary runs");
        let mut served = Self {
            child,
            config,
            logs,
            admin: SocketAddr::from(([127, 0, 0, 1], port)),
            https: String::new(),
        };
        tokio::task::block_in_place(|| wait_for_port(port, "tessera serve"));
        let admin = served.admin;
        served.https = eventually("the Server serving", || async move {
            let (status, body) = get(admin, "/api/v1/objects/Server/tessera").await;
            let server: serde_json::Value =
                (status == 200).then(|| serde_json::from_str(&body).ok())??;
            server["details"]["addresses"][0]
                .as_str()
                .map(str::to_owned)
        })
        .await
        .0;
        served
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr")).unwrap()
    }

    fn ca(&self) -> PathBuf {
        server_ca(self.config.path())
    }

    /// POSTs `body` to `path` of the agent-facing HTTPS listener with `curl`: the status
    /// code and the response head.
    fn post(&self, path: &str, content_type: &str, body: &str) -> (u16, String) {
        post(&self.https, &self.ca(), path, content_type, body)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn post(https: &str, ca: &Path, path: &str, content_type: &str, body: &str) -> (u16, String) {
    let output = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-D",
            "-",
            "--max-time",
            "10",
            "--cacert",
        ])
        .arg(ca)
        .args(["-H", &format!("content-type: {content_type}")])
        .args(["--data-binary", body])
        .arg(format!("https://{https}{path}"))
        .output()
        .expect("curl is installed by scripts/setup.sh");
    let head = String::from_utf8_lossy(&output.stdout).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, head)
}

/// A GET of the admin API naming `host`: (status, body).
async fn get_as(address: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newlines_from_the_network_never_start_a_log_line_of_their_own() {
    let served = Served::start().await;
    // `&#10;` is a newline once the XML is read. The OCS reader refuses control characters in
    // a device id and a result code outright (and never repeats them): 400, nothing logged
    // of them.
    for (device, code) in [
        (format!("evil-2026-01-01-00-00-00&#10;{FORGED}"), "SUCCESS"),
        (
            "hostile-2026-01-01-00-00-00".to_owned(),
            &*format!("SUCCESS&#10;{FORGED}&#13;&#27;[2J"),
        ),
    ] {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><REQUEST DEVICEID=\"{device}\" \
             ERR=\"{code}\" ID=\"1234567890\" QUERY=\"DOWNLOAD\" />"
        );
        let (status, head) = tokio::task::block_in_place(|| {
            served.post("/ocsinventory", "application/x-compress", &xml)
        });
        assert_eq!(status, 400, "{head}");
    }
    // A value that is logged as sent: the host name of an enrollment with a bad token.
    let enrollment = serde_json::json!({
        "token": "not-a-token",
        "csr": "-",
        "hostname": format!("pc-01\n{FORGED}\r\u{1b}[2J"),
    })
    .to_string();
    let (status, head) =
        tokio::task::block_in_place(|| served.post("/v1/enroll", "application/json", &enrollment));
    assert!(status >= 400, "{head}");
    let (log, _) = eventually("the enrollment in the log", || async {
        let log = served.log();
        log.contains("pc-01").then_some(log)
    })
    .await;
    for line in log.lines() {
        assert!(
            !line.starts_with(FORGED) && !line.contains('\r') && !line.contains('\x1b'),
            "a forged line in the log:\n{log}"
        );
    }
    assert!(
        !log.contains("evil-2026"),
        "a refused device id was logged:\n{log}"
    );
    assert_eq!(
        log.matches(&format!("pc-01\\n{FORGED}")).count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guessing_is_rate_limited_per_address_and_logged_once() {
    let served = Served::start().await;
    let guess = |n: usize| {
        format!(
            r#"{{"token":"tsr_{n:012x}_{}","csr":"-","hostname":"guesser"}}"#,
            "A".repeat(43)
        )
    };
    let mut refused = 0;
    let mut limited = None;
    tokio::task::block_in_place(|| {
        // Refills make the exact count depend on speed: at least the burst goes through.
        for n in 0..60 {
            let (status, head) = served.post("/v1/enroll", "application/json", &guess(n));
            match status {
                403 => refused += 1,
                429 => {
                    limited = Some(head);
                    break;
                }
                other => panic!("enrollment answered {other}: {head}"),
            }
        }
    });
    let head = limited.expect("token guessing was never limited");
    assert!(refused >= 10, "only {refused} attempts before 429");
    let retry_after = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("retry-after")
                .then(|| value.trim().parse::<u64>().ok())?
        })
        .expect("a Retry-After header");
    assert!(
        (1..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    // More of the same stay limited, and the log gets one line for each kind.
    tokio::task::block_in_place(|| {
        for n in 100..105 {
            let (status, head) = served.post("/v1/enroll", "application/json", &guess(n));
            assert!(matches!(status, 403 | 429), "{head}");
        }
    });
    let (log, _) = eventually("the limit in the log", || async {
        let log = served.log();
        log.contains("enrollment attempts over the limit refused")
            .then_some(log)
    })
    .await;
    assert_eq!(log.matches("enrollment refused").count(), 1, "{log}");
    assert_eq!(
        log.matches("enrollment attempts over the limit refused")
            .count(),
        1,
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_only_under_local_names_and_configured_ones() {
    let served = Served::start().await;
    let admin = served.admin;
    let port = admin.port();
    let (status, body) = get_as(admin, "evil.example", "/api/v1/computers/x").await;
    assert_eq!(status, 421, "{body}");
    assert!(body.contains("--admin-host"), "{body}");
    assert_eq!(
        get_as(admin, &format!("rebind.example:{port}"), "/readyz")
            .await
            .0,
        421
    );
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        format!("tessera.internal:{port}"),
        "admin.example".to_owned(),
    ] {
        let (status, body) = get_as(admin, &host, "/api/v1/objects").await;
        assert_eq!(status, 200, "{host}: {body}");
    }
    assert_eq!(get_as(admin, "evil.example", "/healthz").await.0, 200);
    let (log, _) = eventually("the refusal in the log", || async {
        let log = served.log();
        log.contains("foreign host name refused").then_some(log)
    })
    .await;
    assert_eq!(log.matches("foreign host name refused").count(), 1, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshakes_naming_an_ip_address_in_sni_are_warned_about_once() {
    let served = Served::start().await;
    tokio::task::block_in_place(|| {
        for _ in 0..5 {
            // rustls warns for each ClientHello whose server name is an IP address.
            let output = Command::new("openssl")
                .args([
                    "s_client",
                    "-connect",
                    &served.https,
                    "-servername",
                    "10.0.0.1",
                ])
                .stdin(Stdio::null())
                .output()
                .expect("openssl is installed by scripts/setup.sh");
            assert!(
                String::from_utf8_lossy(&output.stdout).contains("BEGIN CERTIFICATE"),
                "no handshake"
            );
        }
    });
    let (log, _) = eventually("the warning in the log", || async {
        let log = served.log();
        log.contains("IP address presented as hostname")
            .then_some(log)
    })
    .await;
    assert_eq!(
        log.matches("IP address presented as hostname").count(),
        1,
        "{log}"
    );
}
