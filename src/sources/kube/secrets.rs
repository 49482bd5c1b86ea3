//! The `kubernetes.io/tls` Secrets of Certificates, for a reconcile pass: read any time,
//! written only while this replica leads and only when their content changed; and the
//! watch that makes a pass when a Secret that a pass read (a CA Issuer's `secretName`, the
//! Server's `certificateSecretRef`) appears, changes or goes away.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::Client;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{KubeError, Owner, apply_tls_secret, read_tls_secret};
use crate::resources::Kind;
use crate::sources::secrets::SecretsError;

/// The Secrets a reconcile pass read, by (namespace, name), with a digest of the key pair it
/// saw (`None`: the Secret did not exist or had no key pair). The watch compares each
/// Secret it receives with this: only a Secret that reads differently now makes a pass, so
/// Tessera's own writes of Certificates' Secrets (which no pass reads back as changed)
/// never make passes without end.
#[derive(Clone, Debug, Default)]
pub struct ReadSecrets(Arc<Mutex<HashMap<SecretName, Option<Vec<u8>>>>>);

/// (namespace, name) of a Secret.
type SecretName = (String, String);

impl ReadSecrets {
    /// Records what a pass read of `namespace/name`.
    fn record(&self, namespace: &str, name: &str, pair: Option<(&str, &str)>) {
        let mut read = self.0.lock().unwrap_or_else(|e| e.into_inner());
        read.insert(
            (namespace.to_owned(), name.to_owned()),
            pair.map(pair_digest),
        );
    }

    /// Whether `namespace/name`, now holding `pair`, reads differently from the last time a
    /// pass read it. A Secret no pass read is of no interest.
    fn differs(&self, namespace: &str, name: &str, pair: Option<(&str, &str)>) -> bool {
        let read = self.0.lock().unwrap_or_else(|e| e.into_inner());
        read.get(&(namespace.to_owned(), name.to_owned()))
            .is_some_and(|seen| seen.as_deref() != pair.map(pair_digest).as_deref())
    }
}

/// A digest of a key pair, to compare without keeping private keys around.
fn pair_digest((chain, key): (&str, &str)) -> Vec<u8> {
    let mut digest = Sha256::new();
    digest.update(chain.as_bytes());
    digest.update([0]);
    digest.update(key.as_bytes());
    digest.finalize().to_vec()
}

/// (`tls.crt`, `tls.key`) of a Secret as a read gives them, or `None` without both.
fn secret_pair(secret: &Secret) -> Option<(String, String)> {
    let data = secret.data.as_ref()?;
    let field = |key: &str| {
        data.get(key)
            .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
    };
    Some((field("tls.crt")?, field("tls.key")?))
}

/// Watches the `kubernetes.io/tls` Secrets of `namespace` (or of every namespace) until
/// `shutdown`, and sends `true` on `trigger` whenever one that a pass read now reads
/// differently: it appeared, its key pair changed, or it was deleted. Watch errors are
/// retried with kube-runtime's default backoff and logged, never fatal.
pub async fn watch_read_secrets(
    client: Client,
    namespace: Option<String>,
    read: ReadSecrets,
    trigger: watch::Sender<bool>,
    shutdown: CancellationToken,
) {
    let api = match &namespace {
        Some(namespace) => Api::<Secret>::namespaced(client, namespace),
        None => Api::<Secret>::all(client),
    };
    // Only key pairs: the field selector keeps other Secrets (tokens, passwords) out of
    // this process altogether.
    let config = watcher::Config::default().fields("type=kubernetes.io/tls");
    let mut events = watcher::watcher(api, config).default_backoff().boxed();
    loop {
        let event = tokio::select! {
            () = shutdown.cancelled() => return,
            event = events.next() => event,
        };
        let (secret, deleted) = match event {
            Some(Ok(watcher::Event::Apply(secret) | watcher::Event::InitApply(secret))) => {
                (secret, false)
            }
            Some(Ok(watcher::Event::Delete(secret))) => (secret, true),
            Some(Ok(watcher::Event::Init | watcher::Event::InitDone)) => continue,
            Some(Err(error)) => {
                tracing::warn!(
                    error = %crate::error_chain(&error),
                    "watch of Secrets failed; retrying with backoff"
                );
                continue;
            }
            None => return,
        };
        let namespace = secret.metadata.namespace.clone().unwrap_or_default();
        let name = secret.metadata.name.clone().unwrap_or_default();
        let pair = (!deleted).then(|| secret_pair(&secret)).flatten();
        let pair = pair.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
        if read.differs(&namespace, &name, pair) {
            tracing::info!(secret = %format!("{namespace}/{name}"), "a Secret in use changed; reconciling");
            trigger.send_replace(true);
        }
    }
}

/// Secrets of one cluster, for callers on blocking threads (reconcile passes): each call
/// runs its API request on the runtime that made the value and waits for it.
pub struct KubeSecrets {
    client: Client,
    /// Reconcile passes run on blocking threads; the API calls run on this runtime.
    runtime: tokio::runtime::Handle,
    leader: watch::Receiver<bool>,
    /// What passes read, for the watch of Secrets.
    read: ReadSecrets,
    /// What was last written to each Secret (a digest of owner and data).
    written: Mutex<HashMap<(String, String), Vec<u8>>>,
}

