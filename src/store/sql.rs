//! The two SQL engines under the state database, behind one small interface: run a
//! statement, read its rows, in or out of a transaction. The queries themselves live once,
//! in `db.rs`; this module only carries values to and from SQLite (rusqlite) or PostgreSQL
//! (the synchronous `postgres` client, from a small pool of connections).
//!
//! Values are the few kinds the schema uses: 64-bit integers, text, bytes, and NULL.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use postgres::GenericClient;
use postgres::types::{ToSql, Type};

use super::db::DbError;

/// Which engine a database runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A parameter of a statement.
#[derive(Clone, Copy, Debug)]
pub enum Value<'a> {
    Int(i64),
    Text(&'a str),
    /// Text or NULL.
    OptText(Option<&'a str>),
    Bytes(&'a [u8]),
}

impl From<i64> for Value<'_> {
    fn from(value: i64) -> Self {
        Value::Int(value)
    }
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(value: &'a str) -> Self {
        Value::Text(value)
    }
}

impl<'a> From<&'a String> for Value<'a> {
    fn from(value: &'a String) -> Self {
        Value::Text(value)
    }
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(value: Option<&'a str>) -> Self {
        Value::OptText(value)
    }
}

impl<'a> From<&'a [u8]> for Value<'a> {
    fn from(value: &'a [u8]) -> Self {
        Value::Bytes(value)
    }
}

/// Parameters as a slice of `Value`s: `params![a, b]`.
macro_rules! params {
    ($($value:expr),* $(,)?) => {
        &[$($crate::store::sql::Value::from($value)),*][..]
    };
}
pub(crate) use params;

/// One column of a row read back.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Cell {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

/// A row read back, its columns in the order selected.
#[derive(Debug)]
pub struct Row(Vec<Cell>);

impl Row {
    fn cell(&self, column: usize) -> Result<&Cell, DbError> {
        self.0.get(column).ok_or(DbError::Decode {
            column,
            expected: "a column",
        })
    }

    /// An integer column.
    pub fn int(&self, column: usize) -> Result<i64, DbError> {
        self.opt_int(column)?.ok_or(DbError::Decode {
            column,
            expected: "an integer",
        })
    }

    /// An integer or NULL column.
    pub fn opt_int(&self, column: usize) -> Result<Option<i64>, DbError> {
        match self.cell(column)? {
            Cell::Null => Ok(None),
            Cell::Int(value) => Ok(Some(*value)),
            _ => Err(DbError::Decode {
                column,
                expected: "an integer",
            }),
        }
    }

    /// A text column.
    pub fn text(&self, column: usize) -> Result<String, DbError> {
        self.opt_text(column)?.ok_or(DbError::Decode {
            column,
            expected: "text",
        })
    }

    /// A text or NULL column.
    pub fn opt_text(&self, column: usize) -> Result<Option<String>, DbError> {
        match self.cell(column)? {
            Cell::Null => Ok(None),
            Cell::Text(value) => Ok(Some(value.clone())),
            _ => Err(DbError::Decode {
                column,
                expected: "text",
            }),
        }
    }

    /// A bytes or NULL column.
    pub fn opt_bytes(&self, column: usize) -> Result<Option<Vec<u8>>, DbError> {
        match self.cell(column)? {
            Cell::Null => Ok(None),
            Cell::Bytes(value) => Ok(Some(value.clone())),
            // SQLite keeps what it is given; a text value in a bytes column is still bytes.
            Cell::Text(value) => Ok(Some(value.clone().into_bytes())),
            Cell::Int(_) => Err(DbError::Decode {
                column,
                expected: "bytes",
            }),
        }
    }
}

/// What the queries need from a connection.
pub trait Sql {
    /// Runs one statement; returns the number of rows it changed.
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, DbError>;
    /// Runs one statement and reads every row it returns.
    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, DbError>;
    /// Runs several statements without parameters (migrations).
    fn batch(&mut self, sql: &str) -> Result<(), DbError>;
    /// Which engine this is.
    fn dialect(&self) -> Dialect;

