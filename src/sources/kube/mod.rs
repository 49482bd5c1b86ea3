//! The Kubernetes source: watches every Tessera kind (one namespace or all) and publishes a
//! whole `Snapshot`, and the way back: statuses written with server-side apply, Events, and
//! the `kubernetes.io/tls` Secrets of Certificates.
//!
//! Each object is turned into one document of the snapshot, named after the object
//! (`Package/ns/name`) instead of a file, so `desired` reads Kubernetes objects exactly as it
//! reads YAML files: the same checks, the same problems, the same "last good version". The
//! watch reads objects untyped (`DynamicObject`), so an object whose spec does not parse never
//! breaks the stream: it becomes a problem of that object, shown as `Stalled` in its status.
//!
//! Watch errors (the API server restarting, RBAC being fixed) are retried with a short
//! backoff ([`WatchBackoff`]) and logged; they are never fatal. An expired resource version
//! (`410 Gone`) is relisted at once.
//!
//! About 870 lines, 740 of them code: the watch and its complete listings, the status
//! writer and Events share the object documents and the field manager, so they stay
//! together; the loop (`status.rs`), Secrets (`secrets.rs`) and the Lease (`lease.rs`) are
//! already split off; what an Event says is derived in `resources::events`.

pub mod lease;
pub mod secrets;
pub mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::resources::events::status_events;
use crate::resources::{
    API_VERSION, Activation, Affectation, Certificate, Gateway, Issuer, Kind, ObjectKey, Package,
    Server, Snapshot, SourceFile,
};

/// The field manager of every server-side apply Tessera makes (statuses and Secrets): one
/// name, so `kubectl get --show-managed-fields` says who owns what.
pub const FIELD_MANAGER: &str = "tessera";
/// Quiet time after the last watch event before a snapshot is published: a `kubectl apply -f`
/// of a directory arrives as a burst of events and should make one reconcile pass.
pub const DEBOUNCE: Duration = Duration::from_millis(200);
/// Longest wait after the first event of a burst, so a steady stream still gets published.
pub const MAX_DELAY: Duration = Duration::from_secs(1);

/// Errors talking to the Kubernetes API.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("failed to patch the status of {object}")]
    Status {
        object: ObjectKey,
        #[source]
        source: kube::Error,
    },
    #[error("failed to read Secret {namespace}/{name}")]
    ReadSecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("Secret {namespace}/{name} does not exist")]
    SecretNotFound { namespace: String, name: String },
    #[error(
        "Secret {namespace}/{name} has no {key} (a kubernetes.io/tls Secret has tls.crt and tls.key)"
    )]
    SecretKeyMissing {
        namespace: String,
        name: String,
        key: &'static str,
    },
    #[error("failed to write Secret {namespace}/{name}")]
    WriteSecret {
        namespace: String,
        name: String,
        #[source]
        source: kube::Error,
    },
}

/// Where the Tessera kinds are watched.
#[derive(Clone)]
pub struct KubeSource {
    client: Client,
    /// One namespace, or every namespace when `None`.
    namespace: Option<String>,
    /// When this turns true, the current snapshot is published again (unchanged) so
    /// reconcile makes a pass: a replica that becomes leader writes its Secrets at once.
    resync: Option<watch::Receiver<bool>>,
}

impl KubeSource {
    /// A source watching `namespace`, or all namespaces.
    pub fn new(client: Client, namespace: Option<String>) -> Self {
        Self {
            client,
            namespace,
            resync: None,
        }
    }

    /// The same, publishing the snapshot again each time `trigger` turns true.
    pub fn resync_on(mut self, trigger: watch::Receiver<bool>) -> Self {
        self.resync = Some(trigger);
        self
    }

