//! A problem found in the configuration: where it is and what is wrong, in plain words.

use std::fmt;

use serde::Serialize;

use super::meta::ObjectKey;

/// One thing wrong with the configuration. Printed as
/// `file:line: Kind/name: field.path: reason`, leaving out what is not known.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Problem {
    /// File, relative to the configuration root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Line in the file, from 1.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    /// The object concerned, when its kind and name are known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectKey>,
    /// Field path inside the object, e.g. `spec.dnsNames[1]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl Problem {
    /// A problem at a line of a file, before any object is known.
    pub fn at(file: &str, line: u32, message: impl Into<String>) -> Self {
        Self {
            file: Some(file.to_owned()),
            line: Some(line),
            object: None,
            field: None,
            message: message.into(),
        }
    }

    /// A problem that concerns no file in particular.
    pub fn general(message: impl Into<String>) -> Self {
        Self {
            file: None,
            line: None,
            object: None,
            field: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // A Kubernetes object is its own "file" (`Kind/namespace/name`): named once, and
        // without the line, which would count lines of Tessera's rendering of the object.
        if let (Some(file), Some(object)) = (&self.file, &self.object)
            && *file == format!("{}/{}/{}", object.kind, object.namespace, object.name)
        {
            write!(f, "{file}: ")?;
            if let Some(field) = &self.field {
                write!(f, "{field}: ")?;
            }
            return f.write_str(&self.message);
        }
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{file}:{line}: ")?,
            (Some(file), None) => write!(f, "{file}: ")?,
            _ => {}
        }
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "{field}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::Kind;

    #[test]
    fn a_kubernetes_object_is_named_once_without_a_line() {
        let mut problem = Problem {
            file: Some("Package/fleet/hello".into()),
            line: Some(7),
            object: Some(ObjectKey::new(Kind::Package, "fleet", "hello")),
            field: Some("spec.os".into()),
            message: "unknown variant".into(),
        };
        assert_eq!(
            problem.to_string(),
            "Package/fleet/hello: spec.os: unknown variant"
        );
        problem.file = Some("packages.yaml".into());
        assert_eq!(
            problem.to_string(),
            "packages.yaml:7: Package/fleet/hello: spec.os: unknown variant"
        );
    }
}
