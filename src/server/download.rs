//! The OCS downloads: `/download/<id>/info` (HTTPS only) and the fragments `<id>-<n>`, always
//! the whole file with its exact length, from a memory cache of fragments when they are in
//! it. The native API's ranged fragments (`server::v1`) share the cache.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::server::agent::Shared;
use crate::server::metrics::Listener;

/// Files up to this size are read whole and sent in one piece; larger ones are streamed.
pub(crate) const WHOLE_FILE: u64 = 8 << 20;
/// Read size when streaming a large file.
pub(crate) const STREAM_CHUNK: usize = 256 << 10;

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
            let opened = match tokio::fs::File::open(&path).await {
                Ok(file) => file,
                Err(_) => {
                    shared.metrics.not_found();
                    return StatusCode::NOT_FOUND.into_response();
                }
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