    /// Watches every kind until `shutdown`, publishing a [`Listing`] on `publish` whenever
    /// what the watches hold changes. The channel holds `None` until every kind has been
    /// listed once, so a partial first read never looks like deleted objects.
    pub async fn run(self, publish: watch::Sender<Option<Listing>>, shutdown: CancellationToken) {
        let mut lists = Lists::default();
        let mut streams = Vec::new();
        for kind in Kind::ALL {
            let resource = api_resource(kind);
            let api = match &self.namespace {
                Some(namespace) => {
                    Api::<DynamicObject>::namespaced_with(self.client.clone(), namespace, &resource)
                }
                None => Api::<DynamicObject>::all_with(self.client.clone(), &resource),
            };
            let writer = reflector::store::Writer::new(resource);
            lists.stores.push((kind, writer.as_reader()));
            let stream = reflector::reflector(writer, watch_with_backoff(api))
                .map(move |event| (kind, event));
            streams.push(stream.boxed());
        }
        let mut events = futures::stream::select_all(streams);
        let mut due: Option<(tokio::time::Instant, tokio::time::Instant)> = None;
        let mut resync = self.resync;
        loop {
            let deadline = due.map(|(quiet, latest)| quiet.min(latest));
            tokio::select! {
                () = shutdown.cancelled() => return,
                Some(now_true) = turned(&mut resync) => {
                    // Only a listing already read is published again: before the first one
                    // there is nothing to act on, and the first, when it comes, makes the
                    // pass the new leader needs.
                    if now_true {
                        publish.send_if_modified(|current| current.is_some());
                    }
                }
                event = events.next() => match event {
                    Some((kind, Ok(event))) => {
                        if matches!(event, watcher::Event::InitDone) {
                            lists.listed.insert(kind);
                        }
                        let now = tokio::time::Instant::now();
                        let latest = due.map_or(now + MAX_DELAY, |(_, latest)| latest);
                        due = Some((now + DEBOUNCE, latest));
                    }
                    Some((kind, Err(error))) => tracing::warn!(
                        %kind,
                        error = %crate::error_chain(&error),
                        "watch failed; retrying with backoff"
                    ),
                    None => return,
                },
                () = sleep_until(deadline) => {
                    due = None;
                    let Some(listing) = lists.listing() else {
                        continue;
                    };
                    // The statuses seen are always kept (the status writer compares with
                    // them), but only a new revision (a changed spec, an object added or
                    // removed) wakes reconcile: a status written is not a change to act on.
                    publish.send_if_modified(|current| {
                        let changed = current
                            .as_ref()
                            .is_none_or(|c| c.snapshot.revision != listing.snapshot.revision);
                        *current = Some(listing);
                        changed
                    });
                }
            }
        }
    }
}

/// The watch of one kind: kube-runtime's watcher, with a `410 Gone` relisted at once and
/// other errors retried with [`WatchBackoff`].
fn watch_with_backoff(
    api: Api<DynamicObject>,
) -> impl futures::Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Send {
    watcher::watcher(api, watcher::Config::default())
        .filter(|event| {
            // `410 Gone` (the resource version is too old, typically after an API server
            // outage) is no failure: the watcher has already dropped its resource version
            // and lists again on its next poll. Backing off here is what delayed an edit by
            // 48.6 s on a real cluster, the outage's backoff added to the relist's.
            let gone =
                matches!(event, Err(watcher::Error::WatchError(status)) if status.code == 410);
            if gone {
                tracing::info!("watch expired (410 Gone); listing again");
            }
            std::future::ready(!gone)
        })
        .backoff(WatchBackoff::default())
}

/// The wait before retrying a failed watch: doubling from [`WatchBackoff::FIRST`] up to
/// [`WatchBackoff::MAX`], each wait shortened by up to a quarter at random so replicas do
/// not retry in step; back to the first after any success.
///
/// kube-runtime's default (0.8 s doubling to 30 s, with up to as much again of jitter, reset
/// only after two quiet minutes) is kind to a struggling API server but leaves edits unseen
/// for up to a minute after it recovers. Seven watches retrying every few seconds are a
/// negligible load; an edit unseen for a minute is what users notice.
#[derive(Debug)]
pub struct WatchBackoff {
    next: Duration,
    /// Source of the jitter (a fresh `RandomState` per wait: no random-number dependency).
    jitter: std::collections::hash_map::RandomState,
}

