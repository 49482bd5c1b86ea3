//! The admin listener's flags, written once for `serve` and `gateway`: where it listens and
//! the host names it answers to besides loopback's.

use std::net::SocketAddr;

use clap::Args;

/// `--admin-address` and `--admin-host`.
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
}

impl AdminArgs {
    /// The admin API on `address` (port 0: any free port), answering to no extra names.
    pub fn on(address: SocketAddr) -> Self {
        Self {
            address: Some(address),
            hosts: Vec::new(),
        }
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
}
