//! Outputs beside the PEM files: PKCS#12 and JKS keystores with their passwords, the
//! Kubernetes Secret of a ready Certificate, and pruning the files of removed Certificates.

use std::collections::BTreeMap;
use std::path::Path;

use crate::desired::DesiredState;
use crate::pki::{authority, facts, keystore};
use crate::reconcile::outcome::{Outcome, Reason};
use crate::reconcile::secrets::{SECRET_FILES, Secrets, TlsSecret};
use crate::resources::certificate::{KeystorePassword, Keystores};
use crate::resources::{Certificate, Kind, ObjectKey};
use crate::store::atomic::{self, Access};

use super::{Certificates, Environment, Error, read_text};

impl Certificates {
    /// Writes the keystores a Certificate asks for when they are missing, do not open with
    /// the current password, or do not hold the current certificate. A failure makes the
    /// Certificate not Ready: its PEM files are there, but not everything it asks for.
    pub(super) fn with_keystores(
        &self,
        mut outcome: Outcome,
        key: &ObjectKey,
        certificate: &Certificate,
        desired: &DesiredState,
        dir: &Path,
        now: jiff::Timestamp,
    ) -> Outcome {
        let Some(keystores) = &certificate.spec.keystores else {
            return outcome;
        };
        let base = crate::reconcile::declaring_dir(&self.config_dir, desired, key);
        match write_keystores(keystores, dir, &base, &self.environment, now) {
            Ok(written) => {
                if !written.is_empty() {
                    tracing::info!(certificate = %key, keystores = %written.join(", "), "wrote keystores");
                }
            }
            Err(error) => {
                outcome.ready = false;
                outcome.reason = Reason::KeystoreFailed;
                outcome.message = crate::error_chain(&error);
            }
        }
        outcome
    }

    /// Copies a ready certificate's files into its Secret (`secretName`, default the
    /// certificate's name).
    pub(super) fn write_secret(
        &self,
        secrets: &dyn Secrets,
        key: &ObjectKey,
        certificate: &Certificate,
        desired: &DesiredState,
    ) -> Result<(), Error> {
        let dir = self.output_dir(key, desired);
        let mut data = BTreeMap::new();
        for name in SECRET_FILES {
            match std::fs::read(dir.join(name)) {
                Ok(bytes) => {
                    data.insert(name.to_owned(), bytes);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(Error::read(&dir.join(name), source)),
            }
        }
        let secret = TlsSecret {
            namespace: key.namespace.clone(),
            name: certificate
                .spec
                .secret_name
                .clone()
                .unwrap_or_else(|| key.name.clone()),
            owner: key.name.clone(),
            owner_uid: certificate.metadata.uid.clone(),
            data,
        };
        secrets.write(&secret).map_err(Error::Secrets)
    }

    /// Removes the files of Certificates no longer declared (they can be issued again);
    /// CA keys of removed Issuers are kept on purpose (see the module notes).
    pub(super) fn prune(&self, desired: &DesiredState) {
        const FILES: [&str; 6] = [
            "tls.crt",
            "tls.key",
            "ca.crt",
            "keystore.p12",
            "keystore.jks",
            "truststore.jks",
        ];
        let root = self.state_dir.join("certificates");
        let Ok(namespaces) = std::fs::read_dir(&root) else {
            return;
        };
        for namespace in namespaces.flatten() {
            let Ok(names) = std::fs::read_dir(namespace.path()) else {
                continue;
            };
            for name in names.flatten() {
                let key = ObjectKey::new(
                    Kind::Certificate,
                    &namespace.file_name().to_string_lossy(),
                    &name.file_name().to_string_lossy(),
                );
                if !desired.entries.contains_key(&key) {
                    for file in FILES {
                        let _ = std::fs::remove_file(name.path().join(file));
                    }
                    let _ = std::fs::remove_dir(name.path());
                    let _ = std::fs::remove_file(self.revision_path(&key));
                    tracing::info!(certificate = %key, "removed the files of a certificate no longer declared");
                }
            }
        }
    }
}

/// Brings the keystores in `dir` up to date; returns the files written.
fn write_keystores(
    keystores: &Keystores,
    dir: &Path,
    base: &Path,
    environment: &Environment,
    now: jiff::Timestamp,
) -> Result<Vec<&'static str>, Error> {
    let chain_pem = read_text(&dir.join("tls.crt"))?;
    let key_pem = read_text(&dir.join("tls.key"))?;
    let root_pem = read_text(&dir.join("ca.crt"))?;
    let mut chain: Vec<Vec<u8>> = facts::pem_certificates(&chain_pem)?
        .into_iter()
        .map(|c| c.to_vec())
        .collect();
    let root = facts::pem_certificates(&root_pem)?[0].to_vec();
    if !chain.contains(&root) {
        chain.push(root.clone());
    }
    let key = authority::load_key(&key_pem)?.serialize_der();
    let leaf = chain[0].clone();
    let created = u64::try_from(now.as_millisecond()).unwrap_or(0);
    let mut written = Vec::new();
    let write = |name: &str, bytes: &[u8], access| {
        atomic::write(&dir.join(name), bytes, access).map_err(Error::from)
    };

