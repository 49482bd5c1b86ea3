//! `Gateway`: a DMZ relay for roaming agents.

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{CommonStatus, LocalRef};
use super::quantity::Duration;

/// A relay in the DMZ between roaming agents and the server.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "Gateway",
    namespaced,
    derive = "PartialEq",
    status = "GatewayStatus",
    shortname = "tgw",
    category = "tessera",
    doc = "A relay in the DMZ between roaming agents and the server.",
    printcolumn(name = "Listen", type_ = "string", json_path = ".spec.listen"),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Backend", type_ = "string", json_path = ".spec.backend"),
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
pub struct GatewaySpec {
    /// Address the gateway listens on, `host:port`.
    pub listen: String,
    /// `passthrough`, `tunnel` or `terminate`.
    pub mode: GatewayMode,
    /// Default backend, `host:port` of the Tessera server.
    pub backend: String,
    /// Backends chosen by server name: the TLS server name in passthrough mode; in tunnel
    /// mode the inner session's server name, or the host of an HTTP `CONNECT`. Other names
    /// go to `backend`; a `CONNECT` to a host that is neither a route nor a backend is
    /// refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<SniRoute>,
    /// Certificate the gateway presents to agents (tunnel and terminate) and to inside
    /// servers (dial-out), issued and renewed by `tessera gateway` from an Issuer in the
    /// gateway's own configuration. Set this or `certificateSecretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_ref: Option<LocalRef>,
    /// A `kubernetes.io/tls` Secret in the same namespace presented instead of a Tessera
    /// Certificate, for example one that cert-manager keeps: its `tls.crt` (the leaf, then
    /// intermediates) and `tls.key`. `tessera gateway --kube` only. The Secret is watched:
    /// when it is renewed, the new certificate is presented without restarting the
    /// listener. Set this or `certificateRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_secret_ref: Option<LocalRef>,
    /// Client certificate the gateway presents to the backend (terminate); the server lists
    /// the gateway in `spec.trustedGateways`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_certificate_ref: Option<LocalRef>,
    /// The Issuer whose CA signed the backend's certificate (terminate), usually a
    /// trust-only Issuer holding the inside server's CA. The backend's certificate must name
    /// the host of `backend`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_issuer_ref: Option<LocalRef>,
    /// Issuers whose client certificates are accepted at the edge (tunnel and terminate):
    /// chain, validity, client-auth usage and the issuers' CRLs are checked. In a DMZ, name a
    /// trust-only Issuer (`ca.certFile` and `ca.crlFile`, no key) holding the inside's agent CA.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_client_issuers: Vec<LocalRef>,
    /// Send a PROXY protocol v2 header to the backend with the client's address.
    /// Default false.
    #[serde(default)]
    pub proxy_protocol: bool,
    /// Timeouts and limits.
    #[serde(default)]
    pub limits: GatewayLimits,
    /// Dial-out: inside servers connect out to the gateway, and agents are relayed over
    /// those connections instead of to `backend`, so the DMZ needs no path to the inside.
    /// Passthrough and tunnel modes. Default: off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_out: Option<GatewayDialOut>,
}

/// Where inside servers connect out to, and who they must be.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayDialOut {
    /// Address inside servers connect to, `host:port` (apart from the agents' `listen`).
    /// The gateway presents `certificateRef` there.
    pub listen: String,
    /// Issuers whose client certificates inside servers present (chain, validity, usage
    /// and CRLs checked).
    pub trusted_server_issuers: Vec<LocalRef>,
    /// Names an inside server's certificate must carry (its common name or a DNS name);
    /// at least one, so that no other certificate of those issuers (an agent's) is taken
    /// for a server.
    pub names: Vec<String>,
}

/// How the gateway relays.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMode {
    /// Read the TLS ClientHello, pick a backend by server name, forward bytes untouched.
    Passthrough,
    /// Verify the client certificate at the edge, then relay the agent's inner TLS session.
    Tunnel,
    /// Verify at the edge, then forward each HTTP request over a mutual-TLS connection of
    /// the gateway's own, with the verified client certificate in a header the server
    /// believes only from gateways it lists.
    Terminate,
}

/// A backend for one TLS server name.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SniRoute {
    /// The server name agents ask for, e.g. `deploy.example.com`.
    pub server_name: String,
    /// `host:port` to relay to.
    pub backend: String,
}

/// Gateway limits.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayLimits {
    /// Time allowed for the client's TLS handshake (default `10s`).
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Duration,
    /// A connection with no traffic this long is closed (default `5m`).
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Duration,
    /// Time allowed to connect to the backend (default `5s`).
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Connections served at once; more are refused (default 10000).
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1))]
    pub max_connections: i64,
}

impl Default for GatewayLimits {
    fn default() -> Self {
        Self {
            handshake_timeout: default_handshake_timeout(),
            idle_timeout: default_idle_timeout(),
            connect_timeout: default_connect_timeout(),
            max_connections: default_max_connections(),
        }
    }
}

/// What the gateway is doing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Connections open now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_connections: Option<i64>,
    /// Serial number of the certificate presented (hex), in tunnel, terminate and dial-out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_serial: Option<String>,
    /// Dial-out: idle connections from inside servers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dial_out_connections: Option<i64>,
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_idle_timeout() -> Duration {
    Duration::from_secs(300)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_max_connections() -> i64 {
    10_000
}
