//! Settings shared by every reader of the database, and the files the leader of several
//! servers shares with the others.

use std::collections::{HashMap, HashSet};

use crate::store::sql::params;

use super::{Database, DbError};

/// The setting bumped whenever the shared files change, so followers notice with one read.
pub const SHARED_GENERATION: &str = "sharedFilesGeneration";

/// A file of the leader's state directory, shared with the other servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFile {
    /// Relative to the state directory, `/`-separated.
    pub path: String,
    pub content: Vec<u8>,
    /// Readable by its owner only (private keys).
    pub owner_only: bool,
}

impl Database {
    /// A named setting shared with other readers of the database (`tessera status`).
    pub fn setting(&self, name: &str) -> Result<Option<String>, DbError> {
        let found = self
            .with(|c| c.query_opt("SELECT value FROM settings WHERE name = $1", params![name]))?;
        found.map(|row| row.text(0)).transpose()
    }

    /// Sets a named setting.
    pub fn set_setting(&self, name: &str, value: &str) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO settings (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = $2",
                params![name, value],
            )
        })?;
        Ok(())
    }

    /// Sets a named setting only if it has none yet; returns the value it has afterwards.
    /// Several servers racing to set it agree on the first one written.
    pub fn setting_or_insert(&self, name: &str, value: &str) -> Result<String, DbError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO settings (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO NOTHING",
                params![name, value],
            )?;
            c.query_opt("SELECT value FROM settings WHERE name = $1", params![name])?
                .map_or(Ok(value.to_owned()), |row| row.text(0))
        })
    }

    /// Every shared file, by path.
    pub fn shared_files(&self) -> Result<Vec<SharedFile>, DbError> {
        self.all(
            "SELECT path, content, owner_only FROM shared_files ORDER BY path",
            &[],
            |row| {
                Ok(SharedFile {
                    path: row.text(0)?,
                    content: row.opt_bytes(1)?.unwrap_or_default(),
                    owner_only: row.int(2)? != 0,
                })
            },
        )
    }

    /// Makes the shared files exactly `files` in one transaction: writes those that
    /// changed, removes those no longer there, and bumps `SHARED_GENERATION` if anything
    /// changed. Returns whether anything did.
    pub fn share_files(&self, files: &[SharedFile], now: i64) -> Result<bool, DbError> {
        use sha2::Digest;
        self.transaction(|c| {
            let stored: HashMap<String, String> = c
                .query("SELECT path, sha256 FROM shared_files", &[])?
                .iter()
                .map(|row| Ok((row.text(0)?, row.text(1)?)))
                .collect::<Result<_, DbError>>()?;
            let mut changed = false;
            for file in files {
                let digest = hex::encode(sha2::Sha256::digest(&file.content));
                let digest = format!("{digest}{}", if file.owner_only { "-0600" } else { "" });
                if stored.get(&file.path) == Some(&digest) {
                    continue;
                }
                c.execute(
                    "INSERT INTO shared_files (path, content, owner_only, sha256, updated_at)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (path) DO UPDATE SET content = $2, owner_only = $3,
                         sha256 = $4, updated_at = $5",
                    params![
                        &file.path,
                        file.content.as_slice(),
                        i64::from(file.owner_only),
                        &digest,
                        now
                    ],
                )?;
                changed = true;
            }
            let wanted: HashSet<&str> = files.iter().map(|f| f.path.as_str()).collect();
            for path in stored.keys().filter(|p| !wanted.contains(p.as_str())) {
                c.execute("DELETE FROM shared_files WHERE path = $1", params![path])?;
                changed = true;
            }
            if changed {
                c.execute(
                    "INSERT INTO settings (name, value) VALUES ($1, $2)
                     ON CONFLICT (name) DO UPDATE SET value = $2",
                    params![SHARED_GENERATION, &now.to_string()],
                )?;
            }
            Ok(changed)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    on_both!(
        a_setting_is_set_once_by_the_first_writer,
        shared_files_are_replaced_as_a_whole_and_bump_the_generation_only_on_change,
    );

    fn a_setting_is_set_once_by_the_first_writer(db: &Database) {
        assert_eq!(db.setting("clock").unwrap(), None);
        assert_eq!(db.setting_or_insert("clock", "10").unwrap(), "10");
        assert_eq!(db.setting_or_insert("clock", "20").unwrap(), "10");
        db.set_setting("clock", "30").unwrap();
        assert_eq!(db.setting("clock").unwrap().as_deref(), Some("30"));
    }

    fn shared_files_are_replaced_as_a_whole_and_bump_the_generation_only_on_change(db: &Database) {
        let file = |path: &str, content: &[u8], owner_only| SharedFile {
            path: path.into(),
            content: content.to_vec(),
            owner_only,
        };
        let first = [
            file("pki/issuers/default/ca/ca.key", b"key\0bytes", true),
            file("pki/issuers/default/ca/ca.crt", b"cert", false),
        ];
        assert!(db.share_files(&first, 10).unwrap());
        assert_eq!(
            db.setting(SHARED_GENERATION).unwrap().as_deref(),
            Some("10")
        );
        assert!(!db.share_files(&first, 11).unwrap(), "nothing changed");
        assert_eq!(
            db.setting(SHARED_GENERATION).unwrap().as_deref(),
            Some("10")
        );
        let mut stored = db.shared_files().unwrap();
        stored.sort_by(|a, b| b.path.cmp(&a.path));
        assert_eq!(stored, first);
        // Only the mode changes: still a change.
        let second = [file("pki/issuers/default/ca/ca.crt", b"cert", true)];
        assert!(db.share_files(&second, 12).unwrap());
        assert_eq!(db.shared_files().unwrap(), second);
        assert_eq!(
            db.setting(SHARED_GENERATION).unwrap().as_deref(),
            Some("12")
        );
    }
}
