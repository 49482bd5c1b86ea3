//! The journal: what happened, for `tessera events` and `tessera describe`. Builds,
//! certificate issuance and renewals, CA rollover steps, refusals, leadership changes and
//! operator actions are recorded here as they happen, in a bounded history
//! ([`JOURNAL_KEEP`]); offers and results are not written twice: they are read from the
//! deployment history (`events`), where every PROLOG already writes them, and merged in by
//! time ([`Database::event_log`]).
//!
//! Recording never holds up its caller ([`record`]): records go through a bounded queue to
//! one writer thread, and when the queue is full or the database refuses the write (a full
//! disk), the record is dropped, counted ([`Database::dropped_events`]) and logged once per
//! episode. Serving agents matters more than telling about it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock, Weak};

use serde::{Deserialize, Serialize};

use crate::store::sql::{Row, Value, params};

use super::{Database, DbError};

/// How many journal rows are kept: about a week of a busy fleet's builds, renewals and
/// refusals (rows are about 200 bytes: 2 MB at most), enough for `tessera events` to show
/// what led to today's state. Older rows are deleted as new ones come, one or two per
/// insert, through the primary key: a constant, tiny cost.
pub const JOURNAL_KEEP: i64 = 10_000;

/// Records waiting for the writer thread: far more than a burst of refusals between two
/// writes (each takes well under a millisecond), small enough that a stuck database costs
/// little memory. Beyond it, records are dropped and counted.
const QUEUE: usize = 1024;

/// The kind of the deployment history's rows in the merged view: offers and results are
/// made through an Activation.
const HISTORY_KIND: &str = "Activation";

/// The reasons of the deployment history's offers and results in the merged view (each a
/// `reconcile::outcome::Reason`, which this module may not import; a test there checks).
pub const HISTORY_REASONS: [&str; 3] = ["Offered", "Succeeded", "Failed"];

/// The reason of a refused request (`Reason::Refused`).
pub const REFUSED: &str = "Refused";

/// The reasons of operators' actions, which the admin API records (`Reason::Suspended`,
/// `Resumed`, `ReconcileRequested`, `RenewalRequested`).
pub const OPERATOR_REASONS: [&str; 4] = [
    "Suspended",
    "Resumed",
    "ReconcileRequested",
    "RenewalRequested",
];

/// Whether an event is news or trouble (Kubernetes Events' two types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventType {
    Normal,
    Warning,
}

impl EventType {
    /// `Normal` or `Warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }

    fn parse(text: &str) -> Self {
        if text == "Warning" {
            Self::Warning
        } else {
            Self::Normal
        }
    }
}

/// Something that happened, to be recorded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The kind of the object it happened to (`Package`), or `Server` for the server itself.
    pub kind: String,
    /// Empty for objects without one (the server).
    pub namespace: String,
    pub name: String,
    pub type_: EventType,
    /// Why, in one word (`Built`, `Renewed`, `Refused`).
    pub reason: String,
    pub message: String,
    /// The computer it concerns, if one does (a refused agent).
    pub computer: Option<String>,
}

impl Record {
    /// A `Normal` record about `kind` `namespace/name`.
    pub fn normal(kind: &str, namespace: &str, name: &str, reason: &str, message: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            type_: EventType::Normal,
            reason: reason.to_owned(),
            message: message.to_owned(),
            computer: None,
        }
    }

    /// A `Warning` record about `kind` `namespace/name`.
    pub fn warning(kind: &str, namespace: &str, name: &str, reason: &str, message: &str) -> Self {
        Self {
            type_: EventType::Warning,
            ..Self::normal(kind, namespace, name, reason, message)
        }
    }

    /// The same, about `computer`.
    pub fn on_computer(mut self, computer: &str) -> Self {
        self.computer = Some(computer.to_owned());
        self
    }

    /// A request of `computer` refused (a warning on `Computer/NAME`, reason [`REFUSED`]).
    pub fn refused(computer: &str, message: &str) -> Self {
        Self::warning("Computer", "", computer, REFUSED, message).on_computer(computer)
    }
}

