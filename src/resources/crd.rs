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
    .into_iter()
    .map(unwrapped_descriptions)
    .collect()
}

/// The CRD with every description's source line breaks removed: doc comments are wrapped
/// at 100 columns, and `kubectl explain` wraps again at its own width, so a kept break
/// cuts sentences in the middle. Paragraphs (blank lines) and list items stay apart.
fn unwrapped_descriptions(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, value) in map.iter_mut() {
                    match value {
                        serde_json::Value::String(text) if key == "description" => {
                            *text = unwrap(text);
                        }
                        _ => walk(value),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let Ok(mut value) = serde_json::to_value(&crd) else {
        return crd;
    };
    walk(&mut value);
    serde_json::from_value(value).unwrap_or(crd)
}

/// `text` with single line breaks turned into spaces, except before a list item.
fn unwrap(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        let list_item = line.starts_with("- ") || line.starts_with("* ");
        if i > 0 {
            if line.is_empty() || out.ends_with('\n') || list_item {
                out.push('\n');
            } else {
                out.push(' ');
            }
        }
        out.push_str(line);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_read_as_sentences_with_paragraphs_and_lists_kept() {
        assert_eq!(
            unwrap(
                "Size of each fragment, from 4Ki\nto 64Mi.\n\nSecond paragraph\ngoes on.\n- one\n- two"
            ),
            "Size of each fragment, from 4Ki to 64Mi.\n\nSecond paragraph goes on.\n- one\n- two"
        );
    }

    #[test]
    fn no_generated_description_breaks_a_sentence() {
        let yaml = all_yaml();
        let fragment = all()
            .iter()
            .find(|crd| crd.spec.names.kind == "Package")
            .map(to_yaml)
            .unwrap();
        assert!(
            fragment.contains(
                "Size of each download fragment, from 4Ki to 64Mi (default 1Mi). Smaller"
            ),
            "{fragment}"
        );
        for short in ["cert", "certs", "gw"] {
            assert!(
                !yaml.contains(&format!("- {short}\n")),
                "the short name `{short}` is cert-manager's or Istio's"
            );
        }
    }
}
