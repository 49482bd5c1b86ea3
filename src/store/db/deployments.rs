//! Deployments: one state per computer and activation, the changes the reconciler applies,
//! the agents' results filed on them, and the history of events.
//!
//! About 940 lines, a third of them the tests each engine runs. It stays whole because the
//! state machine's writes and the history they append share one transaction shape; its
//! next seam is the read side (the counts and the history reads) into `deployments/read.rs`.

use crate::store::sql::{Dialect, Row, Sql, params};

use super::computers::computer;
use super::{Database, DbError};

/// Where a computer stands with one activation.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
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
    pub const ALL: [Self; 6] = [
        Self::Waiting,
        Self::Notified,
        Self::Downloading,
        Self::Installing,
        Self::Success,
        Self::Error,
    ];

    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Notified => "notified",
            Self::Downloading => "downloading",
            Self::Installing => "installing",
            Self::Success => "success",
            Self::Error => "error",
        }
    }

    fn parse(text: &str) -> Self {
        Self::named(text).unwrap_or(Self::Error)
    }

    /// The state named `text` (`error`), if any.
    pub fn named(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the agent has yet to report on it.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            Self::Waiting | Self::Notified | Self::Downloading | Self::Installing
        )
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One computer's state with one activation.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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
    /// Filed on these activations' deployments, each with its history event; or, for a
    /// version that is no longer its deployment's (a Package edited, or its Activation
    /// removed, while the agent was downloading: a draining version), in the history of
    /// the activation it was offered through, under its own package id.
    Recorded(Vec<String>),
    /// Every deployment of the package on the computer has settled already (an agent
    /// resending a result whose answer it missed, a package settled from the agent's
    /// history, or a forgery): nothing changed.
    Settled,
    /// Offered once (a `notified` event in the history), but that offer no longer stands:
    /// its deployment was armed again for the same id (a redeploy token), or the agent has
    /// answered it already after another package id took its place. Nothing changed. (An
    /// offer still open when a new version took its place is answered: `Recorded`.)
    Superseded,
    /// Never offered to this computer: nothing changed.
    NotOffered,
    /// No such computer: nothing changed.
    UnknownDevice,
}

/// An offer a computer has not answered, as its history tells: it was notified of the
/// package (or reported downloading or installing it), and since then it has reported no
/// result on it, nor been armed again for it through the same activation. This is what a
/// superseded version is still served for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenOffer {
    pub device_id: String,
    /// `namespace/name` of the Activation it was offered through.
    pub activation: String,
    pub package_id: String,
    /// The computer's last word on it (notified, downloading, installing), Unix seconds: it
    /// is stale `staleAfter` later.
    pub since: i64,
}

/// Computers in one state, per activation and package id (see [`Database::state_counts`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateCount {
    pub activation: String,
    /// `namespace/name` of the Package.
    pub package: String,
    pub package_id: String,
    pub state: State,
    /// Notified before the stale limit.
    pub stale: bool,
    pub computers: i64,
}

/// One line of [`Database::fleet_counts`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetCount {
    pub activation: String,
    pub state: State,
    /// The agent's result code, verbatim (none before a result).
    pub code: Option<String>,
    pub computers: i64,
}

impl Database {
    /// Every open offer of `package_id` ([`OpenOffer`]), by device id.
    pub fn open_offers(&self, package_id: &str) -> Result<Vec<OpenOffer>, DbError> {
        let order = self.event_order();
        let steps = self.with(|c| {
            c.query(
                &format!(
                    "SELECT device_id, activation, state, at FROM events WHERE package_id = $1
                     ORDER BY device_id, at, {order}"
                ),
                params![package_id],
            )?
            .iter()
            .map(|row| {
                Ok((
                    row.text(0)?,
                    (row.text(1)?, State::parse(&row.text(2)?), row.int(3)?),
                ))
            })
            .collect::<Result<Vec<_>, DbError>>()
        })?;
        let mut offers = Vec::new();
        for device in steps.chunk_by(|a, b| a.0 == b.0) {
            if let Some((activation, since)) = open_offer(device.iter().map(|(_, step)| step)) {
                offers.push(OpenOffer {
                    device_id: device[0].0.clone(),
                    activation,
                    package_id: package_id.to_owned(),
                    since,
                });
            }
        }
        Ok(offers)
    }