    /// The first row, if any.
    fn query_opt(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Option<Row>, DbError> {
        Ok(self.query(sql, params)?.into_iter().next())
    }
}

// SQLite.

impl rusqlite::ToSql for Value<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput, ValueRef};
        Ok(ToSqlOutput::Borrowed(match *self {
            Value::Int(value) => ValueRef::Integer(value),
            Value::Text(value) | Value::OptText(Some(value)) => ValueRef::Text(value.as_bytes()),
            Value::OptText(None) => ValueRef::Null,
            Value::Bytes(value) => ValueRef::Blob(value),
        }))
    }
}

/// A SQLite connection (or transaction, which derefs to one).
pub struct Sqlite<'a>(pub &'a rusqlite::Connection);

impl Sql for Sqlite<'_> {
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, DbError> {
        let changed = self
            .0
            .prepare_cached(sql)?
            .execute(rusqlite::params_from_iter(params))?;
        Ok(changed as u64)
    }

    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, DbError> {
        use rusqlite::types::ValueRef;
        let mut statement = self.0.prepare_cached(sql)?;
        let columns = statement.column_count();
        let mut rows = statement.query(rusqlite::params_from_iter(params))?;
        let mut found = Vec::new();
        while let Some(row) = rows.next()? {
            let mut cells = Vec::with_capacity(columns);
            for column in 0..columns {
                cells.push(match row.get_ref(column)? {
                    ValueRef::Null => Cell::Null,
                    ValueRef::Integer(value) => Cell::Int(value),
                    // No column here is REAL; an integer stored as one still reads back.
                    ValueRef::Real(value) => Cell::Int(value as i64),
                    ValueRef::Text(value) => {
                        Cell::Text(String::from_utf8_lossy(value).into_owned())
                    }
                    ValueRef::Blob(value) => Cell::Bytes(value.to_vec()),
                });
            }
            found.push(Row(cells));
        }
        Ok(found)
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        Ok(self.0.execute_batch(sql)?)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Sqlite
    }
}

// PostgreSQL.

/// Connections opened at most, per server process. Each statement takes milliseconds and
/// the callers are the blocking pool's threads; more connections than cores buy little.
pub const POOL_SIZE: usize = 8;

/// How long opening a connection may take before the call fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A PostgreSQL connection with the statements it has prepared (each is parsed once per
/// connection, as SQLite's `prepare_cached` does).
pub struct PgConnection {
    client: postgres::Client,
    statements: HashMap<String, postgres::Statement>,
}

/// A small pool of PostgreSQL connections: callers take one, use it, and give it back; a
/// connection that broke is dropped instead, and the next caller opens a fresh one.
pub struct Pool {
    config: postgres::Config,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<PgConnection>,
    open: usize,
}

impl Pool {
    /// A pool for `config`; opens one connection at once, so a wrong address fails here.
    pub fn new(mut config: postgres::Config) -> Result<Self, DbError> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let pool = Self {
            config,
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        };
        let first = pool.take()?;
        drop(first);
        Ok(pool)
    }

    /// What the connections are opened with.
    pub fn config(&self) -> &postgres::Config {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection, waiting while all `POOL_SIZE` are in use.
    pub fn take(&self) -> Result<Taken<'_>, DbError> {
        let mut state = self.lock();
        loop {
            if let Some(connection) = state.idle.pop() {
                return Ok(Taken {
                    pool: self,
                    connection: Some(connection),
                });
            }
            if state.open < POOL_SIZE {
                state.open += 1;
                drop(state);
                return match self.config.connect(postgres::NoTls) {
                    Ok(client) => Ok(Taken {
                        pool: self,
                        connection: Some(PgConnection {
                            client,
                            statements: HashMap::new(),
                        }),
                    }),
                    Err(source) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(DbError::Connect(source))
                    }
                };
            }
            state = self
                .freed
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// A connection taken from the pool; goes back when dropped.
pub struct Taken<'a> {
    pool: &'a Pool,
    connection: Option<PgConnection>,
}

