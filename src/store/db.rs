//! The state database: computers, their inventory summary, and one deployment state per
//! computer and activation with its history of events.
//!
//! Embedded SQLite in WAL mode (readers never wait for the writer; `synchronous = NORMAL`
//! makes a commit durable at the next checkpoint rather than with one fsync each, which is
//! what WAL is designed for). The schema is created and upgraded by numbered migrations
//! recorded in `schema_migrations`. Queries stay within SQL that PostgreSQL also speaks:
//! parameters are numbered `$1, $2, …` in order of first use (a test checks it), times are
//! integer Unix seconds, lists are newline-separated text.
//!
//! Every method is synchronous and short; async callers run them on the blocking pool.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, Row, params};

/// Errors of the state database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("failed to open the state database {path}")]
    Open {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("failed to migrate the state database to version {version}")]
    Migrate {
        version: i64,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the state database is at version {found}, newer than this Tessera knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("state database query failed")]
    Query(#[from] rusqlite::Error),
}

/// Seconds within which a second contact of a computer is not written again.
pub const CONTACT_PRECISION: i64 = 60;

/// The schema, one step per version. Never edit a step that has shipped: add one.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
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
    (
        2,
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
    (
        3,
        "ALTER TABLE deployments ADD COLUMN output TEXT;
    ALTER TABLE events ADD COLUMN output TEXT;",
    ),
    (4, "ALTER TABLE computers ADD COLUMN notify_address TEXT;"),
    (5, "ALTER TABLE computers ADD COLUMN address TEXT;"),
];

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

/// The state database. One connection: SQLite has one writer at a time anyway, and every
/// statement here takes microseconds.
pub struct Database {
    connection: Mutex<Connection>,
}

impl Database {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, DbError> {
        let open = |source| DbError::Open {
            path: path.display().to_string(),
            source,
        };
        let connection = Connection::open(path).map_err(open)?;
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(open)?;
        Self::prepare(connection)
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
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    /// A database that lives in memory, for tests and dry runs.
    pub fn in_memory() -> Result<Self, DbError> {
        let connection = Connection::open_in_memory().map_err(|source| DbError::Open {
            path: ":memory:".into(),
            source,
        })?;
        Self::prepare(connection)
    }

    fn prepare(mut connection: Connection) -> Result<Self, DbError> {
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.pragma_update(None, "foreign_keys", "ON")?;
        // Another process (`tessera status`) may hold a read lock for a moment.
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut connection)?;
        Ok(Self {
            connection: Mutex::new(connection),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (statements are atomic),
        // so a poisoned lock is still usable.
        self.connection
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Every row `sql` selects, read by `row`.
    fn all<T, P: rusqlite::Params>(
        &self,
        sql: &str,
        params: P,
        row: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, DbError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(sql)?;
        let found = statement
            .query_map(params, row)?
            .collect::<Result<_, _>>()?;
        Ok(found)
    }

    /// Records a contact from `device_id` at `now` and returns the computer (as it was
    /// before this contact's inventory, if any) with its deployments. The last contact is
    /// kept to `CONTACT_PRECISION`: a reconnect storm costs reads, not writes.
    pub fn contact(
        &self,
        device_id: &str,
        now: i64,
    ) -> Result<(Computer, Vec<Deployment>), DbError> {
        let mut connection = self.lock();
        if let Some(known) = computer(&connection, device_id)?
            && (0..CONTACT_PRECISION).contains(&(now - known.last_contact))
        {
            let deployments = deployments_of(&connection, device_id)?;
            return Ok((known, deployments));
        }
        let tx = connection.transaction()?;
        tx.prepare_cached(
            "INSERT INTO computers (device_id, first_seen, last_contact) VALUES ($1, $2, $2)
             ON CONFLICT (device_id) DO UPDATE SET last_contact = $2",
        )?
        .execute(params![device_id, now])?;
        let computer = computer(&tx, device_id)?.unwrap_or_default();
        let deployments = deployments_of(&tx, device_id)?;
        tx.commit()?;
        Ok((computer, deployments))
    }

    /// Stores an inventory: its facts, and the raw document (already compressed).
    pub fn record_inventory(
        &self,
        device_id: &str,
        facts: &Facts,
        raw: &[u8],
        now: i64,
    ) -> Result<Computer, DbError> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        tx.prepare_cached(
            "INSERT INTO computers (device_id, name, os_name, os_version, tags, ip_addresses,
                 history, first_seen, last_contact, last_inventory, inventory)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $8, $9)
             ON CONFLICT (device_id) DO UPDATE SET name = $2, os_name = $3, os_version = $4,
                 tags = $5, ip_addresses = $6, history = $7, last_contact = $8,
                 last_inventory = $8, inventory = $9",
        )?
        .execute(params![
            device_id,
            facts.name,
            facts.os_name,
            facts.os_version,
            facts.tags.join("\n"),
            facts.ip_addresses.join("\n"),
            facts.history.join("\n"),
            now,
            raw,
        ])?;
        let found = computer(&tx, device_id)?.unwrap_or_default();
        tx.commit()?;
        Ok(found)
    }

