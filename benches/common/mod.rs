//! What more than one benchmark does the same way.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
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

/// `N` distinct free loopback ports, found by binding port 0 and letting go.
pub(crate) fn free_ports<const N: usize>() -> [SocketAddr; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local address"))
}

/// Copies the quickstart (or any tree) from `from` to `to`, leaving out a state directory
/// (`.tessera`) a manual run may have left there.
pub(crate) fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a directory");
    for entry in std::fs::read_dir(from).expect("read the quickstart") {
        let entry = entry.expect("a directory entry");
        if entry.file_name() == ".tessera" {
            continue;
        }
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a quickstart file");
        }
    }
}
