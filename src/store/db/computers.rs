//! Computers: contacts, inventories (their facts and the raw document) and the addresses
//! an agent is reached at.

use crate::store::sql::{Row, Sql, Value, params};

use super::deployments::{State, deployments_between, deployments_in, deployments_of};
use super::{Database, DbError, Deployment};

/// Seconds within which a second contact of a computer is not written again.
pub const CONTACT_PRECISION: i64 = 60;

/// Computers per page of [`Database::fleet_pages`]. A page, with its deployments, is a few
/// hundred kilobytes whatever the fleet's size. The whole fleet read at once, twice a
/// reconcile pass (counts, arming) and a pass a second while agents report, made resident
/// memory grow with the fleet and stay (the allocator kept the peaks): 1.5 GiB after 50,000
/// computers registered, 56 MiB paged (`cargo bench --bench ingest`). Paging costs one more
/// query per 500 computers.
pub const FLEET_PAGE: i64 = 500;

/// A computer as its agent last described it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// Which computers `tessera computers` and `GET /api/v1/computers` list. Every filter given
/// must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetFilter {
    /// A name glob (`*`, `?`), compared without case.
    pub name: Option<String>,
    /// A tag the computer has, exactly.
    pub tag: Option<String>,
    /// Part of the OS name, compared without case.
    pub os: Option<String>,
    /// `namespace/name` of an Activation: only the computers it targets.
    pub activation: Option<String>,
    /// Only the computers with a deployment in this state (of `activation`, when given).
    pub state: Option<State>,
    /// Only the computers whose last contact came before this (Unix seconds): those gone
    /// silent.
    pub contact_before: Option<i64>,
}

/// How many computers gave one result code for one activation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeCount {
    /// `namespace/name` of the Activation.
    pub activation: String,
    /// The agent's code, verbatim (`SUCCESS`, `ERR_DOWNLOAD_INFO`, `EXIT_CODE_1`).
    pub code: String,
    pub computers: i64,
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

impl Database {
    /// Records a contact from `device_id` at `now` and returns the computer (as it was
    /// before this contact's inventory, if any) with its deployments. The last contact is
    /// kept to `CONTACT_PRECISION`: a reconnect storm costs reads, not writes.
    pub fn contact(
        &self,
        device_id: &str,
        now: i64,
    ) -> Result<(Computer, Vec<Deployment>), DbError> {
        if let Some(known) = self.contact_in_memory(device_id, now) {
            return Ok(known);
        }
        let known = self.with(|c| {
            let Some(known) = computer(c, device_id)? else {
                return Ok(None);
            };
            if !(0..CONTACT_PRECISION).contains(&(now - known.last_contact)) {
                return Ok(None);
            }
            let deployments = deployments_of(c, device_id)?;
            // Read holding the connection: no write comes between the read and the index.
            self.index.fill(&known, &deployments);
            Ok(Some((known, deployments)))
        })?;
        if let Some(known) = known {
            return Ok(known);
        }
        self.transaction_then(
            |c| {
                c.execute(
                    "INSERT INTO computers (device_id, first_seen, last_contact) VALUES ($1, $2, $2)
                     ON CONFLICT (device_id) DO UPDATE SET last_contact = $2",
                    params![device_id, now],
                )?;
                let computer = computer(c, device_id)?.unwrap_or_default();
                Ok((computer, deployments_of(c, device_id)?))
            },
            |(computer, deployments)| self.index.fill(computer, deployments),
        )
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
        self.transaction_then(
            |c| {
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
            },
            |_| self.index.facts(device_id, facts, now),
        )
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
        self.contacts_written();
        self.with(|c| {
            let Some(found) = computer(c, device_id)? else {
                return Ok(None);
            };
            Ok(Some((found, deployments_of(c, device_id)?)))
        })
    }

