//! Packages: each pass makes sure every Package is built into the fragment store, under a
//! package id derived from its spec and content, and removes packages no longer declared
//! once nobody may still need them (see `reconcile::drain`).
//!
//! A content directory is archived deterministically (entries sorted, times fixed, modes
//! normalised to 0644/0755, owners zero), tar.gz for Linux and macOS, zip for Windows, so the
//! same input always gives the same bytes, the same digests and the same id, on every
//! replica and after every restart. The content is fingerprinted (paths, sizes, times,
//! modes; [`crate::sources::inputs`], which the sources use too) to skip rebuilding what
//! did not change.
//!
//! About 800 lines: the build of one package (content, archive writers for both formats,
//! fragments, `info`) and its error enum belong together; the archive writers are the next
//! seam to split out (`fragments/archive.rs`) when this file grows.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::desired::DesiredState;
use crate::protocol::ocs::{self, Info};
use crate::reconcile::fetch::FetchError;
use crate::reconcile::outcome::{self, Outcome, Reason};
use crate::resources::meta::Os;
use crate::resources::{Kind, ObjectKey, Package, PackageStatus, Resource};
use crate::sources::inputs::{self, Entry, Input as Source, InputError, walk};
use crate::store::atomic::{self, Access};
use crate::store::fragments::{FragmentError, FragmentStore, Manifest};

/// The range of package ids: ten digits, and within a signed 32-bit integer, which is what
/// the OCS agents' history and the reference server's tables hold.
const ID_FLOOR: u64 = 1_000_000_000;
const ID_SPAN: u64 = 1_147_483_647;

/// Why a package could not be built. Each message names the file, directory or package
/// id; the I/O, archive or store error underneath is the source, so a status message
/// ([`crate::error_chain`]) shows every cause once.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to copy {from} to {to}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write the archive {path}")]
    Archive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write the archive {path}")]
    Zip {
        path: PathBuf,
        #[source]
        source: zip::result::ZipError,
    },
    #[error("failed to store package {id}")]
    Store {
        id: String,
        #[source]
        source: FragmentError,
    },
    #[error("failed to record what was built")]
    Record {
        #[source]
        source: atomic::WriteError,
    },
    #[error("failed to write the info file of package {id}: the Package has no action")]
    NoAction { id: String },
}

/// Packages between passes.
pub struct Packages {
    state_dir: PathBuf,
    config_dir: PathBuf,
    metrics: Option<std::sync::Arc<crate::server::metrics::Metrics>>,
    /// The package ids the last build found current; `None`: prune nothing (the store
    /// could not be opened, or the source is held back).
    current: Option<BTreeSet<String>>,
    /// Whether content may come from files next to the declarations.
    files: ContentFiles,
}

/// Whether `directory` and `archive` content can be read: they name files relative to the
/// declaring file, and in Kubernetes there is none (only `url` content can be built).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentFiles {
    /// A directory or git source: paths resolve below the configuration.
    Readable,
    /// Kubernetes: objects come from the API server, with no files beside them.
    Absent,
}

/// What was built for one package, kept in `packages/<namespace>/<name>.json` so a restart
/// does not rebuild unchanged content.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Built {
    /// Digest of the spec and the content fingerprint this build was made from.
    input: String,
    id: String,
    archive_sha256: String,
}

/// The checks a ready-made archive (`archive` or `url` content) passes before it is built:
/// raised whenever they change, so a build recorded by an older version, which may have
/// skipped a check, is checked again once. Its fragments are not rebuilt unless the id
/// changes: only the archive is read again (from the download cache for `url` content).
const ARCHIVE_CHECKS: u32 = 1;

/// What a recorded build was made from: the spec, the content's fingerprint, and the version
/// of the archive checks it passed.
fn build_input(spec_json: &str, fingerprint: &str) -> String {
    hex::encode(Sha256::digest(format!(
        "{spec_json}\n{fingerprint}\nchecks {ARCHIVE_CHECKS}"
    )))
}

impl Packages {
    /// Packages built from content below `config_dir`, stored under `state_dir`.
    pub fn new(state_dir: PathBuf, config_dir: PathBuf) -> Self {
        Self {
            state_dir,
            config_dir,
            metrics: None,
            current: None,
            files: ContentFiles::Readable,
        }
    }