/// One event as `tessera events` and `/api/v1/events` show it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoggedEvent {
    /// Where this event stands in the merged view ([`Cursor`]): pass it as `after` to get
    /// what came since.
    pub id: String,
    /// RFC 3339.
    pub at: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: EventType,
    pub reason: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub computer: Option<String>,
}

/// A position in the merged view: the last journal row and the last deployment-history row
/// seen. Written `J-H`; `0-0` is the beginning.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Cursor {
    pub journal: i64,
    pub history: i64,
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.journal, self.history)
    }
}

impl std::str::FromStr for Cursor {
    type Err = DbError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || DbError::Cursor(text.to_owned());
        let (journal, history) = text.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            journal: journal.parse().map_err(|_| bad())?,
            history: history.parse().map_err(|_| bad())?,
        })
    }
}

/// Which events to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Only about objects of this kind (any case).
    pub kind: Option<String>,
    /// Only about objects of this name.
    pub name: Option<String>,
    /// Only about objects in this namespace.
    pub namespace: Option<String>,
    /// Only what came after this: then the oldest `limit` of those, so a follower skips
    /// nothing. Without it, the newest `limit`.
    pub after: Option<Cursor>,
    pub limit: usize,
}

/// The writer queue of one database (see the module's opening comment).
#[derive(Default)]
pub(super) struct Queue {
    sender: OnceLock<SyncSender<(Record, i64)>>,
    /// A write failed and none has succeeded since: logged once per episode.
    failing: AtomicBool,
    dropped: AtomicU64,
}

/// Records `record` as happening now, without waiting: it is queued for the database's
/// journal writer. When it cannot be written (queue full, disk full), it is dropped and
/// counted, and the first drop of an episode is logged.
pub fn record(db: &Arc<Database>, record: Record) {
    let now = jiff::Timestamp::now().as_second();
    let sender = db.journal.sender.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE);
        let weak = Arc::downgrade(db);
        let spawned = std::thread::Builder::new()
            .name("tessera-journal".into())
            .spawn(move || write_queued(&weak, &receiver));
        if let Err(error) = spawned {
            tracing::warn!(%error, "failed to start the journal writer; events are not recorded");
        }
        sender
    });
    match sender.try_send((record, now)) {
        Ok(()) => {}
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => db.journal_failed(None),
    }
}

/// The writer thread: records each queued record until the database goes away.
fn write_queued(db: &Weak<Database>, queue: &Receiver<(Record, i64)>) {
    while let Ok((record, at)) = queue.recv() {
        let Some(db) = db.upgrade() else { return };
        match db.record_event(&record, at) {
            Ok(_) => {
                if db.journal.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("events are recorded again");
                }
            }
            Err(error) => db.journal_failed(Some(&error)),
        }
    }
}

