//! The fragment store: one directory per package id, holding the OCS `info` file, the
//! fragments `<id>-1` .. `<id>-N`, and `manifest.json` (sizes and SHA-256 per fragment, for
//! Tessera's own agent).
//!
//! Beside them, a package that agents were sent to keeps `route.json` (what they were told
//! about it) and, once superseded, `retired` (since when): neither is ever served.
//!
//! A package is written into a temporary directory and renamed into place when complete, so
//! a half-built package is never served, even after a crash: every fragment is synced to disk
//! before the rename, and leftovers of an interrupted build are removed when the store opens.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::atomic::{self, Access};

/// Prefix of a package being built.
const BUILDING: &str = ".building-";
/// Beside a package's files: what agents are told about it (see `FragmentStore::record_route`).
const ROUTE: &str = "route.json";
/// Beside a package's files: since when it is superseded (see `FragmentStore::retire`).
const RETIRED: &str = "retired";
/// Bytes read from the archive at a time: few system calls and channel messages, yet small
/// enough that every stage of the pipeline is busy after the first few megabytes.
const CHUNK: usize = 4 << 20;
/// Chunk buffers in the pipeline (16 MiB in all): one for each stage, so none waits for a
/// buffer while another sits on two. Measured: 8 buffers, or chunks of 1, 2 or 8 MiB, are
/// no faster.
const IN_FLIGHT: usize = 4;
/// Fragments written but not yet synced: bounds the open files and the bytes not yet on disk
/// when the disk is slower than the hashing (the build then goes at the disk's pace).
const UNSYNCED: usize = 32;

/// Errors of the fragment store.
#[derive(Debug, thiserror::Error)]
pub enum FragmentError {
    #[error("failed to {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Write(#[from] atomic::WriteError),
    #[error("the manifest of package {id} cannot be read: {reason}")]
    Manifest { id: String, reason: String },
}

/// What a built package is made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub id: String,
    /// Size of the whole archive in bytes (0 for a command-only package).
    pub size: u64,
    /// MD5 of the whole archive, lowercase hex (empty with no payload).
    pub md5: String,
    /// SHA-256 of the whole archive, lowercase hex (empty with no payload).
    pub sha256: String,
    /// Each fragment in order.
    pub fragments: Vec<Fragment>,
}

/// One fragment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fragment {
    /// File name, `<id>-<n>`.
    pub name: String,
    pub size: u64,
    pub sha256: String,
}

/// Packages on disk.
#[derive(Clone, Debug)]
pub struct FragmentStore {
    root: PathBuf,
}

