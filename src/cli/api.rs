//! Where the commands that read or steer a server (`get`, `describe`, `events`, `computers`,
//! `suspend`, `resume`, `reconcile`, `renew`) find it: the admin API of a running server,
//! else its state directory when none runs.
//!
//! The admin API is asked first, so the CLI shows exactly what the server serves and the
//! console reads (nothing is computed twice). `--admin` given explicitly means that server
//! and nothing else; with the default address, a refused connection falls back to the state
//! directory, and when neither is there the error names both.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::state::StateArgs;
use crate::store::db::Database;

/// The admin address `tessera serve` listens on by default.
pub(super) const DEFAULT_ADMIN: &str = "http://127.0.0.1:9090";

/// How long one call may take: the admin API answers from memory or one query, so a server
/// that takes longer is stuck, and the operator is better told so than left waiting.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// How to reach a server: `--admin`, else `--state`/`--config` when no server runs.
#[derive(Debug, Clone, Args)]
pub(super) struct ServerArgs {
    /// The admin API of a running `tessera serve` [default: http://127.0.0.1:9090; when
    /// nothing listens there, the state directory is read instead].
    #[arg(long, env = "TESSERA_ADMIN", value_name = "URL")]
    pub(super) admin: Option<String>,
    /// An admin token (`tessera admin-token create`), sent as `Authorization: Bearer`: needed
    /// when the server runs with --admin-auth token.
    #[arg(
        long,
        env = "TESSERA_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub(super) token: Option<String>,
    /// A file holding the admin token (kept out of the process list and shell history).
    #[arg(long, env = "TESSERA_TOKEN_FILE", value_name = "FILE")]
    pub(super) token_file: Option<std::path::PathBuf>,
    /// CA certificates (PEM) to verify an admin API served over TLS (`--admin https://...`).
    #[arg(long, env = "TESSERA_ADMIN_CA", value_name = "FILE")]
    pub(super) admin_ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) for an admin API with --admin-auth mtls (with
    /// --admin-key).
    #[arg(
        long,
        env = "TESSERA_ADMIN_CERT",
        value_name = "FILE",
        requires = "admin_key"
    )]
    pub(super) admin_cert: Option<std::path::PathBuf>,
    /// The private key of --admin-cert (PEM).
    #[arg(
        long,
        env = "TESSERA_ADMIN_KEY",
        value_name = "FILE",
        requires = "admin_cert"
    )]
    pub(super) admin_key: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub(super) state: StateArgs,
}

/// How a command that prints data prints it: a table for people, JSON or YAML for tools.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub(super) enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// `-o table|json|yaml`.
#[derive(Debug, Clone, Copy, Args)]
pub(super) struct FormatArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t)]
    pub(super) output: Format,
}

/// Writes `value` as JSON or YAML (the table format is each command's own).
pub(super) fn write_data<T: Serialize>(
    out: &mut impl std::io::Write,
    format: Format,
    value: &T,
) -> Result<()> {
    match format {
        Format::Json | Format::Table => writeln!(out, "{}", serde_json::to_string_pretty(value)?)?,
        Format::Yaml => {
            let text = serde_saphyr::to_string(value).context("failed to write YAML")?;
            write!(out, "{text}")?;
        }
    }
    Ok(())
}

/// A running server's admin API, or a state directory read directly.
pub(super) enum Target {
    Api(Api),
    State(Database),
}

impl ServerArgs {
    /// The running server, or the state database when none answers at the default address.
    pub(super) async fn target(&self) -> Result<Target> {
        let api = self.client()?;
        match api.get_raw("/healthz").await {
            Ok(_) => return Ok(Target::Api(api)),
            Err(error) if self.admin.is_some() => return Err(error),
            Err(_) => {}
        }
        let state = self.state.clone();
        let db = tokio::task::spawn_blocking(move || state.open())
            .await
            .context("reading the state directory stopped")?;
        db.map(Target::State).with_context(|| {
            format!(
                "no server answers at {} (pass --admin URL), and no state directory to read instead",
                api.base
            )
        })
    }

