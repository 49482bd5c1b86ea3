//! The admin listener's flags, written once for `serve` and `gateway`: where it listens and
//! the host names it answers to besides loopback's, and who may call it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use crate::server::admin::{AdminAuth, AuthError, AuthMode};
use crate::store::db::Database;

/// `--admin-auth`: how callers of the admin API prove who they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum AdminAuthMode {
    /// No credentials: allowed only on a loopback address (or with --admin-insecure); every
    /// caller is an operator.
    #[default]
    None,
    /// A bearer token (`tessera admin-token create`) on every call but /healthz, /readyz and
    /// the git webhook.
    Token,
    /// A client certificate issued by --admin-client-ca (needs --admin-tls-cert and
    /// --admin-tls-key): its common name names the caller, a URI SAN
    /// `tessera:role:operator` (or `viewer`, the default) gives the role.
    Mtls,
}

/// `--admin-address`, `--admin-host`, `--admin-auth`, `--admin-insecure` and
/// `--admin-public-metrics`.
#[derive(Debug, Clone, Default, Args)]
pub struct AdminArgs {
    /// Address of the admin API (health, readiness, objects, `/metrics`) [default:
    /// 127.0.0.1:9090 for `serve`, 127.0.0.1:9091 for `gateway`, so both fit on one machine].
    /// Keep it on loopback or behind mutual TLS: it shows what is deployed where.
    #[arg(
        long = "admin-address",
        env = "TESSERA_ADMIN_ADDRESS",
        value_name = "ADDRESS"
    )]
    pub address: Option<SocketAddr>,
    /// A host name the admin API also answers to (repeatable; the environment variable takes
    /// a comma-separated list). It always answers to `localhost`, `*.localhost` and IP
    /// addresses; any other `Host` gets 421, so that a web page cannot reach it through a
    /// browser by DNS rebinding.
    #[arg(
        long = "admin-host",
        env = "TESSERA_ADMIN_HOSTS",
        value_delimiter = ','
    )]
    pub hosts: Vec<String>,
    /// How callers prove who they are: `token` (Authorization: Bearer, or the console's
    /// session) or `none`. `none` is refused on a non-loopback address unless
    /// --admin-insecure.
    #[arg(
        long = "admin-auth",
        env = "TESSERA_ADMIN_AUTH",
        value_enum,
        default_value_t
    )]
    pub auth: AdminAuthMode,
    /// Serve the admin API without authentication on a non-loopback address anyway (anyone
    /// who reaches it reads the fleet and steers deployments).
    #[arg(long = "admin-insecure", env = "TESSERA_ADMIN_INSECURE")]
    pub insecure: bool,
    /// Leave /metrics open to callers without a token (for a Prometheus that has none).
    #[arg(long = "admin-public-metrics", env = "TESSERA_ADMIN_PUBLIC_METRICS")]
    pub public_metrics: bool,
    /// Serve the admin API over TLS with this certificate chain (PEM; with
    /// --admin-tls-key).
    #[arg(
        long = "admin-tls-cert",
        env = "TESSERA_ADMIN_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --admin-tls-cert (PEM).
    #[arg(
        long = "admin-tls-key",
        env = "TESSERA_ADMIN_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that admin clients' certificates must be issued by (for
    /// --admin-auth mtls).
    #[arg(
        long = "admin-client-ca",
        env = "TESSERA_ADMIN_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub client_ca: Option<PathBuf>,
}

impl AdminArgs {
    /// The admin API on `address` (port 0: any free port), answering to no extra names.
    pub fn on(address: SocketAddr) -> Self {
        Self {
            address: Some(address),
            hosts: Vec::new(),
            auth: AdminAuthMode::None,
            insecure: false,
            public_metrics: false,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
        }
    }