impl Database {
    /// Records `record` at `at` (Unix seconds) and trims the journal to [`JOURNAL_KEEP`]
    /// rows, in one transaction; returns its id. Blocks: most callers want [`record`].
    pub fn record_event(&self, record: &Record, at: i64) -> Result<i64, DbError> {
        self.transaction(|c| {
            let id = c
                .query_opt(
                    "INSERT INTO journal (at, kind, namespace, name, type, reason, message,
                         computer)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                    params![
                        at,
                        &record.kind,
                        &record.namespace,
                        &record.name,
                        record.type_.as_str(),
                        &record.reason,
                        &record.message,
                        record.computer.as_deref()
                    ],
                )?
                .map_or(Ok(0), |row| row.int(0))?;
            c.execute(
                "DELETE FROM journal WHERE id <= $1",
                params![id - JOURNAL_KEEP],
            )?;
            Ok(id)
        })
    }

    /// How many records were dropped, unwritten, since the start.
    pub fn dropped_events(&self) -> u64 {
        self.journal.dropped.load(Ordering::Relaxed)
    }

    fn journal_failed(&self, error: Option<&DbError>) {
        self.journal.dropped.fetch_add(1, Ordering::Relaxed);
        if !self.journal.failing.swap(true, Ordering::Relaxed) {
            let error = error.map_or_else(
                || "the journal's queue is full".to_owned(),
                |e| crate::error_chain(e),
            );
            tracing::warn!(%error, "an event could not be recorded; agents are still served, and dropped events are counted");
        }
    }

    /// The events `query` asks for, oldest first: the journal and the deployment history's
    /// offers and results, merged by time. Each event's `id` is the [`Cursor`] just past it.
    pub fn event_log(&self, query: &EventQuery) -> Result<Vec<LoggedEvent>, DbError> {
        let after = query.after.unwrap_or_default();
        let newest = query.after.is_none();
        let limit = i64::try_from(query.limit).unwrap_or(i64::MAX);
        let journal = self.journal_rows(query, after.journal, newest, limit)?;
        let history = if query
            .kind
            .as_deref()
            .is_none_or(|k| k.eq_ignore_ascii_case(HISTORY_KIND))
        {
            self.history_rows(query, after.history, newest, limit)?
        } else {
            Vec::new()
        };
        let mut merged = merge(journal, history, after);
        if newest {
            let skip = merged.len().saturating_sub(query.limit);
            merged.drain(..skip);
        } else {
            merged.truncate(query.limit);
        }
        Ok(merged)
    }

    fn journal_rows(
        &self,
        query: &EventQuery,
        after: i64,
        newest: bool,
        limit: i64,
    ) -> Result<Vec<(i64, LoggedEvent)>, DbError> {
        let lower_kind = query.kind.as_deref().map(str::to_ascii_lowercase);
        let mut values: Vec<Value<'_>> = vec![Value::Int(after)];
        let mut sql = String::from(
            "SELECT id, at, kind, namespace, name, type, reason, message, computer FROM journal
             WHERE id > $1",
        );
        if let Some(kind) = &lower_kind {
            values.push(Value::Text(kind));
            sql.push_str(&format!(" AND LOWER(kind) = ${}", values.len()));
        }
        if let Some(name) = &query.name {
            values.push(Value::Text(name));
            sql.push_str(&format!(" AND name = ${}", values.len()));
        }
        if let Some(namespace) = &query.namespace {
            values.push(Value::Text(namespace));
            sql.push_str(&format!(" AND namespace = ${}", values.len()));
        }
        values.push(Value::Int(limit));
        sql.push_str(&format!(
            " ORDER BY id {} LIMIT ${}",
            if newest { "DESC" } else { "ASC" },
            values.len()
        ));
        let mut rows = self.all(&sql, &values, |row| Ok((row.int(0)?, journal_event(row)?)))?;
        if newest {
            rows.reverse();
        }
        Ok(rows)
    }

    fn history_rows(
        &self,
        query: &EventQuery,
        after: i64,
        newest: bool,
        limit: i64,
    ) -> Result<Vec<(i64, LoggedEvent)>, DbError> {
        let order = self.event_order();
        let mut values: Vec<Value<'_>> = vec![Value::Int(after)];
        let mut sql = format!(
            "SELECT e.{order}, e.at, e.activation, e.package_id, e.state, e.code,
                 CASE
                     WHEN c.name IS NULL OR c.name = '' THEN e.device_id
                     WHEN EXISTS (SELECT 1 FROM computers AS d
                                  WHERE d.name = c.name AND d.device_id <> c.device_id)
                         THEN c.name || ' (' || e.device_id || ')'
                     ELSE c.name
                 END
             FROM events AS e LEFT JOIN computers AS c ON c.device_id = e.device_id
             WHERE e.{order} > $1 AND e.state IN ('notified', 'success', 'error')"
        );
        // Activations are stored as `namespace/name`.
        let (exact, suffix, prefix);
        match (&query.namespace, &query.name) {
            (Some(namespace), Some(name)) => {
                exact = format!("{namespace}/{name}");
                values.push(Value::Text(&exact));
                sql.push_str(&format!(" AND e.activation = ${}", values.len()));
            }
            (None, Some(name)) => {
                suffix = format!("/{name}");
                values.push(Value::Text(&suffix));
                let n = values.len();
                sql.push_str(&format!(
                    " AND substr(e.activation, length(e.activation) - length(CAST(${n} AS TEXT)) + 1) = ${n}"
                ));
            }
            (Some(namespace), None) => {
                prefix = format!("{namespace}/");
                values.push(Value::Text(&prefix));
                let n = values.len();
                sql.push_str(&format!(
                    " AND substr(e.activation, 1, length(CAST(${n} AS TEXT))) = ${n}"
                ));
            }
            (None, None) => {}
        }
        values.push(Value::Int(limit));
        sql.push_str(&format!(
            " ORDER BY e.{order} {} LIMIT ${}",
            if newest { "DESC" } else { "ASC" },
            values.len()
        ));
        let mut rows = self.all(&sql, &values, |row| Ok((row.int(0)?, history_event(row)?)))?;
        if newest {
            rows.reverse();
        }
        Ok(rows)
    }
}