    if let Some(source) = &keystores.pkcs12 {
        let password = password(source, "spec.keystores.pkcs12", base, environment)?;
        let current = std::fs::read(dir.join("keystore.p12")).unwrap_or_default();
        if !keystore::pkcs12_holds(&current, &password, &leaf) {
            let bytes = keystore::pkcs12(&key, &chain, &password)?;
            write("keystore.p12", &bytes, Access::OwnerOnly)?;
            written.push("keystore.p12");
        }
    }
    if let Some(jks) = &keystores.jks {
        let password_ks = password(
            &jks.keystore,
            "spec.keystores.jks.keystore",
            base,
            environment,
        )?;
        let password_ts = match &jks.truststore {
            Some(source) => password(source, "spec.keystores.jks.truststore", base, environment)?,
            None => password_ks.clone(),
        };
        let current = std::fs::read(dir.join("keystore.jks")).unwrap_or_default();
        if !keystore::jks_holds(&current, &password_ks, &leaf) {
            let bytes = keystore::jks_keystore(
                &key,
                &chain,
                &password_ks,
                created,
                crate::pki::random_bytes(),
            );
            write("keystore.jks", &bytes, Access::OwnerOnly)?;
            written.push("keystore.jks");
        }
        let current = std::fs::read(dir.join("truststore.jks")).unwrap_or_default();
        if !keystore::jks_holds(&current, &password_ts, &root) {
            write(
                "truststore.jks",
                &keystore::jks_truststore(&root, &password_ts, created),
                Access::Public,
            )?;
            written.push("truststore.jks");
        }
    }
    Ok(written)
}

/// A keystore password from its file or environment variable, never from the YAML.
fn password(
    source: &KeystorePassword,
    field: &'static str,
    base: &Path,
    environment: &Environment,
) -> Result<String, Error> {
    match (&source.password_file, &source.password_env) {
        (Some(file), _) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path).map_err(|source| Error::PasswordFile {
                field,
                path,
                source,
            })?;
            Ok(text.trim_end_matches(['\n', '\r']).to_owned())
        }
        (None, Some(name)) => environment.get(name).ok_or_else(|| Error::PasswordEnv {
            field,
            name: name.clone(),
        }),
        (None, None) => Err(Error::NoPasswordSource { field }),
    }
}

/// The CA key pair of an Issuer's `secretName`, through the Kubernetes Secrets adapter
/// (every call to it is in this file).
pub(super) fn read_ca_secret(
    secrets: &dyn Secrets,
    namespace: &str,
    name: &str,
) -> Result<(String, String), Error> {
    secrets
        .read_key_pair(namespace, name)
        .map_err(Error::Secrets)
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{ISSUER, Setup, certificate, key, now};
    use super::*;

    #[test]
    fn the_files_of_a_certificate_no_longer_declared_are_pruned_and_the_ca_is_kept() {
        let mut setup = Setup::new();
        let both = setup.desired(&format!(
            "{ISSUER}{}{}",
            certificate("web", ""),
            certificate("api", "")
        ));
        let (outcomes, _) = setup.certificates.reconcile(&both, now());
        assert!(outcomes[&key(Kind::Certificate, "api")].ready);
        assert!(setup.state("certificates/default/api/tls.key").exists());

        let web_only = setup.desired(&format!("{ISSUER}{}", certificate("web", "")));
        setup.certificates.reconcile(&web_only, now());
        assert!(!setup.state("certificates/default/api").exists());
        assert!(!setup.state("pki/certificates/default/api.json").exists());
        assert!(setup.state("certificates/default/web/tls.crt").exists());

        // A removed Issuer keeps its CA: agents may still trust it.
        let nothing = setup.desired(&certificate("web", ""));
        setup.certificates.reconcile(&nothing, now());
        assert!(setup.state("pki/issuers/default/ca/ca.key").exists());
    }

    #[test]
    fn keystores_are_written_once_and_a_missing_password_names_its_field() {
        let mut setup = Setup::new();
        setup.write_config("p12.txt", "secret\n");
        let keystores = "  keystores:\n    pkcs12:\n      passwordFile: p12.txt\n";
        let desired = setup.desired(&format!("{ISSUER}{}", certificate("web", keystores)));
        let (outcomes, _) = setup.certificates.reconcile(&desired, now());
        assert!(outcomes[&key(Kind::Certificate, "web")].ready);
        let dir = setup.state("certificates/default/web");
        let p12 = std::fs::read(dir.join("keystore.p12")).unwrap();
        let environment = Environment::default();
        let base = setup.config.path();
        // Up to date: nothing is written again.
        let parsed: Keystores =
            serde_json::from_value(serde_json::json!({ "pkcs12": { "passwordFile": "p12.txt" } }))
                .unwrap();
        let written = write_keystores(&parsed, &dir, base, &environment, now()).unwrap();
        assert!(written.is_empty(), "{written:?}");
        assert_eq!(std::fs::read(dir.join("keystore.p12")).unwrap(), p12);

        let unset: Keystores = serde_json::from_value(
            serde_json::json!({ "pkcs12": { "passwordEnv": "NOT_SET_ANYWHERE" } }),
        )
        .unwrap();
        let error = write_keystores(&unset, &dir, base, &environment, now()).unwrap_err();
        assert_eq!(
            crate::error_chain(&error),
            "spec.keystores.pkcs12.passwordEnv: the environment variable NOT_SET_ANYWHERE is not set"
        );
    }
}