impl std::fmt::Debug for KubeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeSecrets")
    }
}

impl KubeSecrets {
    /// Secrets through `client`, written only while `leader` says so. Call it inside a
    /// tokio runtime: the API calls run there.
    pub fn new(client: Client, leader: watch::Receiver<bool>) -> Self {
        Self {
            client,
            runtime: tokio::runtime::Handle::current(),
            leader,
            read: ReadSecrets::default(),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// What passes read so far (shared: it keeps filling as passes read).
    pub fn read_secrets(&self) -> ReadSecrets {
        self.read.clone()
    }

    /// (`tls.crt`, `tls.key`) of a `kubernetes.io/tls` Secret, remembered for the watch of
    /// Secrets (a missing Secret or key too: its arrival makes a pass). Blocks.
    pub fn read_key_pair_blocking(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(String, String), KubeError> {
        let read = self
            .runtime
            .block_on(read_tls_secret(&self.client, namespace, name));
        match &read {
            Ok((chain, key)) => self.read.record(namespace, name, Some((chain, key))),
            Err(KubeError::SecretNotFound { .. } | KubeError::SecretKeyMissing { .. }) => {
                self.read.record(namespace, name, None);
            }
            // The API server did not answer: what the Secret holds is unknown, and the
            // pass that failed is retried anyway.
            Err(_) => {}
        }
        read
    }

    /// Writes a Secret owned by `owner` unless this replica does not lead or the same
    /// content was already written. Blocks.
    pub fn write_blocking(
        &self,
        namespace: &str,
        name: &str,
        owner: &Owner,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<(), KubeError> {
        if !*self.leader.borrow() {
            return Ok(());
        }
        let mut digest = Sha256::new();
        digest.update(format!("{:?}", owner.uid));
        for (key, bytes) in data {
            digest.update(key.as_bytes());
            digest.update([0]);
            digest.update(bytes);
        }
        let digest = digest.finalize().to_vec();
        let slot = (namespace.to_owned(), name.to_owned());
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        if written.get(&slot) == Some(&digest) {
            return Ok(());
        }
        self.runtime
            .block_on(apply_tls_secret(&self.client, namespace, name, owner, data))?;
        tracing::info!(secret = %format!("{namespace}/{name}"), certificate = %owner.name, "wrote Secret");
        written.insert(slot, digest);
        Ok(())
    }
}

/// Reconcile's view of Secrets in `--kube` mode. Reads always; writes only while this
/// replica leads, and only what changed since it last wrote.
impl crate::sources::secrets::Secrets for KubeSecrets {
    fn read_key_pair(&self, namespace: &str, name: &str) -> Result<(String, String), SecretsError> {
        self.read_key_pair_blocking(namespace, name)
            .map_err(|error| {
                secrets_error(error, |source| SecretsError::Read {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                    source,
                })
            })
    }

    fn write(&self, secret: &crate::sources::secrets::TlsSecret) -> Result<(), SecretsError> {
        let owner = Owner {
            kind: Kind::Certificate,
            name: secret.owner.clone(),
            uid: secret.owner_uid.clone(),
        };
        self.write_blocking(&secret.namespace, &secret.name, &owner, &secret.data)
            .map_err(|error| {
                secrets_error(error, |source| SecretsError::Write {
                    namespace: secret.namespace.clone(),
                    name: secret.name.clone(),
                    source,
                })
            })
    }
}

/// A Kubernetes error about a Secret in reconcile's terms: the Secret named once, the API
/// error as the source. `other` wraps an error that names no Secret.
fn secrets_error(
    error: KubeError,
    other: impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> SecretsError,
) -> SecretsError {
    match error {
        KubeError::ReadSecret {
            namespace,
            name,
            source,
        } => SecretsError::Read {
            namespace,
            name,
            source: Box::new(source),
        },
        KubeError::SecretNotFound { namespace, name } => SecretsError::NotFound { namespace, name },
        KubeError::SecretKeyMissing {
            namespace,
            name,
            key,
        } => SecretsError::KeyMissing {
            namespace,
            name,
            key: key.to_owned(),
        },
        KubeError::WriteSecret {
            namespace,
            name,
            source,
        } => SecretsError::Write {
            namespace,
            name,
            source: Box::new(source),
        },
        // Not an error the Secret calls return today; kept whole should one appear.
        error @ KubeError::Status { .. } => other(Box::new(error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_secret_read_and_now_different_makes_a_pass() {
        let read = ReadSecrets::default();
        let pair = Some(("chain", "key"));
        assert!(!read.differs("fleet", "root", pair), "never read");
        read.record("fleet", "root", None);
        assert!(read.differs("fleet", "root", pair), "appeared");
        assert!(!read.differs("fleet", "root", None));
        read.record("fleet", "root", pair);
        assert!(!read.differs("fleet", "root", pair), "as read: no pass");
        assert!(read.differs("fleet", "root", Some(("chain", "other key"))));
        assert!(read.differs("fleet", "root", None), "deleted");
        assert!(!read.differs("other", "root", None));
    }
}
