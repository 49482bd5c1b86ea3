//! The SQLite file under the state database: the checks at open (`quick_check`, a state
//! directory that lost its database, a damaged file moved aside on `--reset-state`, the
//! read-only fallback on a full disk) and while running (the file's identity and header).

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rusqlite::Connection;

use super::schema;
use super::{Database, DbError, Engine};

/// How the file of a running SQLite database stopped being the one opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// No file at the path any more.
    Deleted,
    /// Another file at the path (another device or inode).
    Replaced,
    /// The same file, without SQLite's header: overwritten.
    Overwritten,
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Deleted => "was deleted",
            Self::Replaced => "was replaced by another file",
            Self::Overwritten => "was overwritten (no SQLite header)",
        })
    }
}

/// The health of the state database, as readiness and `/metrics` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Health {
    /// Reads and writes work.
    Writable,
    /// Writes fail for lack of space (or a failing disk); reads still work, agents are
    /// served what is built, and writes resume by themselves once space is freed.
    ReadOnly,
    /// The file is no longer the one opened: nothing is recorded until a restart.
    Lost(Lost),
}

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The file's identity is checked at most this often: a check costs a `stat` and a 16-byte
/// read, and a write acknowledged in the second after a deletion is the accepted window.
const IDENTITY_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Written next to the database when it is first created: a state directory that has it
/// (or other state) but no database lost its database, and is not silently started empty.
pub const STATE_MARKER: &str = ".tessera-state";

/// What the marker says to whoever finds it.
const MARKER_TEXT: &str = "A tessera serve state directory: its state database (state.db) holds computers, deployment states and enrollment tokens. Without state.db, tessera serve refuses to start here unless given --reset-state.\n";

/// What, in a state directory, shows that a server ran there.
const STATE_EVIDENCE: &[&str] = &[
    STATE_MARKER,
    "applied.json",
    "download",
    "pki",
    "certificates",
];

/// The identity of an opened SQLite file (device and inode) and the last check of it.
pub(super) struct Watched {
    path: PathBuf,
    identity: (u64, u64),
    last: Mutex<Option<(Instant, Option<Lost>)>>,
}

impl Watched {
    fn new(path: &Path) -> Option<Self> {
        Some(Self {
            path: path.to_path_buf(),
            identity: identity(path).ok()?,
            last: Mutex::new(None),
        })
    }

    /// Whether the file at the path is still the one opened, at most once per
    /// `IDENTITY_CHECK_INTERVAL`; logs an error when it first is not.
    fn check(&self) -> Option<Lost> {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((at, found)) = *last
            && (at.elapsed() < IDENTITY_CHECK_INTERVAL || found.is_some())
        {
            // A lost file stays lost: the connection still points at the old one.
            return found;
        }
        let found = match identity(&self.path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Some(Lost::Deleted),
            // Out of file descriptors, say: no news about the file.
            Err(_) => None,
            Ok(seen) if seen != self.identity => Some(Lost::Replaced),
            Ok(_) => header_lost(&self.path),
        };
        if let Some(lost) = found {
            tracing::error!(
                path = %self.path.display(),
                %lost,
                "the state database {lost} while the server ran: results are refused (503) until it is restored and the server restarted"
            );
        }
        *last = Some((Instant::now(), found));
        found
    }
}

/// Device and inode of `path`.
fn identity(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let metadata = std::fs::metadata(path)?;
    Ok((metadata.dev(), metadata.ino()))
}

/// `Overwritten` when the file at `path` does not start with SQLite's header.
fn header_lost(path: &Path) -> Option<Lost> {
    use std::io::Read;
    let mut header = [0u8; SQLITE_HEADER.len()];
    let read = std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut header));
    match read {
        Ok(()) if &header == SQLITE_HEADER => None,
        Ok(()) => Some(Lost::Overwritten),
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Some(Lost::Overwritten),
        Err(_) => None,
    }
}

/// Whether `error` is the disk's (full, failing, read-only), not the query's.
pub(super) fn disk_trouble(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure | ErrorCode::ReadOnly)
    )
}

