//! The state database: computers, their inventory summary, and one deployment state per
//! computer and activation with its history of events.
//!
//! Two engines, one set of queries (`sql.rs` carries the values):
//! - embedded SQLite in WAL mode, the default (readers never wait for the writer;
//!   `synchronous = NORMAL` makes a commit durable at the next checkpoint rather than with
//!   one fsync each, which is what WAL is designed for);
//! - PostgreSQL, shared by several servers (`--database postgres://...`).
//!
//! The schema is created and upgraded by the same numbered migrations on both, recorded in
//! `schema_migrations`. Queries stay within SQL both speak: parameters are numbered
//! `$1, $2, …` in order of first use (a test checks it), times are integer Unix seconds,
//! lists are newline-separated text. The tests at the bottom run against both engines.
//!
//! Every method is synchronous and short; async callers run them on the blocking pool
//! (the PostgreSQL client blocks on its own runtime and must not run on an async worker).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;

pub use super::sql::Dialect;
use super::sql::{Pool, Row, Sql, Sqlite, Value, params};

/// Errors of the state database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("failed to open the state database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("failed to connect to the PostgreSQL state database")]
    Connect(#[source] postgres::Error),
    #[error("failed to migrate the state database to version {version}")]
    Migrate {
        version: i64,
        #[source]
        source: Box<DbError>,
    },
    #[error("the state database is at version {found}, newer than this Tessera knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error(
        "the state database is at version {found}, older than this Tessera's ({known}): a read-only reader does not migrate it; start `tessera serve` of this version first"
    )]
    TooOld { found: i64, known: i64 },
    #[error("state database query failed")]
    Query(#[from] rusqlite::Error),
    #[error("state database query failed")]
    Postgres(#[from] postgres::Error),
    #[error("column {column} of a state database row is not {expected}")]
    Decode {
        column: usize,
        expected: &'static str,
    },
    #[error(
        "the state database {path} is damaged ({detail}): restore it from a backup, or start with --reset-state to move it aside and begin with an empty database (computers, deployment states and enrollment tokens are then lost)"
    )]
    Corrupt { path: String, detail: String },
    #[error(
        "the state directory {dir} holds state ({evidence}) but no state database {path}: it was deleted or moved; restore it, or start with --reset-state to begin with an empty database (computers, deployment states and enrollment tokens are then lost)"
    )]
    Missing {
        dir: String,
        path: String,
        evidence: String,
    },
    #[error(
        "the state database {path} {lost} while the server ran: nothing is recorded any more; restore it and restart the server"
    )]
    Lost { path: String, lost: Lost },
}

impl DbError {
    /// Whether the database cannot take writes for now (a full or failing disk, a file
    /// deleted or replaced under the server): callers answer 503, never acknowledge.
    pub fn is_unavailable(&self) -> bool {
        match self {
            DbError::Lost { .. } => true,
            DbError::Query(error) => disk_trouble(error),
            DbError::Migrate { source, .. } => source.is_unavailable(),
            _ => false,
        }
    }
}

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
            Lost::Deleted => "was deleted",
            Lost::Replaced => "was replaced by another file",
            Lost::Overwritten => "was overwritten (no SQLite header)",
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

/// Seconds within which a second contact of a computer is not written again.
pub const CONTACT_PRECISION: i64 = 60;

/// One step of the schema.
enum Step {
    /// The same SQL on both engines.
    Both(&'static str),
    /// Where the engines differ.
    Each {
        sqlite: &'static str,
        postgres: &'static str,
    },
}

impl Step {
    fn sql(&self, dialect: Dialect) -> &'static str {
        match (self, dialect) {
            (Step::Both(sql), _) => sql,
            (Step::Each { sqlite, .. }, Dialect::Sqlite) => sqlite,
            (Step::Each { postgres, .. }, Dialect::Postgres) => postgres,
        }
    }
}

/// The schema, one step per version. Never edit a step that has shipped: add one.
const MIGRATIONS: &[(i64, Step)] = &[
    (
        1,
        Step::Both(
            "CREATE TABLE computers (
        device_id TEXT PRIMARY KEY,
        name TEXT NOT NULL DEFAULT '',
        os_name TEXT NOT NULL DEFAULT '',
        os_version TEXT NOT NULL DEFAULT '',
        tags TEXT NOT NULL DEFAULT '',
        ip_addresses TEXT NOT NULL DEFAULT '',
        history TEXT NOT NULL DEFAULT '',
        first_seen BIGINT NOT NULL,
        last_contact BIGINT NOT NULL,
        last_inventory BIGINT,
        inventory BYTEA
    );
    CREATE TABLE deployments (
        device_id TEXT NOT NULL,
        activation TEXT NOT NULL,
        package TEXT NOT NULL,
        package_id TEXT NOT NULL,
        token TEXT NOT NULL,
        state TEXT NOT NULL,
        code TEXT,
        changed_at BIGINT NOT NULL,
        notified_at BIGINT,
        PRIMARY KEY (device_id, activation)
    );
    CREATE INDEX deployments_by_activation ON deployments (activation);
    CREATE TABLE events (
        device_id TEXT NOT NULL,
        activation TEXT NOT NULL,
        package_id TEXT NOT NULL,
        state TEXT NOT NULL,
        code TEXT,
        at BIGINT NOT NULL
    );
    CREATE INDEX events_by_device ON events (device_id, at);
    CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );",
        ),
    ),
    (
        2,
        Step::Both(
            "CREATE TABLE enrollment_tokens (
        id TEXT PRIMARY KEY,
        secret_sha256 TEXT NOT NULL,
        note TEXT NOT NULL DEFAULT '',
        created_at BIGINT NOT NULL,
        expires_at BIGINT NOT NULL,
        max_uses BIGINT NOT NULL,
        uses BIGINT NOT NULL DEFAULT 0,
        last_used_at BIGINT,
        revoked_at BIGINT
    );",
        ),
    ),
    (
        3,
        Step::Both(
            "ALTER TABLE deployments ADD COLUMN output TEXT;
    ALTER TABLE events ADD COLUMN output TEXT;",
        ),
    ),
    (
        4,
        Step::Both("ALTER TABLE computers ADD COLUMN notify_address TEXT;"),
    ),
    (
        5,
        Step::Both("ALTER TABLE computers ADD COLUMN address TEXT;"),
    ),
    // The order events were written in, for events of the same second: SQLite's rowid
    // already is it; PostgreSQL has no rowid, so a sequence numbers them.
    (
        6,
        Step::Each {
            sqlite: "",
            postgres: "ALTER TABLE events ADD COLUMN seq BIGSERIAL;",
        },
    ),
    // What the leader of several servers shares with the others: the files of its CAs and
    // issued certificates (see `reconcile::replicate`).
    (
        7,
        Step::Both(
            "CREATE TABLE shared_files (
        path TEXT PRIMARY KEY,
        content BYTEA NOT NULL,
        owner_only BIGINT NOT NULL,
        sha256 TEXT NOT NULL,
        updated_at BIGINT NOT NULL
    );",
        ),
    ),
];

