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
//! lists are newline-separated text. The tests of each part run against both engines.
//!
//! Every method is synchronous and short; async callers run them on the blocking pool
//! (the PostgreSQL client blocks on its own runtime and must not run on an async worker).
//!
//! One file per part: `file` (the SQLite file's checks), `schema` (migrations),
//! `computers`, `deployments`, `tokens`, `settings` (with the shared files), `journal`
//! (what happened, for `tessera events`), `steering` (operators' suspensions and renewal
//! requests) and `admin_tokens` (who may use the admin API).

use std::sync::Mutex;
use std::sync::atomic::AtomicBool;

use rusqlite::Connection;

pub use super::sql::Dialect;
use super::sql::{Pool, Row, Sql, Sqlite, Value};

/// Runs each test of a module's suite (functions taking a `&Database`) on SQLite and on
/// PostgreSQL. Defined before the modules below so that their tests can use it.
#[cfg(test)]
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $name() {
                super::$name(&$crate::store::db::Database::in_memory().unwrap());
            })*
        }
        mod postgres {
            $(#[test]
            fn $name() {
                if let Some(db) = $crate::store::db::tests::scratch_postgres() {
                    super::$name(&db);
                }
            })*
        }
    };
}

mod admin_tokens;
mod cache;
mod computers;
mod deployments;
mod file;
pub mod journal;
mod schema;
mod settings;
mod steering;
mod tokens;

pub use admin_tokens::AdminTokenRecord;
pub use cache::{MAX_INDEXED, WRITE_BEHIND_SECONDS};
pub use computers::{CONTACT_PRECISION, CodeCount, Computer, FLEET_PAGE, Facts, FleetFilter};
pub use deployments::{Change, Deployment, Event, Filed, FleetCount, OpenOffer, State, StateCount};
pub use file::{Health, Lost, Opened, STATE_MARKER};
pub use settings::{SHARED_GENERATION, SharedFile};
pub use steering::{OperatorAction, OperatorRequest};
pub use tokens::{TokenRecord, TokenRefusal};

use file::{Watched, disk_trouble};
use schema::migrate;

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
        source: Box<Self>,
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
    #[error("{0:?} is not an event cursor (JOURNAL-HISTORY, as an event's id)")]
    Cursor(String),
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
            Self::Lost { .. } => true,
            Self::Query(error) => disk_trouble(error),
            Self::Migrate { source, .. } => source.is_unavailable(),
            _ => false,
        }
    }
}

/// The state database: SQLite in a file (the default), or PostgreSQL shared by several
/// servers. Every query below is written once and runs on both.
pub struct Database {
    engine: Engine,
    /// For a SQLite file: the file opened, checked to still be it before statements run.
    watched: Option<Watched>,
    /// A write failed for lack of space (or a failing disk) and none has succeeded since.
    full: AtomicBool,
    /// The journal's writer queue (`journal::record`).
    journal: journal::Queue,
    /// What decides an offer, per computer, in memory (SQLite only; see `cache`). Boxed:
    /// its tables' handles would double the size of every `Database` value.
    index: Box<cache::Index>,
    /// The write-behind thread, once started ([`Database::write_behind`]).
    behind: std::sync::OnceLock<()>,
    /// SQLite's `PRAGMA data_version` when last read: it changes when another connection
    /// (another process) commits.
    data_version: Mutex<Option<i64>>,
    /// For a SQLite file: a second, read-only connection for the reads that scan (counts,
    /// fleet pages, lists), so they never hold the one connection that agents' writes wait
    /// for (WAL lets it read while the other writes).
    reader: Option<Mutex<Connection>>,
}

enum Engine {
    /// One connection: SQLite has one writer at a time anyway, and every statement here
    /// takes microseconds.
    Sqlite(Mutex<Connection>),
    /// Boxed: the pool is larger than SQLite's handle.
    Postgres(Box<Pool>),
}

impl Database {
    /// A SQLite database that lives in memory, for tests and dry runs.
    pub fn in_memory() -> Result<Self, DbError> {
        let connection = Connection::open_in_memory().map_err(|source| DbError::Open {
            path: ":memory:".into(),
            source,
        })?;
        Self::sqlite(connection)
    }