    /// Whether content files can be read (not in Kubernetes).
    pub fn with_content_files(mut self, files: ContentFiles) -> Self {
        self.files = files;
        self
    }

    /// Resolves content directories below `config_dir` from now on (a git source checks
    /// each commit out into its own directory).
    pub fn set_config_dir(&mut self, config_dir: PathBuf) {
        self.config_dir = config_dir;
    }

    /// Counts build times and sizes into `metrics`.
    pub fn with_metrics(
        mut self,
        metrics: std::sync::Arc<crate::server::metrics::Metrics>,
    ) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Builds what is missing and prunes what is gone. One outcome per Package.
    pub fn reconcile(&mut self, desired: &DesiredState) -> HashMap<ObjectKey, Outcome> {
        let outcomes = self.build(desired);
        self.prune(&BTreeSet::new());
        outcomes
    }

    /// Builds what is missing, and remembers which package ids are current for
    /// [`Self::prune`]. One outcome per Package.
    pub fn build(&mut self, desired: &DesiredState) -> HashMap<ObjectKey, Outcome> {
        let mut outcomes = HashMap::new();
        self.current = None;
        let store = match FragmentStore::open(self.state_dir.join("download")) {
            Ok(store) => store,
            Err(error) => {
                for (key, resource) in desired.actionable() {
                    if matches!(resource, Resource::Package(_)) {
                        outcomes.insert(
                            key.clone(),
                            failed(Reason::StoreUnavailable, crate::error_chain(&error)),
                        );
                    }
                }
                return outcomes;
            }
        };
        let mut ids: BTreeMap<String, ObjectKey> = BTreeMap::new();
        for (key, resource) in desired.actionable() {
            let Resource::Package(package) = resource else {
                continue;
            };
            let outcome = match self.package(key, package, desired, &store, &mut ids) {
                Ok(outcome) => outcome,
                Err(error) => failed(Reason::BuildFailed, crate::error_chain(&error)),
            };
            // A build that fails (content briefly unreadable during a checkout, a full disk)
            // must not prune the version agents may be downloading: keep the last one built.
            if !outcome.ready
                && let Some(built) = self.cached(key)
            {
                ids.entry(built.id).or_insert_with(|| key.clone());
            }
            outcomes.insert(key.clone(), outcome);
        }
        // Held back (a source that suddenly turned empty): nothing is pruned.
        self.current = (!desired.held_back).then(|| ids.into_keys().collect());
        outcomes
    }

    /// Removes the stored packages that the last [`Self::build`] did not find current,
    /// except those in `keep` (versions still draining, see `reconcile::drain`).
    pub fn prune(&self, keep: &BTreeSet<String>) {
        let Some(current) = &self.current else {
            return;
        };
        let Ok(store) = FragmentStore::open(self.state_dir.join("download")) else {
            return;
        };
        for id in store.ids().unwrap_or_default() {
            if current.contains(&id) || keep.contains(&id) {
                continue;
            }
            match store.remove(&id) {
                Ok(()) => {
                    tracing::info!(package = %id, "removed a package no longer declared")
                }
                Err(error) => tracing::warn!(
                    package = %id,
                    error = %crate::error_chain(&error),
                    "failed to remove a package"
                ),
            }
        }
    }

    /// Why `spec` cannot be built from `source` whatever its bytes are, if it cannot: content
    /// this mode has no files for, or a launched command naming no file of the content
    /// (agents run it as `./<first word>`, or every one reports ERR_EXECUTE).
    fn refusal(
        &self,
        spec: &crate::resources::PackageSpec,
        source: Option<&Source>,
    ) -> Result<Option<Outcome>, BuildError> {
        if self.files == ContentFiles::Absent
            && let Some(field) = match source {
                Some(Source::Directory(_)) => Some("directory"),
                Some(Source::Archive(_)) => Some("archive"),
                _ => None,
            }
        {
            return Ok(Some(failed(
                Reason::ContentNeedsURL,
                format!(
                    "spec.content.{field}: in Kubernetes a Package's content is a `url` with its `sha256` (an archive any HTTP(S) server serves); the server has no files to read a {field} from"
                ),
            )));
        }
        // Agents run a launched command as `./<first word>`: it must be a file of the
        // content, or every agent reports ERR_EXECUTE.
        if let (Some(launch), Some(source)) = (&spec.action.launch, source)
            && let Some(reason) = inputs::launch_problem(&launch.command, source)?
        {
            return Ok(Some(failed(
                Reason::InvalidContent,
                format!("spec.action.launch.command: {reason}"),
            )));
        }
        Ok(None)
    }