/// The setting bumped whenever the shared files change, so followers notice with one read.
pub const SHARED_GENERATION: &str = "sharedFilesGeneration";

/// Where a computer stands with one activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Targeted, not yet told.
    Waiting,
    /// Offered in a PROLOG reply; no result yet.
    Notified,
    /// Fetching fragments (native agent).
    Downloading,
    /// Running the action (native agent).
    Installing,
    /// The agent reported success.
    Success,
    /// The agent reported an error.
    Error,
}

impl State {
    /// Every state, in the order tables show them.
    pub const ALL: [State; 6] = [
        State::Waiting,
        State::Notified,
        State::Downloading,
        State::Installing,
        State::Success,
        State::Error,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Notified => "notified",
            State::Downloading => "downloading",
            State::Installing => "installing",
            State::Success => "success",
            State::Error => "error",
        }
    }

    fn parse(text: &str) -> Self {
        State::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .unwrap_or(State::Error)
    }

    /// Whether the agent has yet to report on it.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            State::Waiting | State::Notified | State::Downloading | State::Installing
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A computer as its agent last described it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Computer {
    pub device_id: String,
    /// HARDWARE/NAME of the inventory; empty before the first one.
    pub name: String,
    pub os_name: String,
    pub os_version: String,
    pub tags: Vec<String>,
    pub ip_addresses: Vec<String>,
    /// Package ids the agent reports as installed.
    pub history: Vec<String>,
    pub first_seen: i64,
    pub last_contact: i64,
    /// When the last inventory arrived; `None` before the first.
    pub last_inventory: Option<i64>,
    /// The address it last sent an inventory from (the client a trusted gateway named).
    pub address: Option<String>,
}

/// The facts an inventory brings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    pub name: String,
    pub os_name: String,
    pub os_version: String,
    pub tags: Vec<String>,
    pub ip_addresses: Vec<String>,
    pub history: Vec<String>,
}

/// One computer's state with one activation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployment {
    pub device_id: String,
    /// `namespace/name` of the Activation.
    pub activation: String,
    /// `namespace/name` of the Package, for display.
    pub package: String,
    pub package_id: String,
    /// The redeploy tokens that armed this state (empty: none).
    pub token: String,
    pub state: State,
    /// The agent's result code, verbatim.
    pub code: Option<String>,
    /// The end of the command's output (native agents).
    pub output: Option<String>,
    pub changed_at: i64,
    pub notified_at: Option<i64>,
}

/// A step in a deployment's history.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    pub device_id: String,
    pub activation: String,
    pub package_id: String,
    pub state: State,
    pub code: Option<String>,
    /// The end of the command's output (native agents).
    pub output: Option<String>,
    pub at: i64,
}

/// A change to one computer's deployments, applied with its history event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// (Re)start the deployment of `package_id` through `activation`: state `waiting`.
    Arm {
        activation: String,
        package: String,
        package_id: String,
        token: String,
    },
    /// Settle it without asking the agent (the package is in its history already).
    ArmSettled {
        activation: String,
        package: String,
        package_id: String,
        token: String,
        code: String,
    },
    /// The package was offered in a PROLOG reply.
    Notify { activation: String },
}

/// What became of an agent's result ([`Database::record_result`]). Only `Recorded`
/// wrote anything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Filed {
    /// Filed on these activations' deployments, each with its history event.
    Recorded(Vec<String>),
    /// Every deployment of the package on the computer has settled already (an agent
    /// resending a result whose answer it missed, a package settled from the agent's
    /// history, or a forgery): nothing changed.
    Settled,
    /// Offered once (a `notified` event in the history), but its deployment has since been
    /// armed again (a redeploy token, or another package id took its place): the agent's
    /// answer to an offer that no longer stands. Nothing changed.
    Superseded,
    /// Never offered to this computer: nothing changed.
    NotOffered,
    /// No such computer: nothing changed.
    UnknownDevice,
}

/// A file of the leader's state directory, shared with the other servers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SharedFile {
    /// Relative to the state directory, `/`-separated.
    pub path: String,
    pub content: Vec<u8>,
    /// Readable by its owner only (private keys).
    pub owner_only: bool,
}

/// An enrollment token as stored (its secret only as a hash).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenRecord {
    pub id: String,
    #[serde(skip)]
    pub secret_sha256: String,
    pub note: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub max_uses: i64,
    pub uses: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Why a token was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// No such token, or the secret does not match (the two are not told apart).
    #[error("unknown enrollment token")]
    Unknown,
    #[error("the enrollment token has expired")]
    Expired,
    #[error("the enrollment token has been used as many times as it allows")]
    UsedUp,
    #[error("the enrollment token has been revoked")]
    Revoked,
}

/// The state database: SQLite in a file (the default), or PostgreSQL shared by several
/// servers. Every query below is written once and runs on both.
pub struct Database {
    engine: Engine,
    /// For a SQLite file: the file opened, checked to still be it before statements run.
    watched: Option<Watched>,
    /// A write failed for lack of space (or a failing disk) and none has succeeded since.
    full: AtomicBool,
}

enum Engine {
    /// One connection: SQLite has one writer at a time anyway, and every statement here
    /// takes microseconds.
    Sqlite(Mutex<Connection>),
    /// Boxed: the pool is larger than SQLite's handle.
    Postgres(Box<Pool>),
}

/// The identity of an opened SQLite file (device and inode) and the last check of it.
struct Watched {
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
fn disk_trouble(error: &rusqlite::Error) -> bool {
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
        let mut db = Self::sqlite(connection).map_err(|error| match error {
            DbError::Query(source) if damaged(&source) => Self::opening(path, source),
            other => other,
        })?;
        db.watched = Watched::new(path);
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
        let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
        if current > known {
            return Err(DbError::TooNew {
                found: current,
                known,
            });
        }
        Ok(Self::new(Engine::Sqlite(Mutex::new(connection))))
    }

