//! Terminate mode, for HTTP clients that cannot tunnel: the client certificate is verified
//! at the edge; each request then goes to the backend over a mutual-TLS connection of the
//! gateway's own, with the verified certificate in the `X-Tessera-Client-Certificate` header
//! and the client's address in `X-Forwarded-For` (whatever the client sent under those
//! names is replaced). A push wait (`/v1/wait`, see `server::push`) is relayed like any
//! request, parked so the gateway's progress check does not close it while it is held.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::protocol::v1::{FORWARDED_CERTIFICATE, MAX_HOLD_SECONDS, WAIT_PATH};

/// The longest a push wait is relayed before the gateway answers 504: the server's longest
/// hold and a margin for a slow backend.
const WAIT_LIMIT: Duration = Duration::from_secs(MAX_HOLD_SECONDS + 15);

use super::Config;
use super::edge;
use super::metrics::Counters;

/// Headers that belong to one connection, not to the request: never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

type ProxyBody = http_body_util::combinators::BoxBody<hyper::body::Bytes, hyper::Error>;

/// A response made by the gateway itself.
fn gateway_response(status: hyper::StatusCode, text: String) -> hyper::Response<ProxyBody> {
    use http_body_util::BodyExt;
    let body = http_body_util::Full::new(hyper::body::Bytes::from(text))
        .map_err(|never| match never {})
        .boxed();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = status;
    response
}

/// Serves one terminate-mode connection: the edge handshake, then each request to the
/// backend over the gateway's own mutual-TLS connection, naming the verified client.
pub(super) async fn terminate(
    client: TcpStream,
    peer: std::net::SocketAddr,
    acceptor: &tokio_rustls::TlsAcceptor,
    config: &Config,
    counters: &Counters,
    budget: &crate::budget::ConnectionBudget,
    permit: &mut crate::budget::Permit,
) {
    use base64::Engine;
    use http_body_util::BodyExt;
    use hyper::header::HeaderValue;

    let Some(stream) = edge::handshake(client, peer, acceptor, config, counters, permit).await
    else {
        return;
    };
    let Some(backend_tls) = config.backend_tls.clone() else {
        tracing::error!(%peer, "terminate mode without the gateway's backend identity: connection closed");
        return;
    };
    let Some(certificate) = edge::client_certificate(&stream).and_then(|der| {
        HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(der.as_ref())).ok()
    }) else {
        return;
    };
    counters.relayed.fetch_add(1, Ordering::Relaxed);
    let client_ip = HeaderValue::from_str(&peer.ip().to_string())
        .unwrap_or(HeaderValue::from_static("unknown"));
    // One backend pool per client connection: what the client keeps alive, the gateway
    // keeps alive to the backend.
    let backend_client = backend_pool(config, &backend_tls);
    let backend = config.backend.clone();
    let service =
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let backend_client = backend_client.clone();
            let backend = backend.clone();
            let (certificate, client_ip) = (certificate.clone(), client_ip.clone());
            async move {
                let path = request
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let Ok(uri) = format!("https://{backend}{path}").parse::<hyper::Uri>() else {
                    return Ok::<_, std::convert::Infallible>(gateway_response(
                        hyper::StatusCode::BAD_REQUEST,
                        "bad request target\n".into(),
                    ));
                };
                *request.uri_mut() = uri;
                *request.version_mut() = hyper::Version::HTTP_11;
                let headers = request.headers_mut();
                for name in HOP_BY_HOP {
                    headers.remove(name);
                }
                headers.remove(hyper::header::HOST);
                headers.remove("forwarded");
                // Whatever the client sent under these names is replaced, never passed on.
                headers.insert(FORWARDED_CERTIFICATE, certificate);
                headers.insert("x-forwarded-for", client_ip);
                let answer = match forward(&backend_client, request, &path).await {
                    Ok(answer) => answer,
                    Err(timeout) => return Ok(timeout),
                };
                match answer {
                    Ok(response) => {
                        let (mut parts, body) = response.into_parts();
                        for name in HOP_BY_HOP {
                            parts.headers.remove(name);
                        }
                        Ok(hyper::Response::from_parts(parts, body.boxed()))
                    }
                    Err(error) => {
                        let reason = crate::error_chain(&error);
                        tracing::warn!(%peer, %backend, %reason, "backend failed");
                        Ok(gateway_response(
                            hyper::StatusCode::BAD_GATEWAY,
                            format!("the gateway could not reach the server: {reason}\n"),
                        ))
                    }
                }
            }
        });
    // After the edge handshake the first request comes at once; between requests the
    // Gateway's idle timeout applies.
    let budget = crate::budget::ConnectionBudget {
        first_request: config.handshake_timeout,
        keep_alive: config.idle_timeout,
        ..budget.clone()
    };
    let never = CancellationToken::new();
    let ended = crate::budget::serve(
        stream,
        service,
        &budget,
        &counters.connections,
        &never,
        Duration::ZERO,
    )
    .await;
    tracing::debug!(%peer, ?ended, "connection ended");
}

/// A backend's client, as each terminate-mode connection keeps one.
type BackendClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    hyper::body::Incoming,
>;

/// Sends `request` (for `path`) to the backend. A push wait is quiet on purpose until the
/// server answers it (within its longest hold): parked, so the progress check leaves it
/// alone, and bounded here too (`Err`: the 504 to answer). The client's certificate was
/// verified at the edge, so only agents park.
async fn forward(
    backend: &BackendClient,
    request: hyper::Request<hyper::body::Incoming>,
    path: &str,
) -> Result<
    Result<hyper::Response<hyper::body::Incoming>, hyper_util::client::legacy::Error>,
    hyper::Response<ProxyBody>,
> {
    let waiting = path.split('?').next() == Some(WAIT_PATH);
    let _parked = request
        .extensions()
        .get::<crate::budget::Park>()
        .filter(|_| waiting)
        .map(crate::budget::Park::hold);
    let forwarded = backend.request(request);
    if !waiting {
        return Ok(forwarded.await);
    }
    tokio::time::timeout(WAIT_LIMIT, forwarded)
        .await
        .map_err(|_| {
            gateway_response(
                hyper::StatusCode::GATEWAY_TIMEOUT,
                "the server held the wait past its longest hold\n".into(),
            )
        })
}

/// A client to the backend over the gateway's own mutual-TLS identity, HTTP/1.1 only.
fn backend_pool(config: &Config, backend_tls: &rustls::ClientConfig) -> BackendClient {
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(config.connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(backend_tls.clone())
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .pool_idle_timeout(config.idle_timeout)
        .build(connector)
}
