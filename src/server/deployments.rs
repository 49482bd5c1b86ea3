//! Who gets what, and when: the deployment state machine over plain values (pure).
//!
//! Reconcile hands the server one [`Assignment`] per Affectation (which computers, which
//! package through which activation). From a computer's facts and its stored deployment
//! states these functions decide the changes to make and the packages to offer:
//!
//! - a targeted computer without a state for the activation's current package id and
//!   redeploy token is armed (`waiting`), or settled at once when its agent already lists
//!   the package as installed (`SUCCESS_ALREADY_IN_HISTORY`, as the OCS server does);
//! - a PROLOG offers what is `waiting` or `notified`, marks `waiting` as `notified`, and
//!   never offers a package the agent reports installed unless a redeploy token asks for
//!   it (then with FORCE). Re-offering an installed package without FORCE is also what
//!   makes the Unix agent's download worker crash (protocol notes 5.1).

use std::collections::{BTreeMap, HashMap};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::store::db::{Change, Computer, Deployment, State, StateCount};

/// The result code recorded when an agent already lists the package as installed.
pub const ALREADY_IN_HISTORY: &str = "SUCCESS_ALREADY_IN_HISTORY";

/// An operating system family, as packages target them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OsFamily {
    Windows,
    Linux,
    Macos,
}

impl OsFamily {
    /// The family of an inventory's OS name (`Microsoft Windows 11 Pro`, `Debian GNU/Linux
    /// 12`, `macOS 14.5`, `Darwin`); `None` when unknown.
    pub fn of(os_name: &str) -> Option<Self> {
        let name = os_name.to_ascii_lowercase();
        if name.contains("windows") {
            Some(Self::Windows)
        } else if ["mac", "darwin", "os x"].iter().any(|m| name.contains(m)) {
            Some(Self::Macos)
        } else if [
            "linux", "debian", "ubuntu", "red hat", "rhel", "centos", "fedora", "suse", "alpine",
            "rocky", "alma",
        ]
        .iter()
        .any(|m| name.contains(m))
        {
            Some(Self::Linux)
        } else {
            None
        }
    }
}

/// Why an Affectation's targets do not make a [`Selector`].
#[derive(Debug, thiserror::Error)]
pub enum SelectorError {
    #[error("failed to compile name glob {pattern:?}")]
    Glob {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("failed to compile the name globs")]
    GlobSet {
        #[source]
        source: globset::Error,
    },
}

/// Which computers an Affectation selects.
#[derive(Clone, Debug, Default)]
pub struct Selector {
    pub all: bool,
    /// Lowercase names.
    pub names: Vec<String>,
    /// Name patterns as written.
    pub patterns: Vec<String>,
    /// The same, compiled (case-insensitive); `None` when there are none.
    pub globs: Option<GlobSet>,
    /// Lowercase tags.
    pub tags: Vec<String>,
    /// Empty: any.
    pub os: Vec<OsFamily>,
}

impl Selector {
    /// A selector from the resource's fields; a pattern that does not compile is an error
    /// naming it.
    pub fn new(
        all: bool,
        names: &[String],
        name_globs: &[String],
        tags: &[String],
        os: Vec<OsFamily>,
    ) -> Result<Self, SelectorError> {
        let globs = if name_globs.is_empty() {
            None
        } else {
            let mut builder = GlobSetBuilder::new();
            for pattern in name_globs {
                let glob = GlobBuilder::new(pattern)
                    .case_insensitive(true)
                    .literal_separator(false)
                    .build()
                    .map_err(|source| SelectorError::Glob {
                        pattern: pattern.clone(),
                        source,
                    })?;
                builder.add(glob);
            }
            Some(
                builder
                    .build()
                    .map_err(|source| SelectorError::GlobSet { source })?,
            )
        };
        Ok(Self {
            all,
            names: names.iter().map(|n| n.to_lowercase()).collect(),
            patterns: name_globs.to_vec(),
            globs,
            tags: tags.iter().map(|t| t.to_lowercase()).collect(),
            os,
        })
    }