    /// Records where the agent of `device_id` listens for "check in now" (`None`: nowhere).
    pub fn set_notify_address(
        &self,
        device_id: &str,
        address: Option<&str>,
    ) -> Result<(), DbError> {
        let connection = self.lock();
        connection
            .prepare_cached("UPDATE computers SET notify_address = $1 WHERE device_id = $2")?
            .execute(params![address, device_id])?;
        Ok(())
    }

    /// Records the address `device_id` last connected from (behind a trusted gateway: the
    /// one the gateway named).
    pub fn set_address(&self, device_id: &str, address: Option<&str>) -> Result<(), DbError> {
        let connection = self.lock();
        connection
            .prepare_cached("UPDATE computers SET address = $1 WHERE device_id = $2")?
            .execute(params![address, device_id])?;
        Ok(())
    }

    /// The address `device_id` last connected from, if known.
    pub fn address(&self, device_id: &str) -> Result<Option<String>, DbError> {
        let connection = self.lock();
        let found = connection
            .prepare_cached("SELECT address FROM computers WHERE device_id = $1")?
            .query_row(params![device_id], |row| row.get::<_, Option<String>>(0))
            .optional()?;
        Ok(found.flatten())
    }

    /// Where the agent of `device_id` listens, if it said.
    pub fn notify_address(&self, device_id: &str) -> Result<Option<String>, DbError> {
        let connection = self.lock();
        let found = connection
            .prepare_cached("SELECT notify_address FROM computers WHERE device_id = $1")?
            .query_row(params![device_id], |row| row.get::<_, Option<String>>(0))
            .optional()?;
        Ok(found.flatten())
    }

    /// The raw inventory last stored for `device_id` (compressed as it was given).
    pub fn inventory(&self, device_id: &str) -> Result<Option<Vec<u8>>, DbError> {
        let connection = self.lock();
        let raw = connection
            .prepare_cached("SELECT inventory FROM computers WHERE device_id = $1")?
            .query_row(params![device_id], |row| row.get::<_, Option<Vec<u8>>>(0))
            .optional()?;
        Ok(raw.flatten())
    }

