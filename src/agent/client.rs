//! The agent's HTTPS client: the server's CA only (never the system's roots), the agent's
//! own certificate once enrolled, a timeout on every exchange, and, when configured, an
//! HTTP proxy reached with CONNECT (TLS stays end to end: the proxy sees only bytes) unless
//! `NO_PROXY` names the server ([`Proxy`]), or a Tessera gateway in tunnel mode: an outer
//! TLS session where the agent presents its certificate to the gateway, and inside it the
//! agent's own TLS session with the server.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
use hyper_util::client::proxy::matcher::Matcher;
use hyper_util::rt::TokioExecutor;

/// Each exchange (headers and body) must end within this.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest JSON answer read.
const MAX_JSON: usize = 4 << 20;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{0}` is not an https:// URL")]
    BadUrl(String),
    /// The proxy is not `http://host[:port]`; shown without its credentials.
    #[error("the proxy `{0}` is not an http://[user:password@]host:port URL")]
    BadProxy(String),
    #[error("failed to exchange with {url}")]
    Transport {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("{url}: no answer within {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("{url} answered {status}: {body}")]
    Status {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{url} answered what is not the expected JSON")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    /// The gateway this agent roams through could not be reached.
    #[error("failed to reach the gateway {address}")]
    Gateway {
        address: String,
        #[source]
        source: std::io::Error,
    },
}

/// An HTTP proxy to reach the server through, and the hosts reached without it, matched as
/// curl does (hyper-util's matcher): `no_proxy` lists host names (each also covering its
/// subdomains, with or without a leading dot), IP addresses, networks (`10.0.0.0/8`) or `*`.
/// Credentials in the proxy URL are percent-decoded (`user:p%40ss@` is the password
/// `p@ss`) and sent as `Proxy-Authorization: Basic` in the CONNECT request.
#[derive(Clone, Debug)]
pub struct Proxy(Arc<Matcher>);

impl Proxy {
    /// The proxy `url` (`http://[user:password@]host:port`) except for the hosts of
    /// `no_proxy` (`NO_PROXY` syntax; empty for none).
    pub fn new(url: &str, no_proxy: &str) -> Result<Self, ClientError> {
        // Shown in errors and logs without the credentials.
        let shown = url
            .rsplit_once('@')
            .map_or(url, |(_, host)| host)
            .to_owned();
        let uri: Uri = url
            .parse()
            .map_err(|_| ClientError::BadProxy(shown.clone()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none_or(str::is_empty) {
            return Err(ClientError::BadProxy(shown));
        }
        // curl's `*` means every host; hyper-util's matcher applies it to names only, and
        // would still proxy a server named by its IP address.
        if no_proxy.split(',').any(|entry| entry.trim() == "*") {
            return Ok(Self(Arc::new(Matcher::builder().build())));
        }
        // The server is always https://, so only the https rule is set.
        Ok(Self(Arc::new(
            Matcher::builder().https(url).no(no_proxy).build(),
        )))
    }
}

/// A connection pool to one server.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: Http,
}

#[derive(Clone)]
enum Http {
    Direct(HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
    Proxied(HyperClient<hyper_rustls::HttpsConnector<Tunnel<HttpConnector>>, Full<Bytes>>),
    Gateway(HyperClient<hyper_rustls::HttpsConnector<GatewayConnector>, Full<Bytes>>),
}

/// Opens the outer TLS session to a gateway in tunnel mode; the HTTPS connector runs the
/// session with the server inside it.
#[derive(Clone)]
pub struct GatewayConnector {
    address: String,
    name: rustls::pki_types::ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

impl GatewayConnector {
    /// A connector to the gateway at `address` (`host:port`), verified and identified by
    /// `tls` (the CA that issued the gateway's certificate, and the agent's certificate).
    pub fn new(address: &str, tls: Arc<rustls::ClientConfig>) -> Result<Self, ClientError> {
        let host = address
            .rsplit_once(':')
            .map_or(address, |(host, _)| host)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|_| ClientError::BadUrl(address.to_owned()))?;
        Ok(Self {
            address: address.to_owned(),
            name,
            tls: tokio_rustls::TlsConnector::from(tls),
        })
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for GatewayConnector {
    type Response = GatewayStream;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<GatewayStream, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = tokio::net::TcpStream::connect(&this.address)
                .await
                .map_err(|source| ClientError::Gateway {
                    address: this.address.clone(),
                    source,
                })?;
            let _ = tcp.set_nodelay(true);
            let outer = this
                .tls
                .connect(this.name.clone(), tcp)
                .await
                .map_err(|source| ClientError::Gateway {
                    address: this.address.clone(),
                    source,
                })?;
            Ok(GatewayStream(hyper_util::rt::TokioIo::new(outer)))
        })
    }
}

/// The outer session with a gateway, carrying the inner one.
pub struct GatewayStream(
    hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
);

impl hyper_util::client::legacy::connect::Connection for GatewayStream {
    fn connected(&self) -> hyper_util::client::legacy::connect::Connected {
        hyper_util::client::legacy::connect::Connected::new()
    }
}

impl hyper::rt::Read for GatewayStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for GatewayStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// An answer's status, headers and body.
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl Client {
    /// A client of `base` (`https://host:port`) with `tls`, through `proxy` when given and
    /// its `NO_PROXY` list does not name the server.
    pub fn new(
        base: &str,
        tls: &rustls::ClientConfig,
        proxy: Option<&Proxy>,
    ) -> Result<Self, ClientError> {
        let uri: Uri = base
            .parse()
            .map_err(|_| ClientError::BadUrl(base.to_owned()))?;
        if uri.scheme_str() != Some("https") {
            return Err(ClientError::BadUrl(base.to_owned()));
        }
        let builder = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_only()
                .enable_http1()
        };
        let http = match proxy.and_then(|proxy| proxy.0.intercept(&uri)) {
            None => {
                Http::Direct(HyperClient::builder(TokioExecutor::new()).build(builder().build()))
            }
            Some(intercept) => {
                let mut plain = HttpConnector::new();
                plain.enforce_http(false);
                let mut tunnel = Tunnel::new(intercept.uri().clone(), plain);
                if let Some(auth) = intercept.basic_auth() {
                    tunnel = tunnel.with_auth(auth.clone());
                }
                Http::Proxied(
                    HyperClient::builder(TokioExecutor::new())
                        .build(builder().wrap_connector(tunnel)),
                )
            }
        };
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// A client of `base` with `tls`, through a gateway in tunnel mode.
    pub fn through_gateway(
        base: &str,
        tls: &rustls::ClientConfig,
        gateway: GatewayConnector,
    ) -> Result<Self, ClientError> {
        if !base.starts_with("https://") {
            return Err(ClientError::BadUrl(base.to_owned()));
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_only()
            .enable_http1()
            .wrap_connector(gateway);
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http: Http::Gateway(HyperClient::builder(TokioExecutor::new()).build(connector)),
        })
    }

    /// Sends a request to `path` and reads the whole answer.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
    ) -> Result<Answer, ClientError> {
        self.send_within(method, path, body, headers, EXCHANGE_TIMEOUT)
            .await
    }

    /// [`Client::send`], with an exchange that may take up to `timeout` (a held wait).
    pub async fn send_within(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, String)],
        timeout: Duration,
    ) -> Result<Answer, ClientError> {
        let url = format!("{}{path}", self.base);
        let transport = |source: BoxError| ClientError::Transport {
            url: url.clone(),
            source,
        };
        let uri: Uri = url.parse().map_err(|_| ClientError::BadUrl(url.clone()))?;
        let mut request = Request::builder().method(method).uri(uri);
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| transport(e.into()))?;
        let exchange = async {
            let response = match &self.http {
                Http::Direct(client) => client.request(request).await,
                Http::Proxied(client) => client.request(request).await,
                Http::Gateway(client) => client.request(request).await,
            }
            .map_err(|e| transport(e.into()))?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(e.into()))?
                .to_bytes();
            Ok(Answer {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout {
                url: url.clone(),
                after: timeout,
            })?
    }

    /// POSTs `body` as JSON and reads a JSON answer (2xx), or nothing for 204.
    pub async fn json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl serde::Serialize>,
    ) -> Result<Option<T>, ClientError> {
        let url = format!("{}{path}", self.base);
        let body =
            body.map(serde_json::to_vec)
                .transpose()
                .map_err(|source| ClientError::Json {
                    url: url.clone(),
                    source,
                })?;
        let answer = self.send(method, path, body, &[]).await?;
        if !answer.status.is_success() {
            return Err(ClientError::Status {
                url,
                status: answer.status,
                body: String::from_utf8_lossy(&answer.body[..answer.body.len().min(2048)])
                    .into_owned(),
            });
        }
        if answer.status == StatusCode::NO_CONTENT || answer.body.len() > MAX_JSON {
            return Ok(None);
        }
        serde_json::from_slice(&answer.body)
            .map(Some)
            .map_err(|source| ClientError::Json { url, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> rustls::ClientConfig {
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth()
    }

    #[test]
    fn no_proxy_naming_the_server_means_a_direct_connection() {
        let proxy = Proxy::new("http://127.0.0.1:3128", "localhost, 127.0.0.1").unwrap();
        let direct = |server: &str| {
            let client = Client::new(server, &tls(), Some(&proxy)).unwrap();
            matches!(client.http, Http::Direct(_))
        };
        assert!(direct("https://127.0.0.1:8443"));
        assert!(direct("https://localhost:8443"));
        assert!(!direct("https://tessera.example.org:8443"));
        let nowhere = Proxy::new("http://127.0.0.1:3128", "example.org, *").unwrap();
        let client = Client::new("https://127.0.0.1:8443", &tls(), Some(&nowhere)).unwrap();
        assert!(matches!(client.http, Http::Direct(_)), "`*` is every host");
        let everywhere = Proxy::new("http://127.0.0.1:3128", "").unwrap();
        let client = Client::new("https://127.0.0.1:8443", &tls(), Some(&everywhere)).unwrap();
        assert!(matches!(client.http, Http::Proxied(_)));
    }

    #[test]
    fn proxy_credentials_are_percent_decoded() {
        let proxy = Proxy::new("http://agent:p%40ss%3Aword@127.0.0.1:3128", "").unwrap();
        let intercept = proxy
            .0
            .intercept(&"https://tessera.example.org".parse().unwrap())
            .unwrap();
        use base64::Engine;
        assert_eq!(
            intercept.basic_auth().unwrap().to_str().unwrap(),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("agent:p@ss:word")
            )
        );
        assert_eq!(intercept.uri().to_string(), "http://127.0.0.1:3128/");
    }

    #[test]
    fn a_bad_proxy_is_refused_without_showing_its_credentials() {
        for url in [
            "socks5://agent:secret@127.0.0.1:1080",
            "https://agent:secret@127.0.0.1:3128",
            "agent:secret@127.0.0.1 3128",
        ] {
            let error = Proxy::new(url, "").unwrap_err();
            assert!(
                matches!(error, ClientError::BadProxy(_)),
                "{url}: {error:?}"
            );
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }
}
