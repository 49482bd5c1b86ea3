//! Package files served to agents: the OCS downloads (`/download/<id>/info`, HTTPS only, and
//! the fragments `<id>-<n>`, always the whole file with its exact length) and the native
//! API's fragments with HTTP Range resume; fragments come from a memory cache when they are
//! in it.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::server::agent::Shared;
use crate::server::metrics::Listener;

/// Files up to this size are read whole and sent in one piece; larger ones are streamed.
const WHOLE_FILE: u64 = 8 << 20;
/// Read size when streaming a large file.
const STREAM_CHUNK: usize = 256 << 10;

/// Memory for fragments: a few large packages being rolled out at once fit, and it stays
/// small next to what a deployment server has.
pub const FRAGMENT_CACHE: u64 = 256 << 20;

pub(crate) async fn download_https(
    State(shared): State<Shared>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    download(&shared, &id, &file, Listener::Https).await
}

pub(crate) async fn download_http(
    State(shared): State<Shared>,
    Path((id, file)): Path<(String, String)>,
) -> Response {
    if file == "info" {
        shared.metrics.not_found();
        return (
            StatusCode::NOT_FOUND,
            "info files are served over HTTPS only\n",
        )
            .into_response();
    }
    download(&shared, &id, &file, Listener::Http).await
}

