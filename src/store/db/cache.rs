//! The index of what decides an offer, per computer, in memory: its facts (name, OS,
//! tags, installed history, last inventory) and its deployment states, so that a PROLOG or
//! a check-in from a known computer reads no database.
//!
//! The database stays the durable record. The index is filled lazily, one database read on
//! a miss, so start-up reads nothing; and every write of computers and deployments through
//! [`Database`](super::Database) updates it (write-through) while still holding SQLite's
//! one connection, right after the commit: the index follows the database in commit order,
//! and never holds what a failed commit did not write. Only the last contact is written
//! behind: [`Index::touch`] notes it, and the notes are written in one transaction every
//! few seconds, before any read that shows it, and when the database is dropped.
//!
//! Entries are compact: no raw inventory, no addresses, no command output; the strings
//! many computers share (OS names, tags, package ids, activations, tokens, codes) are held
//! once (`Arc<str>` from one table), as are whole tag and history lists and what armed each
//! deployment. What is not kept is returned empty by [`Index::touch`], which is why it
//! serves only the callers that decide offers. Shared values no entry uses any more are
//! dropped by [`Index::prune`], so the tables follow the fleet, not its history.
//!
//! SQLite only: on PostgreSQL other replicas write the same rows, so the index is off and
//! every call answers from the database as before. Another process writing the same SQLite
//! file (no `tessera` command does; a second server would) is caught by `PRAGMA
//! data_version`, polled by the write-behind thread, which clears the index.

use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::computers::{CONTACT_PRECISION, Computer, Facts};
use super::deployments::{Change, Deployment, State};

/// Independent locks over the index, so async workers answering PROLOGs on different
/// computers rarely wait for one another (a lock is held for a lookup, well under a
/// microsecond; 16 is several times the workers of a large machine).
const SHARDS: usize = 16;

/// The most computers the index holds (under 800 bytes each as measured by
/// `an_entry_is_compact`, so some 400 MB at most): past it, computers not yet indexed are
/// answered from the database, as without the index. Five times the 100,000 computers one
/// server is sized for.
pub const MAX_INDEXED: usize = 500_000;

/// Part of the index, under its own lock: device id -> entry.
type Shard = Mutex<HashMap<Box<str>, Entry>>;

/// The in-memory index of one database (see the module's opening comment).
pub(super) struct Index {
    /// Off on PostgreSQL.
    on: bool,
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    /// Strings shared by many entries, held once.
    strings: Mutex<HashSet<Arc<str>>>,
    /// Lists of tags or installed package ids, held once however many computers have the
    /// same (a fleet's computers mostly do).
    lists: Mutex<HashSet<Arc<[Arc<str>]>>>,
    /// What a deployment was armed with, held once per activation, package id and token.
    arms: Mutex<HashSet<Arc<Armed>>>,
    /// Last contacts not yet written: device id -> Unix seconds.
    pending: Mutex<HashMap<Box<str>, i64>>,
    indexed: AtomicUsize,
}

/// One computer, as far as offers go.
struct Entry {
    name: Box<str>,
    os_name: Arc<str>,
    os_version: Arc<str>,
    tags: Arc<[Arc<str>]>,
    history: Arc<[Arc<str>]>,
    first_seen: i64,
    last_contact: i64,
    last_inventory: Option<i64>,
    /// By activation, as the database orders them.
    deployments: Vec<Slot>,
}

/// One deployment state, without the command's output.
struct Slot {
    armed: Arc<Armed>,
    state: State,
    code: Option<Arc<str>>,
    changed_at: i64,
    notified_at: Option<i64>,
}

/// What arms a deployment: the same for every computer an Affectation reaches.
#[derive(PartialEq, Eq, Hash)]
struct Armed {
    activation: Box<str>,
    package: Box<str>,
    package_id: Box<str>,
    token: Box<str>,
}