    /// A SQLite database that lives in memory, for tests and dry runs.
    pub fn in_memory() -> Result<Self, DbError> {
        let connection = Connection::open_in_memory().map_err(|source| DbError::Open {
            path: ":memory:".into(),
            source,
        })?;
        Self::sqlite(connection)
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user@host:port/name`,
    /// without TLS: keep it on a trusted network) and brings its schema up to date. Blocks:
    /// call it off the async workers.
    pub fn postgres(url: &str) -> Result<Self, DbError> {
        let config = url.parse::<postgres::Config>().map_err(DbError::Connect)?;
        Self::postgres_with(config)
    }

    /// Like [`Database::postgres`], with a parsed configuration.
    /// Connects to the PostgreSQL database at `url` for reading only: every transaction is
    /// read-only, and the schema must already be this version's (`tessera plan`).
    pub fn postgres_read_only(url: &str) -> Result<Self, DbError> {
        Self::postgres_read_only_with(url.parse::<postgres::Config>().map_err(DbError::Connect)?)
    }

    /// Like [`Database::postgres_read_only`], with a parsed configuration.
    pub fn postgres_read_only_with(mut config: postgres::Config) -> Result<Self, DbError> {
        let options = match config.get_options() {
            Some(options) => format!("{options} -c default_transaction_read_only=on"),
            None => "-c default_transaction_read_only=on".to_owned(),
        };
        config.options(&options);
        let db = Self::new(Engine::Postgres(Box::new(Pool::new(config)?)));
        db.transaction(|c| {
            // A database no server has migrated has no table to ask.
            let migrated = c
                .query_opt(
                    "SELECT CASE WHEN to_regclass('schema_migrations') IS NULL THEN 0 ELSE 1 END",
                    &[],
                )?
                .map_or(Ok(0), |row| row.int(0))?;
            let found = if migrated == 0 {
                0
            } else {
                c.query_opt(
                    "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                    &[],
                )?
                .map_or(Ok(0), |row| row.int(0))?
            };
            let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
            match found.cmp(&known) {
                std::cmp::Ordering::Less => Err(DbError::TooOld { found, known }),
                std::cmp::Ordering::Greater => Err(DbError::TooNew { found, known }),
                std::cmp::Ordering::Equal => Ok(()),
            }
        })?;
        Ok(db)
    }

    pub fn postgres_with(config: postgres::Config) -> Result<Self, DbError> {
        let db = Self::new(Engine::Postgres(Box::new(Pool::new(config)?)));
        db.transaction(migrate)?;
        Ok(db)
    }

    fn sqlite(connection: Connection) -> Result<Self, DbError> {
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // Another process (`tessera status`) may hold a read lock for a moment.
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        let db = Self::new(Engine::Sqlite(Mutex::new(connection)));
        db.transaction(migrate)?;
        Ok(db)
    }

    fn new(engine: Engine) -> Self {
        Self {
            engine,
            watched: None,
            full: AtomicBool::new(false),
        }
    }

    /// Which engine this database runs on.
    pub fn dialect(&self) -> Dialect {
        match self.engine {
            Engine::Sqlite(_) => Dialect::Sqlite,
            Engine::Postgres(_) => Dialect::Postgres,
        }
    }

    fn lock(connection: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements are atomic),
        // so a poisoned lock is still usable.
        connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `work` with a connection, each statement committed by itself.
    fn with<T>(&self, work: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>) -> Result<T, DbError> {
        match &self.engine {
            Engine::Sqlite(connection) => {
                self.still_opened()?;
                let connection = Self::lock(connection);
                let before = connection.total_changes();
                let done = work(&mut Sqlite(&connection));
                self.observe(&done, connection.total_changes() > before);
                done
            }
            Engine::Postgres(pool) => pool.take()?.plain(work),
        }
    }

    /// Runs `work` in one transaction, committed when it returns `Ok`.
    fn transaction<T>(
        &self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        match &self.engine {
            Engine::Sqlite(connection) => {
                self.still_opened()?;
                let mut connection = Self::lock(connection);
                let before = connection.total_changes();
                let done = (|| {
                    let tx = connection.transaction()?;
                    let done = work(&mut Sqlite(&tx))?;
                    tx.commit()?;
                    Ok(done)
                })();
                self.observe(&done, connection.total_changes() > before);
                done
            }
            Engine::Postgres(pool) => pool.take()?.transaction(work),
        }
    }

    /// Refuses every statement once the file is no longer the one opened (SQLite would go
    /// on writing to a deleted file, or over garbage, and acknowledge it).
    fn still_opened(&self) -> Result<(), DbError> {
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
    fn observe<T>(&self, done: &Result<T, DbError>, wrote: bool) {
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

    /// Every row `sql` selects, read by `row`.
    fn all<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        row: fn(&Row) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        self.with(|c| c.query(sql, params)?.iter().map(row).collect())
    }

    /// Records a contact from `device_id` at `now` and returns the computer (as it was
    /// before this contact's inventory, if any) with its deployments. The last contact is
    /// kept to `CONTACT_PRECISION`: a reconnect storm costs reads, not writes.
    pub fn contact(
        &self,
        device_id: &str,
        now: i64,
    ) -> Result<(Computer, Vec<Deployment>), DbError> {
        let known = self.with(|c| {
            let Some(known) = computer(c, device_id)? else {
                return Ok(None);
            };
            if !(0..CONTACT_PRECISION).contains(&(now - known.last_contact)) {
                return Ok(None);
            }
            Ok(Some((known, deployments_of(c, device_id)?)))
        })?;
        if let Some(known) = known {
            return Ok(known);
        }
        self.transaction(|c| {
            c.execute(
                "INSERT INTO computers (device_id, first_seen, last_contact) VALUES ($1, $2, $2)
                 ON CONFLICT (device_id) DO UPDATE SET last_contact = $2",
                params![device_id, now],
            )?;
            let computer = computer(c, device_id)?.unwrap_or_default();
            Ok((computer, deployments_of(c, device_id)?))
        })
    }

    /// Stores an inventory: its facts, and the raw document (already compressed).
    pub fn record_inventory(
        &self,
        device_id: &str,
        facts: &Facts,
        raw: &[u8],
        now: i64,
    ) -> Result<Computer, DbError> {
        let (tags, ip_addresses, history) = (
            facts.tags.join("\n"),
            facts.ip_addresses.join("\n"),
            facts.history.join("\n"),
        );
        self.transaction(|c| {
            c.execute(
                "INSERT INTO computers (device_id, name, os_name, os_version, tags, ip_addresses,
                     history, first_seen, last_contact, last_inventory, inventory)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8, $9)
                 ON CONFLICT (device_id) DO UPDATE SET name = $2, os_name = $3, os_version = $4,
                     tags = $5, ip_addresses = $6, history = $7, last_contact = $8,
                     last_inventory = $8, inventory = $9",
                params![
                    device_id,
                    &facts.name,
                    &facts.os_name,
                    &facts.os_version,
                    &tags,
                    &ip_addresses,
                    &history,
                    now,
                    raw,
                ],
            )?;
            Ok(computer(c, device_id)?.unwrap_or_default())
        })
    }

    /// Records where the agent of `device_id` listens for "check in now" (`None`: nowhere).
    pub fn set_notify_address(
        &self,
        device_id: &str,
        address: Option<&str>,
    ) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "UPDATE computers SET notify_address = $1 WHERE device_id = $2",
                params![address, device_id],
            )
        })?;
        Ok(())
    }

    /// Records the address `device_id` last connected from (behind a trusted gateway: the
    /// one the gateway named).
    pub fn set_address(&self, device_id: &str, address: Option<&str>) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "UPDATE computers SET address = $1 WHERE device_id = $2",
                params![address, device_id],
            )
        })?;
        Ok(())
    }

    /// The address `device_id` last connected from, if known.
    pub fn address(&self, device_id: &str) -> Result<Option<String>, DbError> {
        let found = self.with(|c| {
            c.query_opt(
                "SELECT address FROM computers WHERE device_id = $1",
                params![device_id],
            )
        })?;
        Ok(found.map(|row| row.opt_text(0)).transpose()?.flatten())
    }

    /// Where the agent of `device_id` listens, if it said.
    pub fn notify_address(&self, device_id: &str) -> Result<Option<String>, DbError> {
        let found = self.with(|c| {
            c.query_opt(
                "SELECT notify_address FROM computers WHERE device_id = $1",
                params![device_id],
            )
        })?;
        Ok(found.map(|row| row.opt_text(0)).transpose()?.flatten())
    }

    /// The raw inventory last stored for `device_id` (compressed as it was given).
    pub fn inventory(&self, device_id: &str) -> Result<Option<Vec<u8>>, DbError> {
        let found = self.with(|c| {
            c.query_opt(
                "SELECT inventory FROM computers WHERE device_id = $1",
                params![device_id],
            )
        })?;
        Ok(found.map(|row| row.opt_bytes(0)).transpose()?.flatten())
    }

    /// One computer and its deployments.
    pub fn computer(
        &self,
        device_id: &str,
    ) -> Result<Option<(Computer, Vec<Deployment>)>, DbError> {
        self.with(|c| {
            let Some(found) = computer(c, device_id)? else {
                return Ok(None);
            };
            Ok(Some((found, deployments_of(c, device_id)?)))
        })
    }

    /// Computers whose device id or name is `wanted` (names are not unique).
    pub fn find_computers(&self, wanted: &str) -> Result<Vec<Computer>, DbError> {
        self.all(
            &format!(
                "SELECT {COMPUTER_COLUMNS} FROM computers
                 WHERE device_id = $1 OR lower(name) = lower($1) ORDER BY device_id"
            ),
            params![wanted],
            computer_row,
        )
    }

    /// Every computer, by device id.
    pub fn computers(&self) -> Result<Vec<Computer>, DbError> {
        self.all(
            &format!("SELECT {COMPUTER_COLUMNS} FROM computers ORDER BY device_id"),
            &[],
            computer_row,
        )
    }

    /// Every deployment state.
    pub fn deployments(&self) -> Result<Vec<Deployment>, DbError> {
        self.all(
            &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY activation, device_id"),
            &[],
            deployment_row,
        )
    }

    /// The history of one computer, oldest first.
    pub fn events(&self, device_id: &str) -> Result<Vec<Event>, DbError> {
        // Events of one second keep the order they were written in: SQLite's rowid grows,
        // and PostgreSQL has a sequence for it (migration 6).
        let order = match self.dialect() {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "seq",
        };
        self.all(
            &format!(
                "SELECT device_id, activation, package_id, state, code, at, output FROM events
                 WHERE device_id = $1 ORDER BY at, {order}"
            ),
            params![device_id],
            |row| {
                Ok(Event {
                    device_id: row.text(0)?,
                    activation: row.text(1)?,
                    package_id: row.text(2)?,
                    state: State::parse(&row.text(3)?),
                    code: row.opt_text(4)?,
                    at: row.int(5)?,
                    output: row.opt_text(6)?,
                })
            },
        )
    }

    /// Applies `changes` to the deployments of `device_id` in one transaction, each with its
    /// history event.
    pub fn apply(&self, device_id: &str, changes: &[Change], now: i64) -> Result<(), DbError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.transaction(|c| {
            for change in changes {
                let (activation, package_id, state, code) = match change {
                    Change::Arm {
                        activation,
                        package,
                        package_id,
                        token,
                    }
                    | Change::ArmSettled {
                        activation,
                        package,
                        package_id,
                        token,
                        ..
                    } => {
                        let (state, code) = match change {
                            Change::ArmSettled { code, .. } => {
                                (State::Success, Some(code.as_str()))
                            }
                            _ => (State::Waiting, None),
                        };
                        c.execute(
                            "INSERT INTO deployments (device_id, activation, package, package_id,
                                 token, state, code, changed_at, notified_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)
                             ON CONFLICT (device_id, activation) DO UPDATE SET package = $3,
                                 package_id = $4, token = $5, state = $6, code = $7,
                                 changed_at = $8, notified_at = NULL, output = NULL",
                            params![
                                device_id,
                                activation,
                                package,
                                package_id,
                                token,
                                state.as_str(),
                                code,
                                now
                            ],
                        )?;
                        (activation, package_id.clone(), state, code)
                    }
                    Change::Notify { activation } => {
                        let notified = c.query_opt(
                            "UPDATE deployments SET state = $1, changed_at = $2, notified_at = $2
                             WHERE device_id = $3 AND activation = $4 AND state = 'waiting'
                             RETURNING package_id",
                            params![State::Notified.as_str(), now, device_id, activation],
                        )?;
                        let Some(row) = notified else {
                            continue;
                        };
                        (activation, row.text(0)?, State::Notified, None)
                    }
                };
                c.execute(
                    "INSERT INTO events (device_id, activation, package_id, state, code, at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    params![
                        device_id,
                        activation,
                        &package_id,
                        state.as_str(),
                        code,
                        now
                    ],
                )?;
            }
            Ok(())
        })
    }

    /// Files the agent's result for `package_id` on `device_id`, only where it can come
    /// from: the package must have been offered to that computer (a deployment of it
    /// `notified`, `downloading` or `installing`). Then every open deployment of the package
    /// on the computer takes `state` with `code` (and the command's `output`, native agents
    /// only), each with its history event. Otherwise nothing at all is written, and the
    /// outcome says why (see [`Filed`]).
    pub fn record_result(
        &self,
        device_id: &str,
        package_id: &str,
        state: State,
        code: Option<&str>,
        output: Option<&str>,
        now: i64,
    ) -> Result<Filed, DbError> {
        self.transaction(|c| {
            if computer(c, device_id)?.is_none() {
                return Ok(Filed::UnknownDevice);
            }
            // One offered deployment of the package is enough to file the result on every
            // open one: a package reached through two activations is offered once.
            let activations = c
                .query(
                    "UPDATE deployments SET state = $1, code = $2, output = $3, changed_at = $4
                     WHERE device_id = $5 AND package_id = $6
                         AND state IN ('waiting', 'notified', 'downloading', 'installing')
                         AND EXISTS (SELECT 1 FROM deployments AS offered
                             WHERE offered.device_id = $5 AND offered.package_id = $6
                                 AND offered.state IN ('notified', 'downloading', 'installing'))
                     RETURNING activation",
                    params![state.as_str(), code, output, now, device_id, package_id],
                )?
                .iter()
                .map(|row| row.text(0))
                .collect::<Result<Vec<_>, _>>()?;
            if activations.is_empty() {
                let settled = c
                    .query(
                        "SELECT state FROM deployments WHERE device_id = $1 AND package_id = $2",
                        params![device_id, package_id],
                    )?
                    .iter()
                    .map(|row| row.text(0).map(|s| !State::parse(&s).is_open()))
                    .collect::<Result<Vec<bool>, _>>()?;
                if !settled.is_empty() && settled.iter().all(|s| *s) {
                    return Ok(Filed::Settled);
                }
                let offered_once = c.query_opt(
                    "SELECT 1 FROM events WHERE device_id = $1 AND package_id = $2
                         AND state = 'notified' LIMIT 1",
                    params![device_id, package_id],
                )?;
                return Ok(if offered_once.is_some() {
                    Filed::Superseded
                } else {
                    Filed::NotOffered
                });
            }
            for activation in &activations {
                c.execute(
                    "INSERT INTO events (device_id, activation, package_id, state, code, output,
                         at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    params![
                        device_id,
                        activation,
                        package_id,
                        state.as_str(),
                        code,
                        output,
                        now
                    ],
                )?;
            }
            Ok(Filed::Recorded(activations))
        })
    }

    /// Stores a new enrollment token.
    pub fn create_token(&self, token: &TokenRecord) -> Result<(), DbError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO enrollment_tokens (id, secret_sha256, note, created_at, expires_at,
                     max_uses, uses) VALUES ($1, $2, $3, $4, $5, $6, 0)",
                params![
                    &token.id,
                    &token.secret_sha256,
                    &token.note,
                    token.created_at,
                    token.expires_at,
                    token.max_uses
                ],
            )
        })?;
        Ok(())
    }

    /// Every enrollment token, newest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, DbError> {
        self.all(
            &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created_at DESC, id"),
            &[],
            token_row,
        )
    }

    /// Revokes token `id`; false when there is no such token.
    pub fn revoke_token(&self, id: &str, now: i64) -> Result<bool, DbError> {
        let changed = self.with(|c| {
            c.execute(
                "UPDATE enrollment_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
                params![now, id],
            )
        })?;
        Ok(changed > 0)
    }

    /// Uses token `id` once, if `proves` accepts its stored secret hash and it is neither
    /// expired, used up nor revoked. Checking and counting happen in one transaction (the
    /// row locked on PostgreSQL), so a token allowed N uses is never used N+1 times, even by
    /// several servers at once.
    pub fn use_token(
        &self,
        id: &str,
        proves: impl FnOnce(&str) -> bool,
        now: i64,
    ) -> Result<Result<TokenRecord, TokenRefusal>, DbError> {
        self.transaction(|c| {
            let lock = match c.dialect() {
                // SQLite has one writer: the transaction is serialised already.
                Dialect::Sqlite => "",
                Dialect::Postgres => " FOR UPDATE",
            };
            let found = c
                .query_opt(
                    &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = $1{lock}"),
                    params![id],
                )?
                .map(|row| token_row(&row))
                .transpose()?;
            let Some(mut token) = found.filter(|t| proves(&t.secret_sha256)) else {
                return Ok(Err(TokenRefusal::Unknown));
            };
            let refusal = if token.revoked_at.is_some() {
                Some(TokenRefusal::Revoked)
            } else if now >= token.expires_at {
                Some(TokenRefusal::Expired)
            } else if token.uses >= token.max_uses {
                Some(TokenRefusal::UsedUp)
            } else {
                None
            };
            if let Some(refusal) = refusal {
                return Ok(Err(refusal));
            }
            c.execute(
                "UPDATE enrollment_tokens SET uses = uses + 1, last_used_at = $1 WHERE id = $2",
                params![now, id],
            )?;
            token.uses += 1;
            token.last_used_at = Some(now);
            Ok(Ok(token))
        })
    }

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
}

impl Database {
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

const COMPUTER_COLUMNS: &str = "device_id, name, os_name, os_version, tags, ip_addresses, history, \
     first_seen, last_contact, last_inventory, address";

const DEPLOYMENT_COLUMNS: &str = "device_id, activation, package, package_id, token, state, code, \
     changed_at, notified_at, output";

const TOKEN_COLUMNS: &str = "id, secret_sha256, note, created_at, expires_at, max_uses, uses, \
     last_used_at, revoked_at";

fn token_row(row: &Row) -> Result<TokenRecord, DbError> {
    Ok(TokenRecord {
        id: row.text(0)?,
        secret_sha256: row.text(1)?,
        note: row.text(2)?,
        created_at: row.int(3)?,
        expires_at: row.int(4)?,
        max_uses: row.int(5)?,
        uses: row.int(6)?,
        last_used_at: row.opt_int(7)?,
        revoked_at: row.opt_int(8)?,
    })
}

/// An arbitrary number that several servers agree on: PostgreSQL migrations take this
/// transaction-scoped advisory lock, so two servers starting at once migrate one by one.
const MIGRATION_LOCK: i64 = 0x7465_7373_6d69_6772;

fn migrate(c: &mut dyn Sql) -> Result<(), DbError> {
    if c.dialect() == Dialect::Postgres {
        c.query("SELECT pg_advisory_xact_lock($1)", params![MIGRATION_LOCK])?;
        // "relation already exists, skipping" on every start is no news.
        c.batch("SET LOCAL client_min_messages = warning")?;
    }
    c.batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )?;
    let current = c
        .query_opt(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .map_or(Ok(0), |row| row.int(0))?;
    let known = MIGRATIONS.last().map_or(0, |(v, _)| *v);
    if current > known {
        return Err(DbError::TooNew {
            found: current,
            known,
        });
    }
    let dialect = c.dialect();
    for (version, step) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let failed = |source| DbError::Migrate {
            version: *version,
            source: Box::new(source),
        };
        c.batch(step.sql(dialect)).map_err(failed)?;
        c.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            params![*version, jiff::Timestamp::now().as_second()],
        )
        .map_err(failed)?;
    }
    Ok(())
}

fn lines(text: String) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn computer_row(row: &Row) -> Result<Computer, DbError> {
    Ok(Computer {
        device_id: row.text(0)?,
        name: row.text(1)?,
        os_name: row.text(2)?,
        os_version: row.text(3)?,
        tags: lines(row.text(4)?),
        ip_addresses: lines(row.text(5)?),
        history: lines(row.text(6)?),
        first_seen: row.int(7)?,
        last_contact: row.int(8)?,
        last_inventory: row.opt_int(9)?,
        address: row.opt_text(10)?,
    })
}

fn deployment_row(row: &Row) -> Result<Deployment, DbError> {
    Ok(Deployment {
        device_id: row.text(0)?,
        activation: row.text(1)?,
        package: row.text(2)?,
        package_id: row.text(3)?,
        token: row.text(4)?,
        state: State::parse(&row.text(5)?),
        code: row.opt_text(6)?,
        changed_at: row.int(7)?,
        notified_at: row.opt_int(8)?,
        output: row.opt_text(9)?,
    })
}

fn computer(c: &mut dyn Sql, device_id: &str) -> Result<Option<Computer>, DbError> {
    c.query_opt(
        &format!("SELECT {COMPUTER_COLUMNS} FROM computers WHERE device_id = $1"),
        params![device_id],
    )?
    .map(|row| computer_row(&row))
    .transpose()
}

fn deployments_of(c: &mut dyn Sql, device_id: &str) -> Result<Vec<Deployment>, DbError> {
    c.query(
        &format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE device_id = $1 ORDER BY activation"
        ),
        params![device_id],
    )?
    .iter()
    .map(deployment_row)
    .collect()
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Runs each test of the suite on SQLite and on PostgreSQL.
    macro_rules! on_both {
        ($($name:ident),* $(,)?) => {
            mod sqlite {
                $(#[test]
                fn $name() {
                    super::$name(&super::Database::in_memory().unwrap());
                })*
            }
            mod postgres {
                $(#[test]
                fn $name() {
                    if let Some(db) = super::scratch_postgres() {
                        super::$name(&db);
                    }
                })*
            }
        };
    }

    on_both!(
        a_deployment_goes_from_waiting_to_notified_to_the_agents_result,
        a_result_is_filed_only_where_the_package_was_offered,
        inventories_replace_the_facts_and_keep_the_raw_document,
        a_token_is_refused_once_used_up_expired_or_revoked_and_a_wrong_secret_is_unknown,
        events_of_one_second_keep_the_order_they_were_written_in,
        a_contact_within_the_precision_writes_nothing_and_a_later_one_does,
        arming_again_resets_the_state_and_a_result_reaches_every_activation_of_the_package,
        a_setting_is_set_once_by_the_first_writer,
        migrating_again_changes_nothing,
        shared_files_are_replaced_as_a_whole_and_bump_the_generation_only_on_change,
    );

    /// The PostgreSQL server the tests use: `TESSERA_TEST_POSTGRES` (scripts/test.sh starts
    /// one and sets it). Without it the PostgreSQL half of the suite is skipped, with a
    /// message, except in CI, where it must run.
    pub(crate) fn test_postgres_url() -> Option<String> {
        match std::env::var("TESSERA_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => Some(url),
            _ if std::env::var_os("CI").is_some() => {
                panic!("CI must run the PostgreSQL tests: run them through scripts/test.sh")
            }
            _ => {
                eprintln!(
                    "skipped: TESSERA_TEST_POSTGRES is not set (scripts/test.sh starts a \
                     PostgreSQL server and sets it)"
                );
                None
            }
        }
    }

    /// A migrated database in a schema of its own on the test server, so tests running at
    /// once never see each other's rows.
    pub(crate) fn scratch_postgres() -> Option<Database> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let url = test_postgres_url()?;
        let schema = format!(
            "test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            jiff::Timestamp::now().as_nanosecond() % 1_000_000_000
        );
        let mut config: ::postgres::Config = url.parse().expect("TESSERA_TEST_POSTGRES is a URL");
        let mut admin = config
            .connect(::postgres::NoTls)
            .expect("the PostgreSQL test server answers");
        admin
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .unwrap();
        config.options(&format!("-c search_path={schema}"));
        Some(Database::postgres_with(config).unwrap())
    }

    /// `tessera plan --database`: sees the computers, writes nothing, migrates nothing.
    #[test]
    fn a_read_only_postgres_reader_sees_the_fleet_and_changes_nothing() {
        let Some(url) = test_postgres_url() else {
            return;
        };
        let schema = format!("test_ro_{}", std::process::id());
        let mut config: ::postgres::Config = url.parse().unwrap();
        let mut admin = config.connect(::postgres::NoTls).unwrap();
        admin
            .batch_execute(&format!(
                "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
            ))
            .unwrap();
        config.options(&format!("-c search_path={schema}"));
        // An empty schema is not migrated by a reader.
        assert!(matches!(
            Database::postgres_read_only_with(config.clone()),
            Err(DbError::TooOld { found: 0, .. })
        ));
        let writer = Database::postgres_with(config.clone()).unwrap();
        writer
            .record_inventory("pc-1", &Facts::default(), b"", 1_000)
            .unwrap();
        let reader = Database::postgres_read_only_with(config).unwrap();
        assert_eq!(reader.computers().unwrap().len(), 1);
        assert!(reader.set_setting("x", "y").is_err(), "read-only");
        assert_eq!(writer.setting("x").unwrap(), None);
        admin
            .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
            .unwrap();
    }

    #[test]
    fn a_postgres_url_that_answers_nothing_fails_with_a_connect_error() {
        // A port from the dynamic range that nothing here listens on, found by binding it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://tessera@127.0.0.1:{port}/tessera");
        assert!(matches!(Database::postgres(&url), Err(DbError::Connect(_))));
    }

    /// A connection the server ended is not used again: the call on it fails, the next
    /// one gets a fresh connection.
    #[test]
    fn a_postgres_connection_that_broke_is_replaced() {
        let Some(db) = scratch_postgres() else {
            return;
        };
        db.set_setting("kept", "yes").unwrap();
        let killed = db.with(|c| c.query("SELECT pg_terminate_backend(pg_backend_pid())", &[]));
        assert!(killed.is_err(), "{killed:?}");
        assert_eq!(db.setting("kept").unwrap().as_deref(), Some("yes"));
        // A refused statement keeps its connection, and is only its own failure.
        assert!(
            db.with(|c| c.query("SELECT no_such_column FROM settings", &[]))
                .is_err()
        );
        assert_eq!(db.setting("kept").unwrap().as_deref(), Some("yes"));
    }

    /// Two servers on one PostgreSQL database using the same token at once: a token
    /// allowed N uses is used exactly N times.
    #[test]
    fn two_servers_on_one_database_never_use_a_token_more_than_it_allows() {
        let Some(first) = scratch_postgres() else {
            return;
        };
        // The second server: a new pool on the same schema.
        let Engine::Postgres(pool) = &first.engine else {
            unreachable!()
        };
        let second = Database::postgres_with(pool.config().clone()).unwrap();
        first
            .create_token(&TokenRecord {
                id: "shared".into(),
                secret_sha256: "right".into(),
                note: String::new(),
                created_at: 0,
                expires_at: 100,
                max_uses: 5,
                uses: 0,
                last_used_at: None,
                revoked_at: None,
            })
            .unwrap();
        let accepted = std::sync::atomic::AtomicU32::new(0);
        std::thread::scope(|scope| {
            for db in [&first, &second, &first, &second] {
                let accepted = &accepted;
                scope.spawn(move || {
                    for _ in 0..5 {
                        if db.use_token("shared", |h| h == "right", 1).unwrap().is_ok() {
                            accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                    }
                });
            }
        });
        assert_eq!(accepted.into_inner(), 5);
        assert_eq!(second.tokens().unwrap()[0].uses, 5);
    }

    fn events_of_one_second_keep_the_order_they_were_written_in(db: &Database) {
        db.contact("pc", 10).unwrap();
        db.apply(
            "pc",
            &[
                arm("b", "2", ""),
                arm("a", "1", ""),
                Change::Notify {
                    activation: "b".into(),
                },
            ],
            11,
        )
        .unwrap();
        db.record_result("pc", "2", State::Error, Some("ERR_X"), Some("tail"), 11)
            .unwrap();
        let steps: Vec<_> = db
            .events("pc")
            .unwrap()
            .into_iter()
            .map(|e| (e.activation, e.state, e.output))
            .collect();
        assert_eq!(
            steps,
            [
                ("b".to_owned(), State::Waiting, None),
                ("a".to_owned(), State::Waiting, None),
                ("b".to_owned(), State::Notified, None),
                ("b".to_owned(), State::Error, Some("tail".to_owned())),
            ]
        );
    }

    fn a_contact_within_the_precision_writes_nothing_and_a_later_one_does(db: &Database) {
        db.contact("pc", 1_000).unwrap();
        let (again, _) = db.contact("pc", 1_000 + CONTACT_PRECISION - 1).unwrap();
        assert_eq!(again.last_contact, 1_000);
        let (later, _) = db.contact("pc", 1_000 + CONTACT_PRECISION).unwrap();
        assert_eq!(
            (later.first_seen, later.last_contact),
            (1_000, 1_000 + CONTACT_PRECISION)
        );
        db.set_address("pc", Some("192.0.2.7")).unwrap();
        db.set_notify_address("pc", Some("192.0.2.7:9999")).unwrap();
        assert_eq!(db.address("pc").unwrap().as_deref(), Some("192.0.2.7"));
        assert_eq!(
            db.notify_address("pc").unwrap().as_deref(),
            Some("192.0.2.7:9999")
        );
        db.set_notify_address("pc", None).unwrap();
        assert_eq!(db.notify_address("pc").unwrap(), None);
        assert_eq!(db.address("nobody").unwrap(), None);
        assert_eq!(db.inventory("pc").unwrap(), None);
        assert!(db.computer("nobody").unwrap().is_none());
        assert_eq!(db.computers().unwrap().len(), 1);
    }

    fn arming_again_resets_the_state_and_a_result_reaches_every_activation_of_the_package(
        db: &Database,
    ) {
        db.contact("pc", 1).unwrap();
        db.apply("pc", &[arm("one", "7", ""), arm("two", "7", "")], 2)
            .unwrap();
        // Not offered yet: a result cannot come from the computer.
        assert_eq!(
            db.record_result("pc", "7", State::Success, Some("SUCCESS"), None, 2)
                .unwrap(),
            Filed::NotOffered
        );
        // A package is offered once, through its first activation.
        let notify = Change::Notify {
            activation: "one".into(),
        };
        db.apply("pc", &[notify], 2).unwrap();
        let updated = db
            .record_result("pc", "7", State::Success, Some("SUCCESS"), None, 3)
            .unwrap();
        assert_eq!(updated, Filed::Recorded(vec!["one".into(), "two".into()]));
        db.apply("pc", &[arm("one", "8", "again")], 4).unwrap();
        let (_, rows) = db.computer("pc").unwrap().unwrap();
        let shown: Vec<_> = rows
            .iter()
            .map(|d| {
                (
                    d.activation.as_str(),
                    d.package_id.as_str(),
                    d.state,
                    d.code.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            shown,
            [
                ("one", "8", State::Waiting, None),
                ("two", "7", State::Success, Some("SUCCESS")),
            ]
        );
        assert_eq!(rows[0].token, "again");
        db.apply(
            "pc",
            &[Change::ArmSettled {
                activation: "two".into(),
                package: "default/two".into(),
                package_id: "9".into(),
                token: String::new(),
                code: "ALREADY".into(),
            }],
            5,
        )
        .unwrap();
        let all = db.deployments().unwrap();
        assert_eq!(all[1].state, State::Success);
        assert_eq!(all[1].code.as_deref(), Some("ALREADY"));
    }

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

    fn migrating_again_changes_nothing(db: &Database) {
        db.set_setting("kept", "yes").unwrap();
        db.transaction(migrate).unwrap();
        let versions = db
            .all(
                "SELECT version FROM schema_migrations ORDER BY version",
                &[],
                |row| row.int(0),
            )
            .unwrap();
        assert_eq!(versions, (1..=7).collect::<Vec<i64>>());
        assert_eq!(db.setting("kept").unwrap().as_deref(), Some("yes"));
    }

    fn arm(activation: &str, id: &str, token: &str) -> Change {
        Change::Arm {
            activation: activation.into(),
            package: format!("default/{activation}"),
            package_id: id.into(),
            token: token.into(),
        }
    }

    fn a_deployment_goes_from_waiting_to_notified_to_the_agents_result(db: &Database) {
        let (computer, rows) = db.contact("pc-2026-01-01-00-00-00", 100).unwrap();
        assert_eq!(computer.first_seen, 100);
        assert!(rows.is_empty());
        db.apply(
            "pc-2026-01-01-00-00-00",
            &[arm("hello", "1234567890", "")],
            101,
        )
        .unwrap();
        let notify = Change::Notify {
            activation: "hello".into(),
        };
        db.apply("pc-2026-01-01-00-00-00", std::slice::from_ref(&notify), 102)
            .unwrap();
        // Notifying again (the next PROLOG) changes nothing and writes no event.
        db.apply("pc-2026-01-01-00-00-00", &[notify], 103).unwrap();
        let (_, rows) = db.contact("pc-2026-01-01-00-00-00", 104).unwrap();
        assert_eq!(rows[0].state, State::Notified);
        assert_eq!(rows[0].notified_at, Some(102));
        let updated = db
            .record_result(
                "pc-2026-01-01-00-00-00",
                "1234567890",
                State::Success,
                Some("SUCCESS_0"),
                None,
                105,
            )
            .unwrap();
        assert_eq!(updated, Filed::Recorded(vec!["hello".into()]));
        let events = db.events("pc-2026-01-01-00-00-00").unwrap();
        let steps: Vec<_> = events.iter().map(|e| (e.state, e.at)).collect();
        assert_eq!(
            steps,
            [
                (State::Waiting, 101),
                (State::Notified, 102),
                (State::Success, 105)
            ]
        );
        assert_eq!(events[2].code.as_deref(), Some("SUCCESS_0"));
    }

    fn a_result_is_filed_only_where_the_package_was_offered(db: &Database) {
        let pc = "pc-2026-01-01-00-00-00";
        let result = |package: &str, code: &str, at: i64| {
            db.record_result(pc, package, State::Error, Some(code), None, at)
                .unwrap()
        };
        // Unknown computer, unknown package, package armed but never offered: nothing.
        assert_eq!(result("42", "ERR_BAD_ID", 1), Filed::UnknownDevice);
        assert!(db.computers().unwrap().is_empty());
        db.contact(pc, 1).unwrap();
        assert_eq!(result("42", "ERR_BAD_ID", 2), Filed::NotOffered);
        db.apply(pc, &[arm("hello", "7", "")], 3).unwrap();
        assert_eq!(result("7", "ERR_FORGED", 4), Filed::NotOffered);
        let (_, rows) = db.computer(pc).unwrap().unwrap();
        assert_eq!(
            (rows[0].state, rows[0].code.as_deref()),
            (State::Waiting, None)
        );
        // Offered: filed once; the same result again changes nothing.
        let notify = Change::Notify {
            activation: "hello".into(),
        };
        db.apply(pc, std::slice::from_ref(&notify), 5).unwrap();
        assert_eq!(
            result("7", "ERR_EXECUTE", 6),
            Filed::Recorded(vec!["hello".into()])
        );
        assert_eq!(result("7", "SUCCESS", 7), Filed::Settled);
        // Armed again (a redeploy): the answer to the old offer is superseded.
        db.apply(pc, &[arm("hello", "7", "again")], 8).unwrap();
        assert_eq!(result("7", "ERR_EXECUTE", 9), Filed::Superseded);
        let (_, rows) = db.computer(pc).unwrap().unwrap();
        assert_eq!(
            (rows[0].state, rows[0].code.as_deref()),
            (State::Waiting, None)
        );
        let codes: Vec<_> = db
            .events(pc)
            .unwrap()
            .into_iter()
            .filter_map(|e| e.code)
            .collect();
        assert_eq!(
            codes,
            ["ERR_EXECUTE"],
            "only the filed result is in the history"
        );
    }

    fn inventories_replace_the_facts_and_keep_the_raw_document(db: &Database) {
        let facts = Facts {
            name: "lab-01".into(),
            os_name: "Debian GNU/Linux 12".into(),
            os_version: "12".into(),
            tags: vec!["lab".into()],
            ip_addresses: vec!["10.0.0.5".into()],
            history: vec!["1111111111".into()],
        };
        let computer = db
            .record_inventory("lab-01-2026-01-01-00-00-00", &facts, b"raw", 7)
            .unwrap();
        assert_eq!(computer.tags, ["lab"]);
        assert_eq!(computer.history, ["1111111111"]);
        assert_eq!(computer.last_inventory, Some(7));
        assert_eq!(
            db.inventory("lab-01-2026-01-01-00-00-00").unwrap().unwrap(),
            b"raw"
        );
        assert_eq!(db.find_computers("LAB-01").unwrap().len(), 1);
    }

    #[test]
    fn the_database_survives_reopening_and_refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let db = Database::open(&path).unwrap();
            db.set_setting("staleAfter", "60").unwrap();
        }
        let db = Database::open(&path).unwrap();
        assert_eq!(db.setting("staleAfter").unwrap().as_deref(), Some("60"));
        db.with(|c| {
            c.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)",
                &[],
            )
        })
        .unwrap();
        drop(db);
        assert!(matches!(
            Database::open(&path),
            Err(DbError::TooNew { found: 999, .. })
        ));
    }

    fn a_token_is_refused_once_used_up_expired_or_revoked_and_a_wrong_secret_is_unknown(
        db: &Database,
    ) {
        let token = |id: &str, expires_at, max_uses| TokenRecord {
            id: id.into(),
            secret_sha256: "right".into(),
            note: String::new(),
            created_at: 0,
            expires_at,
            max_uses,
            uses: 0,
            last_used_at: None,
            revoked_at: None,
        };
        db.create_token(&token("twice", 100, 2)).unwrap();
        db.create_token(&token("old", 10, 5)).unwrap();
        let right = |hash: &str| hash == "right";
        assert!(db.use_token("twice", right, 1).unwrap().is_ok());
        assert_eq!(
            db.use_token("twice", |h| h == "wrong", 2).unwrap(),
            Err(TokenRefusal::Unknown)
        );
        assert_eq!(db.use_token("twice", right, 3).unwrap().unwrap().uses, 2);
        assert_eq!(
            db.use_token("twice", right, 4).unwrap(),
            Err(TokenRefusal::UsedUp)
        );
        assert_eq!(
            db.use_token("old", right, 10).unwrap(),
            Err(TokenRefusal::Expired)
        );
        assert_eq!(
            db.use_token("nope", right, 1).unwrap(),
            Err(TokenRefusal::Unknown)
        );
        db.create_token(&token("third", 100, 5)).unwrap();
        assert!(db.revoke_token("third", 5).unwrap());
        assert!(!db.revoke_token("nope", 5).unwrap());
        assert_eq!(
            db.use_token("third", right, 6).unwrap(),
            Err(TokenRefusal::Revoked)
        );
        let listed = db.tokens().unwrap();
        assert_eq!(listed.len(), 3);
        let twice = listed.iter().find(|t| t.id == "twice").unwrap();
        assert_eq!((twice.uses, twice.last_used_at), (2, Some(3)));
    }

    /// PostgreSQL binds `$n` by number, SQLite by order of first use: both agree only when
    /// every statement uses its parameters first in order. Checks every statement here.
    #[test]
    fn every_statement_numbers_its_parameters_in_order_of_use() {
        let source = include_str!("mod.rs");
        let db = Database::in_memory().unwrap();
        let Engine::Sqlite(connection) = &db.engine else {
            unreachable!()
        };
        let connection = Database::lock(connection);
        let mut checked = 0;
        for chunk in source.split('"').skip(1).step_by(2) {
            let sql = chunk.trim_start();
            if !["SELECT", "INSERT", "UPDATE", "DELETE"]
                .iter()
                .any(|k| sql.starts_with(k))
                || !sql.contains('$')
                || sql.contains('{')
                || sql.contains("pg_")
            {
                continue;
            }
            let statement = connection.prepare(sql).unwrap();
            for index in 1..=statement.parameter_count() {
                assert_eq!(
                    statement.parameter_name(index),
                    Some(format!("${index}").as_str()),
                    "{sql}"
                );
            }
            checked += 1;
        }
        assert!(checked >= 8, "only {checked} statements found");
    }
}