    /// The archive to store and its SHA-256: none to build when the cached build with these
    /// inputs is still in the store; else built (or downloaded) and checked against the
    /// spec's digest, the format its OS unpacks and the launched file. `Err`: refused.
    fn archive(
        &self,
        key: &ObjectKey,
        spec: &crate::resources::PackageSpec,
        source: Option<&Source>,
        cached: Option<Built>,
        store: &FragmentStore,
    ) -> Result<Result<(Option<PathBuf>, String), Outcome>, BuildError> {
        let content = spec.content.as_ref();
        Ok(match cached {
            Some(built) if store.manifest(&built.id).ok().flatten().is_some() => {
                Ok((None, built.archive_sha256))
            }
            _ => match source {
                Some(source) => {
                    let path = self.build_archive(key, source, spec.os)?;
                    let bytes = std::fs::read(&path).map_err(|source| BuildError::Read {
                        path: path.clone(),
                        source,
                    })?;
                    let sha = hex::encode(Sha256::digest(bytes));
                    if let Some(expected) = content.and_then(|c| c.sha256.as_ref())
                        && !expected.eq_ignore_ascii_case(&sha)
                    {
                        return Ok(Err(failed(
                            Reason::DigestMismatch,
                            format!(
                                "the archive's SHA-256 is {sha}, but spec.content.sha256 says {expected}"
                            ),
                        )));
                    }
                    // A ready-made archive gets the checks a directory gets before it is
                    // archived: the format agents of its OS unpack, the launched file.
                    let checked = match source {
                        Source::Url { url, .. } => Some(("spec.content.url", url.clone())),
                        Source::Archive(archive) => {
                            Some(("spec.content.archive", archive.display().to_string()))
                        }
                        Source::Directory(_) => None,
                    };
                    if let Some((field, what)) = checked {
                        let problems = inputs::archive_problems(spec, &path, field, &what)?;
                        if !problems.is_empty() {
                            let _ = std::fs::remove_file(&path);
                            return Ok(Err(failed(
                                Reason::InvalidContent,
                                problems
                                    .iter()
                                    .map(|(field, reason)| format!("{field}: {reason}"))
                                    .collect::<Vec<_>>()
                                    .join("; "),
                            )));
                        }
                    }
                    Ok((Some(path), sha))
                }
                None => Ok((None, String::new())),
            },
        })
    }

    /// One package's build from spec to store: refused early, or its archive (built or
    /// cached), its id, then fragments, manifest and `info` in the store.
    fn package(
        &self,
        key: &ObjectKey,
        package: &Package,
        desired: &DesiredState,
        store: &FragmentStore,
        ids: &mut BTreeMap<String, ObjectKey>,
    ) -> Result<Outcome, BuildError> {
        let spec = &package.spec;
        let file = desired.entries.get(key).and_then(|e| e.origin.as_ref());
        let source = inputs::of(spec, &self.config_dir, file.map(|o| o.file.as_str()));
        if let Some(refused) = self.refusal(spec, source.as_ref())? {
            return Ok(refused);
        }
        let fingerprint = match &source {
            Some(source) => source.fingerprint()?,
            None => String::new(),
        };
        let spec_json = serde_json::to_string(spec).unwrap_or_default();
        let input = build_input(&spec_json, &fingerprint);
        let cache_path = self
            .state_dir
            .join("packages")
            .join(&key.namespace)
            .join(format!("{}.json", key.name));
        let cached: Option<Built> = std::fs::read(&cache_path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());

        let (archive, archive_sha256) = match self.archive(
            key,
            spec,
            source.as_ref(),
            cached.filter(|c| c.input == input),
            store,
        )? {
            Ok(archive) => archive,
            Err(refused) => return Ok(refused),
        };

        let id = claim_id(key, &spec_json, &archive_sha256, ids);

        let stored = |source| BuildError::Store {
            id: id.clone(),
            source,
        };
        let manifest = match store.manifest(&id).map_err(stored)? {
            Some(manifest) => {
                let info = info_file(&id, package, proto(desired, key), Some(&manifest))?;
                store.rewrite_info(&id, info.as_bytes()).map_err(stored)?;
                manifest
            }
            None => {
                let started = std::time::Instant::now();
                let archive = match (&archive, &source) {
                    (Some(path), _) => Some(path.clone()),
                    (None, Some(source)) => Some(self.build_archive(key, source, spec.os)?),
                    (None, None) => None,
                };
                // The info file needs the archive's digest, known once it is split: it is
                // written with the package and then again with the digest.
                let draft = info_file(&id, package, proto(desired, key), None)?;
                let manifest = store
                    .build(
                        &id,
                        archive.as_deref(),
                        spec.fragment_size.bytes(),
                        draft.as_bytes(),
                        &mut terminal_progress(&format!("building {key}")),
                    )
                    .map_err(stored)?;
                let info = info_file(&id, package, proto(desired, key), Some(&manifest))?;
                store.rewrite_info(&id, info.as_bytes()).map_err(stored)?;
                if let Some(metrics) = &self.metrics {
                    metrics.built(started.elapsed(), manifest.size);
                }
                tracing::info!(
                    package = %key,
                    %id,
                    bytes = manifest.size,
                    fragments = manifest.fragments.len(),
                    took = ?started.elapsed(),
                    "built a package"
                );
                manifest
            }
        };
        if let Some(path) = &archive {
            let _ = std::fs::remove_file(path);
        }
        let built = Built {
            input,
            id: id.clone(),
            archive_sha256: manifest.sha256.clone(),
        };
        let body = serde_json::to_vec_pretty(&built).unwrap_or_default();
        atomic::write_if_changed(&cache_path, &body, Access::Public)
            .map_err(|source| BuildError::Record { source })?;

        Ok(built_outcome(&id, &manifest, &spec.action))
    }

