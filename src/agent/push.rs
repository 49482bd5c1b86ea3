//! The agent's end of the push channel (the server's is `server::push`, which says why a long
//! poll): one `GET /v1/wait?seen=<generation>` held at a time on a connection of its own,
//! over the same mutual TLS, proxy or gateway as every other call. An answer with a new
//! generation wakes a pass; a failure backs off (jittered, exponential, up to
//! [`MAX_BACKOFF`]) while the agent keeps its normal schedule. The agent keeps the generation
//! it saw across reconnections: the server answers at once when it changed meanwhile (or when
//! the server restarted), so nothing is missed, and a reconnection without a change costs no
//! pass.

use std::sync::Arc;
use std::time::Duration;

use hyper::{Method, StatusCode};

use crate::agent::client::{Client, ClientError};
use crate::agent::{AgentError, Config};
use crate::protocol::v1;

/// The first pause after a failed wait.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest pause: a thousand agents whose server restarted come back within 30 s,
/// spread over it by the jitter.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a wait may take past the server's longest hold before the agent calls the
/// connection dead (a middlebox that dropped it silently).
const HOLD_MARGIN: Duration = Duration::from_secs(20);

/// Jittered exponential backoff: each failure doubles the ceiling (from [`FIRST_BACKOFF`]
/// up to [`MAX_BACKOFF`]), and the pause is drawn between half the ceiling and the ceiling,
/// so agents that failed together do not retry together.
#[derive(Clone, Debug)]
pub struct Backoff {
    ceiling: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            ceiling: FIRST_BACKOFF,
        }
    }
}

impl Backoff {
    /// The pause before the next attempt, given `random` (any number: its low bits pick
    /// the point in the range).
    pub fn next(&mut self, random: u64) -> Duration {
        let ceiling = self.ceiling;
        self.ceiling = (self.ceiling * 2).min(MAX_BACKOFF);
        let half = ceiling / 2;
        let millis = u64::try_from(half.as_millis()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_millis(random % (millis + 1))
    }

    /// After a success: the next failure starts from [`FIRST_BACKOFF`] again.
    pub fn reset(&mut self) {
        self.ceiling = FIRST_BACKOFF;
    }
}

/// What the pass loop reads: whether a pass has started yet (before it has, the channel's
/// first answer needs no pass of its own: the first pass comes after it), and the wake.
#[derive(Debug, Default)]
pub struct Wakes {
    pub pass_started: std::sync::atomic::AtomicBool,
    pub wake: tokio::sync::Notify,
    /// Set once the channel has had its first answer.
    pub connected: tokio::sync::Notify,
}

/// Holds the channel open until `shutdown`, waking `wakes.wake` for every change.
pub async fn hold(
    config: &Config,
    wakes: Arc<Wakes>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use std::sync::atomic::Ordering;
    let mut seen: Option<u64> = None;
    let mut backoff = Backoff::default();
    let mut client: Option<(Client, Option<std::time::SystemTime>)> = None;
    let mut failing = false;
    loop {
        let identity = identity_changed(config);
        // A renewed certificate (or the first one) means a new connection that shows it.
        let built = match client.take() {
            Some((kept, at)) if at == identity => Ok(kept),
            _ => crate::agent::mutual_client(config),
        };
        let answer = match built {
            Ok(built) => {
                let answer = tokio::select! {
                    () = shutdown.cancelled() => return,
                    answer = wait(&built, seen) => answer,
                };
                client = Some((built, identity));
                answer
            }
            Err(error) => Err(error),
        };
        match answer {
            Ok(generation) => {
                if failing {
                    tracing::info!("push channel restored");
                    failing = false;
                }
                backoff.reset();
                let changed = match seen {
                    Some(before) => before != generation,
                    // The first answer: a pass is due unless the first one starts after it.
                    None => {
                        wakes.connected.notify_one();
                        wakes.pass_started.load(Ordering::Acquire)
                    }
                };
                seen = Some(generation);
                if changed {
                    tracing::info!("the server asked for a check-in now (push)");
                    wakes.wake.notify_one();
                }
            }
            Err(error) => {
                if !failing {
                    tracing::warn!(
                        error = %crate::error_chain(&error),
                        "push channel lost; checking in on the schedule until it is back"
                    );
                    failing = true;
                }
                client = None;
                let pause = backoff.next(random());
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// One wait: the generation the server answers with.
async fn wait(client: &Client, seen: Option<u64>) -> Result<u64, AgentError> {
    let path = match seen {
        Some(seen) => format!("{}?seen={seen}", v1::WAIT_PATH),
        None => v1::WAIT_PATH.to_owned(),
    };
    let timeout = Duration::from_secs(v1::MAX_HOLD_SECONDS) + HOLD_MARGIN;
    let answer = client
        .send_within(Method::GET, &path, None, &[], timeout)
        .await?;
    let url = path;
    if answer.status != StatusCode::OK {
        return Err(ClientError::Status {
            url,
            status: answer.status,
            body: String::from_utf8_lossy(&answer.body[..answer.body.len().min(512)]).into_owned(),
        }
        .into());
    }
    let wait: v1::Wait =
        serde_json::from_slice(&answer.body).map_err(|source| ClientError::Json { url, source })?;
    Ok(wait.generation)
}

/// When the agent's certificate was last written (a renewal replaces it).
fn identity_changed(config: &Config) -> Option<std::time::SystemTime> {
    std::fs::metadata(config.state_dir.join("identity/agent.crt"))
        .and_then(|m| m.modified())
        .ok()
}

/// A random number for jitter (the process's hash keys, fresh for each call).
fn random() -> u64 {
    use std::hash::BuildHasher;
    std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_cap_and_stays_in_its_range() {
        let mut backoff = Backoff::default();
        let mut ceilings = Vec::new();
        for n in 0..8 {
            let ceiling = backoff.ceiling;
            let low = backoff.clone().next(0);
            let high = backoff.clone().next(u64::MAX);
            assert!(
                low >= ceiling / 2 && high <= ceiling,
                "{n}: {low:?} {high:?}"
            );
            ceilings.push(ceiling.as_secs());
            backoff.next(n);
        }
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30, 30]);
        backoff.reset();
        assert!(backoff.next(u64::MAX) <= FIRST_BACKOFF);
    }

    #[test]
    fn the_jitter_spreads_agents_that_failed_together() {
        let pauses: std::collections::BTreeSet<Duration> =
            (0..50).map(|_| Backoff::default().next(random())).collect();
        assert!(pauses.len() > 10, "{pauses:?}");
    }
}
