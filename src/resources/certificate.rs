//! `Certificate`: a key pair and certificate issued by an Issuer, renewed by Tessera
//! (cert-manager's Certificate).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::issuer::PrivateKeySpec;
use super::meta::{CommonStatus, LocalRef};
use super::quantity::Duration;

/// The shortest `duration` accepted: one hour, cert-manager's floor. Issued certificates are
/// backdated by [`BACKDATE`] for clocks running behind, and renewal needs room after
/// [`MIN_KEPT`]: a lifetime of minutes would be mostly backdate and renewal margin.
pub const MIN_DURATION: Duration = Duration::from_hours(1);

/// The shortest time a certificate is kept before its renewal is due: 10 minutes, the
/// interval the reconciler keeps between two renewals of one certificate
/// (`pki::renewal::MIN_INTERVAL`); a `renewBefore` or `renewBeforePercentage` asking for
/// less would make each new certificate due at once.
pub const MIN_KEPT: Duration = Duration::from_secs(10 * 60);

/// How far back an issued certificate's `notBefore` is set: 5 minutes, for clients whose
/// clock runs behind (`pki::authority::BACKDATE`). It counts in the lifetime that
/// `renewBeforePercentage` is a percentage of.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A certificate and key issued by an Issuer and renewed before it expires.
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "tessera.dev",
    version = "v1alpha1",
    kind = "Certificate",
    namespaced,
    derive = "PartialEq",
    status = "CertificateStatus",
    shortname = "tcert",
    category = "tessera",
    doc = "A certificate and key issued by an Issuer and renewed before it expires.",
    printcolumn(name = "Issuer", type_ = "string", json_path = ".spec.issuerRef.name"),
    printcolumn(name = "Not After", type_ = "string", json_path = ".status.notAfter"),
    printcolumn(name = "Renewal", type_ = "string", json_path = ".status.renewalTime"),
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
pub struct CertificateSpec {
    /// The Issuer that signs this certificate, in the same namespace.
    pub issuer_ref: LocalRef,
    /// Subject common name. Clients check `dnsNames` and `ipAddresses`, not this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub common_name: Option<String>,
    /// DNS names in the subject alternative names; `*.example.com` wildcards allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns_names: Vec<String>,
    /// IP addresses (IPv4 or IPv6) in the subject alternative names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    /// URIs in the subject alternative names (agent identities use `tessera://agent/<id>`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uris: Vec<String>,
    /// Key usages: `server auth`, `client auth`, `digital signature`, `key encipherment`
    /// (default `digital signature` and `key encipherment`, as cert-manager).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<KeyUsage>,
    /// Whether this is a CA certificate, for use by an Issuer of type `ca` (an intermediate).
    #[serde(default, rename = "isCA")]
    pub is_ca: bool,
    /// Requested lifetime (default `2160h`, 90 days), at least `1h`. Never longer than the
    /// issuer's CA. The certificate is also backdated 5 minutes, which counts in its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
    /// Renew this long before expiry. Default: at 2/3 of the lifetime. The renewal must come
    /// at least 10 minutes after issuance: `renewBefore` at most `duration` minus `10m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renew_before: Option<Duration>,
    /// Renew when this percentage of the lifetime remains (1 to 99); an alternative to
    /// `renewBefore`. The lifetime includes the 5-minute backdate, and the renewal must come
    /// at least 10 minutes after issuance (with `duration: 1h`, at most 76).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_percentage: Option<i64>,
    /// Key settings (default ECDSA P-256, a new key at every issuance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<PrivateKeySpec>,
    /// Kubernetes mode: the `kubernetes.io/tls` Secret to write. Defaults to the
    /// certificate's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Directory mode: where the PEM files go (`tls.crt`, `tls.key`, `ca.crt`), relative to
    /// the state directory. Default `certificates/<name>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_directory: Option<String>,
    /// Keystores written beside the PEM files, with passwords from files or environment
    /// variables (never from this document).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keystores: Option<Keystores>,
    /// Revoke the current certificate: it is listed in the issuer's CRL and refused by
    /// Tessera's listeners. Default false.
    #[serde(default)]
    pub revoked: bool,
}

/// Key usages and extended key usages, spelled as in cert-manager.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum KeyUsage {
    /// TLS server authentication (extended key usage).
    #[serde(rename = "server auth")]
    ServerAuth,
    /// TLS client authentication (extended key usage).
    #[serde(rename = "client auth")]
    ClientAuth,
    /// Digital signature (key usage).
    #[serde(rename = "digital signature")]
    DigitalSignature,
    /// Key encipherment (key usage).
    #[serde(rename = "key encipherment")]
    KeyEncipherment,
}

/// Keystores to write.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Keystores {
    /// A PKCS#12 file `keystore.p12` with the key, certificate and chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pkcs12: Option<KeystorePassword>,
    /// A JKS keystore `keystore.jks` (key and chain) and a JKS truststore `truststore.jks`
    /// (the CA), as Java agents and BMC AMI Cloud expect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jks: Option<JksKeystores>,
}

/// Where a keystore password comes from: exactly one of a file or an environment variable.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeystorePassword {
    /// A file whose content (without the trailing newline) is the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<String>,
    /// An environment variable of the Tessera process holding the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
}

/// JKS keystore and truststore passwords.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JksKeystores {
    /// Password of `keystore.jks`.
    pub keystore: KeystorePassword,
    /// Password of `truststore.jks`. Defaults to the keystore's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truststore: Option<KeystorePassword>,
}

/// The certificate in use.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    #[serde(flatten)]
    pub common: CommonStatus,
    /// Start of the current certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<Time>,
    /// End of the current certificate's validity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<Time>,
    /// When Tessera will renew it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_time: Option<Time>,
    /// Number of times it has been issued (1 for the first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// Serial number of the current certificate (hex).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    /// When the last failed issuance happened; cleared on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_time: Option<Time>,
    /// Why the last issuance failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure_reason: Option<String>,
}
