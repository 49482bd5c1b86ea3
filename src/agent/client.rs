//! The agent's HTTPS client: the server's CA only (never the system's roots), the agent's
//! own certificate once enrolled, a timeout on every exchange, and, when configured, an
//! HTTP proxy reached with CONNECT (TLS stays end to end: the proxy sees only bytes), or a
//! Tessera gateway in tunnel mode: an outer TLS session where the agent presents its
//! certificate to the gateway, and inside it the agent's own TLS session with the server.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::proxy::Tunnel;
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
    #[error("failed to exchange with {url}")]
    Transport {
        url: String,
        #[source]
        source: BoxError,
    },
    #[error("{url}: no answer within {EXCHANGE_TIMEOUT:?}")]
    Timeout { url: String },
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
    /// A client of `base` (`https://host:port`) with `tls`, through `proxy`
    /// (`http://[user:password@]host:port`) when given.
    pub fn new(
        base: &str,
        tls: &rustls::ClientConfig,
        proxy: Option<&str>,
    ) -> Result<Self, ClientError> {
        if !base.starts_with("https://") {
            return Err(ClientError::BadUrl(base.to_owned()));
        }
        let builder = || {
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_only()
                .enable_http1()
        };
        let http = match proxy {
            None => {
                Http::Direct(HyperClient::builder(TokioExecutor::new()).build(builder().build()))
            }
            Some(proxy) => {
                let uri: Uri = proxy
                    .parse()
                    .map_err(|_| ClientError::BadUrl(proxy.to_owned()))?;
                if uri.scheme_str() != Some("http") || uri.host().is_none() {
                    return Err(ClientError::BadUrl(proxy.to_owned()));
                }
                let mut plain = HttpConnector::new();
                plain.enforce_http(false);
                let mut tunnel = Tunnel::new(uri.clone(), plain);
                // Credentials in the proxy URL become Proxy-Authorization: Basic.
                if let Some((user, _)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@')) {
                    use base64::Engine;
                    let encoded = base64::engine::general_purpose::STANDARD.encode(user);
                    if let Ok(value) =
                        hyper::header::HeaderValue::from_str(&format!("Basic {encoded}"))
                    {
                        tunnel = tunnel.with_auth(value);
                    }
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
        tokio::time::timeout(EXCHANGE_TIMEOUT, exchange)
            .await
            .map_err(|_| ClientError::Timeout { url: url.clone() })?
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
