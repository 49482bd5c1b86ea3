//! A hostile OCS client against `tessera serve` on the quickstart, over HTTPS on loopback:
//! deeply nested XML, an 8 MiB result code and a forged result, each of which once froze
//! the server, filled its memory, database and metrics, or stopped a deployment.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tessera::protocol::ocs::{self, Encoding};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{addresses, eventually, get, get_json, quickstart_copy, start};

/// How long a refusal of the nested document may take: it took 127 s before the reader
/// was made linear and bounded; milliseconds now, seconds on a loaded test machine.
const REFUSED_WITHIN: Duration = Duration::from_secs(5);

/// One OCS request over a fresh TLS connection: the status and the body (inflated when
/// the server answered in zlib), and how long it took.
pub(crate) async fn post(https: SocketAddr, ca: &Path, body: &[u8]) -> (u16, Vec<u8>, Duration) {
    let started = Instant::now();
    let tls =
        tessera::pki::tls::client_config(&std::fs::read_to_string(ca).unwrap(), None).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let mut stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let head = format!(
        "POST /ocsinventory HTTP/1.1\r\nhost: 127.0.0.1\r\nuser-agent: hostile\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let took = started.elapsed();
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP answer");
    let head = String::from_utf8_lossy(&answer[..split]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let mut body = answer[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    if status == 200
        && !body.is_empty()
        && let Ok((xml, _)) = ocs::decode_body(&body)
    {
        body = xml;
    }
    (status, body, took)
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = body.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&body[..end]).unwrap().trim(), 16)
            .unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&body[end + 2..end + 2 + size]);
        body = &body[end + 4 + size..];
    }
    out
}

pub(crate) fn zlib(xml: &str) -> Vec<u8> {
    ocs::encode_body(xml, Encoding::Zlib)
}

pub(crate) fn prolog(device: &str) -> Vec<u8> {
    zlib(&format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><REQUEST><DEVICEID>{device}</DEVICEID><QUERY>PROLOG</QUERY></REQUEST>"
    ))
}

/// An inventory that makes `device` a target of the quickstart's lab packages.
fn inventory(device: &str) -> Vec<u8> {
    zlib(&format!(
        "<REQUEST><CONTENT><ACCOUNTINFO><KEYNAME>TAG</KEYNAME><KEYVALUE>lab</KEYVALUE></ACCOUNTINFO><HARDWARE><NAME>lab-pc</NAME><OSNAME>Debian GNU/Linux 12</OSNAME></HARDWARE></CONTENT><DEVICEID>{device}</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>"
    ))
}

pub(crate) fn result(device: &str, id: &str, code: &str) -> Vec<u8> {
    zlib(&format!(
        "<REQUEST DEVICEID=\"{device}\" ERR=\"{code}\" ID=\"{id}\" QUERY=\"DOWNLOAD\" />"
    ))
}

/// The quickstart served, with its HTTPS address and the CA its clients trust, once
/// Package/hello is built (its id is returned).
async fn quickstart() -> (
    tempfile::TempDir,
    tessera::cli::Running,
    SocketAddr,
    std::path::PathBuf,
    String,
) {
    let dir = quickstart_copy();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    let ca = crate::support::server_ca(dir.path());
    let (hello, _) = eventually("Package/hello built", || async {
        let (status, body) = get(running.admin_address, "/api/v1/objects/Package/hello").await;
        let object: serde_json::Value =
            (status == 200).then(|| serde_json::from_str(&body).ok())??;
        object["details"]["packageId"].as_str().map(str::to_owned)
    })
    .await;
    (dir, running, https.parse().unwrap(), ca, hello)
}