    /// Writes the package's archive to a temporary file under the state directory.
    fn build_archive(
        &self,
        key: &ObjectKey,
        source: &Source,
        os: Os,
    ) -> Result<PathBuf, BuildError> {
        let dir = self.state_dir.join("build");
        std::fs::create_dir_all(&dir).map_err(|source| BuildError::Create {
            path: dir.clone(),
            source,
        })?;
        let target = dir.join(format!(
            "{}-{}.{}",
            key.namespace,
            key.name,
            if os == Os::Windows { "zip" } else { "tar.gz" }
        ));
        match source {
            Source::Archive(path) => {
                std::fs::copy(path, &target).map_err(|source| BuildError::Copy {
                    from: path.clone(),
                    to: target.clone(),
                    source,
                })?;
            }
            Source::Url { url, sha256 } => {
                let cached = super::fetch::fetch(
                    url,
                    sha256,
                    &self.state_dir.join("cache/urls"),
                    &mut terminal_progress(&format!("downloading {key}")),
                )?;
                let _ = std::fs::remove_file(&target);
                if std::fs::hard_link(&cached, &target).is_err() {
                    std::fs::copy(&cached, &target).map_err(|source| BuildError::Copy {
                        from: cached.clone(),
                        to: target.clone(),
                        source,
                    })?;
                }
            }
            Source::Directory(path) => {
                let entries = walk(path)?;
                let file = std::fs::File::create(&target).map_err(|source| BuildError::Create {
                    path: target.clone(),
                    source,
                })?;
                if os == Os::Windows {
                    write_zip(file, &entries, &target)?;
                } else {
                    write_tar_gz(file, &entries, &target)?;
                }
            }
        }
        Ok(target)
    }

    fn cache_path(&self, key: &ObjectKey) -> PathBuf {
        self.state_dir
            .join("packages")
            .join(&key.namespace)
            .join(format!("{}.json", key.name))
    }

    /// What was last built for `key`, if anything.
    fn cached(&self, key: &ObjectKey) -> Option<Built> {
        std::fs::read(self.cache_path(key))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
    }
}

/// A progress line on standard error when it is a terminal (nothing in logs or under a
/// service manager), updated at most four times a second.
pub fn terminal_progress(what: &str) -> impl FnMut(u64, Option<u64>) + use<> {
    use std::io::IsTerminal;
    let shown = std::io::stderr().is_terminal();
    let what = what.to_owned();
    let mut last = std::time::Instant::now();
    move |done, total| {
        if !shown || (last.elapsed().as_millis() < 250 && Some(done) != total) {
            return;
        }
        last = std::time::Instant::now();
        let mib = |n: u64| n as f64 / f64::from(1 << 20);
        match total {
            Some(total) => eprint!("\r{what}: {:.1} of {:.1} MiB", mib(done), mib(total)),
            None => eprint!("\r{what}: {:.1} MiB", mib(done)),
        }
        if Some(done) == total {
            eprintln!();
        }
    }
}

