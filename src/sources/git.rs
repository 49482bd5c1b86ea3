//! The git source: a branch of a remote repository, fetched on an interval and whenever a
//! signed webhook says something was pushed.
//!
//! It runs the `git` program rather than linking a git library: `git` already speaks every
//! transport and authentication an operator uses (SSH with its `known_hosts`, HTTPS behind
//! proxies, credential helpers), behaves exactly as it does when the operator debugs by hand,
//! and costs no compile time (`gix` would add minutes to a cold build and a transport stack
//! that must be kept off aws-lc-rs; `git2` would bring C libgit2 and OpenSSL).
//!
//! Layout under `<state>/git/<digest of the URL>/`: `repo.git`, a bare repository that
//! fetches only the branch; `trees/<commit>`, one read-only export of each commit served
//! (`git archive`, unpacked into a temporary name and renamed), so a snapshot and the package
//! content it names never come from a half-updated tree. The newest two exports are kept.
//!
//! Secrets never reach argv or logs: an SSH key is named by `GIT_SSH_COMMAND`, an HTTPS
//! password is read from its file by a small `GIT_ASKPASS` script at the moment git asks.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::resources::{Problem, Snapshot};
use crate::sources::dir::DirSource;

/// How long one git command may run before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// The first wait after a failed fetch; it doubles up to the interval.
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// How problems of fetching begin, to tell them from problems of the documents.
const FETCH_FAILED: &str = "failed to fetch";
/// How much of git's error output is kept for logs and status.
const MAX_STDERR: usize = 2000;
/// Exports of commits kept on disk: the one served and the one before, which a pass that
/// started just before the switch may still be reading.
const TREES_KEPT: usize = 2;

/// Errors of the git source.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("failed to run git {action}")]
    Spawn {
        action: String,
        #[source]
        source: std::io::Error,
    },
    #[error("git {action} failed: {stderr}")]
    Failed { action: String, stderr: String },
    #[error("git {action} did not finish within {timeout:?}")]
    Timeout { action: String, timeout: Duration },
    #[error("failed to prepare {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--path {path}: not a directory in commit {commit}")]
    NoSuchPath { path: String, commit: String },
    #[error("invalid --path {0}: it must be a relative path inside the repository")]
    InvalidPath(String),
}

/// Credentials, each read from a file when git needs it.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// Private key for SSH remotes.
    pub ssh_key_file: Option<PathBuf>,
    /// `known_hosts` for SSH remotes; host keys are checked strictly.
    pub known_hosts_file: Option<PathBuf>,
    /// User name for HTTPS remotes.
    pub username: Option<String>,
    /// Password or token for HTTPS remotes.
    pub password_file: Option<PathBuf>,
}

/// What to fetch and how.
#[derive(Clone, Debug)]
pub struct GitConfig {
    /// The remote: `https://`, `ssh://`, `user@host:path` or `file://`.
    pub url: String,
    /// The branch served.
    pub branch: String,
    /// The folder inside the repository holding the configuration; empty: the root.
    pub path: String,
    /// Time between fetches when no webhook calls.
    pub interval: Duration,
    /// Longest run of one git command.
    pub timeout: Duration,
    pub credentials: Credentials,
}

/// A git repository as a source of configuration.
#[derive(Clone, Debug)]
pub struct GitSource {
    config: GitConfig,
    /// `<state>/git/<digest of the URL>`.
    dir: PathBuf,
}

