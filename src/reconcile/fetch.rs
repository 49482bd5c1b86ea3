//! Package content from a URL: downloaded once into a cache named by its SHA-256, checked
//! against the digest the Package declares, and used as is (like an archive file).
//!
//! The digest makes the cache safe: a file is only ever kept under the digest it really
//! has, and a package built from it names that digest, so the same URL content gives the
//! same package id on every replica.
//!
//! Redirects are resolved as RFC 3986 says (the `url` crate), and downloads go through the
//! proxy the standard variables name, as curl reads them ([`Proxies`]): an `https://` URL
//! through a CONNECT tunnel (TLS stays end to end), an `http://` one as a forward-proxy
//! request, a host of `NO_PROXY` directly.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::http::uri::InvalidUri;
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::{Intercept, Matcher};
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

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
        source: url::ParseError,
    },
    /// A redirect to what is not `http://` or `https://` (`file:`, `ftp:`, `data:`).
    #[error(
        "failed to follow the redirect from {uri} to `{target}`: only http and https are followed"
    )]
    RedirectScheme { uri: String, target: String },
    /// The proxy named for a URL is not an `http://` proxy (SOCKS and TLS to the proxy are
    /// not spoken); the proxy's address, without credentials.
    #[error("failed to download {uri}: the proxy {proxy} is not an http:// proxy")]
    ProxyScheme { uri: String, proxy: String },
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

/// Which proxy a download goes through: curl's rules and variables (`HTTPS_PROXY`,
/// `HTTP_PROXY`, `ALL_PROXY`, `NO_PROXY`, upper or lower case), matched by hyper-util's
/// matcher; credentials in a proxy URL are percent-decoded and sent as
/// `Proxy-Authorization: Basic`.
#[derive(Clone, Debug)]
pub struct Proxies(Arc<Matcher>);

impl Proxies {
    /// The proxies the process environment names (none when it names none).
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// The proxies `lookup` names, as curl reads its variables: the upper-case name first,
    /// and `ALL_PROXY` for a scheme without its own.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let first = |names: [&str; 2]| names.into_iter().find_map(&lookup).unwrap_or_default();
        let all = first(["ALL_PROXY", "all_proxy"]);
        let or_all = |value: String| if value.is_empty() { all.clone() } else { value };
        Self::new(
            &or_all(first(["HTTPS_PROXY", "https_proxy"])),
            &or_all(first(["HTTP_PROXY", "http_proxy"])),
            &first(["NO_PROXY", "no_proxy"]),
        )
    }

    /// `https` for `https://` URLs, `http` for `http://` ones (empty: none), and `no`, a
    /// `NO_PROXY` list of hosts, domains and networks reached directly (`*`: all).
    pub fn new(https: &str, http: &str, no: &str) -> Self {
        // curl's `*` means every host; hyper-util's matcher applies it to names only, and
        // would still proxy a URL with an IP address.
        if no.split(',').any(|entry| entry.trim() == "*") {
            return Self(Arc::new(Matcher::builder().build()));
        }
        Self(Arc::new(
            Matcher::builder().https(https).http(http).no(no).build(),
        ))
    }

    /// Direct connections only.
    pub fn none() -> Self {
        Self::new("", "", "")
    }

    fn intercept(&self, uri: &Uri) -> Option<Intercept> {
        self.0.intercept(uri)
    }
}