    /// Whether `package_id` may be read and reported on by `device_id`: a deployment of it
    /// is open, or the computer has an open offer of it from a version since superseded.
    pub fn offered(&self, device_id: &str, package_id: &str) -> Result<bool, DbError> {
        let order = self.event_order();
        self.with(|c| {
            let open = c
                .query(
                    "SELECT state FROM deployments WHERE device_id = $1 AND package_id = $2",
                    params![device_id, package_id],
                )?
                .iter()
                .map(|row| row.text(0).map(|s| State::parse(&s).is_open()))
                .collect::<Result<Vec<bool>, _>>()?;
            Ok(open.contains(&true) || open_offer_of(c, order, device_id, package_id)?.is_some())
        })
    }

    pub(super) fn event_order(&self) -> &'static str {
        // Events of one second keep the order they were written in: SQLite's rowid grows,
        // and PostgreSQL has a sequence for it (migration 6).
        match self.dialect() {
            Dialect::Sqlite => "rowid",
            Dialect::Postgres => "seq",
        }
    }

    /// Every deployment state.
    pub fn deployments(&self) -> Result<Vec<Deployment>, DbError> {
        self.all(
            &format!("SELECT {DEPLOYMENT_COLUMNS} FROM deployments ORDER BY activation, device_id"),
            &[],
            deployment_row,
        )
    }

    /// How many computers stand in each state, per activation and package id, with those
    /// notified before `stale_before` apart: one `GROUP BY` (the deployment table of
    /// `tessera status`, `/api/v1/deployments` and the console).
    pub fn state_counts(&self, stale_before: i64) -> Result<Vec<StateCount>, DbError> {
        self.all(
            "SELECT activation, package, package_id, state,
                 CASE WHEN state = 'notified' AND notified_at < $1 THEN 1 ELSE 0 END,
                 COUNT(*)
             FROM deployments GROUP BY 1, 3, 4, 2, 5 ORDER BY 1, 3",
            params![stale_before],
            |row| {
                Ok(StateCount {
                    activation: row.text(0)?,
                    package: row.text(1)?,
                    package_id: row.text(2)?,
                    state: State::parse(&row.text(3)?),
                    stale: row.int(4)? == 1,
                    computers: row.int(5)?,
                })
            },
        )
    }

    /// How many computers stand in each state with each result code, per activation: one
    /// `GROUP BY` over the deployments (`/metrics` reads it on every scrape).
    pub fn fleet_counts(&self) -> Result<Vec<FleetCount>, DbError> {
        self.all(
            "SELECT activation, state, code, COUNT(*) FROM deployments
             GROUP BY activation, state, code ORDER BY activation, state, code",
            &[],
            |row| {
                Ok(FleetCount {
                    activation: row.text(0)?,
                    state: State::parse(&row.text(1)?),
                    code: row.opt_text(2)?,
                    computers: row.int(3)?,
                })
            },
        )
    }

    /// The history of one computer, oldest first.
    pub fn events(&self, device_id: &str) -> Result<Vec<Event>, DbError> {
        let order = self.event_order();
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
        self.transaction_then(
            |c| {
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
            },
            |()| self.index.apply(device_id, changes, now),
        )
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
        let order = self.event_order();
        let filed = |filed: &Filed| {
            // A result changes states only where it is filed: the computer is read again.
            if matches!(filed, Filed::Recorded(_)) {
                self.index.evict(device_id);
            }
        };
        self.transaction_then(
            |c| {
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
                    // A version superseded while the agent had it (its Package edited): the
                    // agent's answer to an offer that still stands, filed under its own id.
                    if let Some((activation, _)) = open_offer_of(c, order, device_id, package_id)? {
                        c.execute(
                            "INSERT INTO events (device_id, activation, package_id, state, code,
                             output, at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)",
                            params![
                                device_id,
                                &activation,
                                package_id,
                                state.as_str(),
                                code,
                                output,
                                now
                            ],
                        )?;
                        return Ok(Filed::Recorded(vec![activation]));
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
            },
            filed,
        )
    }
}