impl WatchBackoff {
    /// The first wait: a blip (a watch closed by a restarting API server) is retried at once.
    pub const FIRST: Duration = Duration::from_millis(500);
    /// The longest wait: an edit made while the API server was down is seen at most this
    /// long after it is back.
    pub const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self {
            next: Self::FIRST,
            jitter: std::collections::hash_map::RandomState::new(),
        }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        use std::hash::BuildHasher as _;
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        // A fraction in [0, 1/4) of the wait, taken off it.
        let fraction = (self.jitter.hash_one(wait) % 1024) as f64 / 4096.0;
        Some(wait.mul_f64(1.0 - fraction))
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// What every kind's watch holds, and which kinds have been listed whole.
#[derive(Default)]
struct Lists {
    stores: Vec<(Kind, Store<DynamicObject>)>,
    /// Kinds whose first list completed (`InitDone`). From then on their store always holds
    /// a whole list: a relist (after `410 Gone`) is buffered by the reflector and swapped in
    /// at its own `InitDone`, never applied piecemeal.
    listed: HashSet<Kind>,
}

impl Lists {
    /// The listing of every kind, or `None` while a kind has not been listed yet.
    fn listing(&self) -> Option<Listing> {
        let objects = self.stores.iter().map(|(kind, store)| {
            let objects = store.state().into_iter().map(|o| (*o).clone()).collect();
            (*kind, objects)
        });
        Listing::of(&self.listed, objects)
    }
}

/// A complete listing of every Tessera kind, as the API server returned it: the snapshot
/// reconcile acts on, and the statuses the objects carried (what the status writer compares
/// with, so a restart re-reports nothing).
///
/// It can only be made by [`Listing::of`], which refuses to make one unless every kind's
/// list has completed: in Kubernetes mode, nothing reconcile prunes (certificates,
/// packages) can follow from a read that was not complete. The placeholder before the first
/// listing is `None`, not an empty snapshot. A new type here rather than a marker on
/// `resources::Snapshot`, because only this source can read partially: a directory scan or
/// a git commit is whole by construction, and their snapshots stay as they are.
#[derive(Clone, Debug, PartialEq)]
pub struct Listing {
    snapshot: Snapshot,
    statuses: std::sync::Arc<HashMap<ObjectKey, Map<String, Value>>>,
}

impl Listing {
    /// The listing of `objects` (each kind with what its store holds), if every kind is in
    /// `listed`; `None` otherwise.
    pub fn of(
        listed: &HashSet<Kind>,
        objects: impl IntoIterator<Item = (Kind, Vec<DynamicObject>)>,
    ) -> Option<Self> {
        if !Kind::ALL.iter().all(|kind| listed.contains(kind)) {
            return None;
        }
        let mut statuses = HashMap::new();
        let mut all = Vec::new();
        for (kind, objects) in objects {
            for object in objects {
                if let Some(Value::Object(status)) = object.data.get("status") {
                    let key = ObjectKey::new(
                        kind,
                        object.metadata.namespace.as_deref().unwrap_or_default(),
                        object.metadata.name.as_deref().unwrap_or_default(),
                    );
                    statuses.insert(key, status.clone());
                }
                all.push((kind, object));
            }
        }
        Some(Self {
            snapshot: snapshot(all),
            statuses: std::sync::Arc::new(statuses),
        })
    }

