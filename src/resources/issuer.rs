//! `Issuer`: a certificate authority, self-signed or from an existing key pair (cert-manager's
//! Issuer).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::meta::{CommonStatus, LocalRef};
use super::quantity::Duration;

/// A certificate authority that signs Certificates: `selfSigned` or `ca`.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "Issuer",
    namespaced,
    derive = "PartialEq",
    status = "IssuerStatus",
    category = "tessera",
    doc = "A certificate authority that signs Certificates: selfSigned or ca.",
    printcolumn(name = "Subject", type_ = "string", json_path = ".status.subject"),
    printcolumn(name = "Not After", type_ = "string", json_path = ".status.notAfter"),
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
pub struct IssuerSpec {
    /// Tessera makes the CA key pair and a self-signed CA certificate itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_signed: Option<SelfSignedIssuer>,
    /// Sign with an existing CA key pair.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<CaIssuer>,
    /// Serial numbers (hex) of certificates this issuer has revoked; they are listed in its
    /// CRL and refused by Tessera's listeners.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_serials: Vec<String>,
    /// How long the old and new CA are both trusted when the CA is replaced, before leaves
    /// are re-issued from the new one (default `720h`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollover_overlap: Option<Duration>,
    /// How long each published CRL is valid (default `168h`); it is refreshed before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_validity: Option<Duration>,
}

/// A CA generated and kept by Tessera.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SelfSignedIssuer {
    /// Common name of the CA certificate. Defaults to the issuer's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// Lifetime of the CA certificate (default `87600h`, 10 years).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// Key of the CA (default ECDSA P-256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,
}

/// An existing CA: exactly one of the PEM files, a Kubernetes Secret, or a Certificate with
/// `isCA: true` issued by another Issuer (an intermediate).
///
/// `certFile` without `keyFile` makes a trust-only issuer: it signs nothing, but listeners
/// that name it trust the certificates it signed, checked against `crlFile` when given. This
/// is how a gateway in the DMZ trusts the inside server's agent CA without holding its key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CaIssuer {
    /// PEM file of the CA certificate (with its chain), relative to the declaring file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<String>,
    /// PEM file of the CA private key, relative to the declaring file. Without it the
    /// issuer only verifies (trust-only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<String>,
    /// Trust-only issuers: a PEM CRL signed by that CA (for example the `crl.pem` the inside
    /// server publishes), re-read on every pass. Certificates it lists are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_file: Option<String>,
    /// Kubernetes mode: a `kubernetes.io/tls` Secret holding `tls.crt` and `tls.key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// A Certificate with `isCA: true` whose key pair signs for this issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_ref: Option<LocalRef>,
}

/// Key settings, as in cert-manager's `privateKey`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PrivateKeySpec {
    /// `ECDSA` (default), `RSA` or `Ed25519`.
    #[serde(default)]
    pub algorithm: KeyAlgorithm,
    /// Key size: 256 (default) or 384 for ECDSA; 2048 (default), 3072 or 4096 for RSA;
    /// not used for Ed25519.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<i64>,
    /// `Always` (default): a new key at every issuance; `Never`: keep the existing key.
    #[serde(default)]
    pub rotation_policy: RotationPolicy,
}

/// Private key algorithms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum KeyAlgorithm {
    /// Elliptic-curve keys (P-256 or P-384).
    #[default]
    #[serde(rename = "ECDSA")]
    Ecdsa,
    /// RSA keys.
    #[serde(rename = "RSA")]
    Rsa,
    /// Ed25519 keys.
    Ed25519,
}

/// Whether re-issuing makes a new key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RotationPolicy {
    /// A new key at every issuance.
    #[default]
    Always,
    /// Keep the existing key as long as it matches the key settings.
    Never,
}

/// The CA in use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Subject of the CA certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// Serial number of the CA certificate (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// End of the CA certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// Phase of a CA rollover in progress (`Overlap`, `Reissuing`, `Completing`), absent
    /// otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollover_phase: Option<String>,
    /// How many unexpired certificates of this issuer are revoked (listed in its CRL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_certificates: Option<i64>,
    /// Number of the CRL in force (the one published, or a trust-only issuer's `crlFile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_number: Option<i64>,
    /// When that CRL must be replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crl_next_update: Option<Time>,
}