    /// The admin listener's TLS configuration, when --admin-tls-cert asks for TLS; refused
    /// when --admin-auth mtls lacks what it needs.
    pub(super) fn tls(&self) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
        use anyhow::Context;
        let read = |flag: &str, path: &PathBuf| {
            std::fs::read_to_string(path)
                .with_context(|| format!("failed to read {flag} {}", path.display()))
        };
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            if self.auth == AdminAuthMode::Mtls {
                anyhow::bail!(
                    "--admin-auth mtls needs --admin-tls-cert, --admin-tls-key and --admin-client-ca"
                );
            }
            return Ok(None);
        };
        if self.auth == AdminAuthMode::Mtls && self.client_ca.is_none() {
            anyhow::bail!("--admin-auth mtls needs --admin-client-ca (the CA of admin clients)");
        }
        let client_ca = self
            .client_ca
            .as_ref()
            .map(|path| read("--admin-client-ca", path))
            .transpose()?;
        let config = crate::server::admin::server_config(
            &read("--admin-tls-cert", cert)?,
            &read("--admin-tls-key", key)?,
            client_ca.as_deref(),
        )?;
        Ok(Some(config))
    }

    /// Refuses an admin listener on `bound` without authentication unless it is on loopback
    /// or --admin-insecure says so: checked before anything else starts.
    pub(super) fn refuse_unprotected(&self, bound: SocketAddr) -> Result<(), AuthError> {
        if self.auth == AdminAuthMode::None {
            self.authentication(bound, None)?;
        }
        Ok(())
    }

    /// The admin API's authentication for a listener bound to `bound`, with tokens in `db`
    /// (`None`: this command keeps no state database). Refused as `AdminAuth::new` says.
    pub(super) fn authentication(
        &self,
        bound: SocketAddr,
        db: Option<Arc<Database>>,
    ) -> Result<AdminAuth, AuthError> {
        let mode = match self.auth {
            AdminAuthMode::None => AuthMode::None,
            AdminAuthMode::Token => AuthMode::Token,
            AdminAuthMode::Mtls => AuthMode::Mtls,
        };
        Ok(AdminAuth::new(mode, bound, self.insecure, db)?
            .with_tls(self.tls_cert.is_some())
            .with_public_metrics(self.public_metrics))
    }

    /// The address asked for, else the command's own default port on loopback.
    pub(super) fn address_or(&self, default_port: u16) -> SocketAddr {
        self.address
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], default_port)))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Command {
        #[command(flatten)]
        admin: AdminArgs,
    }

    #[test]
    fn each_command_has_its_own_default_and_the_flags_override_it() {
        let none = Command::parse_from(["test"]).admin;
        assert_eq!(none.address_or(9090), "127.0.0.1:9090".parse().unwrap());
        assert_eq!(none.address_or(9091), "127.0.0.1:9091".parse().unwrap());
        let set = Command::parse_from([
            "test",
            "--admin-address",
            "0.0.0.0:7000",
            "--admin-host",
            "tessera.internal",
        ])
        .admin;
        assert_eq!(set.address_or(9090), "0.0.0.0:7000".parse().unwrap());
        assert_eq!(set.hosts, ["tessera.internal"]);
    }

    #[test]
    fn mtls_needs_a_certificate_a_key_and_the_clients_ca() {
        let mtls = Command::parse_from(["test", "--admin-auth", "mtls"]).admin;
        let error = mtls.tls().err().unwrap().to_string();
        for flag in ["--admin-tls-cert", "--admin-tls-key", "--admin-client-ca"] {
            assert!(error.contains(flag), "{error}");
        }
        let without_ca = Command::parse_from([
            "test",
            "--admin-auth",
            "mtls",
            "--admin-tls-cert",
            "c.pem",
            "--admin-tls-key",
            "k.pem",
        ])
        .admin;
        let error = without_ca.tls().err().unwrap().to_string();
        assert!(error.contains("--admin-client-ca"), "{error}");
        // mtls is authentication: an address off loopback is not refused for it.
        assert!(
            mtls.refuse_unprotected("0.0.0.0:9090".parse().unwrap())
                .is_ok()
        );
        let open = Command::parse_from(["test"]).admin;
        assert!(
            open.refuse_unprotected("0.0.0.0:9090".parse().unwrap())
                .is_err()
        );
        assert!(
            open.refuse_unprotected("127.0.0.1:9090".parse().unwrap())
                .is_ok()
        );
    }
}
