//! The resource kinds of API group `tessera.dev/v1alpha1`, their status types, and reading
//! them from multi-document YAML. Pure: no tokio, no I/O.
//!
//! One Rust type per kind serves YAML files and Kubernetes custom resources alike: each is
//! derived with `kube::CustomResource` and `schemars::JsonSchema`, and every field's `///`
//! line becomes its description in the CRD (`kubectl explain`).

pub mod activation;
pub mod affectation;
pub mod certificate;
pub mod crd;
pub mod events;
pub mod gateway;
pub mod issuer;
pub mod meta;
pub mod package;
pub mod parse;
pub mod problem;
pub mod quantity;
pub mod server;
pub mod validate;

use kube::api::ObjectMeta;

pub use activation::{Activation, ActivationSpec, ActivationStatus, SuspendedBy};
pub use affectation::{Affectation, AffectationSpec, AffectationStatus};
pub use certificate::{Certificate, CertificateSpec, CertificateStatus};
pub use gateway::{Gateway, GatewaySpec, GatewayStatus};
pub use issuer::{Issuer, IssuerSpec, IssuerStatus};
pub use meta::{API_VERSION, DEFAULT_NAMESPACE, Kind, LocalRef, ObjectKey};
pub use package::{DrainingVersion, Package, PackageSpec, PackageStatus};
pub use parse::{FieldLines, FileParse, Origin, SourcedObject, parse_file};
pub use problem::Problem;
pub use server::{Server, ServerSpec, ServerStatus};

/// Everything a source read, as it was read: the input of `desired`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// What version of the configuration this is: a content digest for a directory, a commit
    /// for git, a digest of every watched object's spec for Kubernetes.
    pub revision: String,
    /// The YAML files, sorted by path.
    pub files: Vec<SourceFile>,
    /// Problems met while reading (unreadable files, files too large).
    pub problems: Vec<Problem>,
    /// Where relative file names in the documents (package content, CA files) resolve,
    /// when it is not the configuration directory the server was started with: a git
    /// source checks each commit out into its own directory.
    pub root: Option<std::path::PathBuf>,
}

/// One file of configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Path relative to the configuration root, with `/` separators.
    pub path: String,
    /// The file's text.
    pub text: String,
}

/// An object of any kind.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Issuer(Issuer),
    Certificate(Certificate),
    Server(Server),
    Gateway(Gateway),
    Package(Package),
    Activation(Activation),
    Affectation(Affectation),
}

/// Applies `$body` to the object inside any variant, bound as `$object`.
macro_rules! each {
    ($resource:expr, $object:ident => $body:expr) => {
        match $resource {
            Resource::Issuer($object) => $body,
            Resource::Certificate($object) => $body,
            Resource::Server($object) => $body,
            Resource::Gateway($object) => $body,
            Resource::Package($object) => $body,
            Resource::Activation($object) => $body,
            Resource::Affectation($object) => $body,
        }
    };
}