/// Writes `entries` as a deterministic tar.gz into `file`, the archive at `target`.
fn write_tar_gz(file: std::fs::File, entries: &[Entry], target: &Path) -> Result<(), BuildError> {
    let failed = |source| BuildError::Archive {
        path: target.to_owned(),
        source,
    };
    // No name and time zero in the gzip header, so the bytes depend on content alone.
    let gzip = flate2::GzBuilder::new()
        .mtime(0)
        .write(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gzip);
    tar.mode(tar::HeaderMode::Deterministic);
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(entry.mode);
        if entry.directory {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            tar.append_data(&mut header, format!("{}/", entry.name), std::io::empty())
                .map_err(failed)?;
        } else {
            let data = read_entry(entry)?;
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(data.len() as u64);
            tar.append_data(&mut header, &entry.name, data.as_slice())
                .map_err(failed)?;
        }
    }
    let gzip = tar.into_inner().map_err(failed)?;
    let mut file = gzip.finish().map_err(failed)?;
    file.flush().map_err(failed)
}

/// Writes `entries` as a deterministic zip into `file`, the archive at `target`.
fn write_zip(file: std::fs::File, entries: &[Entry], target: &Path) -> Result<(), BuildError> {
    let failed = |source| BuildError::Zip {
        path: target.to_owned(),
        source,
    };
    let mut zip = zip::ZipWriter::new(file);
    for entry in entries {
        // The zip epoch (1980-01-01), the same for every entry.
        let options = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .last_modified_time(zip::DateTime::default())
            .unix_permissions(entry.mode);
        if entry.directory {
            zip.add_directory(format!("{}/", entry.name), options)
                .map_err(failed)?;
        } else {
            let data = read_entry(entry)?;
            zip.start_file(entry.name.clone(), options)
                .map_err(failed)?;
            zip.write_all(&data).map_err(|source| BuildError::Archive {
                path: target.to_owned(),
                source,
            })?;
        }
    }
    zip.finish().map_err(failed)?;
    Ok(())
}

/// The bytes of a content file.
fn read_entry(entry: &Entry) -> Result<Vec<u8>, BuildError> {
    std::fs::read(&entry.path).map_err(|source| BuildError::Read {
        path: entry.path.clone(),
        source,
    })
}

/// A built package's outcome: its id, size, fragments and digests in the status.
fn built_outcome(
    id: &str,
    manifest: &crate::store::fragments::Manifest,
    action: &crate::resources::package::PackageAction,
) -> Outcome {
    let digests = !manifest.md5.is_empty();
    let details = outcome::details(&PackageStatus {
        package_id: Some(id.to_owned()),
        size: i64::try_from(manifest.size).ok(),
        fragments: i64::try_from(manifest.fragments.len()).ok(),
        action: Some(action_summary(action)),
        md5: digests.then(|| manifest.md5.clone()),
        sha256: digests.then(|| manifest.sha256.clone()),
        ..PackageStatus::default()
    });
    Outcome {
        ready: true,
        reason: Reason::Built,
        message: format!(
            "package {id}: {} bytes in {} fragment{}",
            manifest.size,
            manifest.fragments.len(),
            if manifest.fragments.len() == 1 {
                ""
            } else {
                "s"
            }
        ),
        details,
        issuing: None,
        wake: None,
    }
}

/// The id of `key`'s build: from the spec and the archive, all digits, the same everywhere.
/// Two packages landing on one id is reported, and the later one (in key order) moves on.
fn claim_id(
    key: &ObjectKey,
    spec_json: &str,
    archive_sha256: &str,
    ids: &mut BTreeMap<String, ObjectKey>,
) -> String {
    let mut attempt = 0u32;
    let id = loop {
        let id = package_id(spec_json, archive_sha256, attempt);
        match ids.get(&id) {
            Some(other) if other != key => {
                tracing::warn!(package = %key, other = %other, %id, "package id collision; deriving another");
                attempt += 1;
            }
            _ => break id,
        }
    };
    ids.insert(id.clone(), key.clone());
    id
}

