//! The schema of the state database: numbered migrations, the same on both engines, recorded
//! in `schema_migrations` and applied in order under a lock several servers share.

use crate::store::sql::{Dialect, Sql, params};

use super::DbError;

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
            (Self::Both(sql), _) => sql,
            (Self::Each { sqlite, .. }, Dialect::Sqlite) => sqlite,
            (Self::Each { postgres, .. }, Dialect::Postgres) => postgres,
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
    // Who still needs a superseded package version is read from the history by package id
    // (`Database::open_offers`), on every pass while a version drains.
    (
        8,
        Step::Both("CREATE INDEX events_by_package ON events (package_id, device_id);"),
    ),
    // The journal of what happened (`store::db::journal`): builds, issuance, refusals,
    // leadership, operator actions. Bounded to a few thousand rows, so it needs no index
    // beyond its key: filters scan it in a millisecond, and every index would cost writes.
    (
        9,
        Step::Each {
            sqlite: "CREATE TABLE journal (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at BIGINT NOT NULL,
        kind TEXT NOT NULL,
        namespace TEXT NOT NULL DEFAULT '',
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        computer TEXT
    );",
            postgres: "CREATE TABLE journal (
        id BIGSERIAL PRIMARY KEY,
        at BIGINT NOT NULL,
        kind TEXT NOT NULL,
        namespace TEXT NOT NULL DEFAULT '',
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        reason TEXT NOT NULL,
        message TEXT NOT NULL DEFAULT '',
        computer TEXT
    );",
        },
    ),
    // What operators asked for that outlives a request: suspensions (`tessera suspend`)
    // and renewal requests (`tessera renew`) (see `steering`).
    (
        10,
        Step::Both(
            "CREATE TABLE operator_requests (
        kind TEXT NOT NULL,
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        action TEXT NOT NULL,
        requested_at BIGINT NOT NULL,
        PRIMARY KEY (kind, namespace, name, action)
    );",
        ),
    ),
    // Computers by name: the events of two computers of one name say which is which
    // (`store::db::journal`). Names change only with an inventory, so the index costs
    // nothing on the contacts that update a computer's row.
    (
        11,
        Step::Both("CREATE INDEX computers_by_name ON computers (name);"),
    ),
    // Who may use the admin API (`tessera admin-token`): a name and a role per token, the
    // secret only as its SHA-256 (see `server::admin::auth`).
    (
        12,
        Step::Both(
            "CREATE TABLE admin_tokens (
        id TEXT PRIMARY KEY,
        secret_sha256 TEXT NOT NULL,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        created_at BIGINT NOT NULL,
        last_used_at BIGINT,
        revoked_at BIGINT
    );",
        ),
    ),
    // The deployment counts (`tessera status`, the console's Deployments, `/metrics`) read
    // from an index that holds every column they group by, so a fleet's 200,000 rows are
    // counted from the index alone; its first column still serves the lookups by activation
    // the narrower index served. A state change now also moves one index entry.
    (
        13,
        Step::Both(
            "DROP INDEX deployments_by_activation;
    CREATE INDEX deployments_by_activation ON deployments
        (activation, package_id, state, package, code, notified_at);",
        ),
    ),
];

/// The version the last migration brings the schema to.
pub(super) fn latest() -> i64 {
    MIGRATIONS.last().map_or(0, |(v, _)| *v)
}

/// An arbitrary number that several servers agree on: PostgreSQL migrations take this
/// transaction-scoped advisory lock, so two servers starting at once migrate one by one.
const MIGRATION_LOCK: i64 = 0x7465_7373_6d69_6772;

pub(super) fn migrate(c: &mut dyn Sql) -> Result<(), DbError> {
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
    let known = latest();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::Database;

    on_both!(migrating_again_changes_nothing,);

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
        assert_eq!(versions, (1..=latest()).collect::<Vec<i64>>());
        assert_eq!(db.setting("kept").unwrap().as_deref(), Some("yes"));
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
}