    /// Computers whose device id or name is `wanted` (names are not unique).
    pub fn find_computers(&self, wanted: &str) -> Result<Vec<Computer>, DbError> {
        self.contacts_written();
        self.all(
            &format!(
                "SELECT {COMPUTER_COLUMNS} FROM computers
                 WHERE device_id = $1 OR lower(name) = lower($1) ORDER BY device_id"
            ),
            params![wanted],
            computer_row,
        )
    }

    /// Every computer with its deployments, handed to `visit` a page of [`FLEET_PAGE`]
    /// computers at a time, in device id order: memory stays one page whatever the fleet,
    /// and agents' writes go ahead between pages. Each page is read in one transaction, so
    /// a computer and its deployments agree; pages are apart in time, as counts may be.
    /// `visit` runs outside the transaction (it may write), and its error ends the reading.
    pub fn fleet_pages(
        &self,
        mut visit: impl FnMut(&[Computer], &[Deployment]) -> Result<(), DbError>,
    ) -> Result<(), DbError> {
        self.contacts_written();
        let mut after: Option<String> = None;
        loop {
            let (computers, deployments) = self.read(|c| {
                let rows = match &after {
                    None => c.query(
                        &format!(
                            "SELECT {COMPUTER_COLUMNS} FROM computers ORDER BY device_id LIMIT $1"
                        ),
                        params![FLEET_PAGE],
                    )?,
                    Some(after) => c.query(
                        &format!(
                            "SELECT {COMPUTER_COLUMNS} FROM computers WHERE device_id > $1
                             ORDER BY device_id LIMIT $2"
                        ),
                        params![after.as_str(), FLEET_PAGE],
                    )?,
                };
                let computers = rows
                    .iter()
                    .map(computer_row)
                    .collect::<Result<Vec<_>, _>>()?;
                let deployments = match (computers.first(), computers.last()) {
                    (Some(first), Some(last)) => {
                        deployments_between(c, &first.device_id, &last.device_id)?
                    }
                    _ => Vec::new(),
                };
                Ok((computers, deployments))
            })?;
            if computers.is_empty() {
                return Ok(());
            }
            visit(&computers, &deployments)?;
            if computers.len() < FLEET_PAGE as usize {
                return Ok(());
            }
            after = computers.last().map(|c| c.device_id.clone());
        }
    }