/// The path of the content at `url` whose SHA-256 is `sha256`, downloading it into `cache`
/// when it is not there yet, through the proxies of the environment (as curl and git
/// would). `progress` is told the bytes received so far.
pub fn fetch(
    url: &str,
    sha256: &str,
    cache: &Path,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<PathBuf, FetchError> {
    fetch_through(url, sha256, cache, &Proxies::from_env(), progress)
}

/// [`fetch`] through `proxies`.
pub fn fetch_through(
    url: &str,
    sha256: &str,
    cache: &Path,
    proxies: &Proxies,
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
    let found = runtime.block_on(download(url, partial.as_file_mut(), proxies, progress))?;
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

/// Streams `url` into `out` through `proxies`, following redirects; returns the SHA-256 of
/// what came.
async fn download(
    url: &str,
    out: &mut std::fs::File,
    proxies: &Proxies,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<String, FetchError> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(crate::pki::tls::provider())
        .map_err(|source| FetchError::Roots { source })?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(ProxyConnector {
            proxies: proxies.clone(),
        });
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build(connector);
    let mut uri: Uri = url.parse().map_err(|source| FetchError::Url {
        url: url.to_owned(),
        source,
    })?;
    for _ in 0..=MAX_REDIRECTS {
        let request = request(&uri, proxies)?;
        let response = tokio::time::timeout(READ_TIMEOUT, client.request(request))
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

/// A GET of `uri`; through a forward proxy (`http://` URLs), with the proxy's credentials.
fn request(uri: &Uri, proxies: &Proxies) -> Result<Request<Empty<Bytes>>, FetchError> {
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri.clone();
    match proxies.intercept(uri) {
        Some(proxy) if proxy.uri().scheme_str() != Some("http") => Err(FetchError::ProxyScheme {
            uri: uri.to_string(),
            proxy: proxy.uri().to_string(),
        }),
        // A forward proxy reads its credentials from each request (a tunnel's go in the
        // CONNECT, see `ProxyConnector`).
        Some(proxy) if uri.scheme_str() == Some("http") => {
            if let Some(auth) = proxy.basic_auth() {
                request
                    .headers_mut()
                    .insert(hyper::header::PROXY_AUTHORIZATION, auth.clone());
            }
            Ok(request)
        }
        _ => Ok(request),
    }
}

/// `location` resolved against `base` as RFC 3986 section 5 says: an absolute URL as it
/// is, `//host/path` on the base's scheme, `/path` on its host, and a relative path merged
/// with the base's directory and its `.` and `..` segments removed. Only http and https
/// targets are followed.
fn resolve(base: &Uri, location: &str) -> Result<Uri, FetchError> {
    let bad = |source| FetchError::Redirect {
        uri: base.to_string(),
        location: location.to_owned(),
        source,
    };
    let mut target = url::Url::parse(&base.to_string())
        .and_then(|base| base.join(location))
        .map_err(bad)?;
    // The fragment is the client's own; it is never sent.
    target.set_fragment(None);
    let refused = || FetchError::RedirectScheme {
        uri: base.to_string(),
        target: target.to_string(),
    };
    if !matches!(target.scheme(), "http" | "https") {
        return Err(refused());
    }
    target.as_str().parse().map_err(|_| refused())
}

/// Connects directly, or to the proxy `Proxies` names for the destination: a CONNECT
/// tunnel for `https://` (with the proxy's credentials), a plain connection marked as
/// proxied for `http://` (the client then sends absolute-form requests).
#[derive(Clone)]
struct ProxyConnector {
    proxies: Proxies,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for ProxyConnector {
    type Response = ProxyStream;
    type Error = BoxError;
    type Future =
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<ProxyStream, BoxError>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, destination: Uri) -> Self::Future {
        let intercept = self.proxies.intercept(&destination);
        Box::pin(async move {
            let mut tcp = HttpConnector::new();
            // The HTTPS connector around this one does TLS; this one only opens TCP.
            tcp.enforce_http(false);
            let Some(proxy) = intercept else {
                let stream = tcp.oneshot(destination).await?;
                return Ok(ProxyStream {
                    stream,
                    forward: false,
                });
            };
            if destination.scheme_str() == Some("https") {
                let mut tunnel = Tunnel::new(proxy.uri().clone(), tcp);
                if let Some(auth) = proxy.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                let stream = tunnel.oneshot(destination).await?;
                return Ok(ProxyStream {
                    stream,
                    forward: false,
                });
            }
            let stream = tcp.oneshot(proxy.uri().clone()).await?;
            Ok(ProxyStream {
                stream,
                forward: true,
            })
        })
    }
}

/// A connection to a server, or to the proxy that forwards requests to it (`forward`).
struct ProxyStream {
    stream: TokioIo<tokio::net::TcpStream>,
    forward: bool,
}

impl hyper_util::client::legacy::connect::Connection for ProxyStream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        self.stream.connected().proxy(self.forward)
    }
}

impl hyper::rt::Read for ProxyStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ProxyStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_as_rfc_3986_says() {
        let base: Uri = "http://127.0.0.1:8080/rel/a/file.tgz?x=1".parse().unwrap();
        let resolved = |location: &str| resolve(&base, location).unwrap().to_string();
        // A network-path reference keeps the scheme only.
        assert_eq!(resolved("//127.0.0.1:9090/b"), "http://127.0.0.1:9090/b");
        assert_eq!(
            resolved("//mirror.example/b?y"),
            "http://mirror.example/b?y"
        );
        // Dot segments are removed, never sent.
        assert_eq!(resolved("../b"), "http://127.0.0.1:8080/rel/b");
        assert_eq!(resolved("../../../b"), "http://127.0.0.1:8080/b");
        assert_eq!(resolved("./c/./d/../e"), "http://127.0.0.1:8080/rel/a/c/e");
        assert_eq!(resolved("/x/../y"), "http://127.0.0.1:8080/y");
        // A query alone keeps the path; a fragment is not sent.
        assert_eq!(resolved("?z=2"), "http://127.0.0.1:8080/rel/a/file.tgz?z=2");
        assert_eq!(resolved("b#part"), "http://127.0.0.1:8080/rel/a/b");
        // RFC 3986's own examples (section 5.4), from its base.
        let base: Uri = "http://a/b/c/d;p?q".parse().unwrap();
        for (location, expected) in [
            ("g", "http://a/b/c/g"),
            ("./g", "http://a/b/c/g"),
            ("g/", "http://a/b/c/g/"),
            ("/g", "http://a/g"),
            ("//g", "http://g/"),
            ("?y", "http://a/b/c/d;p?y"),
            ("g?y", "http://a/b/c/g?y"),
            (";x", "http://a/b/c/;x"),
            ("", "http://a/b/c/d;p?q"),
            (".", "http://a/b/c/"),
            ("..", "http://a/b/"),
            ("../g", "http://a/b/g"),
            ("../..", "http://a/"),
            ("../../g", "http://a/g"),
            ("../../../g", "http://a/g"),
            ("/./g", "http://a/g"),
            ("g/../h", "http://a/b/c/h"),
        ] {
            assert_eq!(
                resolve(&base, location).unwrap().to_string(),
                expected,
                "{location:?}"
            );
        }
    }

    #[test]
    fn a_redirect_to_another_scheme_is_refused() {
        let base: Uri = "https://example.org/a/file.tgz".parse().unwrap();
        for location in ["file:///etc/passwd", "ftp://example.org/x", "data:,x"] {
            let error = resolve(&base, location).unwrap_err();
            assert!(
                matches!(error, FetchError::RedirectScheme { .. }),
                "{location}: {error:?}"
            );
        }
    }

    #[test]
    fn proxies_follow_no_proxy_and_decode_credentials() {
        let proxies = Proxies::new(
            "http://user:p%40ss@127.0.0.1:3128",
            "http://127.0.0.1:3129",
            "127.0.0.1,.internal.example",
        );
        let target = |uri: &str| proxies.intercept(&uri.parse().unwrap());
        assert!(target("https://127.0.0.1:8443/x").is_none());
        assert!(target("http://mirror.internal.example/x").is_none());
        let secure = target("https://example.org/x").unwrap();
        assert_eq!(secure.uri().to_string(), "http://127.0.0.1:3128/");
        use base64::Engine;
        assert_eq!(
            secure.basic_auth().unwrap().to_str().unwrap(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("user:p@ss")
            )
        );
        let plain = target("http://example.org/x").unwrap();
        assert_eq!(plain.uri().to_string(), "http://127.0.0.1:3129/");
        assert!(
            Proxies::none()
                .intercept(&"https://example.org/x".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn proxies_are_read_from_the_variables_as_curl_reads_them() {
        let from = |variables: &[(&str, &str)]| {
            let variables: Vec<(String, String)> = variables
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            Proxies::from_lookup(move |name| {
                variables
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
            })
        };
        let target = |proxies: &Proxies, uri: &str| {
            proxies
                .intercept(&uri.parse().unwrap())
                .map(|i| i.uri().to_string())
        };
        let proxies = from(&[
            ("https_proxy", "http://127.0.0.1:1"),
            ("ALL_PROXY", "http://127.0.0.1:2"),
            ("no_proxy", "mirror.example"),
        ]);
        assert_eq!(
            target(&proxies, "https://example.org/x").as_deref(),
            Some("http://127.0.0.1:1/")
        );
        assert_eq!(
            target(&proxies, "http://example.org/x").as_deref(),
            Some("http://127.0.0.1:2/"),
            "ALL_PROXY for a scheme without its own"
        );
        assert_eq!(target(&proxies, "http://files.mirror.example/x"), None);
        // The upper-case name wins, as in curl.
        let proxies = from(&[
            ("HTTPS_PROXY", "http://127.0.0.1:3"),
            ("https_proxy", "http://127.0.0.1:1"),
        ]);
        assert_eq!(
            target(&proxies, "https://example.org/x").as_deref(),
            Some("http://127.0.0.1:3/")
        );
        // `*` is every host, IP addresses too.
        let proxies = from(&[("HTTP_PROXY", "http://127.0.0.1:1"), ("NO_PROXY", "*")]);
        assert_eq!(target(&proxies, "http://127.0.0.1:8080/x"), None);
        assert_eq!(target(&proxies, "http://example.org/x"), None);
        assert_eq!(target(&from(&[]), "http://example.org/x"), None);
    }

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