    /// Whether `computer` is selected. Computers that have sent no inventory yet have no
    /// facts and are never selected.
    pub fn matches(&self, computer: &Computer) -> bool {
        self.matches_seen(&Seen::of(computer))
    }

    fn matches_seen(&self, seen: &Seen<'_>) -> bool {
        if seen.computer.last_inventory.is_none() {
            return false;
        }
        let chosen = self.all
            || self.names.contains(&seen.name)
            || self.globs.as_ref().is_some_and(|g| g.is_match(&seen.name))
            || seen.tags.iter().any(|t| self.tags.contains(t));
        chosen && (self.os.is_empty() || seen.family.is_some_and(|f| self.os.contains(&f)))
    }
}

/// A computer's facts as targeting compares them (lowercase name and tags, OS family),
/// worked out once per decision rather than once per Affectation.
struct Seen<'a> {
    computer: &'a Computer,
    name: String,
    tags: Vec<String>,
    family: Option<OsFamily>,
}

impl<'a> Seen<'a> {
    fn of(computer: &'a Computer) -> Self {
        Self {
            computer,
            name: computer.name.to_lowercase(),
            tags: computer.tags.iter().map(|t| t.to_lowercase()).collect(),
            family: OsFamily::of(&computer.os_name),
        }
    }
}

/// One Affectation, resolved: the package it deploys and to whom.
#[derive(Clone, Debug)]
pub struct Assignment {
    /// `namespace/name` of the Affectation.
    pub affectation: String,
    /// `namespace/name` of the Activation.
    pub activation: String,
    /// `namespace/name` of the Package.
    pub package: String,
    pub package_id: String,
    /// The package is only for this family (a tar.gz cannot run on Windows).
    pub package_os: OsFamily,
    pub selector: Selector,
    /// The redeploy token, if any.
    pub redeploy: Option<String>,
    /// Offered only from this time on (Unix seconds).
    pub not_before: Option<i64>,
    /// Not offered to computers still waiting after this time.
    pub not_after: Option<i64>,
    /// `host[:port]/path` for the `info` file; `None`: this server.
    pub info_location: Option<String>,
    /// `host[:port]/path` for fragments; `None`: this server.
    pub pack_location: Option<String>,
    /// A staged rollout: the share of targets (0 to 100) reached so far; 100 without one.
    pub share: u8,
    /// A rollout paused by too many errors: nothing new is offered.
    pub paused: bool,
}

impl Assignment {
    /// Whether this assignment applies to `computer`.
    pub fn targets(&self, computer: &Computer) -> bool {
        self.targets_seen(&Seen::of(computer))
    }

    fn targets_seen(&self, seen: &Seen<'_>) -> bool {
        seen.family == Some(self.package_os)
            && self.selector.matches_seen(seen)
            && (self.share >= 100
                || bucket(&self.affectation, &seen.computer.device_id) < self.share)
    }
}

/// A computer's place in a rollout, 0 to 99: a stable hash of the Affectation and the
/// computer, so each stage adds computers and none leaves, and different Affectations
/// start with different computers.
pub fn bucket(affectation: &str, device_id: &str) -> u8 {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{affectation}\n{device_id}").as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u8::try_from(u64::from_be_bytes(first) % 100).unwrap_or(0)
}

/// What one computer should have through one activation: the package id and the redeploy
/// tokens of every Affectation that selects it.
#[derive(Clone, Debug)]
pub struct Wanted<'a> {
    pub activation: &'a str,
    pub package: &'a str,
    pub package_id: &'a str,
    pub token: String,
    /// The first assignment giving it (for locations and schedule).
    pub assignment: &'a Assignment,
}

impl Wanted<'_> {
    /// A redeploy token asks the agent to run it again, even when installed.
    pub fn forced(&self) -> bool {
        !self.token.is_empty()
    }
}

