//! What more than one benchmark does the same way.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

/// `tessera serve --config CONFIG --admin-address ADMIN` from `binary`, logging warnings
/// into `log`, with nothing of the caller's environment that changes what it serves.
pub(crate) fn serve_command(
    binary: &Path,
    config: &Path,
    admin: SocketAddr,
    log: &Path,
) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--admin-address")
        .arg(admin.to_string())
        .env("TESSERA_LOG", "warn")
        .env("RUST_LOG", "warn")
        .env_remove("TESSERA_STATE")
        .env_remove("TESSERA_ALLOW_EMPTY")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).expect("create the server log"));
    command
}
