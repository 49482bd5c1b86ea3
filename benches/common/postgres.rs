//! A throwaway PostgreSQL server for the benches that compare with it (`store`, `fleet`),
//! included by path by each so the others do not carry it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// A PostgreSQL server started by `scripts/postgres.sh`, stopped (and its directory
/// removed) when dropped.
pub(crate) struct Throwaway {
    dir: PathBuf,
    pub(crate) url: String,
}

impl Throwaway {
    /// A fresh server on a free loopback port; `None` (with the script's error printed) when
    /// PostgreSQL is not installed or does not start.
    pub(crate) fn start() -> Option<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh");
        // Made by the script (owned by the server's user when run as root); one per server
        // a run starts.
        let dir = std::env::temp_dir().join(format!(
            "tessera-bench-postgres-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let output = Command::new("bash")
            .arg(&script)
            .arg("start")
            .arg(&dir)
            .output()
            .ok()?;
        if !output.status.success() {
            eprintln!("{}", String::from_utf8_lossy(&output.stderr));
            return None;
        }
        let url = String::from_utf8(output.stdout).ok()?.trim().to_owned();
        Some(Self { dir, url })
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/postgres.sh");
        let _ = Command::new("bash")
            .arg(script)
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}
