//! Tessera's own agents in the fleet simulator: enrollment with a token and a certificate
//! request, then each contact over mutual TLS on a connection of its own (the agent's
//! certificate is its identity): a check-in, and for each package assigned and not yet
//! done its manifest, its fragments and a report. A push channel, when the server offers
//! one, belongs here too: the OCS side does not change.

// Both users include this file; neither uses every item.
#![allow(dead_code)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsConnector;

use super::sim::{Connection, Fleet, Kind, json_request};

/// One native agent between contacts.
pub(crate) struct Agent {
    pub number: usize,
    /// Its connector with its client certificate, once enrolled.
    pub tls: Option<TlsConnector>,
    pub agent_id: Option<String>,
    /// Package ids it has installed (sent with each check-in, as the agent does).
    pub installed: Vec<String>,
}

impl Agent {
    pub(crate) fn new(number: usize) -> Self {
        Self {
            number,
            tls: None,
            agent_id: None,
            installed: Vec::new(),
        }
    }
}

/// One native agent's contact: enrollment first if it has no certificate yet, then a
/// check-in and whatever it is assigned.
pub(crate) async fn contact(fleet: &Fleet, number: usize) {
    let (tls, installed) = {
        let agent = fleet.natives[number].lock().expect("agent");
        (agent.tls.clone(), agent.installed.clone())
    };
    let tls = match tls {
        Some(tls) => tls,
        None => match enroll(fleet, number).await {
            Some(tls) => tls,
            None => return,
        },
    };
    let mut connection = match Connection::open(fleet.target.https, &tls).await {
        Ok(connection) => connection,
        Err(e) => {
            fleet.timings.error(format!("native connect: {e}"));
            return;
        }
    };
    let host = fleet.target.https.to_string();
    let check_in = serde_json::json!({
        "hostname": format!("native-{number:06}"),
        "osName": "Debian GNU/Linux 12",
        "osVersion": "12",
        "tags": ["fleet"],
        "ipAddresses": [format!("10.200.{}.{}", number / 256 % 256, number % 256)],
        "installed": installed,
    })
    .to_string();
    let Some(answer) = exchange(
        fleet,
        &mut connection,
        Kind::CheckIn,
        &json_request("POST", &host, "/v1/checkin", &check_in),
    )
    .await
    else {
        return;
    };
    let Ok(answer) = serde_json::from_slice::<serde_json::Value>(&answer) else {
        fleet.timings.error("native check-in: not JSON".into());
        return;
    };
    let assignments = answer["assignments"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    for assignment in assignments {
        let Some(id) = assignment["packageId"].as_str() else {
            continue;
        };
        if installed.iter().any(|i| i == id) && assignment["force"] != true {
            continue;
        }
        let manifest = get(&host, &format!("/v1/packages/{id}/manifest"));
        let Some(manifest) = exchange(fleet, &mut connection, Kind::Manifest, &manifest).await
        else {
            return;
        };
        let fragments = serde_json::from_slice::<serde_json::Value>(&manifest)
            .ok()
            .and_then(|m| m["fragments"].as_array().map(Vec::len))
            .unwrap_or(0);
        for n in 1..=fragments {
            let fragment = get(&host, &format!("/v1/packages/{id}/fragments/{n}"));
            if exchange(fleet, &mut connection, Kind::NativeFragment, &fragment)
                .await
                .is_none()
            {
                return;
            }
        }
        let report =
            serde_json::json!({"packageId": id, "state": "done", "exitCode": 0}).to_string();
        if exchange(
            fleet,
            &mut connection,
            Kind::Report,
            &json_request("POST", &host, "/v1/results", &report),
        )
        .await
        .is_some()
        {
            fleet.natives[number]
                .lock()
                .expect("agent")
                .installed
                .push(id.to_owned());
            fleet.reported.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Makes a key, asks for a certificate with the fleet's token (over a connection without
/// a client certificate), and keeps the connector that presents it.
async fn enroll(fleet: &Fleet, number: usize) -> Option<TlsConnector> {
    let key = rcgen::KeyPair::generate().expect("an agent key");
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|params| params.serialize_request(&key))
        .and_then(|csr| csr.pem())
        .expect("a certificate request");
    let body = serde_json::json!({
        "token": fleet.target.token,
        "csr": csr,
        "hostname": format!("native-{number:06}"),
    })
    .to_string();
    let host = fleet.target.https.to_string();
    let mut connection = match Connection::open(fleet.target.https, &fleet.tls).await {
        Ok(connection) => connection,
        Err(e) => {
            fleet.timings.error(format!("native enroll connect: {e}"));
            return None;
        }
    };
    let answer = exchange(
        fleet,
        &mut connection,
        Kind::Enroll,
        &json_request("POST", &host, "/v1/enroll", &body),
    )
    .await?;
    let answer: serde_json::Value = serde_json::from_slice(&answer).ok()?;
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(answer["certificate"].as_str()?.as_bytes())
            .collect::<Result<_, _>>()
            .ok()?;
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).ok()?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("TLS versions")
    .with_root_certificates(super::sim::server_roots(&fleet.target.server_ca))
    .with_client_auth_cert(chain, key)
    .ok()?;
    let tls = TlsConnector::from(Arc::new(config));
    let mut agent = fleet.natives[number].lock().expect("agent");
    agent.tls = Some(tls.clone());
    agent.agent_id = answer["agentId"].as_str().map(str::to_owned);
    Some(tls)
}

/// One timed exchange on the agent's own connection; the body of a 2xx.
async fn exchange(
    fleet: &Fleet,
    connection: &mut Connection,
    kind: Kind,
    request: &[u8],
) -> Option<Vec<u8>> {
    let sent = Instant::now();
    match connection.exchange(request).await {
        Ok(response) => {
            fleet.requests.fetch_add(1, Ordering::Relaxed);
            if (200..300).contains(&response.status) {
                fleet.timings.record(kind, sent.elapsed());
                Some(response.body)
            } else {
                fleet.timings.error(format!(
                    "{}: HTTP {}: {}",
                    kind.name(),
                    response.status,
                    String::from_utf8_lossy(&response.body[..response.body.len().min(200)])
                ));
                None
            }
        }
        Err(e) => {
            fleet.timings.error(format!("{}: {e}", kind.name()));
            None
        }
    }
}

fn get(host: &str, path: &str) -> Vec<u8> {
    super::sim::get(host, path)
}