impl Taken<'_> {
    /// Runs `work` outside a transaction (each statement commits by itself).
    pub fn plain<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let PgConnection { client, statements } =
            self.connection.as_mut().expect("taken until dropped");
        let done = work(&mut Postgres { client, statements });
        self.check(done)
    }

    /// Runs `work` in a transaction, committed when it returns `Ok`.
    pub fn transaction<T>(
        &mut self,
        work: impl FnOnce(&mut dyn Sql) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let PgConnection { client, statements } =
            self.connection.as_mut().expect("taken until dropped");
        let done = (|| {
            let mut tx = client.transaction()?;
            let done = work(&mut Postgres {
                client: &mut tx,
                statements,
            })?;
            tx.commit()?;
            Ok(done)
        })();
        self.check(done)
    }

    /// Passes `done` on; after an error that is not the database refusing a statement (the
    /// connection broke, the server ended the session), the connection is not given back.
    fn check<T>(&mut self, done: Result<T, DbError>) -> Result<T, DbError> {
        if let Err(DbError::Postgres(error)) = &done
            && error
                .as_db_error()
                .is_none_or(|refusal| refusal.severity() != "ERROR")
        {
            self.connection = None;
            let mut state = self.pool.lock();
            state.open -= 1;
            drop(state);
            self.pool.freed.notify_one();
        }
        done
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let mut state = self.pool.lock();
        if connection.client.is_closed() {
            state.open -= 1;
        } else {
            state.idle.push(connection);
        }
        drop(state);
        self.pool.freed.notify_one();
    }
}

/// A PostgreSQL client (a connection or a transaction) with its prepared statements.
struct Postgres<'a, C: GenericClient> {
    client: &'a mut C,
    statements: &'a mut HashMap<String, postgres::Statement>,
}

impl<C: GenericClient> Postgres<'_, C> {
    fn statement(&mut self, sql: &str) -> Result<postgres::Statement, DbError> {
        if let Some(statement) = self.statements.get(sql) {
            return Ok(statement.clone());
        }
        let statement = self.client.prepare(sql)?;
        self.statements.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

fn pg_params<'a>(params: &'a [Value<'a>]) -> Vec<&'a (dyn ToSql + Sync)> {
    params
        .iter()
        .map(|value| -> &(dyn ToSql + Sync) {
            match value {
                Value::Int(value) => value,
                Value::Text(value) => value,
                Value::OptText(value) => value,
                Value::Bytes(value) => value,
            }
        })
        .collect()
}

impl<C: GenericClient> Sql for Postgres<'_, C> {
    fn execute(&mut self, sql: &str, params: &[Value<'_>]) -> Result<u64, DbError> {
        let statement = self.statement(sql)?;
        Ok(self.client.execute(&statement, &pg_params(params))?)
    }

    fn query(&mut self, sql: &str, params: &[Value<'_>]) -> Result<Vec<Row>, DbError> {
        let statement = self.statement(sql)?;
        let rows = self.client.query(&statement, &pg_params(params))?;
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            let mut cells = Vec::with_capacity(row.len());
            for (column, described) in row.columns().iter().enumerate() {
                let cell = match *described.type_() {
                    Type::INT8 => row.try_get::<_, Option<i64>>(column)?.map(Cell::Int),
                    Type::INT4 => row
                        .try_get::<_, Option<i32>>(column)?
                        .map(|v| Cell::Int(v.into())),
                    Type::INT2 => row
                        .try_get::<_, Option<i16>>(column)?
                        .map(|v| Cell::Int(v.into())),
                    // What functions called for their effect return (advisory locks).
                    Type::VOID => None,
                    Type::BYTEA => row.try_get::<_, Option<Vec<u8>>>(column)?.map(Cell::Bytes),
                    _ => row.try_get::<_, Option<String>>(column)?.map(Cell::Text),
                };
                cells.push(cell.unwrap_or(Cell::Null));
            }
            found.push(Row(cells));
        }
        Ok(found)
    }

    fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        Ok(self.client.batch_execute(sql)?)
    }

    fn dialect(&self) -> Dialect {
        Dialect::Postgres
    }
}
