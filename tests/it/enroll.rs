//! Enrollment of Tessera's own agents: a token and a certificate request in, a client
//! certificate out, checked with `openssl` and used with `curl --cert`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tessera::pki::token::Token;
use tessera::store::db::Database;

use crate::support::eventually;

/// A client certificate for some agent from `authority`, valid for `lifetime` from `at`.
fn client_certificate(
    authority: &tessera::pki::authority::Authority,
    key: &rcgen::KeyPair,
    lifetime: jiff::SignedDuration,
    at: jiff::Timestamp,
) -> tessera::pki::authority::Issued {
    authority
        .issue(
            &tessera::pki::authority::LeafRequest {
                names: tessera::pki::Names {
                    common_name: Some("agent".into()),
                    uris: vec![tessera::pki::AgentId::new("0123").unwrap().uri()],
                    ..Default::default()
                },
                usages: vec![tessera::pki::Usage::ClientAuth],
                is_ca: false,
                lifetime,
            },
            key,
            at,
        )
        .unwrap()
}

/// A key pair and a certificate request for it, asking for a name it must not get.
fn key_and_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["server.example".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key.serialize_pem(), csr)
}

/// `curl` to the agent-facing server: (HTTP status, body); status 0 when TLS failed.
pub(crate) fn curl(
    https: &str,
    ca: &Path,
    path: &str,
    body: Option<&str>,
    client: Option<(&Path, &Path)>,
) -> (u16, String) {
    let mut command = Command::new("curl");
    command
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}", "--cacert"])
        .arg(ca);
    if let Some(body) = body {
        command.args([
            "-H",
            "content-type: application/json",
            "--data-binary",
            body,
        ]);
    }
    if let Some((cert, key)) = client {
        command.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    let output = command
        .arg(format!("https://{https}{path}"))
        .output()
        .expect("curl is installed by scripts/setup.sh");
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_enrolls_with_a_token_and_its_certificate_opens_mutual_tls() {
    let (dir, running, https) = crate::support::quickstart_enrolling(Some("2h")).await;
    let state = dir.path().join(".tessera");
    let server_ca = crate::support::server_ca(dir.path());
    let work = tempfile::tempdir().unwrap();
    let (key, csr) = key_and_csr();
    let enroll = |token: &str, csr: &str| {
        let body =
            serde_json::json!({"token": token, "csr": csr, "hostname": "lab-01"}).to_string();
        tokio::task::block_in_place(|| curl(&https, &server_ca, "/v1/enroll", Some(&body), None))
    };

    let once = crate::support::token(&state, 1, 3600);
    let (status, body) = enroll(&once.reveal(), &csr);
    assert_eq!(status, 200, "{body}");
    let answer: Value = serde_json::from_str(&body).unwrap();
    let agent_id = answer["agentId"].as_str().unwrap();
    let certificate = work.path().join("agent.crt");
    let key_file = work.path().join("agent.key");
    std::fs::write(&certificate, answer["certificate"].as_str().unwrap()).unwrap();
    std::fs::write(&key_file, &key).unwrap();
    assert_eq!(
        answer["ca"].as_str().unwrap(),
        std::fs::read_to_string(&server_ca).unwrap(),
        "the agent learns which CA to trust for the server"
    );

    // openssl agrees: signed by the Issuer, client auth, the agent id as a URI, not a CA,
    // and none of the names the request asked for.
    let issuer_ca = state.join("pki/issuers/default/quickstart-ca/ca.crt");
    let verify = Command::new("openssl")
        .args(["verify", "-purpose", "sslclient", "-CAfile"])
        .arg(&issuer_ca)
        .arg(&certificate)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{verify:?}");
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&certificate)
        .output()
        .unwrap();
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains(&format!("URI:urn:tessera:agent:{agent_id}")),
        "{text}"
    );
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    assert!(
        !text.contains("server.example") && text.contains("CA:FALSE"),
        "{text}"
    );

    // Refusals, each with its own code.
    let refused = |status: u16, body: &str, code: &str| {
        assert_eq!(status, 403, "{body}");
        assert!(body.contains(&format!("\"error\":\"{code}\"")), "{body}");
    };
    let (status, body) = enroll(&once.reveal(), &csr);
    refused(status, &body, "token_used_up");
    let (status, body) = enroll(&crate::support::token(&state, 5, -1).reveal(), &csr);
    refused(status, &body, "token_expired");
    let revoked = crate::support::token(&state, 5, 3600);
    Database::open(&state.join("state.db"))
        .unwrap()
        .revoke_token(&revoked.id, 0)
        .unwrap();
    let (status, body) = enroll(&revoked.reveal(), &csr);
    refused(status, &body, "token_revoked");
    let (status, body) = enroll(&Token::generate().reveal(), &csr);
    refused(status, &body, "token_unknown");
    let (status, body) = enroll(
        &crate::support::token(&state, 5, 3600).reveal(),
        "not a csr",
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("bad_csr"), "{body}");

    // The certificate opens mutual TLS; one from another CA is refused at the handshake.
    let package =
        crate::support::get_json(running.admin_address, "/api/v1/objects/Package/hello").await;
    let info = format!(
        "/download/{}/info",
        package["details"]["packageId"].as_str().unwrap()
    );
    let (status, _) = tokio::task::block_in_place(|| {
        curl(
            &https,
            &server_ca,
            &info,
            None,
            Some((&certificate, &key_file)),
        )
    });
    assert_eq!(status, 200);
    let stranger = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let self_signed = params.self_signed(&stranger).unwrap();
    let (stranger_cert, stranger_key) = (work.path().join("s.crt"), work.path().join("s.key"));
    std::fs::write(&stranger_cert, self_signed.pem()).unwrap();
    std::fs::write(&stranger_key, stranger.serialize_pem()).unwrap();
    let (status, _) = tokio::task::block_in_place(|| {
        curl(
            &https,
            &server_ca,
            &info,
            None,
            Some((&stranger_cert, &stranger_key)),
        )
    });
    assert_eq!(
        status, 0,
        "a certificate from an unknown CA is refused at the handshake"
    );

    // An expired certificate from the right CA: refused at the handshake.
    let issuer_dir = state.join("pki/issuers/default/quickstart-ca");
    let authority = tessera::pki::authority::Authority::from_pem(
        &std::fs::read_to_string(issuer_dir.join("ca.crt")).unwrap(),
        &std::fs::read_to_string(issuer_dir.join("ca.key")).unwrap(),
        None,
    )
    .unwrap();
    let old_key = rcgen::KeyPair::generate().unwrap();
    // Certificates from the right CA, outside their validity: refused at the handshake.
    let (old_cert, old_key_file) = (work.path().join("e.crt"), work.path().join("e.key"));
    std::fs::write(&old_key_file, old_key.serialize_pem()).unwrap();
    let hour = jiff::SignedDuration::from_hours(1);
    for (what, lifetime, from) in [
        (
            "an expired",
            jiff::SignedDuration::from_mins(10),
            jiff::Timestamp::now() - hour,
        ),
        ("a not-yet-valid", hour * 2, jiff::Timestamp::now() + hour),
    ] {
        let issued = client_certificate(&authority, &old_key, lifetime, from);
        std::fs::write(&old_cert, &issued.chain_pem).unwrap();
        let (status, _) = tokio::task::block_in_place(|| {
            curl(
                &https,
                &server_ca,
                &info,
                None,
                Some((&old_cert, &old_key_file)),
            )
        });
        assert_eq!(status, 0, "{what} certificate is refused at the handshake");
    }

    // Revoking the agent's serial in its Issuer: refused from the next handshake on.
    let serial = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(&certificate)
        .output()
        .unwrap();
    let serial = String::from_utf8(serial.stdout).unwrap();
    let serial = serial.trim().trim_start_matches("serial=").to_owned();
    let pki = dir.path().join("pki.yaml");
    let text = std::fs::read_to_string(&pki).unwrap().replacen(
        "  selfSigned:",
        &format!("  revokedSerials: [\"{serial}\"]\n  selfSigned:"),
        1,
    );
    std::fs::write(&pki, text).unwrap();
    eventually("the revoked certificate refused", || async {
        let (status, _) = tokio::task::block_in_place(|| {
            curl(
                &https,
                &server_ca,
                &info,
                None,
                Some((&certificate, &key_file)),
            )
        });
        (status == 0).then_some(())
    })
    .await;
    running.stop().await.unwrap();
}

