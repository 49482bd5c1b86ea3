//! `tessera token`: enrollment tokens for Tessera's own agents (create, list, revoke); and
//! `tessera admin-token`: tokens for the admin API, with a name and a role.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Subcommand;

use super::state::StateArgs;
use super::{OutputFormat, plural};
use crate::server::admin::Role;

/// `tessera token`.
#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Make a token; it is printed once and stored only as a hash.
    #[command(after_help = "Examples:
  tessera token create --config fleet/                    one enrollment, within the hour
  tessera token create --uses 50 --ttl 24h --note 'lab rollout' --state /var/lib/tessera
  tessera agent --token \"$(tessera token create)\" --server https://tessera.example.com:8443 ...")]
    Create {
        #[command(flatten)]
        state: StateArgs,
        /// How long it can be used.
        #[arg(long, default_value = "1h")]
        ttl: crate::resources::quantity::Duration,
        /// How many agents may enroll with it.
        #[arg(long, default_value_t = 1)]
        uses: i64,
        /// What it is for (shown in `tessera token list`).
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List tokens with their uses, last use, expiry and revocation (never the secrets).
    #[command(after_help = "Examples:
  tessera token list --config fleet/
  tessera token list --state /var/lib/tessera --output json")]
    List {
        #[command(flatten)]
        state: StateArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
        output: OutputFormat,
    },
    /// Revoke a token by its id: agents can no longer enroll with it.
    #[command(after_help = "Examples:
  tessera token revoke 1a2b3c4d5e6f --config fleet/   the id is the 12 hex digits after tsr_
  tessera token list --state /var/lib/tessera         its revocation shows there")]
    Revoke {
        #[command(flatten)]
        state: StateArgs,
        /// The token's id (the 12 hex digits after `tsr_`).
        id: String,
    },
}

