//! A simulated native agent: Tessera's own agent's protocol (enrollment with a token and a
//! CSR, check-in, manifest, result, and the push channel's long poll) through the agent's
//! own HTTPS client (`tessera::agent::client`), without installing anything. One
//! connection pool per agent, as a real agent has; the fleet simulator can reuse it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::Method;
use tessera::agent::client::Client;
use tessera::protocol::v1;

/// What the agents tell the bench, each with when it happened.
#[derive(Clone, Debug)]
pub(crate) enum Event {
    /// A wait was answered (`woken`: with a new generation).
    Answered { woken: bool },
    /// A check-in offered a package the agent had not been offered at start.
    Offered { at: Instant },
    /// The result of that package was accepted by the server.
    Reported { at: Instant },
    /// An exchange failed.
    Failed,
}

/// One enrolled agent.
pub(crate) struct Agent {
    pub(crate) index: usize,
    client: Client,
    /// Package ids offered at the first check-in (the quickstart's): not what is measured.
    initial: Vec<String>,
}

fn check(what: &str, failed: impl std::fmt::Display) -> String {
    format!("failed to {what}: {failed}")
}

impl Agent {
    /// Enrolls agent `index` at `server` (`https://host:port`) with `token`, trusting `ca`.
    pub(crate) async fn enroll(
        index: usize,
        server: &str,
        ca: &str,
        token: &str,
    ) -> Result<Self, String> {
        let key = tessera::pki::authority::generate_key(tessera::pki::KeyType::EcdsaP256)
            .map_err(|e| check("make a key", e))?;
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .and_then(|params| params.serialize_request(&key))
            .and_then(|csr| csr.pem())
            .map_err(|e| check("make a CSR", e))?;
        let tls = tessera::pki::tls::client_config(ca, None).map_err(|e| check("trust", e))?;
        let anonymous = Client::new(server, &tls, None).map_err(|e| check("connect", e))?;
        let request = v1::EnrollRequest {
            token: token.to_owned(),
            csr,
            hostname: hostname(index),
        };
        let answer: v1::EnrollResponse = anonymous
            .json(Method::POST, "/v1/enroll", Some(&request))
            .await
            .map_err(|e| check("enroll", chain(&e)))?
            .ok_or("an empty enrollment answer")?;
        let tls = tessera::pki::tls::client_config(
            &answer.ca,
            Some((&answer.certificate, &key.serialize_pem())),
        )
        .map_err(|e| check("use the identity", e))?;
        let client = Client::new(server, &tls, None).map_err(|e| check("connect", e))?;
        let mut agent = Self {
            index,
            client,
            initial: Vec::new(),
        };
        agent.initial = agent.check_in().await?;
        Ok(agent)
    }

    /// A check-in as a Debian machine tagged `lab`: the package ids offered.
    pub(crate) async fn check_in(&self) -> Result<Vec<String>, String> {
        let facts = v1::CheckIn {
            hostname: hostname(self.index),
            os_name: "Debian GNU/Linux 12 (bookworm)".into(),
            os_version: "12".into(),
            tags: vec!["lab".into()],
            ip_addresses: Vec::new(),
            installed: Vec::new(),
            notify_address: None,
        };
        let answer: v1::CheckInResponse = self
            .client
            .json(Method::POST, "/v1/checkin", Some(&facts))
            .await
            .map_err(|e| check("check in", chain(&e)))?
            .ok_or("an empty check-in answer")?;
        Ok(answer
            .assignments
            .into_iter()
            .map(|a| a.package_id)
            .collect())
    }

    /// Holds the push channel until the task is dropped: on each wake, a check-in, and for a
    /// package not offered at start, its manifest and a successful result.
    pub(crate) async fn hold(self, events: tokio::sync::mpsc::UnboundedSender<(usize, Event)>) {
        let agent = Arc::new(self);
        let mut seen: Option<u64> = None;
        let mut reported: Vec<String> = Vec::new();
        let send = |event| {
            let _ = events.send((agent.index, event));
        };
        loop {
            let path = match seen {
                Some(seen) => format!("{}?seen={seen}", v1::WAIT_PATH),
                None => v1::WAIT_PATH.to_owned(),
            };
            let answer = agent
                .client
                .send_within(
                    Method::GET,
                    &path,
                    None,
                    &[],
                    Duration::from_secs(v1::MAX_HOLD_SECONDS + 20),
                )
                .await;
            let generation = answer
                .ok()
                .filter(|a| a.status == hyper::StatusCode::OK)
                .and_then(|a| serde_json::from_slice::<v1::Wait>(&a.body).ok())
                .map(|w| w.generation);
            let Some(generation) = generation else {
                send(Event::Failed);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let woken = seen.is_some_and(|s| s != generation);
            seen = Some(generation);
            send(Event::Answered { woken });
            if !woken {
                continue;
            }
            let Ok(offered) = agent.check_in().await else {
                send(Event::Failed);
                continue;
            };
            let at = Instant::now();
            for package in offered {
                if agent.initial.contains(&package) || reported.contains(&package) {
                    continue;
                }
                send(Event::Offered { at });
                if agent.run(&package).await {
                    send(Event::Reported { at: Instant::now() });
                    reported.push(package);
                } else {
                    send(Event::Failed);
                }
            }
        }
    }

    /// What a real agent does for a command-only package: its manifest, then its result.
    async fn run(&self, package: &str) -> bool {
        let manifest = self
            .client
            .json::<v1::Manifest>(
                Method::GET,
                &format!("/v1/packages/{package}/manifest"),
                None::<&()>,
            )
            .await;
        if manifest.is_err() {
            return false;
        }
        let result = v1::Report {
            package_id: package.to_owned(),
            state: v1::ReportedState::Done,
            exit_code: Some(0),
            error: None,
            output: String::new(),
        };
        self.client
            .json::<serde_json::Value>(Method::POST, "/v1/results", Some(&result))
            .await
            .is_ok()
    }
}

/// An error and its causes, on one line.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn hostname(index: usize) -> String {
    format!("push-bench-{index:05}")
}
