//! How often one source may make the server do something: `Repeats` keeps one warning per
//! source and window in the log (with a count of the rest), `RateLimit` is a token bucket per
//! client address. Imports nothing of the crate, so `server`, `gateway` and `sources` may all
//! use it.
//!
//! Both keep a bounded map: a stranger who sprays from many addresses fills it, and then
//! shares one overflow entry with every other newcomer instead of growing memory.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sources remembered at once. Each entry is a few dozen bytes; 4,096 of them are small, and
/// more distinct sources than this in one window is a spray that the overflow entry covers.
pub const MAX_SOURCES: usize = 4096;

/// The window of [`Repeats`]: one line per source and minute keeps a flood to at most a few
/// lines per minute per source, and an operator still sees within a minute that it goes on.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);

/// What to do with one occurrence of a repeated warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `suppressed` more from this source were left out since the last line.
    Log { suppressed: u64 },
    /// Leave it out (it is counted, and the count goes into the next line).
    Quiet,
}

/// Repeated warnings from one source: the first is logged, the rest of the window only
/// counted, and the first one after the window is logged with that count.
#[derive(Debug)]
pub struct Repeats<K> {
    window: Duration,
    capacity: usize,
    seen: Mutex<Sources<K>>,
}

#[derive(Debug)]
struct Sources<K> {
    entries: HashMap<K, Seen>,
    /// Where newcomers count once `entries` is full.
    overflow: Option<Seen>,
}

#[derive(Clone, Copy, Debug)]
struct Seen {
    logged_at: Instant,
    suppressed: u64,
}

impl<K: Hash + Eq> Default for Repeats<K> {
    fn default() -> Self {
        Self::new(REPEAT_WINDOW, MAX_SOURCES)
    }
}

impl<K: Hash + Eq> Repeats<K> {
    /// At most one line per source and `window`, remembering up to `capacity` sources.
    pub fn new(window: Duration, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            seen: Mutex::new(Sources {
                entries: HashMap::new(),
                overflow: None,
            }),
        }
    }

    /// Whether the occurrence from `source` at `now` is written.
    pub fn check(&self, source: K, now: Instant) -> Verdict {
        let mut sources = self
            .seen
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let window = self.window;
        let fresh = Seen {
            logged_at: now,
            suppressed: 0,
        };
        let known = sources.entries.contains_key(&source);
        if !known && sources.entries.len() >= self.capacity {
            sources
                .entries
                .retain(|_, seen| now.saturating_duration_since(seen.logged_at) < window);
        }
        let Sources { entries, overflow } = &mut *sources;
        let seen = if known || entries.len() < self.capacity {
            match entries.entry(source) {
                Entry::Occupied(entry) => entry.into_mut(),
                Entry::Vacant(entry) => {
                    entry.insert(fresh);
                    return Verdict::Log { suppressed: 0 };
                }
            }
        } else {
            match overflow {
                Some(seen) => seen,
                None => {
                    *overflow = Some(fresh);
                    return Verdict::Log { suppressed: 0 };
                }
            }
        };
        if now.saturating_duration_since(seen.logged_at) < window {
            seen.suppressed += 1;
            Verdict::Quiet
        } else {
            let suppressed = seen.suppressed;
            *seen = fresh;
            Verdict::Log { suppressed }
        }
    }
}

/// A token bucket per client address: `burst` attempts at once, then one more every
/// `refill`. IPv6 addresses count per /64, the block one subscriber usually gets, so a
/// client cannot make itself new addresses to start over.
#[derive(Debug)]
pub struct RateLimit {
    burst: f64,
    refill: Duration,
    capacity: usize,
    buckets: Mutex<Buckets>,
}

#[derive(Debug)]
struct Buckets {
    entries: HashMap<IpAddr, Bucket>,
    /// The bucket every newcomer shares once `entries` is full.
    overflow: Bucket,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `burst` attempts at once per address, then one every `refill`.
    pub fn new(burst: u32, refill: Duration, capacity: usize) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            burst,
            refill: refill.max(Duration::from_millis(1)),
            capacity: capacity.max(1),
            buckets: Mutex::new(Buckets {
                entries: HashMap::new(),
                overflow: Bucket {
                    tokens: burst,
                    at: Instant::now(),
                },
            }),
        }
    }

    /// Takes one attempt for `client` at `now`: `Ok(())`, or how long until the next one.
    pub fn take(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = source_of(client);
        let (burst, refill) = (self.burst, self.refill);
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if !buckets.entries.contains_key(&key) && buckets.entries.len() >= self.capacity {
            // A full bucket is the same as no bucket: forget those first.
            buckets
                .entries
                .retain(|_, bucket| refilled(bucket, now, burst, refill) < burst);
        }
        let bucket = if buckets.entries.len() < self.capacity {
            buckets.entries.entry(key).or_insert(Bucket {
                tokens: burst,
                at: now,
            })
        } else {
            &mut buckets.overflow
        };
        bucket.tokens = refilled(bucket, now, burst, refill);
        bucket.at = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(refill.mul_f64(1.0 - bucket.tokens))
        }
    }

    /// Gives back the attempt `take` counted for `client` (it turned out legitimate).
    pub fn give_back(&self, client: IpAddr) {
        let key = source_of(client);
        let burst = self.burst;
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let bucket = match buckets.entries.get_mut(&key) {
            Some(bucket) => bucket,
            None => &mut buckets.overflow,
        };
        bucket.tokens = (bucket.tokens + 1.0).min(burst);
    }
}