/// Per activation, what `computer` should have.
pub fn wanted<'a>(assignments: &'a [Assignment], computer: &Computer) -> Vec<Wanted<'a>> {
    let mut by_activation: BTreeMap<&str, Wanted<'a>> = BTreeMap::new();
    let seen = Seen::of(computer);
    for assignment in assignments.iter().filter(|a| a.targets_seen(&seen)) {
        let entry = by_activation
            .entry(&assignment.activation)
            .or_insert_with(|| Wanted {
                activation: &assignment.activation,
                package: &assignment.package,
                package_id: &assignment.package_id,
                token: String::new(),
                assignment,
            });
        if let Some(token) = &assignment.redeploy {
            if !entry.token.is_empty() {
                entry.token.push('\n');
            }
            entry
                .token
                .push_str(&format!("{}={token}", assignment.affectation));
        }
    }
    by_activation.into_values().collect()
}

/// The changes that bring `computer`'s states in line with `assignments`: arming what is
/// new (a new target, a new package id, a new redeploy token).
pub fn arm(assignments: &[Assignment], computer: &Computer, current: &[Deployment]) -> Vec<Change> {
    arm_wanted(&wanted(assignments, computer), computer, current)
}

/// [`arm`] for what `computer` is `wanted` to have, worked out already.
fn arm_wanted(wanted: &[Wanted<'_>], computer: &Computer, current: &[Deployment]) -> Vec<Change> {
    let mut changes = Vec::new();
    for wanted in wanted {
        let existing = current.iter().find(|d| d.activation == wanted.activation);
        let up_to_date =
            existing.is_some_and(|d| d.package_id == wanted.package_id && d.token == wanted.token);
        if up_to_date {
            continue;
        }
        let installed = computer.history.iter().any(|id| id == wanted.package_id);
        changes.push(if installed && !wanted.forced() {
            Change::ArmSettled {
                activation: wanted.activation.to_owned(),
                package: wanted.package.to_owned(),
                package_id: wanted.package_id.to_owned(),
                token: wanted.token.clone(),
                code: ALREADY_IN_HISTORY.to_owned(),
            }
        } else {
            Change::Arm {
                activation: wanted.activation.to_owned(),
                package: wanted.package.to_owned(),
                package_id: wanted.package_id.to_owned(),
                token: wanted.token.clone(),
            }
        });
    }
    changes
}

/// A package to offer in a PROLOG reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// The activation it is offered through (the first, when several reach the package).
    pub activation: String,
    pub package_id: String,
    pub info_location: Option<String>,
    pub pack_location: Option<String>,
    pub force: bool,
}

/// What to offer `computer` at `now`, and the changes to record (arms, then notifications).
pub fn prolog(
    assignments: &[Assignment],
    computer: &Computer,
    current: &[Deployment],
    now: i64,
) -> (Vec<Offer>, Vec<Change>) {
    let wanted = wanted(assignments, computer);
    let mut changes = arm_wanted(&wanted, computer, current);
    let mut offers = Vec::new();
    for wanted in &wanted {
        // The state after this PROLOG's arms.
        let state = match changes
            .iter()
            .find(|c| change_activation(c) == wanted.activation)
        {
            Some(Change::Arm { .. }) => State::Waiting,
            Some(_) => continue,
            None => match current.iter().find(|d| d.activation == wanted.activation) {
                Some(d) => d.state,
                None => continue,
            },
        };
        if !matches!(state, State::Waiting | State::Notified) {
            continue;
        }
        let installed = computer.history.iter().any(|id| id == wanted.package_id);
        if installed && !wanted.forced() {
            continue;
        }
        let window = &wanted.assignment;
        if window.not_before.is_some_and(|t| now < t)
            || (state == State::Waiting && window.not_after.is_some_and(|t| now > t))
            || (state == State::Waiting && window.paused)
        {
            continue;
        }
        if offers
            .iter()
            .any(|o: &Offer| o.package_id == wanted.package_id)
        {
            continue;
        }
        offers.push(Offer {
            activation: wanted.activation.to_owned(),
            package_id: wanted.package_id.to_owned(),
            info_location: wanted.assignment.info_location.clone(),
            pack_location: wanted.assignment.pack_location.clone(),
            force: wanted.forced(),
        });
        if state == State::Waiting {
            changes.push(Change::Notify {
                activation: wanted.activation.to_owned(),
            });
        }
    }
    (offers, changes)
}