    /// One computer and its deployments.
    pub fn computer(
        &self,
        device_id: &str,
    ) -> Result<Option<(Computer, Vec<Deployment>)>, DbError> {
        let connection = self.lock();
        let Some(found) = computer(&connection, device_id)? else {
            return Ok(None);
        };
        Ok(Some((found, deployments_of(&connection, device_id)?)))
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
            [],
            computer_row,
        )
    }

    /// Every deployment state.
    pub fn deployments(&self) -> Result<Vec<Deployment>, DbError> {
        self.all(
            &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY activation, device_id"),
            [],
            deployment_row,
        )
    }

    /// The history of one computer, oldest first.
    pub fn events(&self, device_id: &str) -> Result<Vec<Event>, DbError> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT device_id, activation, package_id, state, code, at, output FROM events
             WHERE device_id = $1 ORDER BY at, rowid",
        )?;
        let found = statement
            .query_map(params![device_id], |row| {
                Ok(Event {
                    device_id: row.get(0)?,
                    activation: row.get(1)?,
                    package_id: row.get(2)?,
                    state: State::parse(&row.get::<_, String>(3)?),
                    code: row.get(4)?,
                    at: row.get(5)?,
                    output: row.get(6)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        Ok(found)
    }

    /// Applies `changes` to the deployments of `device_id` in one transaction, each with its
    /// history event.
    pub fn apply(&self, device_id: &str, changes: &[Change], now: i64) -> Result<(), DbError> {
        if changes.is_empty() {
            return Ok(());
        }
        let mut connection = self.lock();
        let tx = connection.transaction()?;
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
                        Change::ArmSettled { code, .. } => (State::Success, Some(code.as_str())),
                        _ => (State::Waiting, None),
                    };
                    tx.prepare_cached(
                        "INSERT INTO deployments (device_id, activation, package, package_id, token,
                             state, code, changed_at, notified_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL)
                         ON CONFLICT (device_id, activation) DO UPDATE SET package = $3,
                             package_id = $4, token = $5, state = $6, code = $7, changed_at = $8,
                             notified_at = NULL, output = NULL",
                    )?
                    .execute(params![
                        device_id,
                        activation,
                        package,
                        package_id,
                        token,
                        state.as_str(),
                        code,
                        now
                    ])?;
                    (activation, package_id.clone(), state, code)
                }
                Change::Notify { activation } => {
                    let package_id: Option<String> = tx
                        .prepare_cached(
                            "UPDATE deployments SET state = $1, changed_at = $2, notified_at = $2
                             WHERE device_id = $3 AND activation = $4 AND state = 'waiting'
                             RETURNING package_id",
                        )?
                        .query_row(
                            params![State::Notified.as_str(), now, device_id, activation],
                            |row| row.get(0),
                        )
                        .optional()?;
                    let Some(package_id) = package_id else {
                        continue;
                    };
                    (activation, package_id, State::Notified, None)
                }
            };
            event(&tx, device_id, activation, &package_id, state, code, now)?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Records the agent's result for `package_id`: every deployment of that package on
    /// `device_id` takes `state` with `code` (and the command's `output`, native agents
    /// only). Returns the activations updated (none when the package was not expected,
    /// which is still recorded in the history).
    pub fn record_result(
        &self,
        device_id: &str,
        package_id: &str,
        state: State,
        code: Option<&str>,
        output: Option<&str>,
        now: i64,
    ) -> Result<Vec<String>, DbError> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let activations: Vec<String> = tx
            .prepare_cached(
                "UPDATE deployments SET state = $1, code = $2, output = $3, changed_at = $4
                 WHERE device_id = $5 AND package_id = $6 RETURNING activation",
            )?
            .query_map(
                params![state.as_str(), code, output, now, device_id, package_id],
                |row| row.get(0),
            )?
            .collect::<Result<_, _>>()?;
        let record = |activation: &str| {
            tx.prepare_cached(
                "INSERT INTO events (device_id, activation, package_id, state, code, output, at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )?
            .execute(params![
                device_id,
                activation,
                package_id,
                state.as_str(),
                code,
                output,
                now
            ])
        };
        if activations.is_empty() {
            record("")?;
        }
        for activation in &activations {
            record(activation)?;
        }
        tx.commit()?;
        Ok(activations)
    }

    /// Stores a new enrollment token.
    pub fn create_token(&self, token: &TokenRecord) -> Result<(), DbError> {
        let connection = self.lock();
        connection
            .prepare_cached(
                "INSERT INTO enrollment_tokens (id, secret_sha256, note, created_at, expires_at,
                     max_uses, uses) VALUES ($1, $2, $3, $4, $5, $6, 0)",
            )?
            .execute(params![
                token.id,
                token.secret_sha256,
                token.note,
                token.created_at,
                token.expires_at,
                token.max_uses
            ])?;
        Ok(())
    }

    /// Every enrollment token, newest first.
    pub fn tokens(&self) -> Result<Vec<TokenRecord>, DbError> {
        self.all(
            &format!("SELECT {TOKEN_COLUMNS} FROM enrollment_tokens ORDER BY created_at DESC, id"),
            [],
            token_row,
        )
    }

    /// Revokes token `id`; false when there is no such token.
    pub fn revoke_token(&self, id: &str, now: i64) -> Result<bool, DbError> {
        let connection = self.lock();
        let changed = connection
            .prepare_cached(
                "UPDATE enrollment_tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2",
            )?
            .execute(params![now, id])?;
        Ok(changed > 0)
    }

    /// Uses token `id` once, if `proves` accepts its stored secret hash and it is neither
    /// expired, used up nor revoked. Checking and counting happen in one transaction, so
    /// a token allowed N uses is never used N+1 times.
    pub fn use_token(
        &self,
        id: &str,
        proves: impl FnOnce(&str) -> bool,
        now: i64,
    ) -> Result<Result<TokenRecord, TokenRefusal>, DbError> {
        let mut connection = self.lock();
        let tx = connection.transaction()?;
        let found = tx
            .prepare_cached(&format!(
                "SELECT {TOKEN_COLUMNS} FROM enrollment_tokens WHERE id = $1"
            ))?
            .query_row(params![id], token_row)
            .optional()?;
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
        tx.prepare_cached(
            "UPDATE enrollment_tokens SET uses = uses + 1, last_used_at = $1 WHERE id = $2",
        )?
        .execute(params![now, id])?;
        tx.commit()?;
        token.uses += 1;
        token.last_used_at = Some(now);
        Ok(Ok(token))
    }

    /// A named setting shared with other readers of the database (`tessera status`).
    pub fn setting(&self, name: &str) -> Result<Option<String>, DbError> {
        let connection = self.lock();
        Ok(connection
            .prepare_cached("SELECT value FROM settings WHERE name = $1")?
            .query_row(params![name], |row| row.get(0))
            .optional()?)
    }

    /// Sets a named setting.
    pub fn set_setting(&self, name: &str, value: &str) -> Result<(), DbError> {
        let connection = self.lock();
        connection
            .prepare_cached(
                "INSERT INTO settings (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = $2",
            )?
            .execute(params![name, value])?;
        Ok(())
    }
}

