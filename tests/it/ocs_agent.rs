//! Drives the real Debian `ocsinventory-agent` (Unix agent 2.10) against a server under test.
//!
//! What the agent needs, read in its Perl source (`/usr/share/perl5/Ocsinventory`) and seen
//! by running it:
//!
//! * `scripts/setup.sh` installs it with `liblwp-protocol-https-perl`: without LWP's https
//!   support the deployment module disables itself and only says so in the log.
//! * Its deployment module loads only through `/etc/ocsinventory/modules.conf`, which the
//!   Debian package ships with `Download` enabled; nothing else needs configuring there.
//! * Its config file cannot be chosen, and Debian's holds a `local=` line that switches the
//!   agent to offline mode, so every run passes `--nolocal` and `--server`.
//! * It does not need root: as root it only reports more hardware (dmidecode, disks). The
//!   deployment itself runs as the calling user, in a temporary `--basevardir`.
//! * All state lives under the per-server directory `<basevardir>/<url with '/' as '_'>`:
//!   `ocsinv.conf` (DEVICEID), `ocsinv.adm` (admin info such as TAG), `download/` (history,
//!   lock, one directory per package in progress).
//! * After talking to the server the agent forks a download worker and exits. The worker
//!   inherits stdout and stderr and stays in the agent's process group, as do the commands
//!   it runs; [`OcsAgent::run`] starts the agent in a process group of its own and waits
//!   until that group is empty, so a run returns only once every deployment has finished.

use std::fs::{self, File};
use std::io::{self, Read, Seek};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How long the agent itself may take (PROLOG, inventory, replies); an inventory with
/// `--nosoftware` takes a few seconds.
pub(crate) const AGENT_LIMIT: Duration = Duration::from_secs(60);

/// How long the forked download worker may take after the agent exited. A fragment it
/// cannot fetch makes it retry forever, so the wait must be bounded.
pub(crate) const WORKER_LIMIT: Duration = Duration::from_secs(60);

/// The TAG every agent reports (`--tag`), which the quickstart's Affectations select.
pub(crate) const DEFAULT_TAG: &str = "lab";

/// How often the harness looks whether the agent or its worker is still there.
const POLL: Duration = Duration::from_millis(20);

/// One agent installation: a DEVICEID, a server URL, and a state directory of its own.
pub(crate) struct OcsAgent {
    base: TempDir,
    server_url: String,
    ca: PathBuf,
    device_id: String,
    tag: Option<String>,
}

/// What one [`OcsAgent::run`] did.
#[derive(Debug)]
pub(crate) struct AgentRun {
    /// How the agent process ended.
    pub agent: AgentEnd,
    /// How its forked download worker (and the commands that worker ran) ended.
    pub worker: WorkerEnd,
    /// Everything written to stdout, by the agent, its worker and the package commands
    /// (`tar -xvzf` lists files there).
    pub stdout: String,
    /// The agent's and the worker's log (`--debug`: every XML document sent and received).
    pub stderr: String,
    /// From the start of the agent until its process group was empty.
    pub elapsed: Duration,
}

impl AgentRun {
    /// Whether the agent exited with 0 and its worker finished within [`WORKER_LIMIT`].
    pub(crate) fn completed(&self) -> bool {
        matches!(&self.agent, AgentEnd::Exited(status) if status.success())
            && self.worker == WorkerEnd::Finished
    }
}

/// How the agent process ended.
#[derive(Debug)]
pub(crate) enum AgentEnd {
    /// It exited by itself (0 after a completed contact, 1 when the server failed it).
    Exited(ExitStatus),
    /// It was still running after [`AGENT_LIMIT`] and was killed with its process group.
    KilledAfterTimeout,
}

/// How the forked download worker ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum WorkerEnd {
    /// Nothing was left in the agent's process group: the worker had nothing to do, or
    /// finished every package.
    Finished,
    /// Something was still running after [`WORKER_LIMIT`] and the group was killed.
    KilledAfterTimeout,
}