    /// The snapshot of every object.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The status `key` carried when listed (or last watched).
    pub fn status(&self, key: &ObjectKey) -> Option<&Map<String, Value>> {
        self.statuses.get(key)
    }
}

impl AsRef<Snapshot> for Listing {
    fn as_ref(&self) -> &Snapshot {
        &self.snapshot
    }
}

/// The new value of `receiver` once it changes; never resolves without one (or once its
/// sender is gone).
async fn turned(receiver: &mut Option<watch::Receiver<bool>>) -> Option<bool> {
    match receiver {
        Some(inner) => match inner.changed().await {
            Ok(()) => Some(*inner.borrow_and_update()),
            Err(_) => {
                *receiver = None;
                std::future::pending().await
            }
        },
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The API resource of a kind (group, version, plural).
pub fn api_resource(kind: Kind) -> ApiResource {
    match kind {
        Kind::Issuer => ApiResource::erase::<Issuer>(&()),
        Kind::Certificate => ApiResource::erase::<Certificate>(&()),
        Kind::Server => ApiResource::erase::<Server>(&()),
        Kind::Gateway => ApiResource::erase::<Gateway>(&()),
        Kind::Package => ApiResource::erase::<Package>(&()),
        Kind::Activation => ApiResource::erase::<Activation>(&()),
        Kind::Affectation => ApiResource::erase::<Affectation>(&()),
    }
}

/// The snapshot of a set of watched objects: one document per object, named
/// `Kind/namespace/name`, sorted; the revision is a digest of them all.
pub fn snapshot(objects: impl IntoIterator<Item = (Kind, DynamicObject)>) -> Snapshot {
    let mut files: Vec<SourceFile> = objects
        .into_iter()
        .map(|(kind, object)| document(kind, &object))
        .collect();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    let mut digest = Sha256::new();
    for file in &files {
        digest.update(file.path.as_bytes());
        digest.update([0]);
        digest.update(file.text.as_bytes());
        digest.update([0]);
    }
    Snapshot {
        revision: hex::encode(&digest.finalize()[..8]),
        files,
        problems: Vec::new(),
        root: None,
    }
}

/// One object as a YAML document: the header from the watch (kind and apiVersion as
/// watched, whatever the object says), the metadata `desired` uses, and the spec as stored.
/// The status is left out: it is Tessera's output, not its input.
fn document(kind: Kind, object: &DynamicObject) -> SourceFile {
    let meta = &object.metadata;
    let namespace = meta.namespace.clone().unwrap_or_default();
    let name = meta.name.clone().unwrap_or_default();
    let mut metadata = Map::new();
    metadata.insert("name".into(), json!(name));
    metadata.insert("namespace".into(), json!(namespace));
    if let Some(generation) = meta.generation {
        metadata.insert("generation".into(), json!(generation));
    }
    if let Some(uid) = &meta.uid {
        metadata.insert("uid".into(), json!(uid));
    }
    if let Some(labels) = meta.labels.as_ref().filter(|l| !l.is_empty()) {
        metadata.insert("labels".into(), json!(labels));
    }
    if let Some(annotations) = &meta.annotations {
        // kubectl's copy of the whole object is large and says nothing new.
        let kept: BTreeMap<&String, &String> = annotations
            .iter()
            .filter(|(k, _)| k.as_str() != "kubectl.kubernetes.io/last-applied-configuration")
            .collect();
        if !kept.is_empty() {
            metadata.insert("annotations".into(), json!(kept));
        }
    }
    let mut body = Map::new();
    body.insert("apiVersion".into(), json!(API_VERSION));
    body.insert("kind".into(), json!(kind.as_str()));
    body.insert("metadata".into(), Value::Object(metadata));
    if let Some(spec) = object.data.get("spec") {
        body.insert("spec".into(), spec.clone());
    }
    // Serialising JSON values cannot fail; an empty document would be reported, not lost.
    let text = serde_saphyr::to_string(&Value::Object(body)).unwrap_or_default();
    SourceFile {
        path: format!("{kind}/{namespace}/{name}"),
        text,
    }
}

/// What one object's status should be: the `status` subresource as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectStatus {
    pub key: ObjectKey,
    pub status: Map<String, Value>,
}

/// Writes statuses with server-side apply (field manager `tessera`, forced: Tessera owns
/// status) and records an Event for what changed. It remembers what it wrote, so an
/// unchanged status is never patched again (no write storms at every pass); with
/// [`StatusWriter::observing`], what it has not written itself is compared with the status
/// the object carries, so a restart or a new leader re-reports nothing that did not change.
pub struct StatusWriter {
    client: Client,
    recorder: Recorder,
    written: HashMap<ObjectKey, Map<String, Value>>,
    observed: Option<watch::Receiver<Option<Listing>>>,
}

impl StatusWriter {
    /// A writer reporting Events as `instance` (the pod name) of controller `tessera`.
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance,
        };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            written: HashMap::new(),
            observed: None,
        }
    }

    /// The same, taking the statuses the objects carry in `listings` as what was written
    /// for any object it has no memory of (after a start, or a change of leader).
    pub fn observing(mut self, listings: watch::Receiver<Option<Listing>>) -> Self {
        self.observed = Some(listings);
        self
    }

    /// Forgets what was written, so the next `write` patches every status again (after
    /// leadership moved: another replica may have written since).
    pub fn forget(&mut self) {
        self.written.clear();
    }

    /// Patches the statuses that differ from what was last written; returns how many were
    /// patched. Failures are logged and retried at the next call.
    pub async fn write(&mut self, statuses: &[ObjectStatus]) -> usize {
        self.written
            .retain(|key, _| statuses.iter().any(|s| &s.key == key));
        if let Some(observed) = &self.observed
            && let Some(listing) = &*observed.borrow()
        {
            for object in statuses {
                if !self.written.contains_key(&object.key)
                    && let Some(status) = listing.status(&object.key)
                {
                    self.written.insert(object.key.clone(), status.clone());
                }
            }
        }
        let mut patched = 0;
        for object in statuses {
            let before = self.written.get(&object.key);
            let mut status = object.status.clone();
            keep_transition_times(before, &mut status);
            if before == Some(&status) {
                continue;
            }
            let events = events(object.key.kind, before, &status);
            let object = &ObjectStatus {
                key: object.key.clone(),
                status,
            };
            match self.patch(object).await {
                Ok(uid) => {
                    patched += 1;
                    self.written
                        .insert(object.key.clone(), object.status.clone());
                    let reference = ObjectReference {
                        api_version: Some(API_VERSION.to_owned()),
                        kind: Some(object.key.kind.to_string()),
                        name: Some(object.key.name.clone()),
                        namespace: Some(object.key.namespace.clone()),
                        uid,
                        ..ObjectReference::default()
                    };
                    for event in events {
                        if let Err(error) = self.recorder.publish(&event, &reference).await {
                            tracing::warn!(
                                object = %object.key,
                                error = %crate::error_chain(&error),
                                "failed to record an event"
                            );
                        }
                    }
                }
                // The object went away between the pass and the patch: nothing to report.
                Err(KubeError::Status {
                    source: kube::Error::Api(status),
                    ..
                }) if status.code == 404 => {}
                Err(error) => tracing::warn!(
                    error = %crate::error_chain(&error),
                    "status not written; retrying at the next pass"
                ),
            }
        }
        patched
    }

    /// One server-side apply of `status`; returns the object's uid, for Events.
    async fn patch(&self, object: &ObjectStatus) -> Result<Option<String>, KubeError> {
        let key = &object.key;
        let api = Api::<DynamicObject>::namespaced_with(
            self.client.clone(),
            &key.namespace,
            &api_resource(key.kind),
        );
        let body = json!({
            "apiVersion": API_VERSION,
            "kind": key.kind.as_str(),
            "status": object.status,
        });
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let patched = api
            .patch_status(&key.name, &params, &Patch::Apply(&body))
            .await
            .map_err(|source| KubeError::Status {
                object: key.clone(),
                source,
            })?;
        Ok(patched.meta().uid.clone())
    }
}

