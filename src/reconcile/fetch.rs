//! Package content from a URL: downloaded once into a cache named by its SHA-256, checked
//! against the digest the Package declares, and used as is (like an archive file).
//!
//! The digest makes the cache safe: a file is only ever kept under the digest it really
//! has, and a package built from it names that digest, so the same URL content gives the
//! same package id on every replica.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::{StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};

/// A server has this long to answer each request (headers), and to send each piece of
/// the body.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Redirects followed (release assets are often one or two hops away).
const MAX_REDIRECTS: usize = 5;
/// Largest content accepted: an OCS package is split into numbered fragments, and agents
/// need three times its size free; beyond this something is wrong.
const MAX_SIZE: u64 = 16 << 30;

/// The path of the content at `url` whose SHA-256 is `sha256`, downloading it into `cache`
/// when it is not there yet. `progress` is told the bytes received so far.
pub fn fetch(
    url: &str,
    sha256: &str,
    cache: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf, String> {
    let sha256 = sha256.to_ascii_lowercase();
    let target = cache.join(&sha256);
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(cache)
        .map_err(|e| format!("failed to create {}: {e}", cache.display()))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("failed to start a downloader: {e}"))?;
    let mut partial = tempfile::NamedTempFile::new_in(cache)
        .map_err(|e| format!("failed to create a file in {}: {e}", cache.display()))?;
    let found = runtime.block_on(download(url, partial.as_file_mut(), progress))?;
    if found != sha256 {
        return Err(format!(
            "{url} has SHA-256 {found}, but spec.content.sha256 says {sha256}: refused (the file changed, or was tampered with)"
        ));
    }
    partial
        .as_file()
        .sync_all()
        .map_err(|e| format!("failed to write the download: {e}"))?;
    partial
        .persist(&target)
        .map_err(|e| format!("failed to keep the download: {e}"))?;
    Ok(target)
}

/// Streams `url` into `out`, following redirects; returns the SHA-256 of what came.
async fn download(
    url: &str,
    out: &mut std::fs::File,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<String, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(crate::pki::tls::provider())
        .map_err(|e| format!("no trusted root certificates to download with: {e}"))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut uri: Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    for _ in 0..=MAX_REDIRECTS {
        let response = tokio::time::timeout(READ_TIMEOUT, client.get(uri.clone()))
            .await
            .map_err(|_| format!("{uri} did not answer within {READ_TIMEOUT:?}"))?
            .map_err(|e| format!("failed to download {uri}: {}", crate::error_chain(&e)))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| format!("{uri} redirects ({status}) without a Location"))?;
            uri = resolve(&uri, location)?;
            continue;
        }
        if status != StatusCode::OK {
            return Err(format!("{uri} answered {status}"));
        }
        let expected = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if expected.is_some_and(|n| n > MAX_SIZE) {
            return Err(format!("{uri} is larger than {MAX_SIZE} bytes"));
        }
        let mut body = response.into_body();
        let mut digest = Sha256::new();
        let mut received = 0u64;
        loop {
            let frame = tokio::time::timeout(READ_TIMEOUT, body.frame())
                .await
                .map_err(|_| format!("{uri} stalled for {READ_TIMEOUT:?}"))?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|e| format!("failed to download {uri}: {e}"))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            received += data.len() as u64;
            if received > MAX_SIZE {
                return Err(format!("{uri} is larger than {MAX_SIZE} bytes"));
            }
            digest.update(&data);
            out.write_all(&data)
                .map_err(|e| format!("failed to write the download: {e}"))?;
            progress(received, expected);
        }
        if expected.is_some_and(|n| n != received) {
            return Err(format!(
                "{uri} ended after {received} of {} bytes",
                expected.unwrap_or_default()
            ));
        }
        return Ok(hex::encode(digest.finalize()));
    }
    Err(format!("{url}: more than {MAX_REDIRECTS} redirects"))
}

/// `location` (absolute, or relative to `base`) as a URI.
fn resolve(base: &Uri, location: &str) -> Result<Uri, String> {
    if location.contains("://") {
        return location
            .parse()
            .map_err(|e| format!("bad redirect `{location}`: {e}"));
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map_or("", |a| a.as_str());
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{location}")
    };
    format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|e| format!("bad redirect `{location}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_against_the_url_they_came_from() {
        let base: Uri = "https://example.org/a/b/file.tgz".parse().unwrap();
        assert_eq!(
            resolve(&base, "/c/d.tgz").unwrap().to_string(),
            "https://example.org/c/d.tgz"
        );
        assert_eq!(
            resolve(&base, "e.tgz").unwrap().to_string(),
            "https://example.org/a/b/e.tgz"
        );
        assert_eq!(
            resolve(&base, "http://mirror/x").unwrap().to_string(),
            "http://mirror/x"
        );
    }
}