/// The open offer of `package_id` to `device_id` in its history, if any: (activation, since).
fn open_offer_of(
    c: &mut dyn Sql,
    order: &str,
    device_id: &str,
    package_id: &str,
) -> Result<Option<(String, i64)>, DbError> {
    let steps = c
        .query(
            &format!(
                "SELECT activation, state, at FROM events WHERE device_id = $1 AND package_id = $2
                 ORDER BY at, {order}"
            ),
            params![device_id, package_id],
        )?
        .iter()
        .map(|row| Ok((row.text(0)?, State::parse(&row.text(1)?), row.int(2)?)))
        .collect::<Result<Vec<_>, DbError>>()?;
    Ok(open_offer(steps.iter()))
}

/// Reads one computer's history of one package id, oldest first: whether an offer is
/// still open at the end, and through which activation since when. A result closes it; a
/// new arm through the offer's activation (a redeploy token re-arming the same id) replaces
/// it with an offer not yet made; an arm through another activation leaves it open.
fn open_offer<'a>(steps: impl Iterator<Item = &'a (String, State, i64)>) -> Option<(String, i64)> {
    let mut open: Option<(String, i64)> = None;
    for (activation, state, at) in steps {
        match state {
            State::Notified | State::Downloading | State::Installing => {
                open = Some((activation.clone(), *at));
            }
            State::Success | State::Error => open = None,
            State::Waiting => {
                if open.as_ref().is_some_and(|(a, _)| a == activation) {
                    open = None;
                }
            }
        }
    }
    open
}

const DEPLOYMENT_COLUMNS: &str = "device_id, activation, package, package_id, token, state, code, \
     changed_at, notified_at, output";

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

/// The deployments of the computers whose device ids run from `first` to `last`, both
/// included (a page of [`Database::fleet_pages`]).
pub(super) fn deployments_between(
    c: &mut dyn Sql,
    first: &str,
    last: &str,
) -> Result<Vec<Deployment>, DbError> {
    c.query(
        &format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE device_id >= $1 AND device_id <= $2"
        ),
        params![first, last],
    )?
    .iter()
    .map(deployment_row)
    .collect()
}