impl FragmentStore {
    /// The store in `root` (created if missing); removes what an interrupted build left.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, FragmentError> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(|source| FragmentError::Io {
            action: "create",
            path: root.clone(),
            source,
        })?;
        let store = Self { root };
        for entry in store.entries()? {
            if entry.file_name().to_string_lossy().starts_with(BUILDING) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(store)
    }

    /// The directory of package `id`.
    pub fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    /// The manifest of a complete package, if it is in the store.
    pub fn manifest(&self, id: &str) -> Result<Option<Manifest>, FragmentError> {
        let path = self.dir(id).join("manifest.json");
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(FragmentError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| FragmentError::Manifest {
                id: id.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Stores package `id`: splits `archive` (None for a command-only package) into
    /// fragments of `fragment_size` bytes and writes `info`, all under a temporary name,
    /// renamed into place once everything is on disk. Returns the manifest.
    ///
    /// `progress` is told the bytes done and the archive's size after each chunk.
    pub fn build(
        &self,
        id: &str,
        archive: Option<&Path>,
        fragment_size: u64,
        info: &[u8],
        progress: &mut dyn FnMut(u64, Option<u64>),
    ) -> Result<Manifest, FragmentError> {
        let nonce = hex::encode(crate_random());
        let building = self.root.join(format!("{BUILDING}{id}-{nonce}"));
        std::fs::create_dir_all(&building).map_err(failed("create", &building))?;
        let result = (|| {
            let mut manifest = Manifest {
                id: id.to_owned(),
                size: 0,
                md5: String::new(),
                sha256: String::new(),
                fragments: Vec::new(),
            };
            if let Some(archive) = archive {
                let split = split(archive, &building, id, fragment_size, progress)?;
                manifest.size = split.size;
                if !split.fragments.is_empty() {
                    manifest.md5 = split.md5;
                    manifest.sha256 = split.sha256;
                }
                manifest.fragments = split.fragments;
            }
            atomic::write(&building.join("info"), info, Access::Public)?;
            let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            atomic::write(&building.join("manifest.json"), &json, Access::Public)?;
            // The fragments' data is on disk (`split` returns once each is synced), and so
            // are `info` and the manifest (`atomic::write`); now their names, so that the
            // rename below publishes a directory whose every file is whole after a power cut.
            sync_dir(&building)?;
            let target = self.dir(id);
            if target.exists() {
                std::fs::remove_dir_all(&target).map_err(failed("replace", &target))?;
            }
            std::fs::rename(&building, &target).map_err(failed("rename into place", &target))?;
            // And the rename itself on disk.
            sync_dir(&self.root)?;
            Ok(manifest)
        })();
        if result.is_err() {
            let _ = std::fs::remove_dir_all(&building);
        }
        result
    }

    /// Rewrites the `info` file of a stored package (its `PROTO` follows the Activations).
    pub fn rewrite_info(&self, id: &str, info: &[u8]) -> Result<bool, FragmentError> {
        Ok(atomic::write_if_changed(
            &self.dir(id).join("info"),
            info,
            Access::Public,
        )?)
    }

    /// The ids of every complete package.
    pub fn ids(&self) -> Result<Vec<String>, FragmentError> {
        let mut ids: Vec<String> = self
            .entries()?
            .into_iter()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()))
            .collect();
        ids.sort();
        Ok(ids)
    }

    /// Records what agents are to be told about package `id` beside it (`route.json`,
    /// whatever the caller makes of it), so a version whose Package is gone can still be
    /// served as it was. Returns whether it changed.
    pub fn record_route(&self, id: &str, route: &[u8]) -> Result<bool, FragmentError> {
        Ok(atomic::write_if_changed(
            &self.dir(id).join(ROUTE),
            route,
            Access::Public,
        )?)
    }

    /// What [`Self::record_route`] recorded for package `id`, if anything.
    pub fn route(&self, id: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir(id).join(ROUTE)).ok()
    }

    /// Marks package `id` (one of [`Self::ids`]) as superseded since `at` (Unix seconds),
    /// unless it already is; returns the time it has been since.
    pub fn retire(&self, id: &str, at: i64) -> Result<i64, FragmentError> {
        if let Some(since) = self.retired(id) {
            return Ok(since);
        }
        atomic::write(
            &self.dir(id).join(RETIRED),
            at.to_string().as_bytes(),
            Access::Public,
        )?;
        Ok(at)
    }

    /// Since when package `id` is superseded (Unix seconds), if it is.
    pub fn retired(&self, id: &str) -> Option<i64> {
        std::fs::read_to_string(self.dir(id).join(RETIRED))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Package `id` is current again (an edit undone): no longer superseded.
    pub fn reinstate(&self, id: &str) -> Result<(), FragmentError> {
        let path = self.dir(id).join(RETIRED);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(FragmentError::Io {
                action: "remove",
                path,
                source,
            }),
        }
    }

    /// Removes package `id`.
    pub fn remove(&self, id: &str) -> Result<(), FragmentError> {
        let dir = self.dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(FragmentError::Io {
                action: "remove",
                path: dir,
                source,
            }),
        }
    }

    fn entries(&self) -> Result<Vec<std::fs::DirEntry>, FragmentError> {
        Ok(std::fs::read_dir(&self.root)
            .map_err(|source| FragmentError::Io {
                action: "read",
                path: self.root.clone(),
                source,
            })?
            .flatten()
            .collect())
    }
}