/// The state and code of `device`'s deployment of Activation/hello.
async fn hello_state(running: &tessera::cli::Running, device: &str) -> (String, String) {
    let found = get_json(
        running.admin_address,
        &format!("/api/v1/computers/{device}"),
    )
    .await;
    let hello = found[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["activation"] == "default/hello")
        .unwrap_or_else(|| panic!("no deployment of hello: {found}"))
        .clone();
    (
        hello["state"].as_str().unwrap().to_owned(),
        hello["code"].as_str().unwrap_or("").to_owned(),
    )
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_xml_of_100000_levels_is_refused_at_once_while_prologs_keep_being_answered() {
    let (_dir, running, https, ca, _) = quickstart().await;
    let mut nested = String::from(
        "<REQUEST><DEVICEID>nested-2026-01-01-00-00-00</DEVICEID><QUERY>PROLOG</QUERY>",
    );
    nested.push_str(&"<a>".repeat(100_000));
    nested.push_str(&"</a>".repeat(100_000));
    nested.push_str("</REQUEST>");
    let nested = zlib(&nested);
    assert!(nested.len() < 2048, "small on the wire: {}", nested.len());

    // PROLOGs from four computers, sent back to back while the attack runs.
    let stop = Arc::new(AtomicBool::new(false));
    let prologs: Vec<_> = (0..4)
        .map(|n| {
            let (stop, ca) = (stop.clone(), ca.clone());
            tokio::spawn(async move {
                let body = prolog(&format!("prolog-{n}-2026-01-01-00-00-00"));
                let mut took = Vec::new();
                while !stop.load(Ordering::Relaxed) || took.len() < 5 {
                    let (status, reply, elapsed) = post(https, &ca, &body).await;
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
                    took.push(elapsed);
                }
                took
            })
        })
        .collect();
    let attacks: Vec<_> = (0..2)
        .map(|_| {
            let (ca, nested) = (ca.clone(), nested.clone());
            tokio::spawn(async move { post(https, &ca, &nested).await })
        })
        .collect();
    for attack in attacks {
        let (status, body, took) = attack.await.unwrap();
        println!("the nested request was answered {status} in {took:?}");
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
        assert!(took < REFUSED_WITHIN, "{took:?}");
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("deeper than"), "{body}");
        assert!(
            body.len() < 100,
            "the answer does not echo the request: {body}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let mut took = Vec::new();
    for prolog in prologs {
        took.extend(prolog.await.unwrap());
    }
    took.sort();
    let p99 = percentile(&took, 0.99);
    println!(
        "{} PROLOGs during the attack (each a new TLS connection): p50 {:?}, p99 {p99:?}, max {:?}",
        took.len(),
        percentile(&took, 0.5),
        took[took.len() - 1]
    );
    assert!(p99 < REFUSED_WITHIN, "PROLOG p99 {p99:?}");
    let (status, found) = get(
        running.admin_address,
        "/api/v1/computers/nested-2026-01-01-00-00-00",
    )
    .await;
    assert_eq!(status, 404, "the nested request stored nothing: {found}");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_8_mib_result_code_is_refused_and_kept_nowhere() {
    let (dir, running, https, ca, hello) = quickstart().await;
    let device = "lab-big-2026-01-01-00-00-00";
    assert_eq!(post(https, &ca, &inventory(device)).await.0, 200);
    let (status, reply, _) = post(https, &ca, &prolog(device)).await;
    assert_eq!(status, 200);
    assert!(
        String::from_utf8_lossy(&reply).contains(&hello),
        "hello is offered: {}",
        String::from_utf8_lossy(&reply)
    );
    let code = "E".repeat(8 << 20);
    let body = result(device, &hello, &code);
    println!("an 8 MiB result code is {} bytes on the wire", body.len());
    for _ in 0..3 {
        let (status, answer, took) = post(https, &ca, &body).await;
        assert_eq!(status, 400, "{}", String::from_utf8_lossy(&answer));
        assert!(answer.len() < 100, "{}", String::from_utf8_lossy(&answer));
        assert!(took < REFUSED_WITHIN, "{took:?}");
    }
    let (state, stored) = hello_state(&running, device).await;
    assert_eq!((state.as_str(), stored.as_str()), ("notified", ""));
    let (_, history) = get(
        running.admin_address,
        &format!("/api/v1/computers/{device}"),
    )
    .await;
    assert!(!history.contains("EEEEEEEE"), "not in the history");
    let (_, metrics) = get(running.admin_address, "/metrics").await;
    assert!(!metrics.contains("EEEEEEEE"), "not a metric label");
    assert!(
        metrics.len() < 64 << 10,
        "{} bytes of metrics",
        metrics.len()
    );
    let database = std::fs::metadata(dir.path().join(".tessera/state.db"))
        .unwrap()
        .len();
    assert!(database < 8 << 20, "the database is {database} bytes");
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_success_leaves_the_target_waiting_so_the_real_agent_is_still_offered_it() {
    let (_dir, running, https, ca, hello) = quickstart().await;
    let device = "lab-real-2026-01-01-00-00-00";
    // The real computer sends its inventory: it is a target, waiting for its next PROLOG.
    assert_eq!(post(https, &ca, &inventory(device)).await.0, 200);
    assert_eq!(hello_state(&running, device).await.0, "waiting");

    // Someone who knows the device id claims it installed the package.
    let (status, answer, _) = post(https, &ca, &result(device, &hello, "SUCCESS")).await;
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&answer));
    assert_eq!(
        hello_state(&running, device).await,
        ("waiting".to_owned(), String::new())
    );
    let (_, metrics) = get(running.admin_address, "/metrics").await;
    assert!(
        metrics.contains("tessera_deployment_results_unfiled_total{reason=\"not_offered\"} 1"),
        "{metrics}"
    );
    // And for a device that does not exist: nothing is created.
    let stranger = "stranger-2026-01-01-00-00-00";
    let (status, _, _) = post(https, &ca, &result(stranger, &hello, "SUCCESS")).await;
    assert_eq!(status, 400);
    let (status, found) = get(
        running.admin_address,
        &format!("/api/v1/computers/{stranger}"),
    )
    .await;
    assert_eq!(status, 404, "{found}");

    // The real agent is still offered the package, and its own result is filed.
    let (status, reply, _) = post(https, &ca, &prolog(device)).await;
    assert_eq!(status, 200);
    let reply = String::from_utf8_lossy(&reply).to_string();
    assert!(reply.contains(&format!("ID=\"{hello}\"")), "{reply}");
    let (status, _, _) = post(https, &ca, &result(device, &hello, "SUCCESS_0")).await;
    assert_eq!(status, 200);
    assert_eq!(
        hello_state(&running, device).await,
        ("success".to_owned(), "SUCCESS_0".to_owned())
    );
    running.stop().await.unwrap();
}