/// A journal row (`id, at, kind, namespace, name, type, reason, message, computer`); its
/// `id` is set by [`merge`].
fn journal_event(row: &Row) -> Result<LoggedEvent, DbError> {
    let namespace = row.text(3)?;
    Ok(LoggedEvent {
        id: String::new(),
        at: rfc3339(row.int(1)?),
        kind: row.text(2)?,
        namespace: (!namespace.is_empty()).then_some(namespace),
        name: row.text(4)?,
        type_: EventType::parse(&row.text(5)?),
        reason: row.text(6)?,
        message: row.text(7)?,
        computer: row.opt_text(8)?,
    })
}

/// A deployment-history row (`seq, at, activation, package_id, state, code, computer`) as an
/// event of its Activation: an offer, or the agent's result.
fn history_event(row: &Row) -> Result<LoggedEvent, DbError> {
    let activation = row.text(2)?;
    let (namespace, name) = match activation.split_once('/') {
        Some((namespace, name)) => (Some(namespace.to_owned()), name.to_owned()),
        None => (None, activation.clone()),
    };
    let package_id = row.text(3)?;
    let computer = row.text(6)?;
    let code = row.opt_text(5)?;
    let (type_, reason, message) = match row.text(4)?.as_str() {
        "notified" => (
            EventType::Normal,
            HISTORY_REASONS[0],
            format!("package {package_id} offered to {computer}"),
        ),
        "success" => (
            EventType::Normal,
            HISTORY_REASONS[1],
            format!(
                "{computer} installed package {package_id}: {}",
                code.as_deref().unwrap_or("SUCCESS")
            ),
        ),
        _ => (
            EventType::Warning,
            HISTORY_REASONS[2],
            format!(
                "{computer} failed package {package_id}: {}",
                code.as_deref().unwrap_or("error")
            ),
        ),
    };
    Ok(LoggedEvent {
        id: String::new(),
        at: rfc3339(row.int(1)?),
        kind: HISTORY_KIND.to_owned(),
        namespace,
        name,
        type_,
        reason: reason.to_owned(),
        message,
        computer: Some(computer),
    })
}