/// The archive split into fragments, each of them on disk.
struct Split {
    size: u64,
    md5: String,
    sha256: String,
    fragments: Vec<Fragment>,
}

/// Part of the archive on its way through the pipeline.
struct Chunk {
    buffer: Vec<u8>,
    len: usize,
}

/// Splits `archive` into fragments `<id>-1` .. in `dir` on a pipeline of threads, chunks
/// going from stage to stage over bounded channels and back to the reader for reuse:
///
/// ```text
/// reader -> MD5 -> SHA-256 (whole and per fragment), writes -> this thread: progress -> reader
///                               `-> syncer: fdatasync of each complete fragment
/// ```
///
/// MD5 is the slowest step (no SIMD form, ~600 MiB/s) and gets a thread to itself; both
/// SHA-256 (SHA-NI, ~1.7 GiB/s) and the writes fit on another. Each fragment is synced as
/// soon as it is complete, on its own thread, so the disk works while the CPU hashes: when
/// the last chunk is hashed, all but the last fragments are already on disk. Returns only
/// once every fragment is synced.
fn split(
    archive: &Path,
    dir: &Path,
    id: &str,
    fragment_size: u64,
    progress: &mut dyn FnMut(u64, Option<u64>),
) -> Result<Split, FragmentError> {
    let mut input = std::fs::File::open(archive).map_err(failed("open", archive))?;
    let total = input.metadata().ok().map(|m| m.len());
    let fragment_size = fragment_size.max(1);
    std::thread::scope(|scope| {
        let (to_md5, md5_in) = sync_channel::<Chunk>(IN_FLIGHT);
        let (to_writer, writer_in) = sync_channel::<Chunk>(IN_FLIGHT);
        let (to_done, done_in) = sync_channel::<Chunk>(IN_FLIGHT);
        let (to_reader, free_in) = sync_channel::<Vec<u8>>(IN_FLIGHT);
        let (to_syncer, syncer_in) = sync_channel::<Written>(UNSYNCED);

        // A stage stops at the end of its input or when the next stage is gone (it stopped
        // on an error): the channels close down the line, and the errors are read below.
        let reader = scope.spawn(move || -> std::io::Result<()> {
            let mut allocated = 0;
            loop {
                let mut buffer = if allocated < IN_FLIGHT {
                    allocated += 1;
                    vec![0u8; CHUNK]
                } else {
                    match free_in.recv() {
                        Ok(buffer) => buffer,
                        Err(_) => return Ok(()),
                    }
                };
                let len = read_full(&mut input, &mut buffer)?;
                if len == 0 || to_md5.send(Chunk { buffer, len }).is_err() || len < CHUNK {
                    return Ok(());
                }
            }
        });
        let md5 = scope.spawn(move || {
            let mut md5 = Md5::new();
            for chunk in md5_in {
                md5.update(&chunk.buffer[..chunk.len]);
                if to_writer.send(chunk).is_err() {
                    break;
                }
            }
            hex::encode(md5.finalize())
        });
        let writer = scope
            .spawn(move || write_fragments(writer_in, to_done, to_syncer, dir, id, fragment_size));
        let syncer = scope.spawn(move || -> Result<(), FragmentError> {
            for written in syncer_in {
                // The data and the size, what reading the file back needs (not its times).
                written
                    .file
                    .sync_data()
                    .map_err(failed("sync", &written.path))?;
            }
            Ok(())
        });

        let mut done = 0u64;
        for chunk in done_in {
            done += chunk.len as u64;
            progress(done, total);
            // Fails once the reader is at the end: the buffer is then dropped.
            let _ = to_reader.send(chunk.buffer);
        }
        drop(to_reader);
        // The first failure is the cause: a later stage that stopped saw only its effect.
        joined(reader).map_err(failed("read", archive))?;
        joined(syncer)?;
        let (size, sha256, fragments) = joined(writer)?;
        let md5 = joined(md5);
        if total != Some(done) {
            progress(done, Some(done));
        }
        Ok(Split {
            size,
            md5,
            sha256,
            fragments,
        })
    })
}