impl GitSource {
    /// A source keeping its clone below `state_dir`.
    pub fn new(config: GitConfig, state_dir: &Path) -> Result<Self, GitError> {
        let path = config.path.trim_matches('/').to_owned();
        if Path::new(&path)
            .components()
            .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(GitError::InvalidPath(config.path));
        }
        let digest = Sha256::digest(config.url.as_bytes());
        let dir = state_dir.join("git").join(hex::encode(&digest[..8]));
        Ok(Self {
            config: GitConfig { path, ..config },
            dir,
        })
    }

    /// The remote, without any password written into it, for logs.
    pub fn display_url(&self) -> String {
        redact(&self.config.url)
    }

    /// Fetches the branch and reads the configuration at its head. When the fetch fails
    /// but an earlier fetch left a commit, that commit is read and the failure is reported
    /// as a problem of the snapshot; with no commit at all, the failure is the error.
    pub async fn fetch_snapshot(&self) -> Result<Snapshot, GitError> {
        let (commit, fetched) = match self.fetch().await {
            Ok(commit) => (commit, Ok(())),
            Err(error) => match self.local_head().await {
                Ok(Some(commit)) => (commit, Err(error)),
                _ => return Err(error),
            },
        };
        let mut snapshot = self.snapshot_at(&commit).await?;
        if let Err(error) = fetched {
            tracing::warn!(url = %self.display_url(), %error, "fetch failed");
            snapshot.problems.push(Problem::general(format!(
                "{FETCH_FAILED} {} (branch {}); still serving commit {commit}: {error}",
                self.display_url(),
                self.config.branch
            )));
        }
        Ok(snapshot)
    }

    /// Fetches on the interval and whenever `wake` is notified (a webhook), publishing each
    /// new snapshot on `publish`, until `shutdown`. Failed fetches are retried sooner, with
    /// backoff, and reported in the published snapshot's problems.
    pub async fn run(
        self,
        publish: watch::Sender<Snapshot>,
        wake: Arc<Notify>,
        shutdown: CancellationToken,
    ) -> Result<(), GitError> {
        let mut retry = FIRST_RETRY;
        let mut wait = self.config.interval;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
                () = wake.notified() => tracing::info!(url = %self.display_url(), "webhook: fetching now"),
            }
            let found = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                found = self.fetch_snapshot() => found,
            };
            let failed = match found {
                Ok(snapshot) => {
                    let failed = snapshot
                        .problems
                        .iter()
                        .any(|p| p.message.starts_with(FETCH_FAILED));
                    let revision = snapshot.revision.clone();
                    let changed = publish.send_if_modified(|current| {
                        let changed = *current != snapshot;
                        if changed {
                            *current = snapshot;
                        }
                        changed
                    });
                    if changed && !failed {
                        tracing::info!(commit = %revision, "configuration fetched");
                        self.remove_old_trees(&revision);
                    }
                    failed
                }
                Err(error) => {
                    // The commit could not be read (its folder is gone, the disk is full):
                    // the last snapshot stays, with the reason among its problems.
                    let problem = Problem::general(format!(
                        "{FETCH_FAILED} {} (branch {}): {error}",
                        self.display_url(),
                        self.config.branch
                    ));
                    tracing::warn!(%problem, "git source");
                    publish.send_if_modified(|current| {
                        let changed = !current.problems.contains(&problem);
                        if changed {
                            current
                                .problems
                                .retain(|p| !p.message.starts_with(FETCH_FAILED));
                            current.problems.push(problem);
                        }
                        changed
                    });
                    true
                }
            };
            if failed {
                wait = retry.min(self.config.interval);
                retry = (retry * 2).min(self.config.interval);
            } else {
                wait = self.config.interval;
                retry = FIRST_RETRY;
            }
        }
    }

    /// Fetches the branch into the bare repository; returns its head commit.
    async fn fetch(&self) -> Result<String, GitError> {
        let repo = self.repo();
        if !repo.join("HEAD").is_file() {
            std::fs::create_dir_all(&self.dir).map_err(|source| GitError::Io {
                path: self.dir.clone(),
                source,
            })?;
            let _ = std::fs::remove_dir_all(&repo);
            self.git("init", &["init", "--bare", "--quiet"], Some(&repo))
                .await?;
        }
        let refspec = format!(
            "+refs/heads/{0}:refs/remotes/origin/{0}",
            self.config.branch
        );
        self.git(
            "fetch",
            &[
                "fetch",
                "--quiet",
                "--no-tags",
                "--prune",
                "--",
                &self.config.url,
                &refspec,
            ],
            None,
        )
        .await?;
        self.local_head().await?.ok_or_else(|| GitError::Failed {
            action: "fetch".into(),
            stderr: format!("branch {} was not fetched", self.config.branch),
        })
    }

    /// The commit of the branch as last fetched, if any.
    async fn local_head(&self) -> Result<Option<String>, GitError> {
        if !self.repo().join("HEAD").is_file() {
            return Ok(None);
        }
        let wanted = format!("refs/remotes/origin/{}^{{commit}}", self.config.branch);
        match self
            .git(
                "rev-parse",
                &["rev-parse", "--verify", "--quiet", &wanted],
                None,
            )
            .await
        {
            Ok(out) => Ok(Some(String::from_utf8_lossy(&out).trim().to_owned())),
            Err(GitError::Failed { .. }) => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// The configuration at `commit`: exported once into `trees/<commit>`, then read.
    async fn snapshot_at(&self, commit: &str) -> Result<Snapshot, GitError> {
        let tree = self.dir.join("trees").join(commit);
        if !tree.is_dir() {
            let staging = self.dir.join("trees").join(format!(".tmp-{commit}"));
            let io = |path: &Path| {
                let path = path.to_path_buf();
                move |source| GitError::Io { path, source }
            };
            let _ = std::fs::remove_dir_all(&staging);
            std::fs::create_dir_all(&staging).map_err(io(&staging))?;
            let archive = self.dir.join("trees").join(format!(".tmp-{commit}.tar"));
            let file = std::fs::File::create(&archive).map_err(io(&archive))?;
            let exported = self
                .git_to(
                    "archive",
                    &["archive", "--format=tar", commit],
                    Stdio::from(file),
                )
                .await;
            let unpacked = match exported {
                Ok(()) => {
                    let (from, into) = (archive.clone(), staging.clone());
                    tokio::task::spawn_blocking(move || unpack(&from, &into))
                        .await
                        .unwrap_or_else(|e| Err(std::io::Error::other(e.to_string())))
                        .map_err(io(&staging))
                }
                Err(error) => Err(error),
            };
            let _ = std::fs::remove_file(&archive);
            if let Err(error) = unpacked {
                let _ = std::fs::remove_dir_all(&staging);
                return Err(error);
            }
            std::fs::rename(&staging, &tree).map_err(io(&tree))?;
        }
        let root = if self.config.path.is_empty() {
            tree
        } else {
            tree.join(&self.config.path)
        };
        if !root.is_dir() {
            return Err(GitError::NoSuchPath {
                path: self.config.path.clone(),
                commit: commit.to_owned(),
            });
        }
        let read = root.clone();
        let mut snapshot = tokio::task::spawn_blocking(move || {
            DirSource::new(&read, Vec::new()).map(|source| source.scan())
        })
        .await
        .map_err(|e| GitError::Io {
            path: root.clone(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(|e| GitError::Io {
            path: root.clone(),
            source: std::io::Error::other(e.to_string()),
        })?;
        snapshot.revision = commit.to_owned();
        snapshot.root = Some(root);
        Ok(snapshot)
    }

    /// Removes exports other than `current` and the newest before it.
    fn remove_old_trees(&self, current: &str) {
        let trees = self.dir.join("trees");
        let Ok(entries) = std::fs::read_dir(&trees) else {
            return;
        };
        let mut found: Vec<(std::time::SystemTime, PathBuf)> = entries
            .flatten()
            .filter(|e| e.file_name().to_string_lossy() != current)
            .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
            .collect();
        found.sort();
        let keep = TREES_KEPT - 1;
        let remove = found.len().saturating_sub(keep);
        for (_, path) in found.into_iter().take(remove) {
            if let Err(error) = std::fs::remove_dir_all(&path) {
                tracing::debug!(path = %path.display(), %error, "failed to remove an old export");
            }
        }
    }

    fn repo(&self) -> PathBuf {
        self.dir.join("repo.git")
    }

    /// Runs git on the bare repository (or, for `init`, with `target` as the last argument)
    /// and returns its standard output.
    async fn git(
        &self,
        action: &str,
        args: &[&str],
        target: Option<&Path>,
    ) -> Result<Vec<u8>, GitError> {
        let mut command = self.command(args, target);
        command.stdout(Stdio::piped());
        let output = self.finish(action, command).await?;
        Ok(output)
    }

    /// Runs git with its standard output going to `stdout`.
    async fn git_to(&self, action: &str, args: &[&str], stdout: Stdio) -> Result<(), GitError> {
        let mut command = self.command(args, None);
        command.stdout(stdout);
        self.finish(action, command).await.map(|_| ())
    }

    fn command(&self, args: &[&str], target: Option<&Path>) -> tokio::process::Command {
        let mut command = tokio::process::Command::new("git");
        match target {
            Some(target) => {
                command.args(args).arg(target);
            }
            None => {
                command.arg("--git-dir").arg(self.repo()).args(args);
            }
        }
        command
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // Never wait for a human, never read the operator's global configuration, and
            // allow only transports that fetch (no `ext::`, which runs commands).
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_ALLOW_PROTOCOL", "file:git:http:https:ssh")
            .env("LC_ALL", "C");
        let credentials = &self.config.credentials;
        let mut ssh = vec!["ssh".to_owned(), "-o".into(), "BatchMode=yes".into()];
        if let Some(key) = &credentials.ssh_key_file {
            ssh.extend([
                "-i".into(),
                shell_quote(&key.display().to_string()),
                "-o".into(),
                "IdentitiesOnly=yes".into(),
            ]);
        }
        if let Some(known_hosts) = &credentials.known_hosts_file {
            ssh.extend([
                "-o".into(),
                "StrictHostKeyChecking=yes".into(),
                "-o".into(),
                shell_quote(&format!("UserKnownHostsFile={}", known_hosts.display())),
            ]);
        }
        command.env("GIT_SSH_COMMAND", ssh.join(" "));
        if let Some(password_file) = &credentials.password_file {
            command
                .env("GIT_ASKPASS", self.dir.join("askpass"))
                .env("TESSERA_GIT_PASSWORD_FILE", password_file)
                .env(
                    "TESSERA_GIT_USERNAME",
                    credentials.username.as_deref().unwrap_or(""),
                );
        }
        command
    }

    async fn finish(
        &self,
        action: &str,
        mut command: tokio::process::Command,
    ) -> Result<Vec<u8>, GitError> {
        if self.config.credentials.password_file.is_some() {
            self.write_askpass()?;
        }
        let child = command.spawn().map_err(|source| GitError::Spawn {
            action: action.to_owned(),
            source,
        })?;
        let output = tokio::time::timeout(self.config.timeout, child.wait_with_output())
            .await
            .map_err(|_| GitError::Timeout {
                action: action.to_owned(),
                timeout: self.config.timeout,
            })?
            .map_err(|source| GitError::Spawn {
                action: action.to_owned(),
                source,
            })?;
        if output.status.success() {
            return Ok(output.stdout);
        }
        let mut stderr = redact(String::from_utf8_lossy(&output.stderr).trim());
        if stderr.len() > MAX_STDERR {
            let mut end = MAX_STDERR;
            while !stderr.is_char_boundary(end) {
                end -= 1;
            }
            stderr.truncate(end);
            stderr.push('…');
        }
        if stderr.is_empty() {
            stderr = format!("exit status {}", output.status);
        }
        Err(GitError::Failed {
            action: action.to_owned(),
            stderr,
        })
    }

    /// The `GIT_ASKPASS` script: the user name from the environment, the password from its
    /// file, so neither is ever an argument.
    fn write_askpass(&self) -> Result<(), GitError> {
        let path = self.dir.join("askpass");
        if path.is_file() {
            return Ok(());
        }
        let script = "#!/bin/sh\ncase \"$1\" in\n  Username*) printf '%s\\n' \"$TESSERA_GIT_USERNAME\" ;;\n  *) head -n 1 \"$TESSERA_GIT_PASSWORD_FILE\" ;;\nesac\n";
        let fail = |source| GitError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(&self.dir).map_err(fail)?;
        std::fs::write(&path, script).map_err(fail)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))
                .map_err(fail)?;
        }
        Ok(())
    }
}

/// Unpacks the tar archive `from` into `into`, leaving out symbolic links that point outside
/// the tree: the directory source follows links, and a pushed commit must not make the
/// server read its own files (its CA key) as configuration or package content.
fn unpack(from: &Path, into: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(std::fs::File::open(from)?);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(false);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            let target = entry.link_name()?.unwrap_or_default().into_owned();
            let base = if kind.is_symlink() {
                path.parent().unwrap_or(Path::new("")).to_path_buf()
            } else {
                PathBuf::new()
            };
            if escapes(&base, &target) {
                tracing::warn!(
                    link = %path.display(),
                    target = %target.display(),
                    "a link pointing outside the repository was left out"
                );
                continue;
            }
        }
        entry.unpack_in(into)?;
    }
    Ok(())
}