const COMPUTER_COLUMNS: &str = "device_id, name, os_name, os_version, tags, ip_addresses, history, \
     first_seen, last_contact, last_inventory, address";

const DEPLOYMENT_COLUMNS: &str = "device_id, activation, package, package_id, token, state, code, \
     changed_at, notified_at, output";

const TOKEN_COLUMNS: &str = "id, secret_sha256, note, created_at, expires_at, max_uses, uses, \
     last_used_at, revoked_at";

fn token_row(row: &Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        id: row.get(0)?,
        secret_sha256: row.get(1)?,
        note: row.get(2)?,
        created_at: row.get(3)?,
        expires_at: row.get(4)?,
        max_uses: row.get(5)?,
        uses: row.get(6)?,
        last_used_at: row.get(7)?,
        revoked_at: row.get(8)?,
    })
}

fn migrate(connection: &mut Connection) -> Result<(), DbError> {
    connection.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )?;
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
    for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        let step = |source| DbError::Migrate {
            version: *version,
            source,
        };
        let tx = connection.transaction().map_err(step)?;
        tx.execute_batch(sql).map_err(step)?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            params![version, jiff::Timestamp::now().as_second()],
        )
        .map_err(step)?;
        tx.commit().map_err(step)?;
    }
    Ok(())
}

fn lines(text: String) -> Vec<String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