impl OcsAgent {
    /// Prepares an agent for `server_url` (the POST URL, e.g. `http://127.0.0.1:8080/ocsinventory`)
    /// that trusts the PEM certificates in `ca_file` for HTTPS (package `info` files are
    /// always fetched over HTTPS) and reports `device_id`.
    ///
    /// The agent keeps a stored DEVICEID only if it contains this machine's short host name
    /// followed by a date (`<host>-YYYY-MM-DD-hh-mm-ss`); otherwise it makes a new one from
    /// the clock, so two agents started in the same second would collide. [`device_id`]
    /// builds valid ones; anything else is refused here.
    pub(crate) fn new(server_url: &str, ca_file: &Path, device_id: &str) -> io::Result<Self> {
        let host = short_hostname()?;
        if !is_kept_device_id(device_id, &host) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the agent would replace DEVICEID {device_id:?}: it needs {host}-YYYY-MM-DD-hh-mm-ss"
                ),
            ));
        }
        let agent = Self {
            base: tempfile::Builder::new().prefix("ocs-agent-").tempdir()?,
            server_url: server_url.to_owned(),
            ca: PathBuf::new(),
            device_id: device_id.to_owned(),
            tag: Some(DEFAULT_TAG.to_owned()),
        };
        let vardir = agent.vardir();
        fs::create_dir_all(&vardir)?;
        // The agent reads this with XML::Simple and writes it back the same way
        // (root CONF, one child element per key).
        fs::write(
            vardir.join("ocsinv.conf"),
            format!("<CONF>\n  <DEVICEID>{device_id}</DEVICEID>\n</CONF>\n"),
        )?;
        // A copy in the per-server directory (where the agent also looks for `cacert.pem`)
        // keeps the agent working after the caller's certificate directory is gone.
        let ca = vardir.join("cacert.pem");
        fs::copy(ca_file, &ca)?;
        Ok(Self { ca, ..agent })
    }

    /// Runs the agent once, as a cron job would: PROLOG, an inventory if the server answers
    /// SEND, then the deployment of the packages offered, waited for.
    pub(crate) fn run(&self) -> io::Result<AgentRun> {
        self.run_with(&[])
    }

    /// Like [`OcsAgent::run`] with extra flags, e.g. `--force` (no PROLOG: the inventory is
    /// sent at once, and nothing is deployed because no package list was received).
    pub(crate) fn run_with(&self, extra_args: &[&str]) -> io::Result<AgentRun> {
        let mut args = vec![
            format!("--server={}", self.server_url),
            format!("--basevardir={}", self.base.path().display()),
            format!("--ca={}", self.ca.display()),
        ];
        args.extend(["--nolocal", "--debug", "--nosoftware"].map(str::to_owned));
        args.extend(self.tag.iter().map(|tag| format!("--tag={tag}")));
        args.extend(extra_args.iter().map(|arg| (*arg).to_owned()));
        run_args(&args)
    }

    /// The DEVICEID this agent reports.
    pub(crate) fn device_id(&self) -> &str {
        &self.device_id
    }

    /// The per-server state directory (`<basevardir>/<server URL with '/' as '_'>`), also the
    /// agent's `INSTALL_PATH` for STORE packages.
    pub(crate) fn vardir(&self) -> PathBuf {
        self.base.path().join(self.server_url.replace('/', "_"))
    }

    /// The package ids in the agent's local history (`download/history`), in the order they
    /// were installed; the agent reports them in its inventory and answers
    /// SUCCESS_ALREADY_SETUP when offered one again.
    pub(crate) fn history(&self) -> Vec<String> {
        fs::read_to_string(self.vardir().join("download/history"))
            .unwrap_or_default()
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A DEVICEID the agent keeps: this machine's short host name and a date made from
/// `serial` (seconds after 2000-01-01 00:00:00), so agents in one test get distinct ids.
pub(crate) fn device_id(serial: u32) -> io::Result<String> {
    let host = short_hostname()?;
    let (days, rest) = (serial / 86_400, serial % 86_400);
    let (hours, minutes, seconds) = (rest / 3600, rest / 60 % 60, rest % 60);
    // 28-day months and 336-day years: every date is a real one, and none repeats.
    Ok(format!(
        "{host}-{:04}-{:02}-{:02}-{hours:02}-{minutes:02}-{seconds:02}",
        2000 + days / 336,
        1 + days / 28 % 12,
        1 + days % 28,
    ))
}

/// `uname -n | cut -d . -f 1`, as the agent computes it.
fn short_hostname() -> io::Result<String> {
    let name = fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().split('.').next().unwrap_or_default().to_owned())
}

