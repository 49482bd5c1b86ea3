//! DOWNLOAD results: filed only where they can come from (a package offered to that
//! computer), within a per-computer budget ([`ResultBudget`]). The OCS protocol
//! authenticates nothing, so a device id is all a forger needs; what it can still do is
//! bounded to packages actually offered to that device and not yet reported.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::protocol::ocs::Request;
use crate::server::agent::Shared;
use crate::server::deployments;
use crate::server::fleet_log::{self, Protocol};
use crate::server::metrics::Unfiled;
use crate::store::db::Filed;

/// Results one computer may send in a burst. An OCS agent reports each package once per
/// cycle and a native agent three times (downloading, installing, done); 30 is far above
/// either and far below what fills a database or a log.
pub const RESULT_BURST: f64 = 30.0;
/// One more result allowed every 2 seconds after a burst (30 a minute).
pub const RESULT_REFILL: Duration = Duration::from_secs(2);
/// Computers whose budgets are tracked at once (about 3 MB at most). Past this, budgets
/// back to full are forgotten; if all are in use, new device ids share one budget, so a
/// flood of made-up ids neither grows memory nor resets a real computer's budget.
pub const RESULT_BUDGETS: usize = 10_000;
/// A DOWNLOAD result, filed only where it can come from.
///
/// - A package offered to this computer (a deployment of it `notified`, `downloading` or
///   `installing`): filed, 200. The deployment stays offered even when its Affectation is
///   removed afterwards, so the agent's late answer is still filed: it is true.
/// - Every deployment of the package settled already: 200, nothing changed. The agent
///   resends a result it did not get a 200 for, so this is what ends a lost answer's
///   resends; and a forged result cannot overwrite the real one.
/// - Offered, then a new package id took its place (the Package edited, a version
///   draining): filed under its own id in the history, 200.
/// - Offered once but that offer no longer stands (armed again by a redeploy token, or
///   answered already): 200, nothing stored; a 400 would make the agent resend it every
///   cycle, for ever.
/// - Never offered (armed and `waiting`, or no deployment at all), or an unknown device:
///   400, nothing stored. A forged SUCCESS for a waiting target therefore leaves it
///   waiting, so the real computer is still offered the package.
///
/// Each computer has a budget of results ([`ResultBudget`]): past it, 429 and nothing
/// read from the database. Whatever is not filed is counted by reason
/// (`tessera_deployment_results_unfiled_total`) and logged; only filed codes become
/// `tessera_deployment_results_total` labels.
pub(crate) async fn file(
    shared: &Shared,
    request: &Request,
) -> Result<Response, crate::server::agent::ServeError> {
    let (Some(id), Some(code)) = (request.id.clone(), request.err.clone()) else {
        tracing::warn!(device = %request.device_id, "a DOWNLOAD result without ID or ERR");
        // Both agents keep resending a result that is not answered 200; one without an id
        // can never be filed, so accept it rather than have it resent forever.
        return Ok(StatusCode::OK.into_response());
    };
    if !shared.results.allow(&request.device_id, Instant::now()) {
        shared.metrics.unfiled(Unfiled::RateLimited);
        tracing::warn!(device = %request.device_id, package = %id, "too many results from one computer");
        return Ok((StatusCode::TOO_MANY_REQUESTS, "too many results\n").into_response());
    }
    let success_codes = shared
        .routes
        .borrow()
        .packages
        .get(&id)
        .map_or_else(|| vec![0], |p| p.success_exit_codes.clone());
    let state = deployments::classify(&code, &success_codes);
    let now = shared.now();
    let device = request.device_id.clone();
    let package = id.clone();
    let result_code = code.clone();
    let (filed, name) = shared
        .db(move |db| {
            let filed =
                db.record_result(&device, &package, state, Some(&result_code), None, now)?;
            let name = match filed {
                Filed::Recorded(_) => db.computer(&device)?.map(|(c, _)| c.name),
                _ => None,
            };
            Ok((filed, name.unwrap_or_default()))
        })
        .await?;
    let Some(unfiled) = Unfiled::of(&filed) else {
        shared.metrics.result(&code);
        shared.touched();
        if let Filed::Recorded(activations) = &filed {
            fleet_log::result(
                Protocol::Ocs,
                &name,
                &request.device_id,
                activations,
                &id,
                Some(&code),
                state,
            );
        }
        return Ok(StatusCode::OK.into_response());
    };
    shared.metrics.unfiled(unfiled);
    if unfiled.is_refusal() {
        tracing::warn!(device_id = %request.device_id, package_id = %id, %code, reason = unfiled.as_str(), "refused a result");
        return Ok((
            StatusCode::BAD_REQUEST,
            "no such package was offered to this computer\n",
        )
            .into_response());
    }
    tracing::info!(device_id = %request.device_id, package_id = %id, %code, reason = unfiled.as_str(), "result not filed");
    // 200 with an empty body, which is what both agents expect.
    Ok(StatusCode::OK.into_response())
}
/// Per-computer token buckets for results: `RESULT_BURST` at once, then one every
/// `RESULT_REFILL`, for at most `RESULT_BUDGETS` computers (then one shared budget).
#[derive(Debug, Default)]
pub struct ResultBudget {
    budgets: Mutex<Budgets>,
}

