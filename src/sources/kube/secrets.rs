//! The `kubernetes.io/tls` Secrets of Certificates, for a reconcile pass: read any time,
//! written only while this replica leads and only when their content changed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use kube::Client;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::{KubeError, Owner, apply_tls_secret, read_tls_secret};

/// Secrets of one cluster, for callers on blocking threads (reconcile passes): each call
/// runs its API request on the runtime that made the value and waits for it.
pub struct KubeSecrets {
    client: Client,
    /// Reconcile passes run on blocking threads; the API calls run on this runtime.
    runtime: tokio::runtime::Handle,
    leader: watch::Receiver<bool>,
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
            written: Mutex::new(HashMap::new()),
        }
    }

    /// (`tls.crt`, `tls.key`) of a `kubernetes.io/tls` Secret. Blocks.
    pub fn read_key_pair_blocking(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(String, String), KubeError> {
        self.runtime
            .block_on(read_tls_secret(&self.client, namespace, name))
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