/// Keeps, in `after`, the `lastTransitionTime` of each condition whose status is the same
/// in `before`: a condition's transition time is when its status last changed, which a
/// restarted reconciler (it remembers transitions in memory only) cannot know, but the
/// object's status does.
pub fn keep_transition_times(before: Option<&Map<String, Value>>, after: &mut Map<String, Value>) {
    let Some(Value::Array(earlier)) = before.and_then(|b| b.get("conditions")) else {
        return;
    };
    let Some(Value::Array(conditions)) = after.get_mut("conditions") else {
        return;
    };
    for condition in conditions {
        let same = earlier
            .iter()
            .find(|e| e["type"] == condition["type"] && e["status"] == condition["status"]);
        if let (Some(same), Some(fields)) = (same, condition.as_object_mut())
            && let Some(time) = same.get("lastTransitionTime")
        {
            fields.insert("lastTransitionTime".into(), time.clone());
        }
    }
}

/// The Events a status change deserves, as `resources::events` derives them for the
/// journal too (one derivation, so `tessera events` and `kubectl events` agree).
pub fn events(
    kind: Kind,
    before: Option<&Map<String, Value>>,
    after: &Map<String, Value>,
) -> Vec<KubeEvent> {
    status_events(kind, before, after)
        .into_iter()
        .map(|event| KubeEvent {
            type_: match event.type_ {
                crate::resources::events::EventType::Normal => EventType::Normal,
                crate::resources::events::EventType::Warning => EventType::Warning,
            },
            reason: event.reason,
            note: (!event.message.is_empty()).then(|| truncate(&event.message, 1024)),
            action: event.action.into(),
            secondary: None,
        })
        .collect()
}

