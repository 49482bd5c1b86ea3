//! `/metrics` of a running server after a deployment: two result codes that differ only in
//! punctuation stay two series with their own counts, the certificate expiry gauge is the
//! served certificate's notAfter, and Prometheus's own `promtool check metrics` accepts
//! the page.

use std::net::SocketAddr;
use std::path::Path;

use crate::hostile_ocs::{post, prolog, result, zlib};
use crate::support::{addresses, eventually, get, quickstart_copy, server_ca, start};

/// An inventory that makes `device` a target of the quickstart's lab packages.
fn inventory(device: &str) -> Vec<u8> {
    zlib(&format!(
        "<REQUEST><CONTENT><ACCOUNTINFO><KEYNAME>TAG</KEYNAME><KEYVALUE>lab</KEYVALUE></ACCOUNTINFO><HARDWARE><NAME>{device}</NAME><OSNAME>Debian GNU/Linux 12</OSNAME></HARDWARE></CONTENT><DEVICEID>{device}</DEVICEID><QUERY>INVENTORY</QUERY></REQUEST>"
    ))
}

/// The value of the series `series` (name and labels, exactly as written) in `text`.
pub(crate) fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// The notAfter of the certificate served on `https`, in seconds since the epoch.
async fn served_not_after(https: SocketAddr, ca: &Path) -> i64 {
    let tls =
        tessera::pki::tls::client_config(&std::fs::read_to_string(ca).unwrap(), None).unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tcp = tokio::net::TcpStream::connect(https).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let der = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (_, certificate) = x509_parser::parse_x509_certificate(&der).unwrap();
    certificate.validity().not_after.timestamp()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_deployment_keep_two_close_codes_apart_and_show_the_served_expiry() {
    let dir = quickstart_copy();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    let https: SocketAddr = https.parse().unwrap();
    let ca = server_ca(dir.path());
    let (hello, _) = eventually("Package/hello built", || async {
        let (status, body) = get(running.admin_address, "/api/v1/objects/Package/hello").await;
        let object: serde_json::Value =
            (status == 200).then(|| serde_json::from_str(&body).ok())??;
        object["details"]["packageId"].as_str().map(str::to_owned)
    })
    .await;

    // Three computers are offered hello; two fail with one code, the third with a code
    // that only lacks its punctuation.
    let codes = [
        ("lab-a-2026-01-01-00-00-00", "ERR-BAD.X"),
        ("lab-b-2026-01-01-00-00-00", "ERR-BAD.X"),
        ("lab-c-2026-01-01-00-00-00", "ERRBADX"),
    ];
    for (device, code) in codes {
        assert_eq!(post(https, &ca, &inventory(device)).await.0, 200);
        let (status, reply, _) = post(https, &ca, &prolog(device)).await;
        assert_eq!(status, 200);
        let reply = String::from_utf8_lossy(&reply).to_string();
        assert!(reply.contains(&format!("ID=\"{hello}\"")), "{reply}");
        let (status, answer, _) = post(https, &ca, &result(device, &hello, code)).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&answer));
    }

    let fleet = "tessera_fleet_result_codes{activation=\"default/hello\",code=";
    let (text, _) = eventually("the codes in the fleet gauges", || async {
        let (status, text) = get(running.admin_address, "/metrics").await;
        (status == 200 && value(&text, &format!("{fleet}\"ERR-BAD.X\"}}")) == Some(2.0))
            .then_some(text)
    })
    .await;
    assert_eq!(
        value(&text, &format!("{fleet}\"ERRBADX\"}}")),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "tessera_deployment_results_total{code=\"ERR-BAD.X\"}"
        ),
        Some(2.0)
    );
    assert_eq!(
        value(&text, "tessera_deployment_results_total{code=\"ERRBADX\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "tessera_fleet_computers{activation=\"default/hello\",state=\"error\"}"
        ),
        Some(3.0),
        "{text}"
    );

    // cert-manager's expiry gauge: the notAfter of the certificate the listener serves.
    let served = served_not_after(https, &ca).await;
    assert_eq!(
        value(
            &text,
            "tessera_certificate_expiration_timestamp_seconds{name=\"tessera-server\",namespace=\"default\"}"
        ),
        Some(served as f64),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "tessera_certificate_ready_status{name=\"tessera-server\",namespace=\"default\",condition=\"True\"}"
        ),
        Some(1.0)
    );
    // The OCS requests above were timed under their endpoint and listener.
    assert!(
        text.contains(
            "tessera_http_request_duration_seconds_count{endpoint=\"ocs\",listener=\"https\"}"
        ),
        "{text}"
    );

    // This server alone leads; its passes, builds and process are measured.
    assert_eq!(value(&text, "tessera_leader"), Some(1.0), "{text}");
    assert_eq!(
        value(
            &text,
            "tessera_object_ready_status{kind=\"Package\",namespace=\"default\",name=\"hello\",condition=\"True\"}"
        ),
        Some(1.0)
    );
    for counted in [
        "tessera_reconcile_duration_seconds_count",
        "tessera_package_build_duration_seconds_count",
        "process_resident_memory_bytes",
    ] {
        assert!(value(&text, counted) > Some(0.0), "{counted}: {text}");
    }
    assert!(text.contains("tessera_build_info{version=\""), "{text}");

    promtool_accepts(&text);
    running.stop().await.unwrap();
}

/// `promtool check metrics` (Debian's `prometheus` package) finds no problem in `text`;
/// skipped, saying so, where promtool is not installed.
pub(crate) fn promtool_accepts(text: &str) {
    use std::io::Write;
    let child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) => {
            println!(
                "SKIPPED promtool check: promtool not runnable ({error}); scripts/setup.sh installs it"
            );
            return;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "promtool check metrics:\n{said}");
    assert!(said.trim().is_empty(), "promtool check metrics:\n{said}");
}