/// Runs one token command.
pub(super) fn run(command: TokenCommand) -> Result<ExitCode> {
    let now = jiff::Timestamp::now().as_second();
    let mut out = std::io::stdout().lock();
    match command {
        TokenCommand::Create {
            state,
            ttl,
            uses,
            note,
        } => {
            if uses < 1 {
                bail!("--uses must be at least 1");
            }
            let db = state.open()?;
            let token = crate::pki::token::Token::generate();
            let ttl = i64::try_from(ttl.as_std().as_secs()).unwrap_or(i64::MAX);
            db.create_token(&crate::store::db::TokenRecord {
                id: token.id.clone(),
                secret_sha256: token.secret_sha256(),
                note,
                created_at: now,
                expires_at: now.saturating_add(ttl),
                max_uses: uses,
                uses: 0,
                last_used_at: None,
                revoked_at: None,
            })?;
            writeln!(out, "{}", token.reveal())?;
            eprintln!(
                "token {} allows {uses} enrollment{} until {}; it is shown only now",
                token.id,
                plural(usize::try_from(uses).unwrap_or(2)),
                jiff::Timestamp::from_second(now.saturating_add(ttl))
                    .map_or_else(|_| "forever".to_owned(), |t| t.to_string())
            );
        }
        TokenCommand::List { state, output } => {
            let tokens = state.open()?.tokens()?;
            match output {
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&tokens)?)?,
                OutputFormat::Human => {
                    let when = |t: Option<i64>| {
                        t.and_then(|t| jiff::Timestamp::from_second(t).ok())
                            .map_or_else(|| "-".to_owned(), |t| t.to_string())
                    };
                    writeln!(
                        out,
                        "{:12}  {:7}  {:20}  {:20}  {:9}  NOTE",
                        "ID", "USES", "EXPIRES", "LAST USED", "STATE"
                    )?;
                    for t in &tokens {
                        let state = if t.revoked_at.is_some() {
                            "revoked"
                        } else if now >= t.expires_at {
                            "expired"
                        } else if t.uses >= t.max_uses {
                            "used up"
                        } else {
                            "usable"
                        };
                        writeln!(
                            out,
                            "{:12}  {:7}  {:20}  {:20}  {:9}  {}",
                            t.id,
                            format!("{}/{}", t.uses, t.max_uses),
                            when(Some(t.expires_at)),
                            when(t.last_used_at),
                            state,
                            t.note
                        )?;
                    }
                }
            }
        }
        TokenCommand::Revoke { state, id } => {
            // The id, also when given the whole token.
            let id = id
                .trim_start_matches("tsr_")
                .split('_')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !state.open()?.revoke_token(&id, now)? {
                bail!("no enrollment token {id}");
            }
            writeln!(out, "token {id} revoked")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tessera admin-token`: who may use the admin API. A command of its own rather than
/// `token --admin`: an admin token has a name and a role and no expiry or use count, and
/// keeping the two lists apart keeps agents' one-time secrets from being mistaken for
/// operators' standing ones.
#[derive(Debug, Subcommand)]
pub(super) enum AdminTokenCommand {
    /// Make a token for the admin API; it is printed once and stored only as a hash.
    #[command(after_help = "Examples:
  tessera admin-token create --role viewer --name grafana --config fleet/
  tessera admin-token create --role operator --name alice --state /var/lib/tessera > alice.token
  tessera get --admin http://10.0.0.5:9090 --token-file alice.token")]
    Create {
        #[command(flatten)]
        state: StateArgs,
        /// `viewer` reads; `operator` also suspends, resumes, reconciles and renews.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// Who holds it: named in events ("suspended by operator alice") and logs.
        #[arg(long)]
        name: String,
    },
    /// List admin tokens with their name, role, last use and revocation (never the secrets).
    #[command(after_help = "Examples:
  tessera admin-token list --config fleet/
  tessera admin-token list --state /var/lib/tessera --output json")]
    List {
        #[command(flatten)]
        state: StateArgs,
        #[arg(long, value_enum, default_value_t = OutputFormat::Human)]
        output: OutputFormat,
    },
    /// Revoke an admin token by its id: it stops working at once, also in console sessions.
    #[command(after_help = "Examples:
  tessera admin-token revoke 0123456789ab --config fleet/   the id is the 12 hex digits after tsa_
  tessera admin-token list --state /var/lib/tessera        its revocation shows there")]
    Revoke {
        #[command(flatten)]
        state: StateArgs,
        /// The token's id (the 12 hex digits after `tsa_`).
        id: String,
    },
}

fn parse_role(text: &str) -> Result<Role, crate::server::admin::AuthError> {
    text.parse()
}

/// Runs one admin token command.
pub(super) fn run_admin(command: AdminTokenCommand) -> Result<ExitCode> {
    let now = jiff::Timestamp::now().as_second();
    let mut out = std::io::stdout().lock();
    match command {
        AdminTokenCommand::Create { state, role, name } => {
            if name.trim().is_empty() {
                bail!("--name must name who holds the token");
            }
            let db = state.open()?;
            let (id, whole, secret_sha256) = crate::server::admin::generate_token();
            db.create_admin_token(&crate::store::db::AdminTokenRecord {
                id: id.clone(),
                secret_sha256,
                name: name.clone(),
                role: role.as_str().to_owned(),
                created_at: now,
                last_used_at: None,
                revoked_at: None,
            })?;
            writeln!(out, "{whole}")?;
            eprintln!(
                "admin token {id} for {} {name}; it is shown only now (use it with --token or TESSERA_TOKEN)",
                role.as_str()
            );
        }
        AdminTokenCommand::List { state, output } => {
            let tokens = state.open()?.admin_tokens()?;
            match output {
                OutputFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&tokens)?)?,
                OutputFormat::Human => {
                    let when = |t: Option<i64>| {
                        t.and_then(|t| jiff::Timestamp::from_second(t).ok())
                            .map_or_else(|| "-".to_owned(), |t| t.to_string())
                    };
                    writeln!(
                        out,
                        "{:12}  {:8}  {:20}  {:20}  {:7}  NAME",
                        "ID", "ROLE", "CREATED", "LAST USED", "STATE"
                    )?;
                    for t in &tokens {
                        writeln!(
                            out,
                            "{:12}  {:8}  {:20}  {:20}  {:7}  {}",
                            t.id,
                            t.role,
                            when(Some(t.created_at)),
                            when(t.last_used_at),
                            if t.revoked_at.is_some() {
                                "revoked"
                            } else {
                                "usable"
                            },
                            t.name
                        )?;
                    }
                }
            }
        }
        AdminTokenCommand::Revoke { state, id } => {
            let id = crate::server::admin::token_id(&id);
            if !state.open()?.revoke_admin_token(&id, now)? {
                bail!("no admin token {id}");
            }
            writeln!(out, "admin token {id} revoked")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