    /// The running server's admin API: for the commands that steer, which a state directory
    /// cannot do.
    pub(super) async fn api(&self) -> Result<Api> {
        let api = self.client()?;
        api.get_raw("/healthz").await?;
        Ok(api)
    }

    /// A client of the admin API asked for, with the token given, if any.
    fn client(&self) -> Result<Api> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.trim().to_owned()),
            (None, Some(file)) => Some(
                std::fs::read_to_string(file)
                    .with_context(|| format!("failed to read --token-file {}", file.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let read = |flag: &str, path: &std::path::PathBuf| {
            std::fs::read_to_string(path)
                .with_context(|| format!("failed to read {flag} {}", path.display()))
        };
        let tls = match &self.admin_ca {
            Some(ca) => {
                let identity = match (&self.admin_cert, &self.admin_key) {
                    (Some(cert), Some(key)) => {
                        Some((read("--admin-cert", cert)?, read("--admin-key", key)?))
                    }
                    _ => None,
                };
                let identity = identity.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
                Some(
                    crate::pki::tls::client_config(&read("--admin-ca", ca)?, identity)
                        .context("failed to set up TLS for the admin API")?,
                )
            }
            None if self.admin_cert.is_some() => {
                bail!("--admin-cert needs --admin-ca (the CA of the admin API's certificate)")
            }
            None => None,
        };
        Ok(
            Api::with_tls(self.admin.as_deref().unwrap_or(DEFAULT_ADMIN), tls)?
                .with_token(token.filter(|t| !t.is_empty())),
        )
    }
}

/// A client of one server's admin API: plain HTTP (on loopback or behind the cluster's
/// network), or HTTPS with --admin-ca (and a client certificate for mutual TLS).
pub(super) struct Api {
    /// `http://host:port` or `https://host:port`, without a trailing slash.
    base: String,
    client: Connection,
    /// Sent as `Authorization: Bearer`.
    token: Option<String>,
}

impl Api {
    /// A client of the admin API at `base` (`http://host:port`; `host:port` is read as HTTP).
    #[cfg(test)]
    pub(super) fn new(base: &str) -> Result<Self> {
        Self::with_tls(base, None)
    }

    /// A client of the admin API at `base`: `https://` with `tls` (from --admin-ca), else
    /// `http://` (`host:port` is read as HTTP).
    fn with_tls(base: &str, tls: Option<std::sync::Arc<rustls::ClientConfig>>) -> Result<Self> {
        let base = base.trim_end_matches('/');
        let base = if base.contains("://") {
            base.to_owned()
        } else {
            format!("http://{base}")
        };
        base.parse::<hyper::Uri>()
            .with_context(|| format!("--admin {base}: not a URL"))?;
        let client = match (base.starts_with("https://"), tls) {
            (true, Some(tls)) => {
                let connector = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config((*tls).clone())
                    .https_only()
                    .enable_http1()
                    .build();
                Connection::Tls(Client::builder(TokioExecutor::new()).build(connector))
            }
            (true, None) => bail!(
                "--admin {base}: an admin API over TLS needs --admin-ca (the CA of its certificate)"
            ),
            (false, _) if base.starts_with("http://") => {
                Connection::Plain(Client::builder(TokioExecutor::new()).build_http())
            }
            (false, _) => {
                bail!("--admin {base}: write it as http://HOST:PORT or https://HOST:PORT")
            }
        };
        Ok(Self {
            base,
            client,
            token: None,
        })
    }

    /// The same client, sending `token` with every call.
    fn with_token(self, token: Option<String>) -> Self {
        Self { token, ..self }
    }

    /// The address asked, for messages.
    #[cfg(test)]
    fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`, decoded from JSON.
    pub(super) async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let body = self.get_raw(path).await?;
        serde_json::from_slice(&body).with_context(|| {
            format!(
                "{}{path} answered with JSON this version cannot read",
                self.base
            )
        })
    }

    /// `GET path`, or `None` when the server answers 404 (no such object).
    pub(super) async fn get_optional<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.call(Method::GET, path, None).await? {
            (StatusCode::NOT_FOUND, _) => Ok(None),
            (status, body) if status.is_success() => {
                serde_json::from_slice(&body).map(Some).with_context(|| {
                    format!(
                        "{}{path} answered with JSON this version cannot read",
                        self.base
                    )
                })
            }
            (status, body) => Err(refusal(&self.base, path, status, &body)),
        }
    }

    /// `POST path` with a JSON body, the answer decoded from JSON.
    pub(super) async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T> {
        let body = serde_json::to_vec(body).context("failed to encode the request")?;
        match self.call(Method::POST, path, Some(body)).await? {
            (status, body) if status.is_success() => {
                serde_json::from_slice(&body).with_context(|| {
                    format!(
                        "{}{path} answered with JSON this version cannot read",
                        self.base
                    )
                })
            }
            (status, body) => Err(refusal(&self.base, path, status, &body)),
        }
    }

    /// `GET path`: the body of a successful answer.
    async fn get_raw(&self, path: &str) -> Result<Bytes> {
        match self.call(Method::GET, path, None).await? {
            (status, body) if status.is_success() => Ok(body),
            (status, body) => Err(refusal(&self.base, path, status, &body)),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes)> {
        let url = format!("{}{path}", self.base);
        let mut request = Request::builder().method(method).uri(&url);
        if body.is_some() {
            request = request.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        if let Some(token) = &self.token {
            request = request.header(hyper::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .with_context(|| format!("{url}: not a valid request"))?;
        let exchange = async {
            let response = match &self.client {
                Connection::Plain(client) => client.request(request).await?,
                Connection::Tls(client) => client.request(request).await?,
            };
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| anyhow::anyhow!("{url}: no answer within {} s", CALL_TIMEOUT.as_secs()))?
            .with_context(|| format!("no server answers at {}", self.base))
    }
}

/// The HTTP client of an [`Api`].
enum Connection {
    Plain(Client<HttpConnector, Full<Bytes>>),
    Tls(Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>),
}

/// The error for a non-success answer: the server's own message when it sent one.
fn refusal(base: &str, path: &str, status: StatusCode, body: &[u8]) -> anyhow::Error {
    let text = String::from_utf8_lossy(body);
    let message = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| {
            value
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| text.trim().to_owned());
    let hint = match status {
        StatusCode::UNAUTHORIZED => {
            "; pass an admin token with --token, TESSERA_TOKEN or --token-file (`tessera admin-token create`)"
        }
        StatusCode::FORBIDDEN => {
            "; this needs a token with the operator role (`tessera admin-token create --role operator`)"
        }
        _ => "",
    };
    if message.is_empty() {
        anyhow::anyhow!("{base}{path}: {status}{hint}")
    } else {
        anyhow::anyhow!("{base}{path}: {status}: {message}{hint}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_scheme_is_read_as_http_and_https_needs_a_ca() {
        assert_eq!(
            Api::new("127.0.0.1:9090/").unwrap().base(),
            "http://127.0.0.1:9090"
        );
        let error = Api::new("https://127.0.0.1:9090").err().unwrap();
        assert!(error.to_string().contains("--admin-ca"), "{error}");
    }

    #[test]
    fn data_is_written_as_json_or_yaml() {
        let value = serde_json::json!({"name": "hello", "ready": true});
        let mut json = Vec::new();
        write_data(&mut json, Format::Json, &value).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&json).unwrap(),
            value
        );
        let mut yaml = Vec::new();
        write_data(&mut yaml, Format::Yaml, &value).unwrap();
        let yaml = String::from_utf8(yaml).unwrap();
        assert!(
            yaml.contains("name: hello") && yaml.contains("ready: true"),
            "{yaml}"
        );
    }

    #[tokio::test]
    async fn an_explicit_address_that_does_not_answer_is_named() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = free.local_addr().unwrap();
        drop(free);
        let args = ServerArgs {
            admin: Some(format!("http://{address}")),
            token: None,
            token_file: None,
            admin_ca: None,
            admin_cert: None,
            admin_key: None,
            state: StateArgs {
                state: None,
                config: std::path::PathBuf::from("/nonexistent"),
                database: None,
            },
        };
        let error = args.target().await.err().unwrap();
        assert!(
            format!("{error:#}").contains(&address.to_string()),
            "{error:#}"
        );
    }
}
