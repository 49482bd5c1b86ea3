//! The server under simulation: the release `tessera serve` on loopback ports with a
//! quickstart-like configuration (its CA, server certificate and enrollment, no packages
//! until the wave), on SQLite in its state directory or on a throwaway PostgreSQL; and the
//! guards that stop both, even on panic.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::common;
use super::throwaway_postgres::Throwaway;

/// Start-up, certificates issued: seconds, unless the machine is busy.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Which state database the server uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        }
    }
}

/// A running `tessera serve` (and its PostgreSQL), stopped when dropped.
pub(crate) struct Served {
    process: Child,
    /// The `tessera` process itself (under a wrapper such as heaptrack, its child).
    pub pid: u32,
    pub https: SocketAddr,
    pub admin: SocketAddr,
    pub config: PathBuf,
    pub log: PathBuf,
    pub database: Option<String>,
    postgres: Option<Throwaway>,
    _work: tempfile::TempDir,
}

impl Served {
    /// Starts `binary serve` (under `wrapper`, words split on spaces, when given) and waits
    /// until its listeners and certificates are ready.
    pub(crate) async fn start(
        binary: &Path,
        engine: Engine,
        wrapper: Option<&str>,
        log_level: &str,
    ) -> Self {
        let work = tempfile::tempdir().expect("temporary directory");
        let config = work.path().join("config");
        let [https, http, admin] = common::free_ports();
        write_config(&config, https, http);
        let postgres = match engine {
            Engine::Sqlite => None,
            Engine::Postgres => {
                Some(Throwaway::start().expect("PostgreSQL: install it (scripts/bench-setup.sh)"))
            }
        };
        let database = postgres.as_ref().map(|p| p.url.clone());
        let log = work.path().join("tessera.log");
        let mut serve = common::serve_command(binary, &config, admin, &log);
        serve
            .env("TESSERA_LOG", log_level)
            .env("RUST_LOG", log_level);
        if let Some(url) = &database {
            serve.arg("--database").arg(url);
        }
        let mut command = match wrapper {
            Some(wrapper) => {
                let mut words = wrapper.split_whitespace();
                let mut wrapped = Command::new(words.next().expect("a wrapper command"));
                wrapped
                    .args(words)
                    .arg(serve.get_program())
                    .args(serve.get_args());
                for (name, value) in serve.get_envs() {
                    match value {
                        Some(value) => wrapped.env(name, value),
                        None => wrapped.env_remove(name),
                    };
                }
                wrapped
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(std::fs::File::create(&log).expect("create the server log"));
                wrapped
            }
            None => serve,
        };
        let process = command.spawn().expect("start tessera serve");
        let mut served = Self {
            pid: process.id(),
            process,
            https,
            admin,
            config,
            log,
            database,
            postgres,
            _work: work,
        };
        served.wait_ready().await;
        served
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(server) =
                super::sim::admin_json(self.admin, "/api/v1/objects/Server/tessera").await
                && server["details"]["addresses"]
                    .as_array()
                    .is_some_and(|a| a.len() == 2)
                && self.server_ca().is_file()
            {
                self.pid = tessera_process(self.process.id()).unwrap_or(self.pid);
                return;
            }
            assert!(
                matches!(self.process.try_wait(), Ok(None)),
                "tessera serve exited; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            assert!(
                Instant::now() < deadline,
                "tessera serve not ready after {READY_TIMEOUT:?}; its log:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub(crate) fn server_ca(&self) -> PathBuf {
        self.config
            .join(".tessera/certificates/default/tessera-server/ca.crt")
    }

    /// An enrollment token for `uses` agents, from `tessera token create`.
    pub(crate) fn token(&self, binary: &Path, uses: usize) -> String {
        let mut command = Command::new(binary);
        command
            .args(["token", "create", "--ttl", "24h", "--uses"])
            .arg(uses.max(1).to_string())
            .arg("--config")
            .arg(&self.config)
            .env_remove("TESSERA_STATE");
        if let Some(url) = &self.database {
            command.arg("--database").arg(url);
        }
        let output = command.output().expect("run tessera token create");
        assert!(
            output.status.success(),
            "tessera token create: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout)
            .expect("a token")
            .trim()
            .to_owned()
    }

    /// Bytes of the state database: SQLite's file with its write-ahead log, or what
    /// PostgreSQL reports for the database.
    pub(crate) fn database_size(&self) -> Option<u64> {
        match &self.database {
            None => {
                let state = self.config.join(".tessera");
                Some(
                    ["state.db", "state.db-wal"]
                        .iter()
                        .filter_map(|f| std::fs::metadata(state.join(f)).ok())
                        .map(|m| m.len())
                        .sum(),
                )
            }
            Some(url) => {
                let mut client = postgres::Client::connect(url, postgres::NoTls).ok()?;
                let row = client
                    .query_one("SELECT pg_database_size(current_database())", &[])
                    .ok()?;
                u64::try_from(row.get::<_, i64>(0)).ok()
            }
        }
    }

    /// Lines the server logged so far, and how many are warnings or errors (the first few).
    pub(crate) fn log_lines(&self) -> (usize, Vec<String>) {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let noted = log
            .lines()
            .filter(|line| line.contains("WARN") || line.contains("ERROR"))
            .take(5)
            .map(str::to_owned)
            .collect();
        (log.lines().count(), noted)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        // SIGTERM to tessera itself (a wrapper such as heaptrack then writes its file and
        // exits), then SIGKILL.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.process.kill();
        let _ = self.process.wait();
        drop(self.postgres.take());
    }
}

/// `pid`, or the first of its descendants whose command is `tessera` (under a wrapper).
fn tessera_process(pid: u32) -> Option<u32> {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    if comm.trim() == "tessera" {
        return Some(pid);
    }
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find_map(tessera_process)
}

/// The quickstart's CA and server certificate, its Server with enrollment, listening on
/// `https` and `http`; no packages (the wave brings one).
fn write_config(config: &Path, https: SocketAddr, http: SocketAddr) {
    let quickstart = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    std::fs::create_dir_all(config).expect("create the configuration");
    std::fs::copy(quickstart.join("pki.yaml"), config.join("pki.yaml")).expect("copy pki.yaml");
    let text = std::fs::read_to_string(quickstart.join("server.yaml")).expect("read server.yaml");
    let rewritten: Vec<String> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let indent = &line[..line.len() - trimmed.len()];
            if trimmed.starts_with("https:") {
                format!("{indent}https: {https}")
            } else if trimmed.starts_with("http:") {
                format!("{indent}http: {http}")
            } else {
                line.to_owned()
            }
        })
        .collect();
    std::fs::write(config.join("server.yaml"), rewritten.join("\n") + "\n")
        .expect("write server.yaml");
}
