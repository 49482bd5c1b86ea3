//! Several servers on one database: what the leader issues (CA keys, certificates, their
//! keystores, revocations) is shared through the database, and the followers mirror it
//! into their own state directories, so that every server presents the same listener
//! certificate and signs enrollments with the same CA.
//!
//! Why the database and not a shared state directory: the servers already share the
//! database, and it is transactional: a follower sees the leader's files as a whole, never
//! a half-renewed pair. The database then holds private keys: protect it as the state
//! directory is protected.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use crate::store::atomic::{self, Access};
use crate::store::db::{Database, DbError, SharedFile};

/// Errors of sharing state between servers.
#[derive(Debug, thiserror::Error)]
pub enum ReplicateError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to write a shared file")]
    Write(#[from] atomic::WriteError),
    #[error("failed to remove {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to exchange shared files with the database")]
    Database(#[from] DbError),
}

/// Whether `path` is relative and only goes down (no `..`, no root): a path that a shared
/// file may have.
pub fn is_plain(path: &Path) -> bool {
    path.components().next().is_some()
        && path.components().all(|c| matches!(c, Component::Normal(_)))
}

/// The leader: makes the database's shared files exactly the files below `dirs` (relative
/// to `state_dir`). Returns whether anything changed.
pub fn share(
    db: &Database,
    state_dir: &Path,
    dirs: &[PathBuf],
    now: i64,
) -> Result<bool, ReplicateError> {
    let mut files = Vec::new();
    for path in local_files(state_dir, dirs)? {
        let full = state_dir.join(&path);
        let content = std::fs::read(&full).map_err(|source| ReplicateError::Read {
            path: full.clone(),
            source,
        })?;
        files.push(SharedFile {
            path: shared_name(&path),
            content,
            owner_only: owner_only(&full),
        });
    }
    Ok(db.share_files(&files, now)?)
}

/// A follower: makes the files below `dirs` exactly the database's shared files (each
/// written whole, keys readable by the owner only). Returns how many files it changed.
/// While no leader has shared anything yet, it changes nothing: a state directory moved
/// from SQLite to PostgreSQL keeps its CA keys until its server leads and shares them.
pub fn mirror(db: &Database, state_dir: &Path, dirs: &[PathBuf]) -> Result<usize, ReplicateError> {
    let shared = db.shared_files()?;
    if shared.is_empty() {
        return Ok(0);
    }
    let mut changed = 0;
    let mut kept = HashSet::new();
    for file in &shared {
        let path = PathBuf::from(&file.path);
        if !is_plain(&path) || !dirs.iter().any(|d| path.starts_with(d)) {
            tracing::warn!(path = %file.path, "ignored a shared file outside the shared directories");
            continue;
        }
        let access = if file.owner_only {
            Access::OwnerOnly
        } else {
            Access::Public
        };
        if atomic::write_if_changed(&state_dir.join(&path), &file.content, access)? {
            changed += 1;
        }
        kept.insert(path);
    }
    for path in local_files(state_dir, dirs)? {
        if !kept.contains(&path) {
            let full = state_dir.join(&path);
            std::fs::remove_file(&full)
                .map_err(|source| ReplicateError::Remove { path: full, source })?;
            changed += 1;
        }
    }
    Ok(changed)
}

/// The files below `dirs`, relative to `state_dir`, without the temporary files of writes
/// in progress.
fn local_files(state_dir: &Path, dirs: &[PathBuf]) -> Result<Vec<PathBuf>, ReplicateError> {
    let mut found = Vec::new();
    let mut seen = HashSet::new();
    for dir in dirs {
        walk(state_dir, dir, &mut found, &mut seen)?;
    }
    Ok(found)
}

fn walk(
    state_dir: &Path,
    relative: &Path,
    found: &mut Vec<PathBuf>,
    seen: &mut HashSet<PathBuf>,
) -> Result<(), ReplicateError> {
    let dir = state_dir.join(relative);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(ReplicateError::Read { path: dir, source }),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with(".tmp-") {
            continue;
        }
        let path = relative.join(&name);
        match entry.file_type() {
            Ok(kind) if kind.is_dir() => walk(state_dir, &path, found, seen)?,
            Ok(kind) if kind.is_file() && seen.insert(path.clone()) => found.push(path),
            _ => {}
        }
    }
    Ok(())
}

/// `/`-separated, the same on every platform.
fn shared_name(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(unix)]
fn owner_only(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 == 0)
}

#[cfg(not(unix))]
fn owner_only(_path: &Path) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dirs() -> Vec<PathBuf> {
        vec![PathBuf::from("pki"), PathBuf::from("certificates")]
    }

    fn check_mirroring(db: &Database) {
        let (leader, follower) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let key = leader.path().join("pki/issuers/default/ca/ca.key");
        atomic::write(&key, b"private", Access::OwnerOnly).unwrap();
        atomic::write(
            &leader.path().join("certificates/default/web/tls.crt"),
            b"chain",
            Access::Public,
        )
        .unwrap();
        // Not shared: outside the shared directories, or a write in progress.
        atomic::write(&leader.path().join("download/1/info"), b"x", Access::Public).unwrap();
        atomic::write(&leader.path().join("pki/.tmp-abc"), b"x", Access::Public).unwrap();
        // The follower had a certificate the leader no longer has.
        atomic::write(
            &follower.path().join("certificates/default/old/tls.crt"),
            b"gone",
            Access::Public,
        )
        .unwrap();
        // Before any leader shared anything, a follower's own files are left alone.
        assert_eq!(mirror(db, follower.path(), &dirs()).unwrap(), 0);
        assert!(
            follower
                .path()
                .join("certificates/default/old/tls.crt")
                .exists()
        );

        assert!(share(db, leader.path(), &dirs(), 1).unwrap());
        assert!(!share(db, leader.path(), &dirs(), 2).unwrap(), "unchanged");
        assert_eq!(mirror(db, follower.path(), &dirs()).unwrap(), 3);
        assert_eq!(
            mirror(db, follower.path(), &dirs()).unwrap(),
            0,
            "unchanged"
        );
        let copied = follower.path().join("pki/issuers/default/ca/ca.key");
        assert_eq!(std::fs::read(&copied).unwrap(), b"private");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&copied).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "a key stays readable by its owner only");
        }
        assert_eq!(
            std::fs::read(follower.path().join("certificates/default/web/tls.crt")).unwrap(),
            b"chain"
        );
        assert!(
            !follower
                .path()
                .join("certificates/default/old/tls.crt")
                .exists()
        );
        assert!(!follower.path().join("download/1/info").exists());

        // A renewal on the leader reaches the follower.
        atomic::write(&key, b"renewed", Access::OwnerOnly).unwrap();
        assert!(share(db, leader.path(), &dirs(), 3).unwrap());
        assert_eq!(mirror(db, follower.path(), &dirs()).unwrap(), 1);
        assert_eq!(std::fs::read(&copied).unwrap(), b"renewed");
    }

    #[test]
    fn a_follower_mirrors_exactly_what_the_leader_shares_on_sqlite() {
        check_mirroring(&Database::in_memory().unwrap());
    }

    #[test]
    fn a_follower_mirrors_exactly_what_the_leader_shares_on_postgres() {
        if let Some(db) = crate::store::db::tests::scratch_postgres() {
            check_mirroring(&db);
        }
    }

    #[test]
    fn only_paths_that_go_down_are_plain() {
        assert!(is_plain(Path::new("pki/issuers")));
        assert!(!is_plain(Path::new("../etc")));
        assert!(!is_plain(Path::new("/etc")));
        assert!(!is_plain(Path::new("")));
    }
}
