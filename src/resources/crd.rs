//! The CustomResourceDefinitions of every kind, as `tessera crds` prints them and `crds/`
//! holds them.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use super::{Activation, Affectation, Certificate, Gateway, Issuer, Package, Server};

/// Every CRD, in the order of `Kind::ALL`.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Issuer::crd(),
        Certificate::crd(),
        Server::crd(),
        Gateway::crd(),
        Package::crd(),
        Activation::crd(),
        Affectation::crd(),
    ]
}

/// The file name of a CRD in `crds/`: `<plural>.<group>.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or("unnamed"))
}

/// One CRD as a YAML document.
pub fn to_yaml(crd: &CustomResourceDefinition) -> String {
    // Serialising a CRD built by kube cannot fail: it is plain data with string keys.
    serde_saphyr::to_string(crd).unwrap_or_default()
}

/// Every CRD as one multi-document YAML stream.
pub fn all_yaml() -> String {
    all()
        .iter()
        .map(|crd| format!("---\n{}", to_yaml(crd)))
        .collect()
}