    /// Up to `limit` computers matching `filter` after the device id `after`, in device id
    /// order, each with its deployments: one page of the fleet for the admin API, whose
    /// next page starts after the last device id of this one. Reads the computers' primary
    /// key in order and each one's deployments by theirs, so a page costs the same at any
    /// depth of a fleet of any size.
    pub fn fleet_page(
        &self,
        filter: &FleetFilter,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<(Computer, Vec<Deployment>)>, DbError> {
        self.contacts_written();
        let mut texts = Vec::new();
        let mut clauses = Vec::new();
        if let Some(after) = after {
            let p = placeholder(&mut texts, after.to_owned());
            clauses.push(format!("device_id > {p}"));
        }
        if let Some(name) = &filter.name {
            let p = placeholder(&mut texts, glob_to_like(&name.to_lowercase()));
            clauses.push(format!("lower(name) LIKE {p} ESCAPE '\\'"));
        }
        if let Some(tag) = &filter.tag {
            // Tags are stored one a line: the tag must be a whole line.
            let newline = placeholder(&mut texts, "\n".to_owned());
            let p = placeholder(&mut texts, format!("%\n{}\n%", escape_like(tag)));
            clauses.push(format!(
                "(CAST({newline} AS TEXT) || tags || CAST({newline} AS TEXT)) LIKE {p} ESCAPE '\\'"
            ));
        }
        if let Some(os) = &filter.os {
            let p = placeholder(&mut texts, format!("%{}%", escape_like(&os.to_lowercase())));
            clauses.push(format!("lower(os_name) LIKE {p} ESCAPE '\\'"));
        }
        if let Some(before) = filter.contact_before {
            // An integer, not a text: written into the statement, never a parameter.
            clauses.push(format!("last_contact < {before}"));
        }
        if filter.activation.is_some() || filter.state.is_some() {
            let mut inner = String::from(
                "EXISTS (SELECT 1 FROM deployments d WHERE d.device_id = computers.device_id",
            );
            if let Some(activation) = &filter.activation {
                let p = placeholder(&mut texts, activation.clone());
                inner.push_str(&format!(" AND d.activation = {p}"));
            }
            if let Some(state) = filter.state {
                let p = placeholder(&mut texts, state.as_str().to_owned());
                inner.push_str(&format!(" AND d.state = {p}"));
            }
            inner.push(')');
            clauses.push(inner);
        }
        let filter_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let sql = format!(
            "SELECT {COMPUTER_COLUMNS} FROM computers {filter_sql} ORDER BY device_id LIMIT ${}",
            texts.len() + 1
        );
        let mut values: Vec<Value<'_>> = texts.iter().map(|t| Value::from(t.as_str())).collect();
        values.push(Value::Int(limit.clamp(1, FLEET_PAGE)));
        self.read(|c| {
            let computers = c
                .query(&sql, &values)?
                .iter()
                .map(computer_row)
                .collect::<Result<Vec<_>, _>>()?;
            let mut deployments = deployments_of_all(c, &computers)?;
            Ok(computers
                .into_iter()
                .map(|computer| {
                    let mine = deployments.remove(&computer.device_id).unwrap_or_default();
                    (computer, mine)
                })
                .collect())
        })
    }

    /// How many computers gave each result code, per activation (of `activation` only,
    /// when given): the OCS console's statistics. Most frequent first within an activation.
    pub fn result_codes(&self, activation: Option<&str>) -> Result<Vec<CodeCount>, DbError> {
        let row = |row: &Row| {
            Ok(CodeCount {
                activation: row.text(0)?,
                code: row.text(1)?,
                computers: row.int(2)?,
            })
        };
        const SELECT: &str =
            "SELECT activation, code, COUNT(*) FROM deployments WHERE code IS NOT NULL";
        const GROUP: &str = "GROUP BY activation, code ORDER BY activation, COUNT(*) DESC, code";
        match activation {
            Some(activation) => self.all(
                &format!("{SELECT} AND activation = $1 {GROUP}"),
                params![activation],
                row,
            ),
            None => self.all(&format!("{SELECT} {GROUP}"), &[], row),
        }
    }

    /// Every computer, by device id.
    pub fn computers(&self) -> Result<Vec<Computer>, DbError> {
        self.contacts_written();
        self.all(
            &format!("SELECT {COMPUTER_COLUMNS} FROM computers ORDER BY device_id"),
            &[],
            computer_row,
        )
    }
}

const COMPUTER_COLUMNS: &str = "device_id, name, os_name, os_version, tags, ip_addresses, history, \
     first_seen, last_contact, last_inventory, address";

/// Adds `text` to the parameters of a statement and returns its placeholder (`$3`).
fn placeholder(texts: &mut Vec<String>, text: String) -> String {
    texts.push(text);
    format!("${}", texts.len())
}

/// `text` with LIKE's wildcards and its escape character escaped (by `\\`).
fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A name glob (`*` any run, `?` one character) as a LIKE pattern escaped by `\\`.
fn glob_to_like(glob: &str) -> String {
    escape_like(glob).replace('*', "%").replace('?', "_")
}

/// The deployments of `computers`, by device id, in one query (a page is at most
/// [`FLEET_PAGE`] computers, as many parameters).
fn deployments_of_all(
    c: &mut dyn Sql,
    computers: &[Computer],
) -> Result<std::collections::HashMap<String, Vec<Deployment>>, DbError> {
    let mut found: std::collections::HashMap<String, Vec<Deployment>> =
        std::collections::HashMap::new();
    if computers.is_empty() {
        return Ok(found);
    }
    let list = (1..=computers.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let values: Vec<Value<'_>> = computers
        .iter()
        .map(|c| Value::from(c.device_id.as_str()))
        .collect();
    for deployment in deployments_in(c, &list, &values)? {
        found
            .entry(deployment.device_id.clone())
            .or_default()
            .push(deployment);
    }
    Ok(found)
}

fn lines(text: &str) -> Vec<String> {
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
        tags: lines(&row.text(4)?),
        ip_addresses: lines(&row.text(5)?),
        history: lines(&row.text(6)?),
        first_seen: row.int(7)?,
        last_contact: row.int(8)?,
        last_inventory: row.opt_int(9)?,
        address: row.opt_text(10)?,
    })
}