fn change_activation(change: &Change) -> &str {
    match change {
        Change::Arm { activation, .. }
        | Change::ArmSettled { activation, .. }
        | Change::Notify { activation } => activation,
    }
}

/// The state an agent's result code means, given the exit codes the package counts as
/// success. `SUCCESS_<n>` (Unix LAUNCH) and `EXIT_CODE_<n>` (Windows) carry an exit code;
/// other `SUCCESS…` codes are successes; everything else is an error.
pub fn classify(code: &str, success_exit_codes: &[i32]) -> State {
    let exit_code = code
        .strip_prefix("SUCCESS_")
        .or_else(|| code.strip_prefix("EXIT_CODE_"))
        .and_then(|n| n.parse::<i32>().ok());
    match exit_code {
        Some(n) if success_exit_codes.contains(&n) => State::Success,
        Some(_) => State::Error,
        None if code == "SUCCESS" || code.starts_with("SUCCESS_") => State::Success,
        None => State::Error,
    }
}

/// Deployment counts, with `stale` split from `notified`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub targets: i64,
    pub waiting: i64,
    pub notified: i64,
    pub stale: i64,
    pub downloading: i64,
    pub installing: i64,
    pub success: i64,
    pub error: i64,
}

/// Counts of two parts of the fleet added up (the fleet is counted a page at a time).
impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Self) {
        self.targets += other.targets;
        self.waiting += other.waiting;
        self.notified += other.notified;
        self.stale += other.stale;
        self.downloading += other.downloading;
        self.installing += other.installing;
        self.success += other.success;
        self.error += other.error;
    }
}

impl Counts {
    fn add(&mut self, state: State, stale: bool) {
        self.add_n(state, stale, 1);
    }

    /// `n` computers in `state` (`stale`: notified too long ago).
    fn add_n(&mut self, state: State, stale: bool, n: i64) {
        match state {
            State::Waiting => self.waiting += n,
            State::Notified if stale => self.stale += n,
            State::Notified => self.notified += n,
            State::Downloading => self.downloading += n,
            State::Installing => self.installing += n,
            State::Success => self.success += n,
            State::Error => self.error += n,
        }
    }
}

/// Per Affectation, how its targets stand. A target without a state for the current
/// package id and token counts as waiting.
pub fn counts(
    assignments: &[Assignment],
    computers: &[Computer],
    deployments: &[Deployment],
    stale_before: i64,
) -> HashMap<String, Counts> {
    let index: HashMap<(&str, &str), &Deployment> = deployments
        .iter()
        .map(|d| ((d.device_id.as_str(), d.activation.as_str()), d))
        .collect();
    let mut out: HashMap<String, Counts> = assignments
        .iter()
        .map(|a| (a.affectation.clone(), Counts::default()))
        .collect();
    for computer in computers {
        for wanted in wanted(assignments, computer) {
            let current = index
                .get(&(computer.device_id.as_str(), wanted.activation))
                .filter(|d| d.package_id == wanted.package_id && d.token == wanted.token);
            let (state, stale) = match current {
                Some(d) => (d.state, d.notified_at.is_some_and(|t| t < stale_before)),
                None => (State::Waiting, false),
            };
            for assignment in assignments
                .iter()
                .filter(|a| a.activation == wanted.activation && a.targets(computer))
            {
                let counts = out.entry(assignment.affectation.clone()).or_default();
                counts.targets += 1;
                counts.add(state, stale);
            }
        }
    }
    out
}

/// One line of `tessera status`: a package through an activation, and how many computers
/// stand in each state.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackageLine {
    pub activation: String,
    pub package: String,
    pub package_id: String,
    pub counts: Counts,
}

