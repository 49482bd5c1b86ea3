//! The fragment store: one directory per package id, holding the OCS `info` file, the
//! fragments `<id>-1` .. `<id>-N`, and `manifest.json` (sizes and SHA-256 per fragment, for
//! Tessera's own agent).
//!
//! A package is written into a temporary directory and renamed into place when complete, so
//! a half-built package is never served, even after a crash: leftovers of an interrupted
//! build are removed when the store opens.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use md5::Md5;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::atomic::{self, Access};

/// Prefix of a package being built.
const BUILDING: &str = ".building-";

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
    /// renamed into place at the end. Returns the manifest.
    pub fn build(
        &self,
        id: &str,
        archive: Option<&Path>,
        fragment_size: u64,
        info: &[u8],
    ) -> Result<Manifest, FragmentError> {
        let nonce = hex::encode(crate_random());
        let building = self.root.join(format!("{BUILDING}{id}-{nonce}"));
        let io = |action: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| FragmentError::Io {
                action,
                path,
                source,
            }
        };
        std::fs::create_dir_all(&building).map_err(io("create", &building))?;
        let result = (|| {
            let mut manifest = Manifest {
                id: id.to_owned(),
                size: 0,
                md5: String::new(),
                sha256: String::new(),
                fragments: Vec::new(),
            };
            if let Some(archive) = archive {
                let mut input = std::fs::File::open(archive).map_err(io("open", archive))?;
                let mut whole_md5 = Md5::new();
                let mut whole_sha = Sha256::new();
                let mut buffer = vec![
                    0u8;
                    usize::try_from(fragment_size)
                        .unwrap_or(usize::MAX)
                        .min(64 << 20)
                ];
                loop {
                    let filled = read_full(&mut input, &mut buffer).map_err(io("read", archive))?;
                    if filled == 0 {
                        break;
                    }
                    let chunk = &buffer[..filled];
                    whole_md5.update(chunk);
                    whole_sha.update(chunk);
                    let name = format!("{id}-{}", manifest.fragments.len() + 1);
                    let path = building.join(&name);
                    let mut file = std::fs::File::create(&path).map_err(io("create", &path))?;
                    file.write_all(chunk).map_err(io("write", &path))?;
                    // On disk before the rename publishes it: after a power cut, a listed
                    // package is never one with empty fragments.
                    file.sync_all().map_err(io("sync", &path))?;
                    manifest.size += filled as u64;
                    manifest.fragments.push(Fragment {
                        name,
                        size: filled as u64,
                        sha256: hex::encode(Sha256::digest(chunk)),
                    });
                    if filled < buffer.len() {
                        break;
                    }
                }
                if !manifest.fragments.is_empty() {
                    manifest.md5 = hex::encode(whole_md5.finalize());
                    manifest.sha256 = hex::encode(whole_sha.finalize());
                }
            }
            atomic::write(&building.join("info"), info, Access::Public)?;
            let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
            atomic::write(&building.join("manifest.json"), &json, Access::Public)?;
            let target = self.dir(id);
            if target.exists() {
                std::fs::remove_dir_all(&target).map_err(io("replace", &target))?;
            }
            std::fs::rename(&building, &target).map_err(io("rename into place", &target))?;
            // And the rename itself on disk.
            std::fs::File::open(&self.root)
                .and_then(|dir| dir.sync_all())
                .map_err(io("flush", &self.root))?;
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
        let manifest = store
            .build("1234567890", Some(&archive), 4096, b"<DOWNLOAD/>")
            .unwrap();
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
    fn a_command_only_package_has_no_fragments() {
        let dir = tempfile::tempdir().unwrap();
        let store = FragmentStore::open(dir.path()).unwrap();
        let manifest = store
            .build("1000000001", None, 4096, b"<DOWNLOAD/>")
            .unwrap();
        assert!(manifest.fragments.is_empty() && manifest.md5.is_empty());
        assert!(store.dir("1000000001").join("info").exists());
    }

    #[test]
    fn leftovers_of_an_interrupted_build_are_removed_and_never_listed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".building-1000000002-abc")).unwrap();
        std::fs::write(
            dir.path().join(".building-1000000002-abc/1000000002-1"),
            b"half",
        )
        .unwrap();
        let store = FragmentStore::open(dir.path()).unwrap();
        assert!(store.ids().unwrap().is_empty());
        assert!(!dir.path().join(".building-1000000002-abc").exists());
    }
}