/// A complete fragment, for the syncer.
struct Written {
    file: std::fs::File,
    path: PathBuf,
}

/// The fragment being written.
struct Open {
    name: String,
    written: Written,
    sha256: Sha256,
    len: u64,
}

/// The writer stage: the whole-archive SHA-256, and the fragments with their own SHA-256,
/// each handed to the syncer when complete. Returns the size, the SHA-256 and the fragments.
// The senders are taken by value on purpose: they drop when the writer returns, which is
// what ends the syncer's loop and the reader's.
#[allow(clippy::needless_pass_by_value)]
fn write_fragments(
    chunks: Receiver<Chunk>,
    to_done: SyncSender<Chunk>,
    to_syncer: SyncSender<Written>,
    dir: &Path,
    id: &str,
    fragment_size: u64,
) -> Result<(u64, String, Vec<Fragment>), FragmentError> {
    let mut whole = Sha256::new();
    let mut size = 0u64;
    let mut fragments = Vec::new();
    let mut open: Option<Open> = None;
    let complete = |fragment: Open, fragments: &mut Vec<Fragment>| {
        fragments.push(Fragment {
            name: fragment.name,
            size: fragment.len,
            sha256: hex::encode(fragment.sha256.finalize()),
        });
        let path = fragment.written.path.clone();
        // Fails only if the syncer stopped on an error, the one `split` reports.
        to_syncer
            .send(fragment.written)
            .map_err(|_| FragmentError::Io {
                action: "sync",
                path,
                source: std::io::Error::other("the syncer stopped"),
            })
    };
    for chunk in chunks {
        let mut rest = &chunk.buffer[..chunk.len];
        whole.update(rest);
        while !rest.is_empty() {
            let fragment = match &mut open {
                Some(fragment) => fragment,
                None => {
                    let name = format!("{id}-{}", fragments.len() + 1);
                    let path = dir.join(&name);
                    let file = std::fs::File::create(&path).map_err(failed("create", &path))?;
                    open.insert(Open {
                        name,
                        written: Written { file, path },
                        sha256: Sha256::new(),
                        len: 0,
                    })
                }
            };
            let room = usize::try_from(fragment_size - fragment.len).unwrap_or(usize::MAX);
            let (piece, after) = rest.split_at(room.min(rest.len()));
            let Written { file, path } = &mut fragment.written;
            file.write_all(piece).map_err(failed("write", path))?;
            fragment.sha256.update(piece);
            fragment.len += piece.len() as u64;
            rest = after;
            if fragment.len == fragment_size
                && let Some(full) = open.take()
            {
                complete(full, &mut fragments)?;
            }
        }
        size += chunk.len as u64;
        if to_done.send(chunk).is_err() {
            break;
        }
    }
    if let Some(last) = open.take() {
        complete(last, &mut fragments)?;
    }
    Ok((size, hex::encode(whole.finalize()), fragments))
}