/// `text` cut to at most `max` bytes, on a character boundary (Event notes are limited
/// to 1 kB).
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut cut = max - '…'.len_utf8();
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &text[..cut])
}

/// The owner of a Secret: the Certificate it holds the material of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: Kind,
    pub name: String,
    /// Without a uid there is no ownerReference (the Secret then outlives its Certificate).
    pub uid: Option<String>,
}

/// Writes a `kubernetes.io/tls` Secret with server-side apply: `data` holds `tls.crt`,
/// `tls.key`, `ca.crt` and any keystores. The ownerReference makes Kubernetes delete the
/// Secret with its Certificate (no finalizer needed). It is a controller reference without
/// `blockOwnerDeletion`, which would need update rights on the owner's finalizers.
pub async fn apply_tls_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    owner: &Owner,
    data: &BTreeMap<String, Vec<u8>>,
) -> Result<(), KubeError> {
    use base64::Engine as _;
    let encoded: BTreeMap<&String, String> = data
        .iter()
        .map(|(k, v)| (k, base64::engine::general_purpose::STANDARD.encode(v)))
        .collect();
    let mut metadata = json!({
        "name": name,
        "namespace": namespace,
        "labels": { "app.kubernetes.io/managed-by": FIELD_MANAGER },
    });
    if let Some(uid) = &owner.uid {
        metadata["ownerReferences"] = json!([{
            "apiVersion": API_VERSION,
            "kind": owner.kind.as_str(),
            "name": owner.name,
            "uid": uid,
            "controller": true,
        }]);
    }
    let body = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "kubernetes.io/tls",
        "data": encoded,
    });
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| KubeError::WriteSecret {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        source,
    })?;
    Ok(())
}