/// The deployment table from the stored states as the database counts them
/// ([`Database::state_counts`](crate::store::db::Database::state_counts)): one line per
/// activation and package id (an older id of the same package is its own line), `stale`
/// split from `notified`. Counting in SQL keeps it to one row per group, not one per
/// computer: 200,000 deployments are read as a few hundred rows.
pub fn table(counts: &[StateCount]) -> Vec<PackageLine> {
    let mut lines: BTreeMap<(&str, &str), PackageLine> = BTreeMap::new();
    for c in counts {
        let line = lines
            .entry((&c.activation, &c.package_id))
            .or_insert_with(|| PackageLine {
                activation: c.activation.clone(),
                package: c.package.clone(),
                package_id: c.package_id.clone(),
                counts: Counts::default(),
            });
        line.counts.targets += c.computers;
        line.counts.add_n(c.state, c.stale, c.computers);
    }
    lines.into_values().collect()
}

/// The setting (see `Database::set_setting`) where the leader keeps the versions now
/// draining, for `tessera status` and the admin API: a JSON list of [`Draining`].
pub const DRAINING_SETTING: &str = "draining";

/// A superseded package version still served to the computers notified of it, until they
/// have all reported (or are stale), or its grace period ends.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Draining {
    /// `namespace/name` of the Package it was built from.
    pub package: String,
    pub package_id: String,
    /// Computers notified of it that have not reported on it and are not stale.
    pub downloading: i64,
    /// When it stops being served at the latest (Unix seconds).
    pub until: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn computer(name: &str, tags: &[&str], history: &[&str]) -> Computer {
        Computer {
            device_id: format!("{name}-2026-01-01-00-00-00"),
            name: name.into(),
            os_name: "Debian GNU/Linux 12 (bookworm)".into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            history: history.iter().map(|t| t.to_string()).collect(),
            last_inventory: Some(1),
            ..Computer::default()
        }
    }

    fn assignment(affectation: &str, selector: Selector, redeploy: Option<&str>) -> Assignment {
        Assignment {
            affectation: format!("default/{affectation}"),
            activation: "default/hello".into(),
            package: "default/hello".into(),
            package_id: "1234567890".into(),
            package_os: OsFamily::Linux,
            selector,
            redeploy: redeploy.map(Into::into),
            not_before: None,
            not_after: None,
            info_location: None,
            pack_location: None,
            share: 100,
            paused: false,
        }
    }

    fn by_tag(tag: &str) -> Selector {
        Selector::new(false, &[], &[], &[tag.to_owned()], vec![]).unwrap()
    }

    /// The deployment states of the sequences below, in a real (in-memory) state database.
    struct States(crate::store::db::Database);

    impl States {
        fn new() -> Self {
            Self(crate::store::db::Database::in_memory().unwrap())
        }

        fn of(&self, device: &str) -> Vec<Deployment> {
            let all = self.0.deployments().unwrap();
            all.into_iter().filter(|d| d.device_id == device).collect()
        }

        fn all(&self) -> Vec<Deployment> {
            self.0.deployments().unwrap()
        }

        fn apply(&self, device: &str, changes: &[Change], now: i64) {
            self.0.contact(device, now).unwrap();
            self.0.apply(device, changes, now).unwrap();
        }

        /// The agent's result, which must be filed (the package was offered).
        fn report(&self, device: &str, package_id: &str, state: State, now: i64) {
            let filed = self
                .0
                .record_result(device, package_id, state, Some("TEST"), None, now)
                .unwrap();
            assert!(
                matches!(filed, crate::store::db::Filed::Recorded(_)),
                "{filed:?}"
            );
        }
    }

    #[test]
    fn selectors_match_names_globs_tags_and_os() {
        let lab = computer("LAB-07", &["Lab"], &[]);
        let glob = Selector::new(false, &[], &["lab-*".into()], &[], vec![]).unwrap();
        assert!(glob.matches(&lab));
        assert!(by_tag("lab").matches(&lab));
        assert!(!by_tag("office").matches(&lab));
        let named = Selector::new(false, &["lab-07".into()], &[], &[], vec![]).unwrap();
        assert!(named.matches(&lab));
        let windows_only = Selector::new(true, &[], &[], &[], vec![OsFamily::Windows]).unwrap();
        assert!(!windows_only.matches(&lab));
        let mut fresh = lab;
        fresh.last_inventory = None;
        assert!(
            !Selector::new(true, &[], &[], &[], vec![])
                .unwrap()
                .matches(&fresh)
        );
        assert_eq!(
            OsFamily::of("Microsoft Windows 11 Pro"),
            Some(OsFamily::Windows)
        );
        assert_eq!(OsFamily::of("macOS 14.5"), Some(OsFamily::Macos));
        assert_eq!(OsFamily::of("Plan 9"), None);
    }

    #[test]
    fn a_package_is_offered_until_the_agent_reports_and_never_after() {
        let pc = computer("lab-01", &["lab"], &[]);
        let assignments = [assignment("lab", by_tag("lab"), None)];
        let states = States::new();
        let device = pc.device_id.as_str();
        let (offers, changes) = prolog(&assignments, &pc, &states.of(device), 10);
        assert_eq!(offers.len(), 1);
        assert!(!offers[0].force);
        assert_eq!(changes.len(), 2, "armed, then notified: {changes:?}");
        states.apply(device, &changes, 10);
        // Notified: offered again on the next PROLOG (the agent may have missed it), and
        // nothing more to record.
        let (offers, changes) = prolog(&assignments, &pc, &states.of(device), 20);
        assert_eq!(offers.len(), 1);
        assert!(changes.is_empty());
        states.report(device, "1234567890", State::Error, 25);
        let (offers, changes) = prolog(&assignments, &pc, &states.of(device), 30);
        assert!(offers.is_empty() && changes.is_empty());
    }

    #[test]
    fn an_installed_package_is_settled_and_a_redeploy_token_forces_it_once() {
        let pc = computer("lab-01", &["lab"], &["1234567890"]);
        let states = States::new();
        let device = pc.device_id.as_str();
        let plain = [assignment("lab", by_tag("lab"), None)];
        let (offers, changes) = prolog(&plain, &pc, &states.of(device), 10);
        assert!(offers.is_empty());
        assert!(
            matches!(&changes[..], [Change::ArmSettled { code, .. }] if code == ALREADY_IN_HISTORY)
        );
        states.apply(device, &changes, 10);

        let redeploy = [assignment("lab", by_tag("lab"), Some("2"))];
        let (offers, changes) = prolog(&redeploy, &pc, &states.of(device), 20);
        assert_eq!(offers.len(), 1);
        assert!(offers[0].force);
        states.apply(device, &changes, 20);
        states.report(device, "1234567890", State::Success, 25);
        // Once: the same token does not re-arm.
        let (offers, changes) = prolog(&redeploy, &pc, &states.of(device), 30);
        assert!(offers.is_empty() && changes.is_empty());
    }

    #[test]
    fn a_new_package_version_rearms_every_target() {
        let pc = computer("lab-01", &["lab"], &[]);
        let states = States::new();
        let device = pc.device_id.as_str();
        let v1 = [assignment("lab", by_tag("lab"), None)];
        let (_, changes) = prolog(&v1, &pc, &states.of(device), 10);
        states.apply(device, &changes, 10);
        states.report(device, "1234567890", State::Success, 15);
        let mut v2 = v1;
        v2[0].package_id = "1999999999".into();
        let (offers, _) = prolog(&v2, &pc, &states.of(device), 20);
        assert_eq!(offers[0].package_id, "1999999999");
    }

    #[test]
    fn the_schedule_window_holds_offers_back() {
        let pc = computer("lab-01", &["lab"], &[]);
        let mut later = assignment("lab", by_tag("lab"), None);
        later.not_before = Some(100);
        let (offers, changes) = prolog(&[later.clone()], &pc, &[], 50);
        assert!(offers.is_empty());
        assert_eq!(changes.len(), 1, "armed but not notified: {changes:?}");
        let (offers, _) = prolog(&[later], &pc, &[], 150);
        assert_eq!(offers.len(), 1);
    }

    #[test]
    fn a_rollout_reaches_a_stable_growing_share_and_a_pause_offers_nothing_new() {
        let fleet: Vec<Computer> = (0..400)
            .map(|i| computer(&format!("lab-{i:03}"), &["lab"], &[]))
            .collect();
        let mut staged = assignment("lab", by_tag("lab"), None);
        let reached = |a: &Assignment| -> Vec<&str> {
            fleet
                .iter()
                .filter(|c| a.targets(c))
                .map(|c| c.device_id.as_str())
                .collect()
        };
        staged.share = 10;
        let first = reached(&staged);
        assert!(
            (20..=60).contains(&first.len()),
            "about 10% of 400: {}",
            first.len()
        );
        staged.share = 50;
        let second = reached(&staged);
        assert!(
            first.iter().all(|c| second.contains(c)),
            "no one leaves a rollout"
        );
        assert!((150..=250).contains(&second.len()), "{}", second.len());
        staged.paused = true;
        let target = fleet.iter().find(|c| staged.targets(c)).unwrap();
        let (offers, _) = prolog(&[staged], target, &[], 1);
        assert!(offers.is_empty(), "paused: nothing new is offered");
    }

    #[test]
    fn result_codes_map_through_the_success_exit_codes() {
        assert_eq!(classify("SUCCESS", &[0]), State::Success);
        assert_eq!(classify("SUCCESS_0", &[0]), State::Success);
        assert_eq!(classify("SUCCESS_3", &[0]), State::Error);
        assert_eq!(classify("SUCCESS_3", &[0, 3]), State::Success);
        assert_eq!(classify("EXIT_CODE_3010", &[0, 3010]), State::Success);
        assert_eq!(classify("EXIT_CODE_1603", &[0]), State::Error);
        assert_eq!(classify("SUCCESS_ALREADY_SETUP", &[0]), State::Success);
        assert_eq!(classify("SUCCESS_REBOOT_REQUIRED", &[0]), State::Success);
        assert_eq!(classify("ERR_BAD_DIGEST", &[0]), State::Error);
        assert_eq!(classify("garbage", &[0]), State::Error);
    }

    #[test]
    fn counts_split_stale_from_notified_and_count_unarmed_targets_as_waiting() {
        let a = computer("lab-01", &["lab"], &[]);
        let b = computer("lab-02", &["lab"], &[]);
        let c = computer("lab-03", &["lab"], &[]);
        let office = computer("office-01", &["office"], &[]);
        let assignments = [assignment("lab", by_tag("lab"), None)];
        let states = States::new();
        for (pc, now) in [(&a, 10), (&b, 500)] {
            let (_, changes) = prolog(&assignments, pc, &states.of(&pc.device_id), now);
            states.apply(&pc.device_id, &changes, now);
        }
        let counts = counts(&assignments, &[a, b, c, office], &states.all(), 100);
        let lab = counts["default/lab"];
        assert_eq!(
            (lab.targets, lab.waiting, lab.notified, lab.stale),
            (3, 1, 1, 1)
        );
    }

    #[test]
    fn a_bad_name_glob_is_named_and_its_cause_given_once() {
        let error = Selector::new(false, &[], &["lab-[".into()], &[], vec![]).unwrap_err();
        assert!(matches!(error, SelectorError::Glob { .. }), "{error:?}");
        let chain = crate::error_chain(&error);
        assert!(
            chain.starts_with("failed to compile name glob \"lab-[\": "),
            "{chain}"
        );
        let cause = std::error::Error::source(&error).unwrap().to_string();
        assert_eq!(chain.matches(&cause).count(), 1, "{chain}");
    }
}