/// The tokens in `bucket` at `now`.
fn refilled(bucket: &Bucket, now: Instant, burst: f64, refill: Duration) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at);
    (bucket.tokens + elapsed.as_secs_f64() / refill.as_secs_f64()).min(burst)
}

/// The address a client is counted under: itself, or its /64 for IPv6 (and an IPv4 address
/// mapped into IPv6 as itself). Also a key for [`Repeats`] of one client.
pub fn source_of(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(_) => client,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn the_first_warning_logs_then_one_line_per_window_with_the_count() {
        let repeats = Repeats::new(MINUTE, 16);
        let start = Instant::now();
        assert_eq!(repeats.check("a", start), Verdict::Log { suppressed: 0 });
        for second in 1..60 {
            let now = start + Duration::from_secs(second);
            assert_eq!(repeats.check("a", now), Verdict::Quiet);
        }
        // Another source has its own window.
        assert_eq!(
            repeats.check("b", start + Duration::from_secs(30)),
            Verdict::Log { suppressed: 0 }
        );
        assert_eq!(
            repeats.check("a", start + MINUTE),
            Verdict::Log { suppressed: 59 }
        );
        assert_eq!(
            repeats.check("a", start + MINUTE + Duration::from_secs(1)),
            Verdict::Quiet
        );
        assert_eq!(
            repeats.check("a", start + 3 * MINUTE),
            Verdict::Log { suppressed: 1 }
        );
    }

    #[test]
    fn a_spray_of_sources_shares_one_overflow_entry_and_memory_stays_bounded() {
        let repeats = Repeats::new(MINUTE, 4);
        let now = Instant::now();
        let logged = (0..10_000u32)
            .filter(|n| repeats.check(*n, now) != Verdict::Quiet)
            .count();
        // Four sources of their own, and the overflow entry once.
        assert_eq!(logged, 5);
        assert!(repeats.seen.lock().unwrap().entries.len() <= 4);
        // Once their windows are over, entries make room for new sources.
        assert_eq!(
            repeats.check(20_000, now + MINUTE),
            Verdict::Log { suppressed: 0 }
        );
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_one_per_refill() {
        let limit = RateLimit::new(10, Duration::from_secs(1), 16);
        let client: IpAddr = "192.0.2.7".parse().unwrap();
        let start = Instant::now();
        for _ in 0..10 {
            assert_eq!(limit.take(client, start), Ok(()));
        }
        assert_eq!(limit.take(client, start), Err(Duration::from_secs(1)));
        // Another client is not affected.
        assert_eq!(limit.take("192.0.2.8".parse().unwrap(), start), Ok(()));
        let later = start + Duration::from_millis(1500);
        assert_eq!(limit.take(client, later), Ok(()));
        assert_eq!(limit.take(client, later), Err(Duration::from_millis(500)));
        // What was given back may be taken again.
        limit.give_back(client);
        assert_eq!(limit.take(client, later), Ok(()));
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        let limit = RateLimit::new(2, Duration::from_secs(1), 16);
        let now = Instant::now();
        assert_eq!(limit.take("2001:db8::1".parse().unwrap(), now), Ok(()));
        assert_eq!(limit.take("2001:db8::2:3".parse().unwrap(), now), Ok(()));
        assert!(
            limit
                .take("2001:db8::ffff:1".parse().unwrap(), now)
                .is_err()
        );
        assert_eq!(limit.take("2001:db8:0:1::1".parse().unwrap(), now), Ok(()));
        assert_eq!(limit.take("192.0.2.1".parse().unwrap(), now), Ok(()));
        assert_eq!(limit.take("::ffff:192.0.2.1".parse().unwrap(), now), Ok(()));
        assert!(limit.take("192.0.2.1".parse().unwrap(), now).is_err());
    }

    #[test]
    fn newcomers_share_the_overflow_bucket_when_the_map_is_full() {
        let limit = RateLimit::new(1, Duration::from_secs(1), 2);
        let now = Instant::now();
        for last in 1..=2u8 {
            assert_eq!(limit.take(IpAddr::from([192, 0, 2, last]), now), Ok(()));
        }
        // Both remembered buckets are empty: the next two share one.
        assert_eq!(limit.take(IpAddr::from([192, 0, 2, 3]), now), Ok(()));
        assert!(limit.take(IpAddr::from([192, 0, 2, 4]), now).is_err());
        assert!(limit.buckets.lock().unwrap().entries.len() <= 2);
    }
}