/// Whether `error` says the file is not a sound database.
fn damaged(error: &rusqlite::Error) -> bool {
    use rusqlite::ErrorCode;
    matches!(
        error.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

/// How [`Database::open_state`] opened the state database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// As usual.
    Writable,
    /// The disk is full: opened in exclusive locking mode, which needs no shared-memory
    /// file; reads work and writes resume once space is freed, but other `tessera`
    /// commands cannot read the database until the server restarts.
    ReadOnly,
}

impl Database {
    /// Opens the state database of the state directory `dir` for `tessera serve`, checked:
    /// a damaged file is refused, and a missing one is created only if `dir` holds no other
    /// state (a server ran there: its database was deleted) or `reset` says so. With
    /// `reset`, a damaged file is moved aside first. On a full disk the database opens for
    /// reading (see [`Opened::ReadOnly`]).
    pub fn open_state(dir: &Path, reset: bool) -> Result<(Self, Opened), DbError> {
        let path = dir.join("state.db");
        let shown = || path.display().to_string();
        let exists = path.exists();
        if !exists {
            let evidence: Vec<&str> = STATE_EVIDENCE
                .iter()
                .copied()
                .filter(|name| dir.join(name).exists())
                .collect();
            if !evidence.is_empty() {
                if !reset {
                    return Err(DbError::Missing {
                        dir: dir.display().to_string(),
                        path: shown(),
                        evidence: evidence.join(", "),
                    });
                }
                tracing::warn!(
                    path = %path.display(),
                    evidence = %evidence.join(", "),
                    "--reset-state: starting with an EMPTY state database over existing state; computers, deployment states and enrollment tokens start afresh"
                );
            }
        }
        let opened = match Self::open(&path) {
            Ok(db) => Ok((db, Opened::Writable)),
            Err(DbError::Open { source, .. } | DbError::Query(source))
                if exists && disk_trouble(&source) =>
            {
                tracing::warn!(
                    path = %path.display(),
                    error = %source,
                    "the state file system is full: serving read-only (what is built is served; results, inventories and statuses are not recorded until space is freed)"
                );
                Self::open_exclusive(&path).map(|db| {
                    db.full.store(true, Ordering::Relaxed);
                    (db, Opened::ReadOnly)
                })
            }
            Err(error) => Err(error),
        };
        match opened {
            Err(DbError::Corrupt { .. }) if reset => {
                let aside = dir.join(format!(
                    "state.db.damaged-{}",
                    jiff::Timestamp::now().as_second()
                ));
                tracing::warn!(
                    path = %path.display(),
                    aside = %aside.display(),
                    "--reset-state: moved the damaged state database aside; starting with an EMPTY one"
                );
                for suffix in ["", "-wal", "-shm"] {
                    let from = PathBuf::from(format!("{}{suffix}", path.display()));
                    let to = PathBuf::from(format!("{}{suffix}", aside.display()));
                    match std::fs::rename(&from, &to) {
                        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                            return Err(DbError::Corrupt {
                                path: shown(),
                                detail: format!("could not move it aside: {error}"),
                            });
                        }
                        _ => {}
                    }
                }
                Self::open(&path).map(|db| (db, Opened::Writable))
            }
            Ok(done) => {
                if !exists && let Err(error) = std::fs::write(dir.join(STATE_MARKER), MARKER_TEXT) {
                    tracing::warn!(%error, "failed to write the state directory's marker");
                }
                Ok(done)
            }
            Err(error) => Err(error),
        }
    }

    /// Opens (creating if needed) the SQLite database at `path`, checks it (`PRAGMA
    /// quick_check`) and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let connection = Connection::open(path).map_err(|source| Self::opening(path, source))?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|source| Self::opening(path, source))?;
        Self::file(path, connection)
    }

    /// Opens in exclusive locking mode: WAL without the shared-memory file, which a full
    /// disk cannot grow.
    fn open_exclusive(path: &Path) -> Result<Self, DbError> {
        let connection = Connection::open(path).map_err(|source| Self::opening(path, source))?;
        connection
            .pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(|source| Self::opening(path, source))?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|source| Self::opening(path, source))?;
        Self::file(path, connection)
    }

    /// Checks the database file behind `connection`, sets it up and watches its identity.
    fn file(path: &Path, connection: Connection) -> Result<Self, DbError> {
        let check: String = connection
            .query_row("PRAGMA quick_check", [], |row| row.get(0))
            .map_err(|source| Self::opening(path, source))?;
        if check != "ok" {
            return Err(DbError::Corrupt {
                path: path.display().to_string(),
                detail: format!("quick_check: {check}"),
            });
        }
        let exclusive = connection
            .pragma_query_value(None, "locking_mode", |row| row.get::<_, String>(0))
            .map_err(|source| Self::opening(path, source))?
            .eq_ignore_ascii_case("exclusive");
        let mut db = Self::sqlite(connection).map_err(|error| match error {
            DbError::Query(source) if damaged(&source) => Self::opening(path, source),
            other => other,
        })?;
        db.watched = Watched::new(path);
        // Exclusive locking (a full disk) admits no second connection.
        if !exclusive {
            let reader = Connection::open_with_flags(
                path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|source| Self::opening(path, source))?;
            reader
                .busy_timeout(std::time::Duration::from_secs(5))
                .map_err(|source| Self::opening(path, source))?;
            db.reader = Some(std::sync::Mutex::new(reader));
        }
        Ok(db)
    }

    /// The error of opening `path`: `Corrupt` when SQLite finds no sound database there.
    fn opening(path: &Path, source: rusqlite::Error) -> DbError {
        if damaged(&source) {
            DbError::Corrupt {
                path: path.display().to_string(),
                detail: source.to_string(),
            }
        } else {
            DbError::Open {
                path: path.display().to_string(),
                source,
            }
        }
    }

    /// The health of the database: lost, full, or fine. Checks the file's identity (at most
    /// once a second).
    pub fn health(&self) -> Health {
        if let Some(lost) = self.watched.as_ref().and_then(Watched::check) {
            Health::Lost(lost)
        } else if self.full.load(Ordering::Relaxed) {
            Health::ReadOnly
        } else {
            Health::Writable
        }
    }

    /// Opens an existing database at `path` for reading only: no schema change, no write,
    /// not even of the journal mode (`tessera plan` must leave the state untouched).
    pub fn open_read_only(path: &Path) -> Result<Self, DbError> {
        let open = |source| DbError::Open {
            path: path.display().to_string(),
            source,
        };
        let connection =
            Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .map_err(open)?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let current: i64 = connection.query_row(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            [],
            |row| row.get(0),
        )?;
        let known = schema::latest();
        if current > known {
            return Err(DbError::TooNew {
                found: current,
                known,
            });
        }
        Ok(Self::new(Engine::Sqlite(Mutex::new(connection))))
    }

    /// Refuses every statement once the file is no longer the one opened (SQLite would go
    /// on writing to a deleted file, or over garbage, and acknowledge it).
    pub(super) fn still_opened(&self) -> Result<(), DbError> {
        match self.watched.as_ref() {
            Some(watched) => match watched.check() {
                Some(lost) => Err(DbError::Lost {
                    path: watched.path.display().to_string(),
                    lost,
                }),
                None => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Keeps `full` up to date: set by a write failing for lack of space, cleared by one
    /// that succeeds; logged once per episode, not per attempt.
    pub(super) fn observe<T>(&self, done: &Result<T, DbError>, wrote: bool) {
        match done {
            Err(DbError::Query(error)) if disk_trouble(error) => {
                let was_full = self.full.swap(true, Ordering::Relaxed);
                if !was_full {
                    tracing::error!(
                        error = %error,
                        "the state database cannot be written (disk full?): agents get 503 where a write is needed, until space is freed"
                    );
                }
            }
            Ok(_) if wrote => {
                let was_full = self.full.swap(false, Ordering::Relaxed);
                if was_full {
                    tracing::info!("the state database is writable again");
                }
            }
            _ => {}
        }
    }
}

/// The state database file's checks: at open, and while running.
#[cfg(test)]
mod state_file_tests {
    use super::*;

    #[test]
    fn an_empty_database_is_not_created_over_existing_state_unless_reset() {
        let dir = tempfile::tempdir().unwrap();
        let (db, opened) = Database::open_state(dir.path(), false).unwrap();
        assert_eq!(opened, Opened::Writable);
        db.set_setting("kept", "yes").unwrap();
        drop(db);
        assert!(dir.path().join(STATE_MARKER).is_file());
        // Reopened: the same state.
        let (db, _) = Database::open_state(dir.path(), false).unwrap();
        assert_eq!(db.setting("kept").unwrap().as_deref(), Some("yes"));
        drop(db);

        std::fs::remove_file(dir.path().join("state.db")).unwrap();
        let Err(refused) = Database::open_state(dir.path(), false) else {
            panic!("an empty database was created over existing state");
        };
        assert!(matches!(refused, DbError::Missing { .. }), "{refused}");
        assert!(refused.to_string().contains("--reset-state"), "{refused}");
        assert!(!dir.path().join("state.db").exists());

        let (db, _) = Database::open_state(dir.path(), true).unwrap();
        assert_eq!(db.setting("kept").unwrap(), None);
    }

    #[test]
    fn a_damaged_database_is_refused_and_moved_aside_on_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let Err(refused) = Database::open_state(dir.path(), false) else {
            panic!("a damaged database was opened");
        };
        let message = refused.to_string();
        assert!(matches!(refused, DbError::Corrupt { .. }), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("--reset-state"), "{message}");

        Database::open_state(dir.path(), true).unwrap();
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("state.db.damaged-")
            })
            .count();
        assert_eq!(aside, 1);
    }

    #[test]
    fn a_deleted_replaced_or_overwritten_file_refuses_every_statement() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");

        // (The first check after opening is never the cached one.)
        let db = Database::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        let refused = db.set_setting("a", "b").unwrap_err();
        assert!(
            matches!(
                refused,
                DbError::Lost {
                    lost: Lost::Deleted,
                    ..
                }
            ),
            "{refused}"
        );
        assert!(refused.is_unavailable());
        assert_eq!(db.health(), Health::Lost(Lost::Deleted));
        drop(db);

        let db = Database::open(&path).unwrap();
        let other = dir.path().join("other.db");
        drop(Database::open(&other).unwrap());
        std::fs::rename(&other, &path).unwrap();
        let refused = db.setting("a").unwrap_err();
        assert!(
            matches!(
                refused,
                DbError::Lost {
                    lost: Lost::Replaced,
                    ..
                }
            ),
            "{refused}"
        );
        drop(db);

        std::fs::remove_file(&path).unwrap();
        let db = Database::open(&path).unwrap();
        std::fs::write(&path, vec![0x5a; 4096]).unwrap();
        let refused = db.computers().unwrap_err();
        assert!(
            matches!(
                refused,
                DbError::Lost {
                    lost: Lost::Overwritten,
                    ..
                }
            ),
            "{refused}"
        );
    }
}