#[derive(Debug, Default)]
struct Budgets {
    by_device: HashMap<String, Bucket>,
    /// The budget new devices share while every tracked one is in use.
    overflow: Option<Bucket>,
    /// When full budgets were last forgotten (at most once per `RESULT_REFILL`, so a full
    /// map costs a scan rarely, not on every request).
    pruned: Option<Instant>,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(now: Instant) -> Self {
        Self {
            tokens: RESULT_BURST,
            at: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let earned =
            now.saturating_duration_since(self.at).as_secs_f64() / RESULT_REFILL.as_secs_f64();
        self.tokens = (self.tokens + earned).min(RESULT_BURST);
        self.at = now;
    }

    fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        let allowed = self.tokens >= 1.0;
        if allowed {
            self.tokens -= 1.0;
        }
        allowed
    }
}

impl ResultBudget {
    /// Whether `device` may send one more result at `now` (and, if so, counts it).
    pub fn allow(&self, device: &str, now: Instant) -> bool {
        let mut budgets = self
            .budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(bucket) = budgets.by_device.get_mut(device) {
            return bucket.take(now);
        }
        let budgets = &mut *budgets;
        if budgets.by_device.len() >= RESULT_BUDGETS
            && budgets
                .pruned
                .is_none_or(|at| now.saturating_duration_since(at) >= RESULT_REFILL)
        {
            budgets.by_device.retain(|_, bucket| {
                bucket.refill(now);
                bucket.tokens < RESULT_BURST
            });
            budgets.pruned = Some(now);
        }
        if budgets.by_device.len() < RESULT_BUDGETS {
            let mut bucket = Bucket::full(now);
            let allowed = bucket.take(now);
            budgets.by_device.insert(device.to_owned(), bucket);
            return allowed;
        }
        budgets
            .overflow
            .get_or_insert_with(|| Bucket::full(now))
            .take(now)
    }

    /// How many computers' budgets are tracked.
    pub fn tracked(&self) -> usize {
        self.budgets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_device
            .len()
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_refill_with_time_and_stay_bounded_under_a_flood_of_made_up_ids() {
        let budget = ResultBudget::default();
        let start = Instant::now();
        let burst = RESULT_BURST as usize;
        assert!((0..burst).all(|_| budget.allow("pc", start)));
        assert!(!budget.allow("pc", start));
        assert!(budget.allow("pc", start + RESULT_REFILL));
        assert!(!budget.allow("pc", start + RESULT_REFILL));
        // A flood of made-up ids: the map stops growing and they share one budget, while
        // the computer already tracked keeps its own.
        let later = start + RESULT_REFILL * 2;
        let allowed = (0..RESULT_BUDGETS + 1000)
            .filter(|n| budget.allow(&format!("fake-{n}"), later))
            .count();
        assert_eq!(budget.tracked(), RESULT_BUDGETS);
        assert_eq!(allowed, RESULT_BUDGETS - 1 + burst);
        assert!(budget.allow("pc", later));
        // Once the budgets are back to full, they are forgotten to make room.
        let much_later = later + RESULT_REFILL * (burst as u32 + 1);
        assert!(budget.allow("newcomer", much_later));
        assert!(budget.tracked() < 10, "{}", budget.tracked());
    }
}
