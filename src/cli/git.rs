//! `--git`: a branch of a git repository as the configuration, for `serve`, `gateway` and
//! `plan`; and its push webhook.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::running::create_state_dir;

/// `tessera serve --git`: where the configuration comes from instead of a directory.
#[derive(Debug, Clone, Default, Args)]
pub struct GitArgs {
    /// Serve a branch of this git repository (`https://`, `ssh://`, `git@host:path`,
    /// `file://`), fetched into the state directory.
    #[arg(long, env = "TESSERA_GIT")]
    pub git: Option<String>,
    /// The branch to serve.
    #[arg(
        long,
        env = "TESSERA_GIT_BRANCH",
        default_value = "main",
        requires = "git"
    )]
    pub branch: String,
    /// The folder inside the repository that holds the configuration (default: the root).
    #[arg(long, env = "TESSERA_GIT_PATH", default_value = "", requires = "git")]
    pub path: String,
    /// Time between fetches; a signed webhook call fetches at once.
    #[arg(
        long,
        env = "TESSERA_GIT_INTERVAL",
        default_value = "1m",
        requires = "git"
    )]
    pub interval: Option<crate::resources::quantity::Duration>,
    /// Longest run of one git command (fetch, archive) before it is killed.
    #[arg(
        long,
        env = "TESSERA_GIT_TIMEOUT",
        default_value = "2m",
        requires = "git"
    )]
    pub git_timeout: Option<crate::resources::quantity::Duration>,
    /// Private key for SSH remotes (only this key is offered).
    #[arg(long, env = "TESSERA_GIT_SSH_KEY_FILE", requires = "git")]
    pub ssh_key_file: Option<PathBuf>,
    /// `known_hosts` for SSH remotes: host keys are checked strictly against it.
    #[arg(long, env = "TESSERA_GIT_KNOWN_HOSTS_FILE", requires = "git")]
    pub known_hosts_file: Option<PathBuf>,
    /// User name for HTTPS remotes (with --password-file).
    #[arg(long, env = "TESSERA_GIT_USERNAME", requires = "git")]
    pub username: Option<String>,
    /// A file holding the password or access token for HTTPS remotes; it is read when git
    /// asks, never passed as an argument.
    #[arg(long, env = "TESSERA_GIT_PASSWORD_FILE", requires = "git")]
    pub password_file: Option<PathBuf>,
    /// A file holding the shared secret of push webhooks: `POST /hooks/git` on the admin
    /// listener then fetches at once for calls signed with it (GitHub's
    /// `X-Hub-Signature-256`, GitLab's `X-Gitlab-Token`). Without it the hook is off.
    #[arg(long, env = "TESSERA_WEBHOOK_SECRET_FILE", requires = "git")]
    pub webhook_secret_file: Option<PathBuf>,
}

/// The git source of `args` in `state` (required), and its first snapshot. The first fetch
/// comes before anything else: an empty first snapshot would read as "nothing declared" to
/// a server restarting with packages in its store.
pub(super) async fn first_git_snapshot(
    args: &GitArgs,
    state: Option<&PathBuf>,
) -> Result<(
    PathBuf,
    crate::sources::git::GitSource,
    Arc<tokio::sync::Notify>,
    crate::resources::Snapshot,
)> {
    let Some(state_dir) = state.cloned() else {
        bail!("--state is required with --git");
    };
    create_state_dir(&state_dir)?;
    let (source, wake) = git_source(args, &state_dir)?;
    let first = source.fetch_snapshot().await.with_context(|| {
        format!(
            "failed to read the configuration from {}",
            source.display_url()
        )
    })?;
    Ok((state_dir, source, wake, first))
}

/// The push webhook of `args` (`POST /hooks/git`), when a secret file is given.
pub(super) fn webhook(
    args: &GitArgs,
    wake: &Arc<tokio::sync::Notify>,
) -> Result<Option<axum::Router>> {
    let Some(file) = &args.webhook_secret_file else {
        return Ok(None);
    };
    let secret =
        std::fs::read(file).with_context(|| format!("failed to read {}", file.display()))?;
    let secret = secret.trim_ascii();
    if secret.is_empty() {
        bail!(
            "--webhook-secret-file {}: the file is empty",
            file.display()
        );
    }
    Ok(Some(crate::server::webhook::app(
        crate::server::webhook::Hook::new(secret, wake.clone()),
    )))
}

/// The git source of `args`, and the handle a webhook wakes it with.
pub(super) fn git_source(
    args: &GitArgs,
    state_dir: &Path,
) -> Result<(crate::sources::git::GitSource, Arc<tokio::sync::Notify>)> {
    use crate::sources::git::{Credentials, DEFAULT_TIMEOUT, GitConfig, GitSource};
    let url = args.git.clone().context("no --git URL")?;
    if args.password_file.is_some() && args.username.is_none() {
        bail!("--password-file needs --username");
    }
    let source = GitSource::new(
        GitConfig {
            url,
            branch: args.branch.clone(),
            path: args.path.clone(),
            interval: args
                .interval
                .map_or(Duration::from_secs(60), |d| d.as_std())
                .max(Duration::from_secs(1)),
            timeout: args.git_timeout.map_or(DEFAULT_TIMEOUT, |d| d.as_std()),
            credentials: Credentials {
                ssh_key_file: args.ssh_key_file.clone(),
                known_hosts_file: args.known_hosts_file.clone(),
                username: args.username.clone(),
                password_file: args.password_file.clone(),
            },
        },
        state_dir,
    )?;
    Ok((source, Arc::new(tokio::sync::Notify::new())))
}
