//! `Server`: the agent-facing listeners, their certificate, client authentication and the
//! download pacing sent to agents (the OCS server options).

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{CommonStatus, LocalRef};
use super::quantity::Duration;

/// The agent-facing server: listeners, certificate, client authentication and pacing.
/// A configuration holds at most one.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "Server",
    namespaced,
    derive = "PartialEq",
    status = "ServerStatus",
    category = "tessera",
    doc = "The agent-facing server: listeners, certificate, client authentication, pacing.",
    printcolumn(name = "HTTPS", type_ = "string", json_path = ".spec.listen.https"),
    printcolumn(
        name = "Client Auth",
        type_ = "string",
        json_path = ".spec.clientAuth.mode"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerSpec {
    /// Listening addresses.
    #[serde(default)]
    pub listen: Listen,
    /// The Certificate presented to agents (needs usage `server auth` and the names agents
    /// use in its `dnsNames` or `ipAddresses`). Set this or `certificateSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_ref: Option<LocalRef>,
    /// A `kubernetes.io/tls` Secret in the same namespace presented to agents instead of a
    /// Tessera Certificate, for example one that cert-manager keeps: its `tls.crt` (the leaf,
    /// then intermediates) and `tls.key`. Kubernetes mode only. The Secret is watched: when
    /// it is renewed, the new certificate is served without restarting the listeners. Set
    /// this or `certificateRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_secret_ref: Option<LocalRef>,
    /// Whether agents must present a client certificate.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Download pacing sent to agents with every PROLOG reply.
    #[serde(default)]
    pub download: DownloadPacing,
    /// How often agents contact the server (OCS `PROLOG_FREQ`, whole hours; default `12h`).
    #[serde(default = "default_prolog_frequency")]
    pub prolog_frequency: Duration,
    /// A package notified longer ago than this without a result is shown as stale
    /// (default `168h`). Windows agents never report a failed `info` download.
    #[serde(default = "default_stale_after")]
    pub stale_after: Duration,
    /// When agents are asked for an inventory, as the OCS server's `FREQUENCY` option, in
    /// days: `0` at every contact, `N` once the last inventory is `N` days old, `-1` never
    /// (except at the first contact, when nothing is known of the computer, as the OCS
    /// server does). Except with `-1`, an agent that reported results is also asked, so the
    /// packages it lists as installed are known before anything else is offered. Default
    /// `1` (a day).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = -1))]
    pub inventory_frequency: Option<i64>,
    /// The OCS Inventory NG compatible endpoint for unmodified OCS agents.
    #[serde(default)]
    pub ocs: OcsCompatibility,
    /// Addresses of gateways allowed to tell, with a PROXY protocol (v1 or v2) header, which client
    /// they relay (`spec.proxyProtocol` of a Gateway). Connections from these addresses
    /// must start with one; from anywhere else a header is never believed. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_proxies: Vec<String>,
    /// Enrollment of Tessera's own agents (`POST /v1/enroll` with a token from
    /// `tessera token create`). Default: no enrollment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<Enrollment>,
    /// Gateways in `terminate` mode. A connection whose client certificate is one of these
    /// gateways' may name the agent it relays, with the agent's certificate in the
    /// `X-Tessera-Client-Certificate` header (checked again here against the trusted
    /// issuers) and its address in `X-Forwarded-For`; from anyone else those headers are
    /// ignored. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_gateways: Vec<TrustedGateway>,
    /// Dial-out to a gateway in the DMZ: the server keeps connections open to it, and
    /// agents reach the server over them, so nothing in the DMZ connects in. Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_out: Option<DialOut>,
}

/// Connections kept open from the server out to a gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DialOut {
    /// The gateway's `dialOut.listen` address as seen from the inside, `host:port`.
    pub gateway: String,
    /// The Issuer whose CA signed the gateway's certificate (usually trust-only).
    pub gateway_issuer_ref: LocalRef,
    /// The client certificate the server presents to the gateway (usage `client auth`; a
    /// name the gateway's `dialOut.names` lists).
    pub certificate_ref: LocalRef,
    /// Idle connections kept ready for agents (default 4); each one used is replaced.
    #[serde(default = "default_dial_out_connections")]
    #[schemars(range(min = 1, max = 256))]
    pub connections: i64,
}

fn default_dial_out_connections() -> i64 {
    4
}

/// A gateway the server believes about the client it relays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustedGateway {
    /// The Issuer whose CA signed the gateway's client certificate (its
    /// `backendCertificateRef`); usually a trust-only Issuer holding the DMZ's CA.
    pub issuer_ref: LocalRef,
    /// Names the gateway's certificate carries (its common name or a DNS name); at least one.
    pub names: Vec<String>,
}

/// How agents get their client certificates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Enrollment {
    /// The Issuer, in the same namespace, whose CA signs agents' client certificates
    /// (usage `client auth`, the agent id in a URI SAN `urn:tessera:agent:<id>`).
    pub issuer_ref: LocalRef,
    /// Lifetime of an agent's certificate (default `720h`); agents renew it at 2/3.
    #[serde(default = "default_agent_certificate_duration")]
    pub certificate_duration: Duration,
}