/// The agent's test, `/\Q$host\E-\d{4}(-\d{2}){5}/`, unanchored.
fn is_kept_device_id(id: &str, host: &str) -> bool {
    const SHAPE: &[u8] = b"0000-00-00-00-00-00";
    let matches_shape = |date: &[u8]| {
        date.len() >= SHAPE.len()
            && date.iter().zip(SHAPE).all(|(c, s)| match s {
                b'0' => c.is_ascii_digit(),
                _ => c == s,
            })
    };
    id.match_indices(&format!("{host}-"))
        .any(|(at, found)| matches_shape(&id.as_bytes()[at + found.len()..]))
}

/// Runs `ocsinventory-agent` with exactly `args` (as a person would type them) in a process
/// group of its own, kills it after [`AGENT_LIMIT`], and waits for its download worker.
pub(crate) fn run_args(args: &[String]) -> io::Result<AgentRun> {
    // Files rather than pipes: the worker inherits both and would hold a pipe open.
    let mut stdout = tempfile::tempfile()?;
    let mut stderr = tempfile::tempfile()?;
    let mut command = Command::new("ocsinventory-agent");
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout.try_clone()?)
        .stderr(stderr.try_clone()?)
        .process_group(0);

    let start = Instant::now();
    let mut child = command.spawn()?;
    // The group id is the agent's PID; the group outlives the agent while its worker runs.
    let group = child.id();
    let agent = loop {
        if let Some(status) = child.try_wait()? {
            break AgentEnd::Exited(status);
        }
        if start.elapsed() > AGENT_LIMIT {
            kill_group(group)?;
            child.wait()?;
            break AgentEnd::KilledAfterTimeout;
        }
        thread::sleep(POLL);
    };
    let worker = wait_for_group(group, WORKER_LIMIT)?;
    let elapsed = start.elapsed();

    let stdout = read_all(&mut stdout)?;
    let stderr = read_all(&mut stderr)?;
    Ok(AgentRun {
        agent,
        worker,
        stdout,
        stderr,
        elapsed,
    })
}

/// Waits until no live process is left in process group `group`; kills the group after `limit`.
pub(crate) fn wait_for_group(group: u32, limit: Duration) -> io::Result<WorkerEnd> {
    let start = Instant::now();
    while group_is_alive(group) {
        if start.elapsed() > limit {
            kill_group(group)?;
            while group_is_alive(group) && start.elapsed() < limit + Duration::from_secs(5) {
                thread::sleep(POLL);
            }
            return Ok(WorkerEnd::KilledAfterTimeout);
        }
        thread::sleep(POLL);
    }
    Ok(WorkerEnd::Finished)
}

/// Whether a process other than a zombie belongs to `group`. Zombies count as gone: an
/// orphaned worker is reparented to PID 1, which in a container may never reap it.
fn group_is_alive(group: u32) -> bool {
    let Ok(entries) = fs::read_dir("/proc") else {
        return false;
    };
    entries
        .flatten()
        .filter(|entry| {
            entry
                .file_name()
                .to_str()
                .is_some_and(|name| name.parse::<u32>().is_ok())
        })
        .filter_map(|entry| fs::read_to_string(entry.path().join("stat")).ok())
        .any(|stat| live_member_of(&stat) == Some(group))
}

/// The process group of a `/proc/<pid>/stat` line (`pid (comm) state ppid pgrp ...`),
/// or None for a zombie. The command name may hold spaces and parentheses.
fn live_member_of(stat: &str) -> Option<u32> {
    let (_, fields) = stat.rsplit_once(')')?;
    let mut fields = fields.split_whitespace();
    let state = fields.next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    (!matches!(state, "Z" | "X")).then_some(pgrp)
}

/// Sends SIGKILL to every process in `group` (std can only kill the direct child).
pub(crate) fn kill_group(group: u32) -> io::Result<()> {
    Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(Stdio::null())
        .status()
        .map(drop)
}

fn read_all(file: &mut File) -> io::Result<String> {
    file.rewind()?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}