/// Whether `target`, followed from the directory `base` (relative to the root), leaves the
/// root.
fn escapes(base: &Path, target: &Path) -> bool {
    use std::path::Component;
    let mut depth: usize = 0;
    for component in base.components().chain(target.components()) {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(up) => depth = up,
                None => return true,
            },
            Component::RootDir | Component::Prefix(_) => return true,
        }
    }
    false
}

/// `url` with any password in its user part replaced by `***`.
fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("://") {
        let (before, after) = rest.split_at(start + 3);
        out.push_str(before);
        let end = after
            .find(|c: char| c == '/' || c.is_whitespace() || c == '\'')
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority.rfind('@') {
            Some(at) if authority[..at].contains(':') => {
                let user = &authority[..authority[..at].find(':').unwrap_or(at)];
                out.push_str(user);
                out.push_str(":***");
                out.push_str(&authority[at..]);
            }
            _ => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// `text` quoted for the shell that runs `GIT_SSH_COMMAND`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) {
        let status = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.invalid")
            .output()
            .unwrap();
        assert!(status.status.success(), "git {args:?}: {status:?}");
    }

    fn source(url: String, path: &str, state: &Path) -> GitSource {
        GitSource::new(
            GitConfig {
                url,
                branch: "main".into(),
                path: path.into(),
                interval: Duration::from_secs(3600),
                timeout: DEFAULT_TIMEOUT,
                credentials: Credentials::default(),
            },
            state,
        )
        .unwrap()
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact("fatal: https://bot:s3cret@git.example/r.git not found"),
            "fatal: https://bot:***@git.example/r.git not found"
        );
        assert_eq!(
            redact("ssh://git@host/r.git"),
            "ssh://git@host/r.git",
            "a user without a password stays"
        );
    }

    #[test]
    fn links_leaving_the_tree_are_told_apart() {
        assert!(!escapes(Path::new("a/b"), Path::new("../c")));
        assert!(!escapes(Path::new("a"), Path::new("./x/../y")));
        assert!(escapes(Path::new("a"), Path::new("../../etc")));
        assert!(escapes(Path::new(""), Path::new("/etc/passwd")));
        assert!(escapes(Path::new("a"), Path::new("b/../../..")));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_symlink_out_of_the_repository_is_not_exported() {
        let work = tempfile::tempdir().unwrap();
        let clone = work.path().join("clone");
        std::fs::create_dir_all(clone.join("pkg")).unwrap();
        run(&clone, &["init", "--quiet", "--initial-branch", "main"]);
        std::fs::write(clone.join("pkg/a.yaml"), "a: 1\n").unwrap();
        std::os::unix::fs::symlink("/etc", clone.join("pkg/outside")).unwrap();
        std::os::unix::fs::symlink("../pkg/a.yaml", clone.join("pkg/inside.yaml")).unwrap();
        run(&clone, &["add", "."]);
        run(&clone, &["commit", "--quiet", "-m", "links"]);
        let state = tempfile::tempdir().unwrap();
        let url = format!("file://{}", clone.display());
        let snapshot = source(url, "pkg", state.path())
            .fetch_snapshot()
            .await
            .unwrap();
        let root = snapshot.root.unwrap();
        assert!(root.join("a.yaml").is_file());
        assert!(
            root.join("inside.yaml").is_file(),
            "a link inside the tree stays"
        );
        assert!(
            std::fs::symlink_metadata(root.join("outside")).is_err(),
            "a link out of the tree is left out"
        );
    }

    #[cfg(unix)]
    #[test]
    fn the_askpass_script_answers_from_the_environment_and_the_password_file() {
        let state = tempfile::tempdir().unwrap();
        let password = state.path().join("password");
        std::fs::write(&password, "t0ken\nsecond line\n").unwrap();
        let mut git = source("https://git.example/r.git".into(), "", state.path());
        git.config.credentials = Credentials {
            username: Some("deploy-bot".into()),
            password_file: Some(password.clone()),
            ..Credentials::default()
        };
        git.write_askpass().unwrap();
        let ask = |prompt: &str| {
            // Through `sh`, as git runs it but without executing a file just written (another
            // test's fork may still hold it open for writing: ETXTBSY).
            let output = std::process::Command::new("sh")
                .arg(git.dir.join("askpass"))
                .arg(prompt)
                .env("TESSERA_GIT_USERNAME", "deploy-bot")
                .env("TESSERA_GIT_PASSWORD_FILE", &password)
                .output()
                .unwrap();
            String::from_utf8(output.stdout).unwrap()
        };
        assert_eq!(ask("Username for 'https://git.example': "), "deploy-bot\n");
        assert_eq!(
            ask("Password for 'https://deploy-bot@git.example': "),
            "t0ken\n"
        );
        let script = std::fs::read_to_string(git.dir.join("askpass")).unwrap();
        assert!(!script.contains("t0ken") && !script.contains("deploy-bot"));
    }

    #[test]
    fn a_path_leaving_the_repository_is_refused() {
        let state = tempfile::tempdir().unwrap();
        for path in ["../x", "a/../../b", "/etc"] {
            let config = GitConfig {
                url: "file:///nowhere".into(),
                branch: "main".into(),
                path: path.into(),
                interval: Duration::from_secs(60),
                timeout: DEFAULT_TIMEOUT,
                credentials: Credentials::default(),
            };
            let made = GitSource::new(config, state.path());
            // A leading `/` is trimmed: `/etc` means the folder `etc` of the repository.
            assert_eq!(made.is_err(), path != "/etc", "{path}");
        }
    }

    #[tokio::test]
    async fn fetches_the_branch_folder_and_keeps_serving_the_last_commit_when_the_remote_is_gone() {
        let work = tempfile::tempdir().unwrap();
        let remote = work.path().join("remote.git");
        let clone = work.path().join("clone");
        std::fs::create_dir_all(&clone).unwrap();
        run(work.path(), &["init", "--bare", "--quiet", "remote.git"]);
        run(&clone, &["init", "--quiet", "--initial-branch", "main"]);
        std::fs::create_dir_all(clone.join("config")).unwrap();
        std::fs::write(clone.join("config/a.yaml"), "a: 1\n").unwrap();
        std::fs::write(clone.join("outside.yaml"), "b: 1\n").unwrap();
        run(&clone, &["add", "."]);
        run(&clone, &["commit", "--quiet", "-m", "one"]);
        run(
            &clone,
            &["push", "--quiet", remote.to_str().unwrap(), "main"],
        );

        let state = tempfile::tempdir().unwrap();
        let url = format!("file://{}", remote.display());
        let git = source(url, "config", state.path());
        let snapshot = git.fetch_snapshot().await.expect("fetched");
        assert_eq!(snapshot.revision.len(), 40, "a commit id: {snapshot:?}");
        let paths: Vec<&str> = snapshot.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["a.yaml"], "only the folder");
        assert!(snapshot.problems.is_empty(), "{:?}", snapshot.problems);
        let root = snapshot.root.clone().unwrap();
        assert!(root.join("a.yaml").is_file() && root.starts_with(state.path()));

        std::fs::remove_dir_all(&remote).unwrap();
        let again = git.fetch_snapshot().await.expect("the last commit");
        assert_eq!(again.revision, snapshot.revision);
        assert_eq!(again.files, snapshot.files);
        assert!(
            again.problems[0].message.starts_with("failed to fetch"),
            "{:?}",
            again.problems
        );
    }

    #[tokio::test]
    async fn a_missing_folder_or_branch_is_an_error() {
        let work = tempfile::tempdir().unwrap();
        let clone = work.path().join("clone");
        std::fs::create_dir_all(&clone).unwrap();
        run(&clone, &["init", "--quiet", "--initial-branch", "main"]);
        std::fs::write(clone.join("a.yaml"), "a: 1\n").unwrap();
        run(&clone, &["add", "."]);
        run(&clone, &["commit", "--quiet", "-m", "one"]);
        let url = format!("file://{}", clone.display());
        let state = tempfile::tempdir().unwrap();
        let missing = source(url.clone(), "nope", state.path())
            .fetch_snapshot()
            .await;
        assert!(
            matches!(missing, Err(GitError::NoSuchPath { .. })),
            "{missing:?}"
        );
        let mut other = source(url, "", state.path());
        other.config.branch = "release".into();
        assert!(other.fetch_snapshot().await.is_err());
    }
}
