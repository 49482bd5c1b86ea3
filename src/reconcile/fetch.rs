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
use hyper::http::uri::InvalidUri;
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

/// Why content could not be downloaded or kept. Each message names the URL or the file;
/// the I/O, TLS or HTTP error underneath is the source.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("failed to create the download cache {path}")]
    CreateCache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to start a downloader")]
    Runtime {
        #[source]
        source: std::io::Error,
    },
    #[error("failed to create a file in {path}")]
    CreateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to load the trusted root certificates to download with")]
    Roots {
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse `{url}` as a URL")]
    Url {
        url: String,
        #[source]
        source: InvalidUri,
    },
    #[error("failed to download {uri}: no answer within {READ_TIMEOUT:?}")]
    NoAnswer { uri: String },
    #[error("failed to download {uri}")]
    Request {
        uri: String,
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    #[error("failed to download {uri}: it redirects ({status}) without a Location")]
    NoLocation { uri: String, status: StatusCode },
    #[error("failed to follow the redirect from {uri} to `{location}`")]
    Redirect {
        uri: String,
        location: String,
        #[source]
        source: InvalidUri,
    },
    #[error("failed to download {url}: more than {MAX_REDIRECTS} redirects")]
    TooManyRedirects { url: String },
    #[error("failed to download {uri}: the server answered {status}")]
    Status { uri: String, status: StatusCode },
    #[error("failed to download {uri}: it is larger than {MAX_SIZE} bytes")]
    TooLarge { uri: String },
    #[error("failed to download {uri}: it stalled for {READ_TIMEOUT:?}")]
    Stalled { uri: String },
    #[error("failed to download {uri}")]
    Body {
        uri: String,
        #[source]
        source: hyper::Error,
    },
    #[error("failed to download {uri}: it ended after {received} of {expected} bytes")]
    Truncated {
        uri: String,
        received: u64,
        expected: u64,
    },
    #[error("failed to write the download of {url}")]
    Write {
        url: String,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to keep the download of {url} as {path}")]
    Keep {
        url: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{url} has SHA-256 {found}, but spec.content.sha256 says {expected}: refused (the file changed, or was tampered with)"
    )]
    DigestMismatch {
        url: String,
        found: String,
        expected: String,
    },
}

/// The path of the content at `url` whose SHA-256 is `sha256`, downloading it into `cache`
/// when it is not there yet. `progress` is told the bytes received so far.
pub fn fetch(
    url: &str,
    sha256: &str,
    cache: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf, FetchError> {
    let sha256 = sha256.to_ascii_lowercase();
    let target = cache.join(&sha256);
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(cache).map_err(|source| FetchError::CreateCache {
        path: cache.to_owned(),
        source,
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| FetchError::Runtime { source })?;
    let mut partial =
        tempfile::NamedTempFile::new_in(cache).map_err(|source| FetchError::CreateFile {
            path: cache.to_owned(),
            source,
        })?;
    let found = runtime.block_on(download(url, partial.as_file_mut(), progress))?;
    if found != sha256 {
        return Err(FetchError::DigestMismatch {
            url: url.to_owned(),
            found,
            expected: sha256,
        });
    }
    let write = |source| FetchError::Write {
        url: url.to_owned(),
        source,
    };
    partial.as_file().sync_all().map_err(write)?;
    partial
        .persist(&target)
        .map_err(|persist| FetchError::Keep {
            url: url.to_owned(),
            path: target.clone(),
            // The I/O error alone: `PersistError` prints it and chains it, so it would
            // show twice.
            source: persist.error,
        })?;
    Ok(target)
}

/// Streams `url` into `out`, following redirects; returns the SHA-256 of what came.
async fn download(
    url: &str,
    out: &mut std::fs::File,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<String, FetchError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(crate::pki::tls::provider())
        .map_err(|source| FetchError::Roots { source })?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut uri: Uri = url.parse().map_err(|source| FetchError::Url {
        url: url.to_owned(),
        source,
    })?;
    for _ in 0..=MAX_REDIRECTS {
        let response = tokio::time::timeout(READ_TIMEOUT, client.get(uri.clone()))
            .await
            .map_err(|_| FetchError::NoAnswer {
                uri: uri.to_string(),
            })?
            .map_err(|source| FetchError::Request {
                uri: uri.to_string(),
                source,
            })?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(hyper::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| FetchError::NoLocation {
                    uri: uri.to_string(),
                    status,
                })?;
            uri = resolve(&uri, location)?;
            continue;
        }
        if status != StatusCode::OK {
            return Err(FetchError::Status {
                uri: uri.to_string(),
                status,
            });
        }
        let expected = response
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if expected.is_some_and(|n| n > MAX_SIZE) {
            return Err(FetchError::TooLarge {
                uri: uri.to_string(),
            });
        }
        let mut body = response.into_body();
        let mut digest = Sha256::new();
        let mut received = 0u64;
        loop {
            let frame = tokio::time::timeout(READ_TIMEOUT, body.frame())
                .await
                .map_err(|_| FetchError::Stalled {
                    uri: uri.to_string(),
                })?;
            let Some(frame) = frame else { break };
            let frame = frame.map_err(|source| FetchError::Body {
                uri: uri.to_string(),
                source,
            })?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            received += data.len() as u64;
            if received > MAX_SIZE {
                return Err(FetchError::TooLarge {
                    uri: uri.to_string(),
                });
            }
            digest.update(&data);
            out.write_all(&data).map_err(|source| FetchError::Write {
                url: url.to_owned(),
                source,
            })?;
            progress(received, expected);
        }
        if let Some(expected) = expected.filter(|n| *n != received) {
            return Err(FetchError::Truncated {
                uri: uri.to_string(),
                received,
                expected,
            });
        }
        return Ok(hex::encode(digest.finalize()));
    }
    Err(FetchError::TooManyRedirects {
        url: url.to_owned(),
    })
}

/// `location` (absolute, or relative to `base`) as a URI.
fn resolve(base: &Uri, location: &str) -> Result<Uri, FetchError> {
    let bad = |source| FetchError::Redirect {
        uri: base.to_string(),
        location: location.to_owned(),
        source,
    };
    if location.contains("://") {
        return location.parse().map_err(bad);
    }
    let scheme = base.scheme_str().unwrap_or("https");
    let authority = base.authority().map_or("", |a| a.as_str());
    let path = if location.starts_with('/') {
        location.to_owned()
    } else {
        let dir = base.path().rsplit_once('/').map_or("", |(d, _)| d);
        format!("{dir}/{location}")
    };
    format!("{scheme}://{authority}{path}").parse().map_err(bad)
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

    #[test]
    fn a_bad_redirect_names_the_url_and_the_location_and_gives_its_cause_once() {
        let base: Uri = "https://example.org/a/file.tgz".parse().unwrap();
        let error = resolve(&base, "http://bad host/x").unwrap_err();
        assert!(matches!(error, FetchError::Redirect { .. }), "{error:?}");
        let chain = crate::error_chain(&error);
        assert!(
            chain.starts_with(
                "failed to follow the redirect from https://example.org/a/file.tgz to `http://bad host/x`: "
            ),
            "{chain}"
        );
        let cause = std::error::Error::source(&error).unwrap().to_string();
        assert_eq!(chain.matches(&cause).count(), 1, "{chain}");
    }
}