/// What a pipeline stage returned; its panic, if it panicked.
fn joined<T>(stage: std::thread::ScopedJoinHandle<'_, T>) -> T {
    stage
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Flushes the entries of directory `dir` (names created, renamed) to disk.
fn sync_dir(dir: &Path) -> Result<(), FragmentError> {
    std::fs::File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(failed("flush", dir))
}

/// The error for `action` failing on `path`.
fn failed(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> FragmentError + use<> {
    let path = path.to_path_buf();
    move |source| FragmentError::Io {
        action,
        path,
        source,
    }
}

/// Reads until `buffer` is full or the input ends; returns how much was read.
fn read_full(input: &mut impl Read, buffer: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match input.read(&mut buffer[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Eight bytes that differ between builds, for temporary directory names.
fn crate_random() -> [u8; 8] {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let digest = Sha256::digest(format!("{nanos}-{}", std::process::id()));
    let mut out = [0u8; 8];
    out.copy_from_slice(&digest[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_is_split_into_fragments_with_digests_and_renamed_into_place() {
        let dir = tempfile::tempdir().unwrap();
        let store = FragmentStore::open(dir.path().join("download")).unwrap();
        let archive = dir.path().join("a.tar.gz");
        let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&archive, &bytes).unwrap();
        let mut told = Vec::new();
        let manifest = store
            .build(
                "1234567890",
                Some(&archive),
                4096,
                b"<DOWNLOAD/>",
                &mut |done, total| told.push((done, total)),
            )
            .unwrap();
        assert_eq!(
            told,
            vec![(10_000, Some(10_000))],
            "progress ends at the size"
        );
        assert_eq!(manifest.size, 10_000);
        assert_eq!(manifest.fragments.len(), 3);
        assert_eq!(manifest.fragments[2].size, 10_000 - 2 * 4096);
        assert_eq!(manifest.md5, hex::encode(Md5::digest(&bytes)));
        let joined: Vec<u8> = (1..=3)
            .flat_map(|n| {
                std::fs::read(store.dir("1234567890").join(format!("1234567890-{n}"))).unwrap()
            })
            .collect();
        assert_eq!(joined, bytes, "the fragments concatenate to the archive");
        assert_eq!(store.manifest("1234567890").unwrap(), Some(manifest));
        assert_eq!(store.ids().unwrap(), vec!["1234567890"]);
    }

    #[test]
    fn a_superseded_package_keeps_its_route_and_first_retirement_time_until_reinstated() {
        let dir = tempfile::tempdir().unwrap();
        let store = FragmentStore::open(dir.path().join("download")).unwrap();
        store
            .build("7", None, 4096, b"<DOWNLOAD/>", &mut |_, _| {})
            .unwrap();
        assert!(store.route("7").is_none());
        assert!(store.record_route("7", b"{}").unwrap());
        assert!(!store.record_route("7", b"{}").unwrap(), "unchanged");
        assert_eq!(store.route("7").as_deref(), Some(&b"{}"[..]));
        assert_eq!(store.retired("7"), None);
        assert_eq!(store.retire("7", 100).unwrap(), 100);
        // Retired once: later passes keep the first time, so the grace is not extended.
        assert_eq!(store.retire("7", 200).unwrap(), 100);
        store.reinstate("7").unwrap();
        assert_eq!(store.retired("7"), None);
        store.reinstate("7").unwrap();
        // Neither file makes an id of its own, and removing the package removes them.
        assert_eq!(store.ids().unwrap(), ["7"]);
        store.remove("7").unwrap();
        assert!(store.route("7").is_none() && store.ids().unwrap().is_empty());
    }

    #[test]
    fn a_command_only_package_has_no_fragments() {
        let dir = tempfile::tempdir().unwrap();
        let store = FragmentStore::open(dir.path()).unwrap();
        let manifest = store
            .build("1000000001", None, 4096, b"<DOWNLOAD/>", &mut |_, _| {})
            .unwrap();
        assert!(manifest.fragments.is_empty() && manifest.md5.is_empty());
        assert!(store.dir("1000000001").join("info").exists());
    }

    #[test]
    fn fragments_may_span_chunks_and_every_digest_matches() {
        let dir = tempfile::tempdir().unwrap();
        let store = FragmentStore::open(dir.path().join("download")).unwrap();
        let archive = dir.path().join("a.zip");
        // Three chunks, the last short; fragments that straddle chunk boundaries.
        let bytes: Vec<u8> = (0..2 * CHUNK + 5).map(|i| (i % 253) as u8).collect();
        std::fs::write(&archive, &bytes).unwrap();
        let fragment_size = (3 << 20) + 1;
        let mut told = Vec::new();
        let manifest = store
            .build(
                "1000000003",
                Some(&archive),
                fragment_size as u64,
                b"<DOWNLOAD/>",
                &mut |done, total| told.push((done, total)),
            )
            .unwrap();
        assert_eq!(manifest.sha256, hex::encode(Sha256::digest(&bytes)));
        assert_eq!(manifest.md5, hex::encode(Md5::digest(&bytes)));
        let expected: Vec<&[u8]> = bytes.chunks(fragment_size).collect();
        assert_eq!(manifest.fragments.len(), expected.len());
        for (n, (fragment, content)) in manifest.fragments.iter().zip(&expected).enumerate() {
            let path = store
                .dir("1000000003")
                .join(format!("1000000003-{}", n + 1));
            assert_eq!(fragment.name, format!("1000000003-{}", n + 1));
            assert_eq!(fragment.size, content.len() as u64);
            assert_eq!(fragment.sha256, hex::encode(Sha256::digest(content)));
            assert_eq!(std::fs::read(path).unwrap(), *content);
        }
        let total = Some(bytes.len() as u64);
        let chunk = CHUNK as u64;
        assert_eq!(
            told,
            vec![(chunk, total), (2 * chunk, total), (2 * chunk + 5, total)],
            "progress after every chunk"
        );
    }

    #[test]
    fn a_build_that_fails_part_way_publishes_nothing_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = FragmentStore::open(dir.path().join("download")).unwrap();
        // A directory opens, then fails on the first read: the pipeline stops mid-way.
        let unreadable = dir.path().join("not-an-archive");
        std::fs::create_dir(&unreadable).unwrap();
        let error = store
            .build(
                "1000000004",
                Some(&unreadable),
                4096,
                b"<DOWNLOAD/>",
                &mut |_, _| {},
            )
            .unwrap_err();
        assert!(error.to_string().starts_with("failed to read "), "{error}");
        assert_eq!(store.manifest("1000000004").unwrap(), None);
        let left: Vec<_> = std::fs::read_dir(dir.path().join("download"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "nothing published, nothing left behind");
    }

    #[test]
    fn leftovers_of_an_interrupted_build_are_removed_never_listed_and_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        // What a crash just before the rename can leave: a manifest, and fragments whose
        // data never reached the disk.
        let leftover = dir.path().join(".building-1000000002-abc");
        std::fs::create_dir_all(&leftover).unwrap();
        std::fs::write(leftover.join("1000000002-1"), b"half").unwrap();
        std::fs::write(leftover.join("1000000002-2"), b"").unwrap();
        let manifest = Manifest {
            id: "1000000002".into(),
            size: 8192,
            md5: "0".repeat(32),
            sha256: "0".repeat(64),
            fragments: Vec::new(),
        };
        std::fs::write(
            leftover.join("manifest.json"),
            serde_json::to_vec(&manifest).unwrap(),
        )
        .unwrap();
        let store = FragmentStore::open(dir.path()).unwrap();
        assert!(store.ids().unwrap().is_empty());
        assert_eq!(store.manifest("1000000002").unwrap(), None);
        assert!(!leftover.exists());

        let archive = dir.path().join("a.bin");
        std::fs::write(&archive, vec![7u8; 8192]).unwrap();
        let rebuilt = store
            .build(
                "1000000002",
                Some(&archive),
                4096,
                b"<DOWNLOAD/>",
                &mut |_, _| {},
            )
            .unwrap();
        assert_eq!(rebuilt.fragments.len(), 2);
        assert_eq!(store.ids().unwrap(), vec!["1000000002"]);
        assert_eq!(store.manifest("1000000002").unwrap(), Some(rebuilt));
    }
}
