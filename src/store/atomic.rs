//! Files written whole or not at all: written to a temporary name in the same directory,
//! flushed, then renamed over the target, so a reader or a crash never sees half a file.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors writing a file.
#[derive(Debug, thiserror::Error)]
#[error("failed to write {path}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// Who may read a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Readable by everyone (0644): status, certificates.
    Public,
    /// Readable by the owner only (0600): private keys, keystores, tokens.
    OwnerOnly,
}

/// Writes `contents` to `path` atomically, creating parent directories.
pub fn write(path: &Path, contents: &[u8], access: Access) -> Result<(), WriteError> {
    let fail = |source| WriteError {
        path: path.to_path_buf(),
        source,
    };
    let parent = path.parent().unwrap_or_else(|| Path::new("."));
    std::fs::create_dir_all(parent).map_err(fail)?;
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp-");
    #[cfg(unix)]
    builder.permissions(permissions(access));
    #[cfg(not(unix))]
    let _ = access; // Windows has no mode bits: the state directory's ACL decides.
    let mut temporary = builder.tempfile_in(parent).map_err(fail)?;
    temporary.write_all(contents).map_err(fail)?;
    temporary.as_file().sync_all().map_err(fail)?;
    temporary.persist(path).map_err(|e| fail(e.error))?;
    Ok(())
}

/// Writes `contents` unless the file already holds exactly that; returns whether it wrote.
pub fn write_if_changed(path: &Path, contents: &[u8], access: Access) -> Result<bool, WriteError> {
    if std::fs::read(path).is_ok_and(|existing| existing == contents) {
        return Ok(false);
    }
    write(path, contents, access).map(|()| true)
}

#[cfg(unix)]
fn permissions(access: Access) -> std::fs::Permissions {
    use std::os::unix::fs::PermissionsExt;
    std::fs::Permissions::from_mode(match access {
        Access::Public => 0o644,
        Access::OwnerOnly => 0o600,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_with_the_asked_access() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/key.pem");
        write(&path, b"secret", Access::OwnerOnly).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"secret");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert!(!write_if_changed(&path, b"secret", Access::OwnerOnly).unwrap());
        assert!(write_if_changed(&path, b"other", Access::OwnerOnly).unwrap());
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1);
    }
}