/// Reads the key pair of a `kubernetes.io/tls` Secret: (`tls.crt`, `tls.key`) as PEM.
pub async fn read_tls_secret(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Result<(String, String), KubeError> {
    let api = Api::<Secret>::namespaced(client.clone(), namespace);
    let secret = api
        .get_opt(name)
        .await
        .map_err(|source| KubeError::ReadSecret {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source,
        })?
        .ok_or_else(|| KubeError::SecretNotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })?;
    let data = secret.data.unwrap_or_default();
    let field = |key: &'static str| {
        data.get(key)
            .map(|bytes| String::from_utf8_lossy(&bytes.0).into_owned())
            .ok_or_else(|| KubeError::SecretKeyMissing {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
                key,
            })
    };
    Ok((field("tls.crt")?, field("tls.key")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::needless_pass_by_value)] // called with `json!` literals
    fn object(name: &str, spec: Value) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "tessera.dev/v1alpha1",
            "kind": "Package",
            "metadata": {
                "name": name, "namespace": "fleet", "generation": 2, "uid": "u-1",
                "resourceVersion": "5", "managedFields": [{"manager": "kubectl"}],
            },
            "spec": spec,
            "status": {"observedGeneration": 1},
        }))
        .unwrap()
    }

    #[test]
    fn an_object_becomes_a_document_named_after_it() {
        let spec =
            json!({"os": "linux", "action": {"execute": {"command": "true"}}, "version": "1.10"});
        let file = document(Kind::Package, &object("hello", spec));
        assert_eq!(file.path, "Package/fleet/hello");
        let read: Value = serde_saphyr::from_str(&file.text).unwrap();
        assert_eq!(read["metadata"]["generation"], 2);
        assert_eq!(read["metadata"]["uid"], "u-1");
        assert_eq!(read["spec"]["version"], "1.10", "strings stay strings");
        assert!(read.get("status").is_none());
        assert!(read["metadata"].get("managedFields").is_none());
    }

    #[test]
    fn event_notes_stay_within_a_kilobyte() {
        let long = "é".repeat(800);
        let cut = truncate(&long, 1024);
        assert!(cut.len() <= 1024, "{}", cut.len());
        assert!(cut.ends_with('…'));
        assert_eq!(truncate("short", 1024), "short");
    }

    #[test]
    fn the_revision_follows_content_not_order() {
        let a = (Kind::Package, object("a", json!({"os": "linux"})));
        let b = (Kind::Package, object("b", json!({"os": "windows"})));
        let one = snapshot([a.clone(), b.clone()]);
        let two = snapshot([b, a.clone()]);
        assert_eq!(one, two);
        let changed = snapshot([a, (Kind::Package, object("b", json!({"os": "macos"})))]);
        assert_ne!(one.revision, changed.revision);
    }

    #[test]
    fn a_listing_needs_every_kind_listed() {
        let objects = || vec![(Kind::Package, vec![object("a", json!({"os": "linux"}))])];
        let mut listed: HashSet<Kind> = Kind::ALL.iter().copied().collect();
        listed.remove(&Kind::Affectation);
        assert_eq!(
            Listing::of(&listed, objects()),
            None,
            "one kind not listed yet"
        );
        listed.insert(Kind::Affectation);
        let listing = Listing::of(&listed, objects()).expect("every kind listed");
        assert_eq!(listing.snapshot().files.len(), 1);
        let key = ObjectKey::new(Kind::Package, "fleet", "a");
        assert_eq!(listing.status(&key).unwrap()["observedGeneration"], 1);
        let nothing = Listing::of(&listed, Vec::new()).expect("an empty cluster is a listing");
        assert!(!nothing.snapshot().revision.is_empty());
    }

    #[test]
    fn the_watch_backoff_is_short_and_starts_over_after_a_success() {
        use kube::runtime::utils::Backoff as _;
        let mut backoff = WatchBackoff::default();
        let waits: Vec<Duration> = backoff.by_ref().take(8).collect();
        for (wait, full) in waits.iter().zip([0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0, 5.0]) {
            let full = Duration::from_secs_f64(full);
            assert!(*wait <= full && *wait >= full.mul_f64(0.75), "{waits:?}");
        }
        backoff.reset();
        assert!(backoff.next().unwrap() <= WatchBackoff::FIRST);
    }

    #[test]
    fn transition_times_are_kept_while_a_condition_holds() {
        let status = |ready: &str, time: &str| {
            json!({"conditions": [
                {"type": "Ready", "status": ready, "lastTransitionTime": time},
                {"type": "Stalled", "status": "False", "lastTransitionTime": time},
            ]})
            .as_object()
            .unwrap()
            .clone()
        };
        let before = status("True", "2026-01-01T00:00:00Z");
        let mut same = status("True", "2026-12-07T00:00:00Z");
        keep_transition_times(Some(&before), &mut same);
        assert_eq!(same, before, "a restart changes no transition time");
        let mut changed = status("False", "2026-12-07T00:00:00Z");
        keep_transition_times(Some(&before), &mut changed);
        assert_eq!(
            changed["conditions"][0]["lastTransitionTime"],
            "2026-12-07T00:00:00Z"
        );
        assert_eq!(
            changed["conditions"][1]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
    }

    #[test]
    fn a_build_is_one_built_event() {
        let after = json!({
            "packageId": "17", "fragments": 2,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Built", "message": "m"}],
        });
        let found = events(Kind::Package, None, after.as_object().unwrap());
        let reasons: Vec<&str> = found.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["Built"]);
        assert_eq!(
            found[0].action, "Build",
            "the one that names the package id"
        );
        let issued = json!({
            "revision": 1, "notAfter": "2027-01-01T00:00:00Z",
            "conditions": [{"type": "Ready", "status": "True", "reason": "Issued", "message": ""}],
        });
        let found = events(Kind::Certificate, None, issued.as_object().unwrap());
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].reason, "Issued");
    }
}