/// The deployments of the device ids bound to the placeholders `list` (`$1, $2`), ordered
/// by device id and activation.
pub(super) fn deployments_in(
    c: &mut dyn Sql,
    list: &str,
    values: &[crate::store::sql::Value<'_>],
) -> Result<Vec<Deployment>, DbError> {
    c.query(
        &format!(
            "SELECT {DEPLOYMENT_COLUMNS} FROM deployments WHERE device_id IN ({list})
             ORDER BY device_id, activation"
        ),
        values,
    )?
    .iter()
    .map(deployment_row)
    .collect()
}

pub(super) fn deployments_of(c: &mut dyn Sql, device_id: &str) -> Result<Vec<Deployment>, DbError> {
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

#[cfg(test)]
mod tests {
    use super::*;

    on_both!(
        a_deployment_goes_from_waiting_to_notified_to_the_agents_result,
        a_result_is_filed_only_where_the_package_was_offered,
        events_of_one_second_keep_the_order_they_were_written_in,
        arming_again_resets_the_state_and_a_result_reaches_every_activation_of_the_package,
        a_result_on_a_superseded_version_is_filed_under_its_own_id_while_its_offer_stands,
        states_are_counted_per_activation_and_package_id_with_the_stale_apart,
    );

    /// The deployment table's counts come from one `GROUP BY`: per activation and package
    /// id, each state, and notified computers before the stale limit counted apart.
    fn states_are_counted_per_activation_and_package_id_with_the_stale_apart(db: &Database) {
        for (pc, notified_at) in [("pc-1", Some(10)), ("pc-2", Some(500)), ("pc-3", None)] {
            db.apply(pc, &[arm("hello", "42", "")], 1).unwrap();
            if let Some(at) = notified_at {
                let notify = Change::Notify {
                    activation: "hello".into(),
                };
                db.apply(pc, &[notify], at).unwrap();
            }
        }
        db.apply("pc-4", &[arm("other", "7", "")], 1).unwrap();
        let mut counts = db.state_counts(100).unwrap();
        counts.sort_by(|a, b| {
            (&a.activation, a.state, a.stale).cmp(&(&b.activation, b.state, b.stale))
        });
        let seen: Vec<(&str, &str, State, bool, i64)> = counts
            .iter()
            .map(|c| {
                (
                    c.activation.as_str(),
                    c.package_id.as_str(),
                    c.state,
                    c.stale,
                    c.computers,
                )
            })
            .collect();
        assert_eq!(
            seen,
            [
                ("hello", "42", State::Waiting, false, 1),
                ("hello", "42", State::Notified, false, 1),
                ("hello", "42", State::Notified, true, 1),
                ("other", "7", State::Waiting, false, 1),
            ]
        );
        assert_eq!(counts[0].package, "default/hello");
    }

    fn a_result_on_a_superseded_version_is_filed_under_its_own_id_while_its_offer_stands(
        db: &Database,
    ) {
        let pc = "pc-2026-01-01-00-00-00";
        let notify = || Change::Notify {
            activation: "hello".into(),
        };
        db.contact(pc, 1).unwrap();
        db.contact("other", 1).unwrap();
        db.apply(pc, &[arm("hello", "7", ""), notify()], 2).unwrap();
        // Armed but never notified: holds nothing.
        db.apply("other", &[arm("hello", "7", "")], 2).unwrap();
        let open = OpenOffer {
            device_id: pc.into(),
            activation: "hello".into(),
            package_id: "7".into(),
            since: 2,
        };
        assert_eq!(db.open_offers("7").unwrap(), std::slice::from_ref(&open));
        // The Package is edited: its new version is armed over the offer of the old one.
        db.apply(pc, &[arm("hello", "8", "")], 3).unwrap();
        assert_eq!(db.open_offers("7").unwrap(), [open]);
        assert!(db.open_offers("8").unwrap().is_empty(), "not offered yet");
        assert!(db.offered(pc, "7").unwrap());
        // The agent finishes the old version: filed under its id, the new one untouched.
        assert_eq!(
            db.record_result(pc, "7", State::Success, Some("SUCCESS"), None, 4)
                .unwrap(),
            Filed::Recorded(vec!["hello".into()])
        );
        let (_, rows) = db.computer(pc).unwrap().unwrap();
        assert_eq!(
            (rows[0].package_id.as_str(), rows[0].state),
            ("8", State::Waiting)
        );
        let last = db.events(pc).unwrap().pop().unwrap();
        assert_eq!(
            (last.package_id.as_str(), last.state, last.code.as_deref()),
            ("7", State::Success, Some("SUCCESS"))
        );
        // Answered: it holds nothing any more, and the same result again is not filed twice.
        assert!(db.open_offers("7").unwrap().is_empty());
        assert!(!db.offered(pc, "7").unwrap());
        assert_eq!(
            db.record_result(pc, "7", State::Success, Some("SUCCESS"), None, 5)
                .unwrap(),
            Filed::Superseded
        );
        // The new version goes its own way.
        db.apply(pc, &[notify()], 6).unwrap();
        assert_eq!(
            db.record_result(pc, "8", State::Error, Some("ERR_X"), None, 7)
                .unwrap(),
            Filed::Recorded(vec!["hello".into()])
        );
    }

    fn arm(activation: &str, id: &str, token: &str) -> Change {
        Change::Arm {
            activation: activation.into(),
            package: format!("default/{activation}"),
            package_id: id.into(),
            token: token.into(),
        }
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
}