pub(super) fn computer(c: &mut dyn Sql, device_id: &str) -> Result<Option<Computer>, DbError> {
    c.query_opt(
        &format!("SELECT {COMPUTER_COLUMNS} FROM computers WHERE device_id = $1"),
        params![device_id],
    )?
    .map(|row| computer_row(&row))
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    on_both!(
        a_contact_within_the_precision_writes_nothing_and_a_later_one_does,
        inventories_replace_the_facts_and_keep_the_raw_document,
        the_fleet_is_read_in_pages_each_with_its_own_deployments,
        a_fleet_page_holds_only_the_computers_every_filter_selects,
        result_codes_are_counted_per_activation_most_frequent_first,
    );

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

    fn the_fleet_is_read_in_pages_each_with_its_own_deployments(db: &Database) {
        use crate::store::db::Change;
        // Two full pages and a part: ids of different lengths, so text order is not
        // insertion order.
        let total = 2 * FLEET_PAGE as usize + 7;
        for n in 0..total {
            let device = format!("pc-{n}");
            db.contact(&device, 1_000).unwrap();
            let arm = |activation: &str| Change::Arm {
                activation: activation.into(),
                package: "default/hello".into(),
                package_id: "1".into(),
                token: String::new(),
            };
            // Every third computer has no deployment, the others one or two.
            let changes = match n % 3 {
                0 => vec![],
                1 => vec![arm("default/hello")],
                _ => vec![arm("default/hello"), arm("default/tools")],
            };
            db.apply(&device, &changes, 1_000).unwrap();
        }
        let mut pages = Vec::new();
        let mut seen = Vec::new();
        let mut deployments = 0;
        db.fleet_pages(|computers, rows| {
            pages.push(computers.len());
            assert!(
                rows.iter()
                    .all(|d| computers.iter().any(|c| c.device_id == d.device_id))
            );
            deployments += rows.len();
            seen.extend(computers.iter().map(|c| c.device_id.clone()));
            Ok(())
        })
        .unwrap();
        assert_eq!(pages, [FLEET_PAGE as usize, FLEET_PAGE as usize, 7]);
        let all: Vec<String> = db
            .computers()
            .unwrap()
            .into_iter()
            .map(|c| c.device_id)
            .collect();
        assert_eq!(seen, all, "each computer once, in device id order");
        assert_eq!(deployments, db.deployments().unwrap().len());
    }

    /// Three lab computers (one `a_b%` that LIKE's wildcards must not match by accident)
    /// and a laptop; hello failed on two, with two codes.
    fn small_fleet(db: &Database) {
        use crate::store::db::Change;
        for (device, name, os, tags) in [
            ("lab-01-x", "lab-01", "Debian GNU/Linux", "lab"),
            ("lab-02-x", "LAB-02", "Debian GNU/Linux", "lab\nparis"),
            ("odd-x", "a_b%", "Windows", "laboratory"),
            ("laptop-x", "laptop", "Windows", "roaming"),
        ] {
            let facts = Facts {
                name: name.into(),
                os_name: os.into(),
                tags: lines(tags),
                ..Facts::default()
            };
            db.record_inventory(device, &facts, b"", 1_000).unwrap();
            let arm = Change::Arm {
                activation: "default/hello".into(),
                package: "default/hello".into(),
                package_id: "1".into(),
                token: String::new(),
            };
            let notify = Change::Notify {
                activation: "default/hello".into(),
            };
            db.apply(device, &[arm, notify], 1_000).unwrap();
        }
        for (device, code) in [
            ("lab-01-x", "EXIT_CODE_1"),
            ("lab-02-x", "ERR_DOWNLOAD_INFO"),
        ] {
            db.record_result(device, "1", State::Error, Some(code), None, 1_001)
                .unwrap();
        }
        db.record_result(
            "laptop-x",
            "1",
            State::Success,
            Some("SUCCESS"),
            None,
            1_001,
        )
        .unwrap();
    }

    fn a_fleet_page_holds_only_the_computers_every_filter_selects(db: &Database) {
        small_fleet(db);
        let names = |filter: FleetFilter| -> Vec<String> {
            db.fleet_page(&filter, None, FLEET_PAGE)
                .unwrap()
                .into_iter()
                .map(|(c, _)| c.name)
                .collect()
        };
        assert_eq!(names(FleetFilter::default()).len(), 4);
        let glob = |g: &str| FleetFilter {
            name: Some(g.into()),
            ..FleetFilter::default()
        };
        assert_eq!(names(glob("lab-*")), ["lab-01", "LAB-02"]);
        assert_eq!(names(glob("a_b%")), ["a_b%"]);
        assert_eq!(names(glob("a?b*")), ["a_b%"]);
        assert!(names(glob("a_b")).is_empty());
        let tag = FleetFilter {
            tag: Some("lab".into()),
            ..FleetFilter::default()
        };
        assert_eq!(
            names(tag),
            ["lab-01", "LAB-02"],
            "a whole tag, not a prefix"
        );
        let os = FleetFilter {
            os: Some("debian".into()),
            ..FleetFilter::default()
        };
        assert_eq!(names(os).len(), 2);
        let failed = FleetFilter {
            activation: Some("default/hello".into()),
            state: Some(State::Error),
            ..FleetFilter::default()
        };
        assert_eq!(names(failed.clone()), ["lab-01", "LAB-02"]);
        let page = db.fleet_page(&failed, Some("lab-01-x"), 1).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].0.device_id, "lab-02-x");
        assert_eq!(page[0].1[0].code.as_deref(), Some("ERR_DOWNLOAD_INFO"));
        let waiting = FleetFilter {
            state: Some(State::Notified),
            ..FleetFilter::default()
        };
        assert_eq!(names(waiting), ["a_b%"]);
        db.contact("lab-01-x", 5_000).unwrap();
        let silent = FleetFilter {
            contact_before: Some(2_000),
            ..FleetFilter::default()
        };
        assert_eq!(names(silent).len(), 3, "lab-01 called since");
    }

    fn result_codes_are_counted_per_activation_most_frequent_first(db: &Database) {
        small_fleet(db);
        db.record_inventory("lab-03-x", &Facts::default(), b"", 1_000)
            .unwrap();
        let arm = crate::store::db::Change::Arm {
            activation: "default/hello".into(),
            package: "default/hello".into(),
            package_id: "1".into(),
            token: String::new(),
        };
        let notify = crate::store::db::Change::Notify {
            activation: "default/hello".into(),
        };
        db.apply("lab-03-x", &[arm, notify], 1_000).unwrap();
        db.record_result(
            "lab-03-x",
            "1",
            State::Error,
            Some("EXIT_CODE_1"),
            None,
            1_002,
        )
        .unwrap();
        let codes: Vec<(String, i64)> = db
            .result_codes(Some("default/hello"))
            .unwrap()
            .into_iter()
            .map(|c| (c.code, c.computers))
            .collect();
        assert_eq!(
            codes,
            [
                ("EXIT_CODE_1".to_owned(), 2),
                ("ERR_DOWNLOAD_INFO".to_owned(), 1),
                ("SUCCESS".to_owned(), 1)
            ]
        );
        assert!(db.result_codes(Some("default/other")).unwrap().is_empty());
        assert_eq!(db.result_codes(None).unwrap().len(), 3);
    }
}