fn rfc3339(at: i64) -> String {
    jiff::Timestamp::from_second(at)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// The two streams, each oldest first, merged by time (the journal first within a second),
/// each event given the cursor just past it.
fn merge(
    journal: Vec<(i64, LoggedEvent)>,
    history: Vec<(i64, LoggedEvent)>,
    mut cursor: Cursor,
) -> Vec<LoggedEvent> {
    let mut journal = journal.into_iter().peekable();
    let mut history = history.into_iter().peekable();
    let mut merged = Vec::new();
    loop {
        let from_journal = match (journal.peek(), history.peek()) {
            (Some((_, j)), Some((_, h))) => j.at <= h.at,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return merged,
        };
        let next = if from_journal {
            journal.next()
        } else {
            history.next()
        };
        let Some((id, mut event)) = next else {
            return merged;
        };
        if from_journal {
            cursor.journal = cursor.journal.max(id);
        } else {
            cursor.history = cursor.history.max(id);
        }
        event.id = cursor.to_string();
        merged.push(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::{Change, Facts, State};

    on_both!(
        the_journal_keeps_the_newest_rows,
        events_come_oldest_first_and_filter_by_object,
        offers_and_results_are_merged_in_by_time,
        two_computers_of_one_name_are_told_apart_by_device_id,
        after_a_cursor_comes_only_what_is_new,
    );

    /// `record` queues; the writer thread writes, or counts what it could not write.
    #[test]
    fn recording_is_queued_and_what_cannot_be_written_is_counted() {
        let db = Arc::new(Database::in_memory().unwrap());
        record(&db, built("queued"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while all(&db).is_empty() {
            assert!(std::time::Instant::now() < deadline, "never written");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(all(&db)[0].name, "queued");
        assert_eq!(db.dropped_events(), 0);
        // A journal that refuses writes (as a full disk would).
        db.with(|c| c.batch("DROP TABLE journal")).unwrap();
        record(&db, built("lost"));
        while db.dropped_events() == 0 {
            assert!(std::time::Instant::now() < deadline, "never counted");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(db.dropped_events(), 1);
    }

    fn built(name: &str) -> Record {
        Record::normal(
            "Package",
            "default",
            name,
            "Built",
            "package id 1, 1 fragments",
        )
    }

    fn all(db: &Database) -> Vec<LoggedEvent> {
        db.event_log(&EventQuery {
            limit: usize::MAX,
            ..EventQuery::default()
        })
        .unwrap()
    }

    fn the_journal_keeps_the_newest_rows(db: &Database) {
        let first = db.record_event(&built("a"), 1).unwrap();
        // Jump the ids as years of events would, without writing them all.
        let jumped = first + JOURNAL_KEEP - 1;
        db.with(|c| {
            c.execute(
                "INSERT INTO journal (id, at, kind, namespace, name, type, reason, message)
                 VALUES ($1, 2, 'Package', 'default', 'b', 'Normal', 'Built', '')",
                params![jumped],
            )?;
            // SQLite's AUTOINCREMENT follows an id written; a PostgreSQL sequence must be told.
            if c.dialect() == crate::store::sql::Dialect::Postgres {
                let sequence = "journal_id_seq";
                c.query(&format!("SELECT setval('{sequence}', $1)"), params![jumped])?;
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(all(db).len(), 2, "nothing trimmed yet");
        db.record_event(&built("c"), 3).unwrap();
        let names: Vec<String> = all(db).into_iter().map(|e| e.name).collect();
        assert_eq!(names, ["b", "c"], "the oldest row went");
    }

    fn events_come_oldest_first_and_filter_by_object(db: &Database) {
        db.record_event(&built("hello"), 10).unwrap();
        db.record_event(
            &Record::warning(
                "Package",
                "default",
                "broken",
                "BuildFailed",
                "no such file",
            ),
            11,
        )
        .unwrap();
        db.record_event(
            &Record::normal("Server", "", "tessera", "BecameLeader", "x"),
            12,
        )
        .unwrap();
        db.record_event(&built("hello"), 13).unwrap();
        let found = all(db);
        let reasons: Vec<&str> = found.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(reasons, ["Built", "BuildFailed", "BecameLeader", "Built"]);
        assert_eq!(found[0].at, "1970-01-01T00:00:10Z");
        assert_eq!(found[1].type_, EventType::Warning);
        assert_eq!(found[2].namespace, None);
        let hello = db
            .event_log(&EventQuery {
                kind: Some("package".into()),
                name: Some("hello".into()),
                limit: 10,
                ..EventQuery::default()
            })
            .unwrap();
        assert_eq!(hello.len(), 2);
        assert!(hello.iter().all(|e| e.name == "hello"));
        let newest = db
            .event_log(&EventQuery {
                limit: 1,
                ..EventQuery::default()
            })
            .unwrap();
        assert_eq!(
            (newest.len(), newest[0].at.as_str()),
            (1, "1970-01-01T00:00:13Z")
        );
    }

    fn offers_and_results_are_merged_in_by_time(db: &Database) {
        db.record_inventory(
            "pc-1-2026-01-01-00-00-00",
            &Facts {
                name: "pc-1".into(),
                ..Facts::default()
            },
            b"",
            1,
        )
        .unwrap();
        let device = "pc-1-2026-01-01-00-00-00";
        db.record_event(&built("hello"), 5).unwrap();
        db.apply(
            device,
            &[Change::Arm {
                activation: "default/hello".into(),
                package: "default/hello".into(),
                package_id: "42".into(),
                token: String::new(),
            }],
            6,
        )
        .unwrap();
        db.apply(
            device,
            &[Change::Notify {
                activation: "default/hello".into(),
            }],
            7,
        )
        .unwrap();
        db.record_event(&built("other"), 8).unwrap();
        db.record_result(
            device,
            "42",
            State::Error,
            Some("ERR_DOWNLOAD_INFO"),
            None,
            9,
        )
        .unwrap();
        let found = all(db);
        let seen: Vec<(&str, &str)> = found
            .iter()
            .map(|e| (e.kind.as_str(), e.reason.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("Package", "Built"),
                ("Activation", "Offered"),
                ("Package", "Built"),
                ("Activation", "Failed")
            ],
            "the armed (waiting) step is no event"
        );
        assert_eq!(found[1].computer.as_deref(), Some("pc-1"));
        assert_eq!(found[1].namespace.as_deref(), Some("default"));
        assert_eq!(found[3].type_, EventType::Warning);
        assert!(found[3].message.contains("ERR_DOWNLOAD_INFO"), "{found:?}");
        for (kind, namespace, count) in [
            (Some("Activation"), None, 2),
            (Some("Package"), None, 1),
            (None, Some("default"), 4),
            (None, Some("other"), 0),
        ] {
            let found = db
                .event_log(&EventQuery {
                    kind: kind.map(str::to_owned),
                    namespace: namespace.map(str::to_owned),
                    name: kind.map(|_| "hello".to_owned()),
                    limit: 10,
                    ..EventQuery::default()
                })
                .unwrap();
            assert_eq!(found.len(), count, "{kind:?} {namespace:?}: {found:?}");
        }
    }

    /// An OCS agent and Tessera's agent on one host both call themselves `vm`: their offers
    /// name the device too, and a computer alone with its name is named alone.
    fn two_computers_of_one_name_are_told_apart_by_device_id(db: &Database) {
        for (device, name) in [("vm-1", "vm"), ("vm-2", "vm"), ("pc-3", "pc")] {
            db.record_inventory(
                device,
                &Facts {
                    name: name.into(),
                    ..Facts::default()
                },
                b"",
                1,
            )
            .unwrap();
            for change in [
                Change::Arm {
                    activation: "default/hello".into(),
                    package: "default/hello".into(),
                    package_id: "42".into(),
                    token: String::new(),
                },
                Change::Notify {
                    activation: "default/hello".into(),
                },
            ] {
                db.apply(device, &[change], 2).unwrap();
            }
        }
        let mut named: Vec<String> = all(db).into_iter().filter_map(|e| e.computer).collect();
        named.sort();
        assert_eq!(named, ["pc", "vm (vm-1)", "vm (vm-2)"]);
    }

    fn after_a_cursor_comes_only_what_is_new(db: &Database) {
        db.record_event(&built("a"), 1).unwrap();
        db.record_event(&built("b"), 2).unwrap();
        let seen = all(db);
        let cursor: Cursor = seen[1].id.parse().unwrap();
        let since = |cursor: Cursor| {
            db.event_log(&EventQuery {
                after: Some(cursor),
                limit: 100,
                ..EventQuery::default()
            })
            .unwrap()
        };
        assert!(since(cursor).is_empty());
        db.record_event(&built("c"), 2).unwrap();
        let new = since(cursor);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].name, "c");
        assert!(since(new[0].id.parse().unwrap()).is_empty());
        assert!("12".parse::<Cursor>().is_err());
    }
}