/// `info` or a fragment `<id>-<n>` of an activated package: always 200 with the whole file
/// and its exact length (the Unix agent's LWP `mirror` fails on anything else).
async fn download(shared: &Shared, id: &str, file: &str, listener: Listener) -> Response {
    let fragment = file
        .strip_prefix(id)
        .and_then(|rest| rest.strip_prefix('-'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    let known = !id.is_empty()
        && id.bytes().all(|b| b.is_ascii_digit())
        && (fragment || file == "info")
        && shared.routes.borrow().packages.contains_key(id);
    if !known {
        shared.metrics.not_found();
        return StatusCode::NOT_FOUND.into_response();
    }
    // Fragments never change under their id (a new version is a new id): the same bytes go
    // to every agent, so they are kept in memory and sent without touching the disk.
    let cached = fragment.then(|| shared.cache.get(id, file)).flatten();
    let (body, length) = match cached {
        Some(bytes) => {
            let length = bytes.len() as u64;
            (Body::from(bytes), length)
        }
        None => {
            let path = shared.store.join(id).join(file);
            let Ok(opened) = tokio::fs::File::open(&path).await else {
                shared.metrics.not_found();
                return StatusCode::NOT_FOUND.into_response();
            };
            let length = match opened.metadata().await {
                Ok(meta) => meta.len(),
                Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            };
            if length <= WHOLE_FILE {
                let mut bytes = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
                let mut opened = opened;
                if tokio::io::AsyncReadExt::read_to_end(&mut opened, &mut bytes)
                    .await
                    .is_err()
                    || bytes.len() as u64 != length
                {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                let bytes = axum::body::Bytes::from(bytes);
                if fragment {
                    shared.cache.insert(id, file, bytes.clone());
                }
                (Body::from(bytes), length)
            } else {
                let stream = tokio_util::io::ReaderStream::with_capacity(opened, STREAM_CHUNK);
                (Body::from_stream(stream), length)
            }
        }
    };
    shared.metrics.served(fragment, length, listener);
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if fragment {
            "application/octet-stream"
        } else {
            "application/xml"
        }),
    );
    response
}

/// Fragments kept in memory, least recently used dropped first.
#[derive(Debug)]
pub struct FragmentCache {
    budget: u64,
    inner: std::sync::Mutex<CacheInner>,
}

#[derive(Debug, Default)]
struct CacheInner {
    entries: HashMap<(String, String), (axum::body::Bytes, u64)>,
    used: u64,
    tick: u64,
}

impl FragmentCache {
    /// A cache holding at most `budget` bytes.
    pub fn new(budget: u64) -> Self {
        Self {
            budget,
            inner: std::sync::Mutex::new(CacheInner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CacheInner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Fragment `file` of package `id`, if kept.
    pub fn get(&self, id: &str, file: &str) -> Option<axum::body::Bytes> {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        let entry = inner.entries.get_mut(&(id.to_owned(), file.to_owned()))?;
        entry.1 = tick;
        Some(entry.0.clone())
    }

    /// Keeps a fragment, dropping the least recently used ones to stay within budget.
    pub fn insert(&self, id: &str, file: &str, bytes: axum::body::Bytes) {
        let size = bytes.len() as u64;
        if size > self.budget {
            return;
        }
        let mut inner = self.lock();
        while inner.used + size > self.budget {
            let Some(oldest) = inner
                .entries
                .iter()
                .min_by_key(|(_, (_, tick))| *tick)
                .map(|(key, _)| key.clone())
            else {
                break;
            };
            if let Some((dropped, _)) = inner.entries.remove(&oldest) {
                inner.used -= dropped.len() as u64;
            }
        }
        inner.tick += 1;
        let tick = inner.tick;
        if let Some((old, _)) = inner
            .entries
            .insert((id.to_owned(), file.to_owned()), (bytes, tick))
        {
            inner.used -= old.len() as u64;
        }
        inner.used += size;
    }
}

// Ranged fragments, for the native API (`GET /v1/packages/{id}/fragments/{n}`).

/// Fragment `n` of package `id`, whole (200) or the one range asked (206), never copied
/// whole per request: from the memory cache as a slice of the cached bytes; else fragments
/// up to `WHOLE_FILE` are read once into the cache, and larger ones are streamed from the
/// file, starting at the range.
pub(crate) async fn fragment_range(
    store: &std::path::Path,
    cache: &FragmentCache,
    id: &str,
    n: u32,
    range: Option<&str>,
) -> Response {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let file = format!("{id}-{n}");
    let (cached, opened, length) = match cache.get(id, &file) {
        Some(bytes) => {
            let length = bytes.len() as u64;
            (Some(bytes), None, length)
        }
        None => {
            let Ok(mut opened) = tokio::fs::File::open(store.join(id).join(&file)).await else {
                return StatusCode::NOT_FOUND.into_response();
            };
            let Ok(length) = opened.metadata().await.map(|m| m.len()) else {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            };
            if length <= WHOLE_FILE {
                let mut bytes = Vec::with_capacity(usize::try_from(length).unwrap_or(0));
                if opened.read_to_end(&mut bytes).await.is_err() || bytes.len() as u64 != length {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                let bytes = axum::body::Bytes::from(bytes);
                cache.insert(id, &file, bytes.clone());
                (Some(bytes), None, length)
            } else {
                (None, Some(opened), length)
            }
        }
    };
    let (status, slice) = match range.map(|v| parse_range(v, length)) {
        None => (StatusCode::OK, 0..length),
        Some(Some(range)) => (StatusCode::PARTIAL_CONTENT, range),
        Some(None) => {
            let mut refused = StatusCode::RANGE_NOT_SATISFIABLE.into_response();
            if let Ok(value) = HeaderValue::from_str(&format!("bytes */{length}")) {
                refused.headers_mut().insert(header::CONTENT_RANGE, value);
            }
            return refused;
        }
    };
    let body = match (cached, opened) {
        (Some(bytes), _) => {
            let start = usize::try_from(slice.start).unwrap_or(0);
            let end = usize::try_from(slice.end).unwrap_or(bytes.len());
            axum::body::Body::from(bytes.slice(start..end))
        }
        (None, Some(mut opened)) => {
            if opened
                .seek(std::io::SeekFrom::Start(slice.start))
                .await
                .is_err()
            {
                return StatusCode::INTERNAL_SERVER_ERROR.into_response();
            }
            let part = opened.take(slice.end - slice.start);
            axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(
                part,
                STREAM_CHUNK,
            ))
        }
        (None, None) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(slice.end - slice.start),
    );
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(value) =
            HeaderValue::from_str(&format!("bytes {}-{}/{length}", slice.start, slice.end - 1))
    {
        headers.insert(header::CONTENT_RANGE, value);
    }
    response
}

/// One `bytes=from-[to]` range within `length`; `None` when it cannot be satisfied.
fn parse_range(value: &str, length: u64) -> Option<std::ops::Range<u64>> {
    let (from, to) = value.strip_prefix("bytes=")?.split_once('-')?;
    if from.is_empty() {
        // A suffix: the last `to` bytes.
        let last: u64 = to.parse().ok()?;
        return (last > 0 && length > 0).then(|| length.saturating_sub(last)..length);
    }
    let from: u64 = from.parse().ok()?;
    let to: u64 = if to.is_empty() {
        length.checked_sub(1)?
    } else {
        to.parse::<u64>().ok()?.min(length.checked_sub(1)?)
    };
    (from <= to && from < length).then(|| from..to + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[test]
    fn the_fragment_cache_keeps_the_most_recently_used_within_its_budget() {
        let cache = FragmentCache::new(10);
        let bytes = |n: usize| axum::body::Bytes::from(vec![0u8; n]);
        cache.insert("1", "1-1", bytes(4));
        cache.insert("1", "1-2", bytes(4));
        assert!(cache.get("1", "1-1").is_some()); // now the most recent
        cache.insert("1", "1-3", bytes(4)); // drops 1-2
        assert!(cache.get("1", "1-2").is_none());
        assert!(cache.get("1", "1-1").is_some() && cache.get("1", "1-3").is_some());
        cache.insert("2", "2-1", bytes(11)); // larger than the budget: not kept
        assert!(cache.get("2", "2-1").is_none());
        assert_eq!(cache.lock().used, 8);
    }

    /// A fragment of `length` bytes (byte i is i mod 251) in a store under `dir`.
    fn fragment_file(dir: &std::path::Path, length: usize) {
        std::fs::create_dir_all(dir.join("7")).unwrap();
        let bytes: Vec<u8> = (0..length).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.join("7/7-1"), bytes).unwrap();
    }

    /// (status, Content-Range, Content-Length, body).
    async fn get(
        store: &std::path::Path,
        cache: &FragmentCache,
        range: Option<&str>,
    ) -> (u16, String, u64, Vec<u8>) {
        let response = fragment_range(store, cache, "7", 1, range).await;
        let header = |name| {
            response
                .headers()
                .get(name)
                .map(|v: &HeaderValue| v.to_str().unwrap().to_owned())
                .unwrap_or_default()
        };
        let (range, length) = (
            header(header::CONTENT_RANGE),
            header(header::CONTENT_LENGTH).parse().unwrap_or(0),
        );
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, range, length, body.to_vec())
    }

    fn pattern(range: std::ops::Range<usize>) -> Vec<u8> {
        range.map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test]
    async fn a_range_of_a_cached_fragment_is_a_slice_of_the_cache_not_a_read() {
        let dir = tempfile::tempdir().unwrap();
        fragment_file(dir.path(), 4096);
        let cache = FragmentCache::new(1 << 20);
        assert_eq!(get(dir.path(), &cache, Some("bytes=0-0")).await.3, vec![0]);
        // Gone from the disk: later ranges come from memory.
        std::fs::remove_file(dir.path().join("7/7-1")).unwrap();
        let (status, range, length, body) = get(dir.path(), &cache, Some("bytes=10-19")).await;
        assert_eq!(
            (status, range.as_str(), length),
            (206, "bytes 10-19/4096", 10)
        );
        assert_eq!(body, pattern(10..20));
        let (status, _, length, body) = get(dir.path(), &cache, None).await;
        assert_eq!((status, length), (200, 4096));
        assert_eq!(body, pattern(0..4096));
    }

    #[tokio::test]
    async fn a_range_of_a_large_fragment_is_streamed_from_the_file_with_its_exact_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let size = usize::try_from(WHOLE_FILE).unwrap() * 2;
        fragment_file(dir.path(), size);
        let cache = FragmentCache::new(1 << 30);
        let cases = [
            ("bytes=0-0", 0..1),
            ("bytes=100-199", 100..200),
            ("bytes=-10", size - 10..size),
            (&format!("bytes={}-", size - 3) as &str, size - 3..size),
            ("bytes=5000000-5000099", 5_000_000..5_000_100),
        ];
        for (asked, expected) in cases {
            let (status, range, length, body) = get(dir.path(), &cache, Some(asked)).await;
            assert_eq!(status, 206, "{asked}");
            assert_eq!(
                range,
                format!("bytes {}-{}/{size}", expected.start, expected.end - 1)
            );
            assert_eq!(length, expected.len() as u64);
            assert_eq!(body, pattern(expected), "{asked}");
        }
        let (status, range, _, _) = get(dir.path(), &cache, Some(&format!("bytes={size}-"))).await;
        assert_eq!((status, range), (416, format!("bytes */{size}")));
        let (status, _, length, body) = get(dir.path(), &cache, None).await;
        assert_eq!((status, length, body.len()), (200, size as u64, size));
        // Never held in memory whole: not cached, and a small range's body is streamed.
        assert!(cache.get("7", "7-1").is_none());
        let response = fragment_range(dir.path(), &cache, "7", 1, Some("bytes=0-0")).await;
        assert_eq!(
            hyper::body::Body::size_hint(response.body()).exact(),
            None,
            "a streamed body, not a buffer"
        );
    }

    #[tokio::test]
    async fn concurrent_small_ranges_of_a_large_fragment_stay_small_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        fragment_file(dir.path(), 64 << 20);
        let cache = FragmentCache::new(1 << 30);
        let rss = || {
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| {
                    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?.to_owned();
                    line.split_whitespace().nth(1)?.parse::<u64>().ok()
                })
                .unwrap_or(0)
        };
        let before = rss();
        let responses = futures::future::join_all(
            (0..32).map(|_| fragment_range(dir.path(), &cache, "7", 1, Some("bytes=0-0"))),
        )
        .await;
        let during = rss();
        for response in responses {
            let body = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(body.as_ref(), [0u8]);
        }
        println!(
            "32 concurrent `bytes=0-0` on a 64 MiB fragment: resident memory {before} KiB -> {during} KiB"
        );
    }

    #[test]
    fn ranges_resume_within_the_fragment_and_refuse_what_lies_beyond() {
        assert_eq!(parse_range("bytes=100-", 1000), Some(100..1000));
        assert_eq!(parse_range("bytes=0-99", 1000), Some(0..100));
        assert_eq!(parse_range("bytes=900-5000", 1000), Some(900..1000));
        assert_eq!(parse_range("bytes=-10", 1000), Some(990..1000));
        assert_eq!(parse_range("bytes=1000-", 1000), None);
        assert_eq!(parse_range("bytes=5-4", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
    }
}
