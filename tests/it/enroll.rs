//! Enrollment of Tessera's own agents: a token and a certificate request in, a client
//! certificate out, checked with `openssl` and used with `curl --cert`.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tessera::cli::{self, ServeArgs};
use tessera::pki::token::Token;
use tessera::store::db::{Database, TokenRecord};

use crate::support::{eventually, get, quickstart_copy};

/// Stores a token in the server's database, as `tessera token create` does.
fn token(state: &Path, max_uses: i64, expires_in: i64) -> Token {
    let token = Token::generate();
    let now = jiff::Timestamp::now().as_second();
    Database::open(&state.join("state.db"))
        .unwrap()
        .create_token(&TokenRecord {
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

/// A key pair and a certificate request for it, asking for a name it must not get.
fn key_and_csr() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["server.example".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let csr = params.serialize_request(&key).unwrap().pem().unwrap();
    (key.serialize_pem(), csr)
}

/// `curl` to the agent-facing server: (HTTP status, body); status 0 when TLS failed.
fn curl(
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
    let dir = quickstart_copy();
    let server = dir.path().join("server.yaml");
    let text = std::fs::read_to_string(&server).unwrap();
    std::fs::write(
        &server,
        format!("{text}  enrollment:\n    issuerRef:\n      name: quickstart-ca\n    certificateDuration: 2h\n"),
    )
    .unwrap();
    let running = cli::start(ServeArgs {
        config: dir.path().to_path_buf(),
        state: None,
        admin_address: "127.0.0.1:0".parse().unwrap(),
        allow_empty: false,
    })
    .await
    .unwrap();
    let (https, _) = eventually("the Server serving", || async {
        let (status, body) = get(running.admin_address, "/api/v1/objects/Server/tessera").await;
        let server: Value = (status == 200).then(|| serde_json::from_str(&body).unwrap())?;
        let list = server["details"]["addresses"].as_array()?.clone();
        (list.len() == 2).then(|| list[0].as_str().unwrap().to_owned())
    })
    .await;
    let state = dir.path().join(".tessera");
    let server_ca = state.join("certificates/default/tessera-server/ca.crt");
    let work = tempfile::tempdir().unwrap();
    let (key, csr) = key_and_csr();
    let enroll = |token: &str, csr: &str| {
        let body =
            serde_json::json!({"token": token, "csr": csr, "hostname": "lab-01"}).to_string();
        tokio::task::block_in_place(|| curl(&https, &server_ca, "/v1/enroll", Some(&body), None))
    };

    let once = token(&state, 1, 3600);
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
    let (status, body) = enroll(&token(&state, 5, -1).reveal(), &csr);
    refused(status, &body, "token_expired");
    let revoked = token(&state, 5, 3600);
    Database::open(&state.join("state.db"))
        .unwrap()
        .revoke_token(&revoked.id, 0)
        .unwrap();
    let (status, body) = enroll(&revoked.reveal(), &csr);
    refused(status, &body, "token_revoked");
    let (status, body) = enroll(&Token::generate().reveal(), &csr);
    refused(status, &body, "token_unknown");
    let (status, body) = enroll(&token(&state, 5, 3600).reveal(), "not a csr");
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
    running.stop().await.unwrap();
}