/// Enrolls a new agent and returns its certificate and key files.
pub(crate) fn enrolled(
    https: &str,
    server_ca: &Path,
    state: &Path,
    dir: &Path,
    name: &str,
) -> (std::path::PathBuf, std::path::PathBuf, String) {
    let (key, csr) = key_and_csr();
    let body =
        serde_json::json!({"token": crate::support::token(state, 1, 3600).reveal(), "csr": csr, "hostname": name})
            .to_string();
    let (status, answer) = curl(https, server_ca, "/v1/enroll", Some(&body), None);
    assert_eq!(status, 200, "{answer}");
    let answer: Value = serde_json::from_str(&answer).unwrap();
    let (cert, key_file) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    std::fs::write(&cert, answer["certificate"].as_str().unwrap()).unwrap();
    std::fs::write(&key_file, key).unwrap();
    (
        cert,
        key_file,
        answer["agentId"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_api_serves_each_agent_only_its_own_deployments_with_resumable_fragments() {
    let (dir, running, https) = crate::support::quickstart_enrolling(None).await;
    let state = dir.path().join(".tessera");
    let ca = crate::support::server_ca(dir.path());
    let work = tempfile::tempdir().unwrap();
    let (lab_id, package) = tokio::task::block_in_place(|| {
        let (lab_cert, lab_key, lab_id) = enrolled(&https, &ca, &state, work.path(), "lab-01");
        let (office_cert, office_key, _) = enrolled(&https, &ca, &state, work.path(), "office-01");
        let lab = Some((lab_cert.as_path(), lab_key.as_path()));
        let office = Some((office_cert.as_path(), office_key.as_path()));
        let check_in = |tag: &str, name: &str| {
            serde_json::json!({"hostname": name, "osName": "Debian GNU/Linux 12", "tags": [tag]})
                .to_string()
        };

        // No certificate, no native API.
        let (status, body) = curl(
            &https,
            &ca,
            "/v1/checkin",
            Some(&check_in("lab", "x")),
            None,
        );
        assert_eq!(status, 401, "{body}");
        assert!(body.contains("client_certificate_required"), "{body}");

        let (status, body) = curl(
            &https,
            &ca,
            "/v1/checkin",
            Some(&check_in("lab", "lab-01")),
            lab,
        );
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        let assigned: Vec<&str> = answer["assignments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["packageId"].as_str().unwrap())
            .collect();
        assert_eq!(assigned.len(), 4, "{body}");
        let package = {
            let store = state.join("download");
            assigned
                .iter()
                .find(|id| store.join(id).join(format!("{id}-3")).is_file())
                .expect("hello has three fragments")
                .to_string()
        };

        let (status, body) = curl(
            &https,
            &ca,
            &format!("/v1/packages/{package}/manifest"),
            None,
            lab,
        );
        assert_eq!(status, 200, "{body}");
        let manifest: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(manifest["action"]["kind"], "launch", "{manifest}");
        assert_eq!(manifest["format"], "tar.gz");
        let fragments = manifest["fragments"].as_array().unwrap();
        assert_eq!(fragments.len(), 3);
        let first = std::fs::read(
            state
                .join("download")
                .join(&package)
                .join(format!("{package}-1")),
        )
        .unwrap();
        use sha2::Digest;
        assert_eq!(
            fragments[0]["sha256"],
            hex::encode(sha2::Sha256::digest(&first))
        );

        // Resuming inside a fragment: only the missing bytes come.
        let output = Command::new("curl")
            .args(["-s", "-D", "-", "-H", "range: bytes=100-", "--cacert"])
            .arg(&ca)
            .arg("--cert")
            .arg(&lab_cert)
            .arg("--key")
            .arg(&lab_key)
            .arg(format!("https://{https}/v1/packages/{package}/fragments/1"))
            .output()
            .unwrap();
        let text = output.stdout;
        let split = text.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&text[..split]).to_lowercase();
        assert!(
            head.starts_with("http/1.1 206") || head.starts_with("http/2 206"),
            "{head}"
        );
        assert!(
            head.contains(&format!(
                "content-range: bytes 100-{}/{}",
                first.len() - 1,
                first.len()
            )),
            "{head}"
        );
        assert_eq!(&text[split + 4..], &first[100..]);

        // Another agent sees none of it and cannot report for it.
        let (status, body) = curl(
            &https,
            &ca,
            "/v1/checkin",
            Some(&check_in("office", "office-01")),
            office,
        );
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            answer["assignments"].as_array().unwrap().len(),
            1,
            "only the baseline: {body}"
        );
        let (status, _) = curl(
            &https,
            &ca,
            &format!("/v1/packages/{package}/manifest"),
            None,
            office,
        );
        assert_eq!(status, 404);
        let done = serde_json::json!({"packageId": package, "state": "done", "exitCode": 0, "output": "installed"}).to_string();
        let (status, _) = curl(&https, &ca, "/v1/results", Some(&done), office);
        assert_eq!(status, 404);

        // The agent's own report lands in the shared state machine.
        let (status, body) = curl(&https, &ca, "/v1/results", Some(&done), lab);
        assert_eq!(status, 204, "{body}");
        (lab_id, package)
    });
    let found = crate::support::get_json(
        running.admin_address,
        &format!("/api/v1/computers/{lab_id}"),
    )
    .await;
    let deployment = found[0]["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["packageId"] == package.as_str())
        .unwrap()
        .clone();
    assert_eq!(deployment["state"], "success", "{deployment}");
    assert_eq!(deployment["code"], "EXIT_CODE_0");
    assert_eq!(deployment["output"], "installed");
    running.stop().await.unwrap();
}