fn computer_row(row: &Row<'_>) -> rusqlite::Result<Computer> {
    Ok(Computer {
        device_id: row.get(0)?,
        name: row.get(1)?,
        os_name: row.get(2)?,
        os_version: row.get(3)?,
        tags: lines(row.get(4)?),
        ip_addresses: lines(row.get(5)?),
        history: lines(row.get(6)?),
        first_seen: row.get(7)?,
        last_contact: row.get(8)?,
        last_inventory: row.get(9)?,
        address: row.get(10)?,
    })
}

fn deployment_row(row: &Row<'_>) -> rusqlite::Result<Deployment> {
    Ok(Deployment {
        device_id: row.get(0)?,
        activation: row.get(1)?,
        package: row.get(2)?,
        package_id: row.get(3)?,
        token: row.get(4)?,
        state: State::parse(&row.get::<_, String>(5)?),
        code: row.get(6)?,
        changed_at: row.get(7)?,
        notified_at: row.get(8)?,
        output: row.get(9)?,
    })
}

fn computer(connection: &Connection, device_id: &str) -> Result<Option<Computer>, DbError> {
    Ok(connection
        .prepare_cached(&format!(
            "SELECT {COMPUTER_COLUMNS} FROM computers WHERE device_id = $1"
        ))?
        .query_row(params![device_id], computer_row)
        .optional()?)
}

fn deployments_of(connection: &Connection, device_id: &str) -> Result<Vec<Deployment>, DbError> {
    let mut statement = connection.prepare_cached(&format!(
        "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE device_id = $1 ORDER BY activation"
    ))?;
    let found = statement
        .query_map(params![device_id], deployment_row)?
        .collect::<Result<_, _>>()?;
    Ok(found)
}

fn event(
    connection: &Connection,
    device_id: &str,
    activation: &str,
    package_id: &str,
    state: State,
    code: Option<&str>,
    now: i64,
) -> Result<(), DbError> {
    connection
        .prepare_cached(
            "INSERT INTO events (device_id, activation, package_id, state, code, at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )?
        .execute(params![
            device_id,
            activation,
            package_id,
            state.as_str(),
            code,
            now
        ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arm(activation: &str, id: &str, token: &str) -> Change {
        Change::Arm {
            activation: activation.into(),
            package: format!("default/{activation}"),
            package_id: id.into(),
            token: token.into(),
        }
    }

    #[test]
    fn a_deployment_goes_from_waiting_to_notified_to_the_agents_result() {
        let db = Database::in_memory().unwrap();
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
        assert_eq!(updated, ["hello"]);
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

    #[test]
    fn a_result_for_an_unexpected_package_is_kept_in_the_history_only() {
        let db = Database::in_memory().unwrap();
        db.contact("pc-2026-01-01-00-00-00", 1).unwrap();
        let updated = db
            .record_result(
                "pc-2026-01-01-00-00-00",
                "42",
                State::Error,
                Some("ERR_BAD_ID"),
                None,
                2,
            )
            .unwrap();
        assert!(updated.is_empty());
        assert!(db.deployments().unwrap().is_empty());
        assert_eq!(db.events("pc-2026-01-01-00-00-00").unwrap().len(), 1);
    }

    #[test]
    fn inventories_replace_the_facts_and_keep_the_raw_document() {
        let db = Database::in_memory().unwrap();
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
        db.lock()
            .execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (999, 0)",
                [],
            )
            .unwrap();
        drop(db);
        assert!(matches!(
            Database::open(&path),
            Err(DbError::TooNew { found: 999, .. })
        ));
    }

    #[test]
    fn a_token_is_refused_once_used_up_expired_or_revoked_and_a_wrong_secret_is_unknown() {
        let db = Database::in_memory().unwrap();
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
        let source = include_str!("db.rs");
        let db = Database::in_memory().unwrap();
        let connection = db.lock();
        let mut checked = 0;
        for chunk in source.split('"').skip(1).step_by(2) {
            let sql = chunk.trim_start();
            if !["SELECT", "INSERT", "UPDATE"]
                .iter()
                .any(|k| sql.starts_with(k))
                || !sql.contains('$')
                || sql.contains('{')
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