/// A ten-digit id from the spec and the archive digest; `attempt` moves off a collision.
fn package_id(spec_json: &str, archive_sha256: &str, attempt: u32) -> String {
    let digest = Sha256::digest(format!(
        "tessera-package-v1\n{spec_json}\n{archive_sha256}\n{attempt}"
    ));
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    (ID_FLOOR + u64::from_be_bytes(first) % ID_SPAN).to_string()
}

/// `HTTP` when an Activation of this package sends agents to an `http://` mirror for
/// fragments, else `HTTPS`.
fn proto(desired: &DesiredState, package: &ObjectKey) -> ocs::Proto {
    let plain = desired.actionable().any(|(key, resource)| match resource {
        Resource::Activation(activation) => {
            ObjectKey::referenced(Kind::Package, &key.namespace, &activation.spec.package_ref)
                == *package
                && activation
                    .spec
                    .pack_location
                    .as_deref()
                    .is_some_and(|l| l.starts_with("http://"))
        }
        _ => false,
    });
    if plain {
        ocs::Proto::Http
    } else {
        ocs::Proto::Https
    }
}

fn info_file(
    id: &str,
    package: &Package,
    proto: ocs::Proto,
    manifest: Option<&Manifest>,
) -> Result<String, BuildError> {
    let spec = &package.spec;
    let action = &spec.action;
    let action = if let Some(launch) = &action.launch {
        ocs::Action::Launch {
            name: launch.command.clone(),
        }
    } else if let Some(execute) = &action.execute {
        ocs::Action::Execute {
            command: execute.command.clone(),
        }
    } else if let Some(store) = &action.store {
        ocs::Action::Store {
            path: store.path.clone(),
        }
    } else {
        return Err(BuildError::NoAction { id: id.to_owned() });
    };
    Ok(Info {
        id: id.to_owned(),
        priority: u8::try_from(spec.priority).unwrap_or(5),
        action,
        digest: manifest.map(|m| m.md5.clone()).unwrap_or_default(),
        proto,
        fragments: manifest.map_or(0, |m| m.fragments.len()),
        notify: spec.notification.as_ref().map(|n| ocs::Notify {
            text: n.text.clone(),
            countdown: n.countdown.map(|c| c.as_secs()),
            can_abort: n.can_abort,
            can_delay: n.can_delay,
        }),
        done_action: spec.done_action.as_ref().map(|d| d.text.clone()),
    }
    .to_xml())
}

fn failed(reason: Reason, message: String) -> Outcome {
    Outcome::not_ready(reason, message)
}

/// What a package does, in a few words (`launch setup.exe /S`): its status says it, so
/// `kubectl get packages` shows it.
pub(crate) fn action_summary(action: &crate::resources::package::PackageAction) -> String {
    match (&action.launch, &action.execute, &action.store) {
        (Some(launch), _, _) => format!("launch {}", launch.command),
        (None, Some(execute), _) => format!("execute {}", execute.command),
        (None, None, Some(store)) => format!("store {}", store.path),
        (None, None, None) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 16: a build recorded before the archive checks existed (its input was the spec
    /// and fingerprint alone) is not taken as checked.
    #[test]
    fn a_build_recorded_before_the_archive_checks_is_checked_again() {
        let spec = "{\"os\":\"linux\"}";
        let before = hex::encode(Sha256::digest(format!("{spec}\nabc")));
        assert_ne!(build_input(spec, "abc"), before);
        assert_eq!(build_input(spec, "abc"), build_input(spec, "abc"));
    }

    #[test]
    fn ids_are_ten_digits_within_a_signed_32_bit_integer_and_stable() {
        for attempt in 0..200 {
            let id = package_id("{\"os\":\"linux\"}", &format!("{attempt:064x}"), attempt);
            assert_eq!(id.len(), 10, "{id}");
            let value: u64 = id.parse().unwrap();
            assert!((ID_FLOOR..=i32::MAX as u64).contains(&value), "{id}");
        }
        assert_eq!(package_id("a", "b", 0), package_id("a", "b", 0));
        assert_ne!(package_id("a", "b", 0), package_id("a", "b", 1));
        assert_ne!(package_id("a", "b", 0), package_id("a", "c", 0));
    }
}