/// Listening addresses.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listen {
    /// HTTPS address, `host:port` (default `0.0.0.0:8443`).
    #[serde(default = "default_https_address")]
    pub https: String,
    /// Optional plain-HTTP address serving fragments only (their digest is checked by the
    /// agent), e.g. `0.0.0.0:8080`, and the OCS endpoint when `spec.ocs.plainHttp` is true.
    /// Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            https: default_https_address(),
            http: None,
        }
    }
}

/// TLS client authentication.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientAuth {
    /// `None` (default), `Optional` (checked when presented) or `Required`. The native
    /// `/v1` API always requires a valid client certificate.
    #[serde(default)]
    pub mode: ClientAuthMode,
    /// Issuers whose certificates are accepted from clients. Required unless `mode` is `None`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_issuers: Vec<LocalRef>,
}

/// Whether clients present certificates.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ClientAuthMode {
    /// No client certificate is asked for (native API excepted).
    #[default]
    None,
    /// A client certificate is asked for and verified when presented.
    Optional,
    /// Every client must present a valid certificate.
    Required,
}

/// Download pacing, the OCS `DOWNLOAD` CONF parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DownloadPacing {
    /// Whether agents download at all (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Pause after each fragment (default `10s`).
    #[serde(default = "default_frag_latency")]
    pub frag_latency: Duration,
    /// Pause after each cycle (default `60s`).
    #[serde(default = "default_cycle_latency")]
    pub cycle_latency: Duration,
    /// Pause after each period (default `1s`).
    #[serde(default = "default_period_latency")]
    pub period_latency: Duration,
    /// Cycles in a period (default 10).
    #[serde(default = "default_period_length")]
    #[schemars(range(min = 1))]
    pub period_length: i64,
    /// How long a package may stay on an agent before it gives up (`ERR_TIMEOUT`), whole
    /// days (default `30d`).
    #[serde(default = "default_timeout")]
    pub timeout: Duration,
    /// How long a command may run before it is stopped (default `120m`).
    #[serde(default = "default_execution_timeout")]
    pub execution_timeout: Duration,
    /// How long a superseded package version (its Package edited, or its Package or
    /// Activation removed) stays served to the agents already notified of it (default
    /// `72h`). It is pruned as soon as every such agent has reported on it or is stale
    /// (`staleAfter`), and at the latest when this ends; new offers always name the current
    /// version.
    #[serde(default = "default_drain_grace")]
    pub drain_grace: Duration,
}

impl Default for DownloadPacing {
    fn default() -> Self {
        Self {
            enabled: true,
            frag_latency: default_frag_latency(),
            cycle_latency: default_cycle_latency(),
            period_latency: default_period_latency(),
            period_length: default_period_length(),
            timeout: default_timeout(),
            execution_timeout: default_execution_timeout(),
            drain_grace: default_drain_grace(),
        }
    }
}

/// The OCS-compatible endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OcsCompatibility {
    /// Whether OCS agents are served (default true).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Path of the endpoint (default `/ocsinventory`).
    #[serde(default = "default_ocs_path")]
    pub path: String,
    /// Whether `spec.listen.http` also serves the endpoint, for agents still configured
    /// with an `http://` URL (default false: they are answered 403 with the HTTPS address,
    /// and logged once per computer). Requests and replies then cross the network in
    /// clear text and unauthenticated: meant for the first days of a move from an OCS
    /// server, with the Server showing a `PlainHttp` condition and
    /// `tessera_ocs_plain_http_computers` counting the computers still on HTTP until
    /// `tessera migration-package` has moved them to HTTPS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_http: bool,
}

impl Default for OcsCompatibility {
    fn default() -> Self {
        Self {
            enabled: true,
            path: default_ocs_path(),
            plain_http: false,
        }
    }
}

/// What the server is doing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Addresses the server listens on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<String>,
    /// Serial number of the certificate being served (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_serial: Option<String>,
}

fn default_true() -> bool {
    true
}

fn default_https_address() -> String {
    "0.0.0.0:8443".to_owned()
}

fn default_prolog_frequency() -> Duration {
    Duration::from_hours(12)
}

/// Three days: an agent notified on a Friday evening that stays off over a weekend still
/// finds the version it started on Monday; longer only keeps disk for agents that are gone.
fn default_drain_grace() -> Duration {
    Duration::from_hours(72)
}

fn default_stale_after() -> Duration {
    Duration::from_hours(168)
}

fn default_frag_latency() -> Duration {
    Duration::from_secs(10)
}

fn default_cycle_latency() -> Duration {
    Duration::from_secs(60)
}

fn default_period_latency() -> Duration {
    Duration::from_secs(1)
}

fn default_period_length() -> i64 {
    10
}

fn default_timeout() -> Duration {
    Duration::from_hours(30 * 24)
}

fn default_execution_timeout() -> Duration {
    Duration::from_secs(120 * 60)
}

fn default_agent_certificate_duration() -> Duration {
    Duration::from_hours(720)
}

fn default_ocs_path() -> String {
    "/ocsinventory".to_owned()
}