    /// A SQLite database in memory without the in-memory index: every contact reads the
    /// database, as on PostgreSQL (tests compare both paths).
    #[cfg(test)]
    pub(crate) fn in_memory_without_index() -> Result<Self, DbError> {
        let mut db = Self::in_memory()?;
        db.index = Box::new(cache::Index::new(false));
        Ok(db)
    }

    /// Connects to the PostgreSQL database at `url` (`postgres://user@host:port/name`,
    /// without TLS: keep it on a trusted network) and brings its schema up to date. Blocks:
    /// call it off the async workers.
    pub fn postgres(url: &str) -> Result<Self, DbError> {
        let config = url.parse::<postgres::Config>().map_err(DbError::Connect)?;
        Self::postgres_with(config)
    }

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
            let known = schema::latest();
            match found.cmp(&known) {
                std::cmp::Ordering::Less => Err(DbError::TooOld { found, known }),
                std::cmp::Ordering::Greater => Err(DbError::TooNew { found, known }),
                std::cmp::Ordering::Equal => Ok(()),
            }
        })?;
        Ok(db)
    }

    /// Like [`Database::postgres`], with a parsed configuration.
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
        let indexed = matches!(engine, Engine::Sqlite(_));
        Self {
            engine,
            watched: None,
            full: AtomicBool::new(false),
            journal: journal::Queue::default(),
            index: Box::new(cache::Index::new(indexed)),
            behind: std::sync::OnceLock::new(),
            data_version: Mutex::new(None),
            reader: None,
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
        self.transaction_then(work, |_| {})
    }

    /// Runs `work` in one transaction and, once it is committed, `committed` with its
    /// outcome while the SQLite connection is still held: the in-memory index is updated
    /// there, so it follows the database in commit order.
    fn transaction_then<T>(
        &self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>,
        committed: impl FnOnce(&T),
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
                if let Ok(done) = &done {
                    committed(done);
                }
                self.observe(&done, connection.total_changes() > before);
                done
            }
            Engine::Postgres(pool) => {
                let done = pool.take()?.transaction(work)?;
                committed(&done);
                Ok(done)
            }
        }
    }

    /// Every row `sql` selects, read by `row` (on the reader connection when there is one).
    fn all<T>(
        &self,
        sql: &str,
        params: &[Value<'_>],
        row: fn(&Row) -> Result<T, DbError>,
    ) -> Result<Vec<T>, DbError> {
        self.read(|c| c.query(sql, params)?.iter().map(row).collect())
    }

    /// Runs `work`, which only reads, in one read transaction: on the reader connection of
    /// a SQLite file (agents' writes go ahead meanwhile), else as [`Self::transaction`].
    fn read<T>(&self, work: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>) -> Result<T, DbError> {
        let Some(reader) = &self.reader else {
            return self.transaction(work);
        };
        self.still_opened()?;
        let mut connection = Self::lock(reader);
        let tx = connection.transaction()?;
        let done = work(&mut Sqlite(&tx))?;
        tx.commit()?;
        Ok(done)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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

    /// PostgreSQL binds `$n` by number, SQLite by order of first use: both agree only when
    /// every statement uses its parameters first in order. Checks every statement here.
    #[test]
    fn every_statement_numbers_its_parameters_in_order_of_use() {
        let sources = [
            include_str!("mod.rs"),
            include_str!("cache.rs"),
            include_str!("computers.rs"),
            include_str!("deployments.rs"),
            include_str!("file.rs"),
            include_str!("journal.rs"),
            include_str!("schema.rs"),
            include_str!("settings.rs"),
            include_str!("tokens.rs"),
        ];
        let db = Database::in_memory().unwrap();
        let Engine::Sqlite(connection) = &db.engine else {
            unreachable!()
        };
        let connection = Database::lock(connection);
        let mut checked = 0;
        for chunk in sources
            .iter()
            .flat_map(|source| source.split('"').skip(1).step_by(2))
        {
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