impl Resource {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Issuer(_) => Kind::Issuer,
            Self::Certificate(_) => Kind::Certificate,
            Self::Server(_) => Kind::Server,
            Self::Gateway(_) => Kind::Gateway,
            Self::Package(_) => Kind::Package,
            Self::Activation(_) => Kind::Activation,
            Self::Affectation(_) => Kind::Affectation,
        }
    }

    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        each!(self, o => &o.metadata)
    }

    /// The object's metadata, to fill in generation and the like.
    pub fn metadata_mut(&mut self) -> &mut ObjectMeta {
        each!(self, o => &mut o.metadata)
    }

    /// Who the object is.
    pub fn key(&self) -> ObjectKey {
        let meta = self.metadata();
        ObjectKey::new(
            self.kind(),
            meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE),
            meta.name.as_deref().unwrap_or_default(),
        )
    }

    /// The object a document (apiVersion, kind, metadata, spec) describes, as
    /// [`Resource::to_document`] wrote it.
    pub fn from_document(document: serde_json::Value) -> Result<Self, serde_json::Error> {
        use serde::de::Error;
        let kind = document
            .get("kind")
            .and_then(|k| k.as_str())
            .map(Kind::from_name);
        Ok(match kind {
            Some(Some(Kind::Issuer)) => Self::Issuer(serde_json::from_value(document)?),
            Some(Some(Kind::Certificate)) => Self::Certificate(serde_json::from_value(document)?),
            Some(Some(Kind::Server)) => Self::Server(serde_json::from_value(document)?),
            Some(Some(Kind::Gateway)) => Self::Gateway(serde_json::from_value(document)?),
            Some(Some(Kind::Package)) => Self::Package(serde_json::from_value(document)?),
            Some(Some(Kind::Activation)) => Self::Activation(serde_json::from_value(document)?),
            Some(Some(Kind::Affectation)) => Self::Affectation(serde_json::from_value(document)?),
            _ => return Err(serde_json::Error::custom("not a Tessera kind")),
        })
    }

    /// The whole object as a document (apiVersion, kind, metadata, spec), as JSON.
    pub fn to_document(&self) -> serde_json::Value {
        each!(self, o => serde_json::to_value(o).unwrap_or_default())
    }

    /// The spec as JSON: what decides whether two versions of an object differ.
    pub fn spec_json(&self) -> serde_json::Value {
        each!(self, o => serde_json::to_value(&o.spec).unwrap_or_default())
    }

    /// The objects this one refers to, each with the field that names it.
    #[allow(clippy::too_many_lines)]
    pub fn references(&self) -> Vec<(String, ObjectKey)> {
        // Long (about 110 lines) on purpose: one flat arm per kind lists every reference field
        // in one place, so a field left out (a reference never checked) shows in review.
        let namespace = self
            .metadata()
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let to =
            |kind: Kind, reference: &LocalRef| ObjectKey::referenced(kind, &namespace, reference);
        let mut found = Vec::new();
        match self {
            Self::Issuer(issuer) => {
                if let Some(certificate) = issuer
                    .spec
                    .ca
                    .as_ref()
                    .and_then(|ca| ca.certificate_ref.as_ref())
                {
                    found.push((
                        "spec.ca.certificateRef".into(),
                        to(Kind::Certificate, certificate),
                    ));
                }
            }
            Self::Certificate(certificate) => {
                found.push((
                    "spec.issuerRef".into(),
                    to(Kind::Issuer, &certificate.spec.issuer_ref),
                ));
            }
            Self::Server(server) => {
                if let Some(certificate) = &server.spec.certificate_ref {
                    found.push((
                        "spec.certificateRef".into(),
                        to(Kind::Certificate, certificate),
                    ));
                }
                for (i, issuer) in server.spec.client_auth.trusted_issuers.iter().enumerate() {
                    found.push((
                        format!("spec.clientAuth.trustedIssuers[{i}]"),
                        to(Kind::Issuer, issuer),
                    ));
                }
                if let Some(enrollment) = &server.spec.enrollment {
                    found.push((
                        "spec.enrollment.issuerRef".into(),
                        to(Kind::Issuer, &enrollment.issuer_ref),
                    ));
                }
                if let Some(dial_out) = &server.spec.dial_out {
                    found.push((
                        "spec.dialOut.gatewayIssuerRef".into(),
                        to(Kind::Issuer, &dial_out.gateway_issuer_ref),
                    ));
                    found.push((
                        "spec.dialOut.certificateRef".into(),
                        to(Kind::Certificate, &dial_out.certificate_ref),
                    ));
                }
                for (i, gateway) in server.spec.trusted_gateways.iter().enumerate() {
                    found.push((
                        format!("spec.trustedGateways[{i}].issuerRef"),
                        to(Kind::Issuer, &gateway.issuer_ref),
                    ));
                }
            }
            Self::Gateway(gateway) => {
                if let Some(certificate) = &gateway.spec.certificate_ref {
                    found.push((
                        "spec.certificateRef".into(),
                        to(Kind::Certificate, certificate),
                    ));
                }
                if let Some(certificate) = &gateway.spec.backend_certificate_ref {
                    found.push((
                        "spec.backendCertificateRef".into(),
                        to(Kind::Certificate, certificate),
                    ));
                }
                if let Some(issuer) = &gateway.spec.backend_issuer_ref {
                    found.push(("spec.backendIssuerRef".into(), to(Kind::Issuer, issuer)));
                }
                if let Some(dial_out) = &gateway.spec.dial_out {
                    for (i, issuer) in dial_out.trusted_server_issuers.iter().enumerate() {
                        found.push((
                            format!("spec.dialOut.trustedServerIssuers[{i}]"),
                            to(Kind::Issuer, issuer),
                        ));
                    }
                }
                for (i, issuer) in gateway.spec.trusted_client_issuers.iter().enumerate() {
                    found.push((
                        format!("spec.trustedClientIssuers[{i}]"),
                        to(Kind::Issuer, issuer),
                    ));
                }
            }
            Self::Package(_) => {}
            Self::Activation(activation) => {
                found.push((
                    "spec.packageRef".into(),
                    to(Kind::Package, &activation.spec.package_ref),
                ));
            }
            Self::Affectation(affectation) => {
                found.push((
                    "spec.activationRef".into(),
                    to(Kind::Activation, &affectation.spec.activation_ref),
                ));
            }
        }
        found
    }
}