impl Index {
    /// An index that holds entries (`on`), or one that never does (PostgreSQL).
    pub(super) fn new(on: bool) -> Self {
        Self {
            on,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            strings: Mutex::default(),
            lists: Mutex::default(),
            arms: Mutex::default(),
            pending: Mutex::default(),
            indexed: AtomicUsize::new(0),
        }
    }

    /// Whether this index holds entries at all.
    pub(super) fn is_on(&self) -> bool {
        self.on
    }

    /// How many computers it holds.
    pub(super) fn len(&self) -> usize {
        self.indexed.load(Ordering::Relaxed)
    }

    fn shard(&self, device_id: &str) -> MutexGuard<'_, HashMap<Box<str>, Entry>> {
        // The remainder is below SHARDS, so it fits.
        let index = usize::try_from(self.hasher.hash_one(device_id) % SHARDS as u64).unwrap_or(0);
        lock(&self.shards[index])
    }

    /// A contact from `device_id` at `now`, answered from the index: the computer and its
    /// deployments, with the contact noted to be written behind when the last one written
    /// is `CONTACT_PRECISION` old (as [`Database::contact`](super::Database::contact)
    /// writes it). `None` when the computer is not indexed.
    pub(super) fn touch(&self, device_id: &str, now: i64) -> Option<(Computer, Vec<Deployment>)> {
        if !self.on {
            return None;
        }
        let mut shard = self.shard(device_id);
        let entry = shard.get_mut(device_id)?;
        if !(0..CONTACT_PRECISION).contains(&(now - entry.last_contact)) {
            entry.last_contact = now;
            lock(&self.pending).insert(device_id.into(), now);
        }
        Some(entry.view(device_id))
    }

    /// The computer and its deployments as indexed, if it is.
    #[cfg(test)]
    pub(super) fn view(&self, device_id: &str) -> Option<(Computer, Vec<Deployment>)> {
        let shard = self.shard(device_id);
        shard.get(device_id).map(|entry| entry.view(device_id))
    }

    /// Indexes `computer` with `deployments`, as just read from the database (call it
    /// holding the connection, so no write comes between the read and this).
    pub(super) fn fill(&self, computer: &Computer, deployments: &[Deployment]) {
        if !self.on || self.len() >= MAX_INDEXED {
            return;
        }
        let mut entry = Entry {
            name: computer.name.as_str().into(),
            os_name: self.shared(&computer.os_name),
            os_version: self.shared(&computer.os_version),
            tags: self.list(&computer.tags),
            history: self.list(&computer.history),
            first_seen: computer.first_seen,
            last_contact: computer.last_contact,
            last_inventory: computer.last_inventory,
            deployments: deployments.iter().map(|d| self.slot(d)).collect(),
        };
        // A contact noted but not yet written is newer than what was read.
        if let Some(noted) = lock(&self.pending).get(computer.device_id.as_str()) {
            entry.last_contact = entry.last_contact.max(*noted);
        }
        let mut shard = self.shard(&computer.device_id);
        if shard
            .insert(computer.device_id.as_str().into(), entry)
            .is_none()
        {
            self.indexed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An inventory (or a check-in's facts) committed for `device_id` at `now`.
    pub(super) fn facts(&self, device_id: &str, facts: &Facts, now: i64) {
        if !self.on {
            return;
        }
        let (os_name, os_version) = (self.shared(&facts.os_name), self.shared(&facts.os_version));
        let (tags, history) = (self.list(&facts.tags), self.list(&facts.history));
        let mut shard = self.shard(device_id);
        let Some(entry) = shard.get_mut(device_id) else {
            return;
        };
        entry.name = facts.name.as_str().into();
        entry.os_name = os_name;
        entry.os_version = os_version;
        entry.tags = tags;
        entry.history = history;
        entry.last_contact = entry.last_contact.max(now);
        entry.last_inventory = Some(now);
    }

    /// `changes` committed to the deployments of `device_id` at `now`: the same upserts
    /// and notifications as the statements of [`Database::apply`](super::Database::apply).
    pub(super) fn apply(&self, device_id: &str, changes: &[Change], now: i64) {
        if !self.on || changes.is_empty() {
            return;
        }
        let slots: Vec<Option<Slot>> = changes
            .iter()
            .map(|change| match change {
                Change::Arm {
                    activation,
                    package,
                    package_id,
                    token,
                } => Some(self.armed(activation, package, package_id, token, None, now)),
                Change::ArmSettled {
                    activation,
                    package,
                    package_id,
                    token,
                    code,
                } => Some(self.armed(activation, package, package_id, token, Some(code), now)),
                Change::Notify { .. } => None,
            })
            .collect();
        let mut shard = self.shard(device_id);
        let Some(entry) = shard.get_mut(device_id) else {
            return;
        };
        for (change, slot) in changes.iter().zip(slots) {
            match (change, slot) {
                (_, Some(slot)) => {
                    match entry
                        .deployments
                        .binary_search_by(|d| d.armed.activation.cmp(&slot.armed.activation))
                    {
                        Ok(at) => entry.deployments[at] = slot,
                        Err(at) => entry.deployments.insert(at, slot),
                    }
                }
                (Change::Notify { activation }, None) => {
                    if let Some(slot) = entry
                        .deployments
                        .iter_mut()
                        .find(|d| &*d.armed.activation == activation.as_str())
                        .filter(|d| d.state == State::Waiting)
                    {
                        slot.state = State::Notified;
                        slot.changed_at = now;
                        slot.notified_at = Some(now);
                    }
                }
                _ => {}
            }
        }
    }

    /// Forgets `device_id`: its next contact reads the database.
    pub(super) fn evict(&self, device_id: &str) {
        if self.shard(device_id).remove(device_id).is_some() {
            self.indexed.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets every computer (another process wrote the database).
    pub(super) fn clear(&self) {
        for shard in &*self.shards {
            let mut shard = lock(shard);
            self.indexed.fetch_sub(shard.len(), Ordering::Relaxed);
            shard.clear();
        }
    }

    /// Takes the contacts noted since the last call, to write.
    pub(super) fn take_pending(&self) -> Vec<(Box<str>, i64)> {
        let mut pending = lock(&self.pending);
        if pending.is_empty() {
            return Vec::new();
        }
        pending.drain().collect()
    }

    /// Puts back contacts whose write failed (a newer note wins).
    pub(super) fn restore_pending(&self, contacts: Vec<(Box<str>, i64)>) {
        let mut pending = lock(&self.pending);
        for (device, at) in contacts {
            let noted = pending.entry(device).or_insert(at);
            *noted = (*noted).max(at);
        }
    }

    /// Drops the shared values no entry holds any more (a history list replaced by a new
    /// inventory, a package id no longer armed).
    pub(super) fn prune(&self) {
        // Held by the table alone: a count of one.
        lock(&self.arms).retain(|a| Arc::strong_count(a) > 1);
        lock(&self.lists).retain(|l| Arc::strong_count(l) > 1);
        lock(&self.strings).retain(|s| Arc::strong_count(s) > 1);
    }

    /// Whether contacts wait to be written.
    pub(super) fn has_pending(&self) -> bool {
        self.on && !lock(&self.pending).is_empty()
    }

    fn armed(
        &self,
        activation: &str,
        package: &str,
        package_id: &str,
        token: &str,
        code: Option<&str>,
        now: i64,
    ) -> Slot {
        Slot {
            armed: self.armed_with(activation, package, package_id, token),
            state: if code.is_some() {
                State::Success
            } else {
                State::Waiting
            },
            code: code.map(|c| self.shared(c)),
            changed_at: now,
            notified_at: None,
        }
    }

    fn slot(&self, d: &Deployment) -> Slot {
        Slot {
            armed: self.armed_with(&d.activation, &d.package, &d.package_id, &d.token),
            state: d.state,
            code: d.code.as_deref().map(|c| self.shared(c)),
            changed_at: d.changed_at,
            notified_at: d.notified_at,
        }
    }

    /// `items` as a list held once however many entries have the same.
    fn list(&self, items: &[String]) -> Arc<[Arc<str>]> {
        let shared: Vec<Arc<str>> = items.iter().map(|i| self.shared(i)).collect();
        let mut lists = lock(&self.lists);
        if let Some(found) = lists.get(shared.as_slice()) {
            return found.clone();
        }
        let new: Arc<[Arc<str>]> = shared.into();
        lists.insert(new.clone());
        new
    }

    /// The arming of a deployment, held once however many entries share it.
    fn armed_with(
        &self,
        activation: &str,
        package: &str,
        package_id: &str,
        token: &str,
    ) -> Arc<Armed> {
        let armed = Armed {
            activation: activation.into(),
            package: package.into(),
            package_id: package_id.into(),
            token: token.into(),
        };
        let mut arms = lock(&self.arms);
        if let Some(found) = arms.get(&armed) {
            return found.clone();
        }
        let new = Arc::new(armed);
        arms.insert(new.clone());
        new
    }

    /// `text`, held once however many entries use it.
    fn shared(&self, text: &str) -> Arc<str> {
        let mut strings = lock(&self.strings);
        if let Some(found) = strings.get(text) {
            return found.clone();
        }
        let new: Arc<str> = Arc::from(text);
        strings.insert(new.clone());
        new
    }
}

impl Entry {
    fn view(&self, device_id: &str) -> (Computer, Vec<Deployment>) {
        let computer = Computer {
            device_id: device_id.to_owned(),
            name: self.name.to_string(),
            os_name: self.os_name.to_string(),
            os_version: self.os_version.to_string(),
            tags: self.tags.iter().map(ToString::to_string).collect(),
            ip_addresses: Vec::new(),
            history: self.history.iter().map(ToString::to_string).collect(),
            first_seen: self.first_seen,
            last_contact: self.last_contact,
            last_inventory: self.last_inventory,
            address: None,
        };
        let deployments = self
            .deployments
            .iter()
            .map(|slot| Deployment {
                device_id: device_id.to_owned(),
                activation: slot.armed.activation.to_string(),
                package: slot.armed.package.to_string(),
                package_id: slot.armed.package_id.to_string(),
                token: slot.armed.token.to_string(),
                state: slot.state,
                code: slot.code.as_deref().map(str::to_owned),
                output: None,
                changed_at: slot.changed_at,
                notified_at: slot.notified_at,
            })
            .collect();
        (computer, deployments)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update leaves an entry whole before it can panic, so a poisoned lock is usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Seconds between two writes of the contacts noted in the index: a kill -9 loses at most
/// this much of "last contact" (never a result or an inventory, which are written before
/// the agent's answer), and a fleet of 100,000 polling hourly costs one transaction of
/// about 140 updates each time.
pub const WRITE_BEHIND_SECONDS: u64 = 5;
/// How often the write-behind thread asks SQLite whether another process wrote the file:
/// the longest an index entry can trail such a write.
const WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

impl super::Database {
    /// A contact from `device_id` at `now`, answered from memory without waiting for the
    /// database: the computer (facts only: no addresses) and its deployments (no output),
    /// the contact written behind. `None` when the computer is not indexed yet, on
    /// PostgreSQL, or when the database is in trouble: then ask [`Self::contact`].
    pub fn contact_in_memory(
        &self,
        device_id: &str,
        now: i64,
    ) -> Option<(Computer, Vec<Deployment>)> {
        if !self.index.is_on() || self.still_opened().is_err() {
            return None;
        }
        self.index.touch(device_id, now)
    }

    /// How many computers the in-memory index holds.
    pub fn indexed(&self) -> usize {
        self.index.len()
    }

    /// Writes the contacts noted in memory, in one transaction; returns how many.
    pub fn write_contacts(&self) -> Result<usize, super::DbError> {
        let contacts = self.index.take_pending();
        if contacts.is_empty() {
            return Ok(0);
        }
        let written = self.transaction(|c| {
            for (device, at) in &contacts {
                c.execute(
                    "UPDATE computers SET last_contact = $1 WHERE device_id = $2
                         AND last_contact < $1",
                    crate::store::sql::params![*at, &**device],
                )?;
            }
            Ok(contacts.len())
        });
        if written.is_err() {
            self.index.restore_pending(contacts);
        }
        written
    }

    /// Writes the noted contacts first when there are any, so a read shows them.
    pub(super) fn contacts_written(&self) {
        if self.index.has_pending()
            && let Err(error) = self.write_contacts()
        {
            tracing::debug!(error = %crate::error_chain(&error), "failed to write the last contacts");
        }
    }

    /// Starts, once, the thread that writes the noted contacts every
    /// [`WRITE_BEHIND_SECONDS`] and clears the index when another process wrote the SQLite
    /// file. It ends when the database is dropped (which writes what is left).
    pub fn write_behind(db: &Arc<Self>) {
        if !db.index.is_on() {
            return;
        }
        db.behind.get_or_init(|| {
            db.watch_other_writers();
            let weak = Arc::downgrade(db);
            let spawned = std::thread::Builder::new()
                .name("tessera-write-behind".into())
                .spawn(move || {
                    let mut ticks = 0u64;
                    loop {
                        std::thread::sleep(WATCH_INTERVAL);
                        let Some(db) = weak.upgrade() else { return };
                        ticks += 1;
                        db.watch_other_writers();
                        if ticks.is_multiple_of(WRITE_BEHIND_SECONDS) {
                            db.contacts_written();
                            db.index.prune();
                        }
                    }
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "failed to start the write-behind thread; contacts are written when read");
            }
        });
    }

    /// Clears the index when another connection committed to the SQLite file since the
    /// last look (`PRAGMA data_version` changes only then).
    pub fn watch_other_writers(&self) {
        let super::Engine::Sqlite(connection) = &self.engine else {
            return;
        };
        let connection = Self::lock(connection);
        let Ok(version) =
            connection.query_row("PRAGMA data_version", [], |row| row.get::<_, i64>(0))
        else {
            return;
        };
        let mut seen = lock(&self.data_version);
        if seen.is_some_and(|seen| seen != version) {
            tracing::debug!(
                "another process wrote the state database: the in-memory index starts afresh"
            );
            self.index.clear();
        }
        *seen = Some(version);
    }
}

impl Drop for super::Database {
    fn drop(&mut self) {
        self.contacts_written();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::db::{Database, Filed};
    use crate::store::sql::params;

    const PC: &str = "pc-2026-01-01-00-00-00";

    fn arm(activation: &str, package_id: &str, token: &str) -> Change {
        Change::Arm {
            activation: activation.into(),
            package: format!("default/{activation}"),
            package_id: package_id.into(),
            token: token.into(),
        }
    }

    fn notify(activation: &str) -> Change {
        Change::Notify {
            activation: activation.into(),
        }
    }

    /// The index's view of `PC` is what the database holds, apart from what the index
    /// does not keep (addresses, output); and it is indexed.
    fn agrees(db: &Database) {
        let (mut computer, mut deployments) = db.computer(PC).unwrap().unwrap();
        computer.ip_addresses.clear();
        computer.address = None;
        for d in &mut deployments {
            d.output = None;
        }
        assert_eq!(db.index.view(PC), Some((computer, deployments)));
    }

    /// Every kind of write through the database keeps the index right: a contact, an
    /// inventory, arms (new, again, settled), a notification (only of a waiting state), a
    /// result (which evicts, then one read refills), and writes that change no indexed fact.
    #[test]
    fn the_index_follows_every_write() {
        let db = Database::in_memory().unwrap();
        db.contact(PC, 1_000).unwrap();
        agrees(&db);
        let facts = Facts {
            name: "lab-01".into(),
            os_name: "Debian GNU/Linux 12".into(),
            os_version: "12".into(),
            tags: vec!["lab".into(), "paris".into()],
            ip_addresses: vec!["10.0.0.5".into()],
            history: vec!["111".into()],
        };
        db.record_inventory(PC, &facts, b"raw", 1_010).unwrap();
        agrees(&db);
        db.apply(
            PC,
            &[arm("hello", "42", ""), arm("tools", "7", "t=1")],
            1_020,
        )
        .unwrap();
        agrees(&db);
        db.apply(PC, &[notify("hello"), notify("other")], 1_030)
            .unwrap();
        agrees(&db);
        // Notified already: a second notification changes nothing, here or there.
        db.apply(PC, &[notify("hello")], 1_040).unwrap();
        agrees(&db);
        let settled = Change::ArmSettled {
            activation: "baseline".into(),
            package: "default/baseline".into(),
            package_id: "111".into(),
            token: String::new(),
            code: "SUCCESS_ALREADY_IN_HISTORY".into(),
        };
        db.apply(PC, &[settled, arm("tools", "8", "t=2")], 1_050)
            .unwrap();
        agrees(&db);
        db.set_address(PC, Some("192.0.2.7")).unwrap();
        db.set_notify_address(PC, Some("192.0.2.7:9999")).unwrap();
        agrees(&db);
        let filed = db
            .record_result(PC, "42", State::Error, Some("EXIT_CODE_1"), None, 1_060)
            .unwrap();
        assert!(matches!(filed, Filed::Recorded(_)));
        assert!(db.index.view(PC).is_none(), "a result evicts");
        let (_, deployments) = db.contact(PC, 1_070).unwrap();
        assert_eq!(deployments[1].code.as_deref(), Some("EXIT_CODE_1"));
        agrees(&db);
        // A result that files nothing leaves the entry as it is.
        db.record_result(PC, "999", State::Success, Some("SUCCESS"), None, 1_080)
            .unwrap();
        agrees(&db);
    }

    /// A contact from memory writes nothing; the contacts noted are written in one
    /// transaction, before any read that shows them, and when the database is dropped.
    #[test]
    fn last_contacts_are_written_behind_before_reads_and_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let written = |db: &Database| -> i64 {
            db.with(|c| {
                c.query_opt(
                    "SELECT last_contact FROM computers WHERE device_id = $1",
                    params![PC],
                )?
                .map_or(Ok(0), |row| row.int(0))
            })
            .unwrap()
        };
        {
            let db = Database::open(&path).unwrap();
            db.contact(PC, 1_000).unwrap();
            let (computer, _) = db.contact_in_memory(PC, 1_000 + CONTACT_PRECISION).unwrap();
            assert_eq!(computer.last_contact, 1_000 + CONTACT_PRECISION);
            assert_eq!(written(&db), 1_000, "not written yet");
            assert_eq!(
                db.computers().unwrap()[0].last_contact,
                1_060,
                "read shows it"
            );
            assert_eq!(written(&db), 1_060);
            db.contact(PC, 2_000).unwrap();
            assert_eq!(written(&db), 1_060);
            assert_eq!(db.write_contacts().unwrap(), 1);
            assert_eq!(written(&db), 2_000);
            db.contact(PC, 3_000).unwrap();
        }
        let db = Database::open(&path).unwrap();
        assert_eq!(written(&db), 3_000, "written when dropped");
    }

    /// Another process writing the same SQLite file is seen at the next look
    /// (`PRAGMA data_version`): the index starts afresh and the next contact reads the
    /// new state. Its own writes never clear it.
    #[test]
    fn a_write_by_another_process_clears_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let server = Database::open(&path).unwrap();
        server.contact(PC, 1_000).unwrap();
        server.watch_other_writers();
        server.apply(PC, &[arm("hello", "42", "")], 1_001).unwrap();
        server.watch_other_writers();
        assert_eq!(server.indexed(), 1, "its own write keeps the index");
        let other = Database::open(&path).unwrap();
        other.apply(PC, &[notify("hello")], 1_002).unwrap();
        let (_, stale) = server.contact_in_memory(PC, 1_003).unwrap();
        assert_eq!(stale[0].state, State::Waiting, "until the next look");
        server.watch_other_writers();
        assert_eq!(server.indexed(), 0);
        assert!(server.contact_in_memory(PC, 1_003).is_none());
        let (_, fresh) = server.contact(PC, 1_003).unwrap();
        assert_eq!(fresh[0].state, State::Notified);
        agrees(&server);
    }

    /// The index holds nothing on PostgreSQL, whose rows other replicas write.
    #[test]
    fn postgres_answers_every_contact_from_the_database() {
        let Some(db) = crate::store::db::tests::scratch_postgres() else {
            return;
        };
        db.contact(PC, 1_000).unwrap();
        assert!(db.contact_in_memory(PC, 1_000).is_none());
        assert_eq!(db.indexed(), 0);
    }

    /// What one computer costs in the index, with a typical fleet's facts: 3 tags, 20
    /// installed package ids, 4 deployments. Printed (`--nocapture`), for the README.
    #[test]
    fn an_entry_is_compact() {
        let index = Index::new(true);
        let computers = 20_000;
        let rss = || -> i64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
                .unwrap_or(0)
                * 1024
        };
        let history: Vec<String> = (0..20).map(|n| format!("17368490{n:02}")).collect();
        let deployments: Vec<Deployment> = ["baseline", "check-disk", "hello", "lab-tools"]
            .iter()
            .map(|a| Deployment {
                device_id: String::new(),
                activation: format!("default/{a}"),
                package: format!("default/{a}"),
                package_id: "1736849000".into(),
                token: String::new(),
                state: State::Notified,
                code: None,
                output: None,
                changed_at: 1,
                notified_at: Some(1),
            })
            .collect();
        let before = rss();
        for n in 0..computers {
            let computer = Computer {
                device_id: format!("desktop-{n:06}-2026-01-01-00-00-00"),
                name: format!("desktop-{n:06}"),
                os_name: "Debian GNU/Linux 12".into(),
                os_version: "12".into(),
                tags: vec!["lab".into(), "paris".into(), format!("floor-{}", n % 8)],
                history: history.clone(),
                last_inventory: Some(1),
                ..Computer::default()
            };
            index.fill(&computer, &deployments);
        }
        let per = (rss() - before) / computers;
        println!("index: {per} bytes per computer ({computers} computers)");
        assert_eq!(index.len(), 20_000);
        // A generous bound: the point is no raw inventory and no copies of shared strings.
        assert!(per < 2_000, "{per} bytes per computer");
    }

    /// Shared values no entry holds any more are dropped, the ones in use kept.
    #[test]
    fn shared_values_follow_the_fleet() {
        let index = Index::new(true);
        let computer = |history: &str| Computer {
            device_id: PC.into(),
            history: vec![history.into()],
            ..Computer::default()
        };
        index.fill(&computer("111"), &[]);
        index.facts(
            PC,
            &Facts {
                history: vec!["222".into()],
                ..Facts::default()
            },
            1,
        );
        index.prune();
        let strings: Vec<String> = lock(&index.strings)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(strings.contains(&"222".to_owned()), "{strings:?}");
        assert!(!strings.contains(&"111".to_owned()), "{strings:?}");
        assert_eq!(
            lock(&index.lists).len(),
            2,
            "tags (none) and the new history"
        );
    }
}
