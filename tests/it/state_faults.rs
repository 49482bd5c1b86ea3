//! Faults of the state directory under a running `tessera serve`: a full file system (a real
//! tmpfs), a deleted or overwritten `state.db`, and a restart whose first pass has a long
//! build ahead. The server degrades and says so; it never exits, never acknowledges what it
//! cannot record, and never starts empty over existing state unless told.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tessera::cli::{self, Running, ServeArgs};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    addresses, eventually, free_port, get, get_json, package_id, quickstart_copy,
};

/// Status files are retried every 10 s (`reconcile::STATUS_RETRY`): recovery is awaited
/// longer than `support::PATIENCE`.
const RECOVERY: Duration = Duration::from_secs(40);

async fn start(config: &Path, state: &Path, reset_state: bool) -> anyhow::Result<Running> {
    cli::start(ServeArgs {
        state: Some(state.to_path_buf()),
        reset_state,
        ..ServeArgs::for_config(config)
    })
    .await
}

/// `tessera serve` started on `config` and `state`, serving: its HTTPS address, the
/// quickstart's `hello` package id, and computer `device` already known by a PROLOG.
async fn serving(config: &Path, state: &Path, device: &str) -> (Running, String, String) {
    let running = start(config, state, false).await.expect("serve starts");
    let (https, _) = addresses(&running).await;
    let hello = package_id(&running, "hello").await;
    assert_eq!(ocs(&https, prolog(device)).await, 200);
    (running, https, hello)
}

/// A tmpfs mounted at a directory, unmounted when dropped (even when a test panics).
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` where mounting is not permitted (not root, or in a container without
    /// `CAP_SYS_ADMIN`).
    fn mount(path: &Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(path).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        mounted.then(|| Self(path.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` to the last byte; returns the filler to delete.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    for chunk in [64 << 10, 4 << 10, 1] {
        let bytes = vec![0u8; chunk];
        while file.write_all(&bytes).is_ok() {}
    }
    let _ = file.sync_all();
    path
}

/// `curl` (certificate not checked: these tests are not about TLS): the status code.
async fn curl(args: Vec<String>) -> u16 {
    tokio::task::spawn_blocking(move || {
        let output = Command::new("curl")
            .args([
                "-sk",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "10",
            ])
            .args(&args)
            .output()
            .expect("curl is installed by scripts/setup.sh");
        String::from_utf8_lossy(&output.stdout).parse().unwrap_or(0)
    })
    .await
    .unwrap()
}

/// Posts an OCS request (plain XML, which the endpoint accepts) over HTTPS.
async fn ocs(https: &str, xml: String) -> u16 {
    curl(vec![
        "--data-binary".into(),
        xml,
        "-H".into(),
        "Content-Type: application/x-compressed".into(),
        format!("https://{https}/ocsinventory"),
    ])
    .await
}

/// A PROLOG from the computer `name` (an OCS device id is the name and a time).
fn prolog(name: &str) -> String {
    format!(
        "<REQUEST><DEVICEID>{name}-2026-01-01-00-00-00</DEVICEID><QUERY>PROLOG</QUERY></REQUEST>"
    )
}

/// A DOWNLOAD result from the computer `name` for package `id`.
fn result(name: &str, id: &str) -> String {
    format!(
        "<REQUEST><DEVICEID>{name}-2026-01-01-00-00-00</DEVICEID><QUERY>DOWNLOAD</QUERY><ID>{id}</ID><ERR>SUCCESS</ERR></REQUEST>"
    )
}

async fn info(https: &str, id: &str) -> u16 {
    curl(vec![format!("https://{https}/download/{id}/info")]).await
}

/// Polls `check` every 100 ms until it returns Some, or panics after `within`.
async fn within<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(start.elapsed() < within, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The server's own condition of `type_`, if it is not `True`.
async fn server_condition(running: &Running, type_: &str) -> Option<serde_json::Value> {
    let list = get_json(running.admin_address, "/api/v1/objects").await;
    list["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

const EXTRA: &str = "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: extra\nspec:\n  os: linux\n  action:\n    execute:\n      command: \"true\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_state_disk_degrades_recovers_and_a_restart_while_full_still_serves() {
    let dir = quickstart_copy();
    let state = dir.path().join("state");
    let Some(_tmpfs) = Tmpfs::mount(&state, "16m") else {
        eprintln!("skipped: mounting a tmpfs is not permitted here");
        return;
    };
    let (running, https, hello) = serving(dir.path(), &state, "known").await;

    // The disk fills up, then the configuration changes: status files cannot be written.
    let filler = fill(&state);
    std::fs::write(dir.path().join("extra.yaml"), EXTRA).unwrap();
    let condition = within(RECOVERY, "StatusWritten False", || async {
        server_condition(&running, "StatusWritten").await
    })
    .await;
    assert_eq!(condition["status"], "False", "{condition}");
    assert!(
        condition["message"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{condition}"
    );
    let (_, metrics) = get(running.admin_address, "/metrics").await;
    assert!(
        metrics.contains("tessera_status_write_failing 1\n"),
        "{metrics}"
    );
    let (status, body) = get(running.admin_address, "/readyz").await;
    assert_eq!(status, 200, "a full disk still serves: {body}");
    assert!(
        body.contains("degraded") || body.contains("read-only"),
        "{body}"
    );

    // Agents are still served what is built; what needs a write is refused, not a 500.
    assert_eq!(info(&https, &hello).await, 200);
    let answered = ocs(&https, prolog("new-on-a-full-disk")).await;
    assert!(
        answered == 200 || answered == 503,
        "PROLOG answered {answered}"
    );
    assert_eq!(get(running.admin_address, "/healthz").await.0, 200);

    // Space comes back: the next retry writes the status files, without a restart.
    std::fs::remove_file(&filler).unwrap();
    within(RECOVERY, "status files written again", || async {
        server_condition(&running, "StatusWritten")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    assert!(state.join("status/default/package/extra.yaml").is_file());
    let (_, metrics) = get(running.admin_address, "/metrics").await;
    assert!(
        metrics.contains("tessera_status_write_failing 0\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("tessera_status_write_failures_total 0\n"));
    running.stop().await.expect("serve stops cleanly");

    // A restart on a full disk serves what is built, and says what is degraded (the
    // database opens read-only; writes resume as soon as any space is free).
    let filler = fill(&state);
    let running = start(dir.path(), &state, false)
        .await
        .expect("serve starts on a full disk");
    let (https, _) = addresses(&running).await;
    let body = eventually("readyz after the restart", || async {
        let (status, body) = get(running.admin_address, "/readyz").await;
        (status == 200).then_some(body)
    })
    .await
    .0;
    assert!(
        body.contains("read-only") || body.contains("degraded"),
        "{body}"
    );
    assert_eq!(info(&https, &hello).await, 200);
    assert_eq!(get(running.admin_address, "/healthz").await.0, 200);
    std::fs::remove_file(&filler).unwrap();
    running.stop().await.expect("serve stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_state_database_refuses_results_and_a_restart_refuses_to_start_empty() {
    let dir = quickstart_copy();
    let state = dir.path().join("state");
    let (running, https, hello) = serving(dir.path(), &state, "lab-01").await;

    std::fs::remove_file(state.join("state.db")).unwrap();
    let body = eventually("/readyz not ready", || async {
        let (status, body) = get(running.admin_address, "/readyz").await;
        (status == 503).then_some(body)
    })
    .await
    .0;
    assert!(body.contains("deleted"), "{body}");
    // Nothing is acknowledged that cannot be recorded.
    assert_eq!(ocs(&https, result("lab-01", &hello)).await, 503);
    assert_eq!(ocs(&https, prolog("lab-02")).await, 503);
    // What is built is still served.
    assert_eq!(info(&https, &hello).await, 200);
    let (_, metrics) = get(running.admin_address, "/metrics").await;
    assert!(
        metrics.contains("tessera_state_database_health{state=\"lost\"} 1\n"),
        "{metrics}"
    );
    running.stop().await.expect("serve stops cleanly");

    // The state directory has state, so an empty database is not made in silence.
    let Err(refused) = start(dir.path(), &state, false).await else {
        panic!("serve started empty over existing state");
    };
    let message = format!("{refused:#}");
    assert!(
        message.contains("no state database") && message.contains("--reset-state"),
        "{message}"
    );
    assert!(!state.join("state.db").exists());

    // Told to, it starts afresh.
    let running = start(dir.path(), &state, true)
        .await
        .expect("serve starts with --reset-state");
    let (https, _) = addresses(&running).await;
    assert_eq!(ocs(&https, prolog("lab-01")).await, 200);
    running.stop().await.expect("serve stops cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_over_the_state_database_is_refused_while_running_and_at_start_up() {
    let dir = quickstart_copy();
    let state = dir.path().join("state");
    let (running, https, hello) = serving(dir.path(), &state, "lab-01").await;

    // Garbage over the database and its WAL, in place (same files).
    let garbage = vec![0x5au8; 64 << 10];
    for name in ["state.db", "state.db-wal"] {
        let path = state.join(name);
        if path.exists() {
            std::fs::write(&path, &garbage).unwrap();
        }
    }
    let body = eventually("/readyz not ready", || async {
        let (status, body) = get(running.admin_address, "/readyz").await;
        (status == 503).then_some(body)
    })
    .await
    .0;
    assert!(body.contains("overwritten"), "{body}");
    assert_eq!(ocs(&https, result("lab-01", &hello)).await, 503);
    running.stop().await.expect("serve stops cleanly");

    let Err(refused) = start(dir.path(), &state, false).await else {
        panic!("serve started on a damaged database");
    };
    let message = format!("{refused:#}");
    assert!(
        message.contains("is damaged")
            && message.contains(&state.join("state.db").display().to_string())
            && message.contains("--reset-state"),
        "{message}"
    );

    // Told to, it moves the damaged file aside and starts afresh.
    let running = start(dir.path(), &state, true)
        .await
        .expect("serve starts with --reset-state");
    addresses(&running).await;
    let aside = std::fs::read_dir(&state).unwrap().flatten().any(|e| {
        e.file_name()
            .to_string_lossy()
            .starts_with("state.db.damaged-")
    });
    assert!(aside, "the damaged database is kept aside");
    running.stop().await.expect("serve stops cleanly");
}

/// Serves `body` at any path on loopback, but only once `release` is set: a download, and
/// so a package build, that takes as long as the test wants. Returns the URL and whether a
/// request came.
async fn held_download(body: Vec<u8>, release: Arc<AtomicBool>) -> (String, Arc<AtomicBool>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/slow.tar.gz", listener.local_addr().unwrap());
    let asked = Arc::new(AtomicBool::new(false));
    let seen = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (release, seen, body) = (release.clone(), seen.clone(), body.clone());
            tokio::spawn(async move {
                let mut request = vec![0u8; 4096];
                let _ = stream.read(&mut request).await;
                seen.store(true, Ordering::SeqCst);
                while !release.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes()).await;
                let _ = stream.write_all(&body).await;
            });
        }
    });
    (url, asked)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_the_listener_serves_what_is_built_before_a_long_build_finishes() {
    use sha2::Digest;
    let dir = quickstart_copy();
    let state = dir.path().join("state");
    let port = free_port();
    let server = dir.path().join("server.yaml");
    let text = std::fs::read_to_string(&server).unwrap();
    std::fs::write(
        &server,
        text.replace("https: 127.0.0.1:0", &format!("https: 127.0.0.1:{port}")),
    )
    .unwrap();
    let https = format!("127.0.0.1:{port}");

    let running = start(dir.path(), &state, false)
        .await
        .expect("serve starts");
    addresses(&running).await;
    let hello = package_id(&running, "hello").await;
    running.stop().await.expect("serve stops cleanly");

    // While it is down, a package whose content takes as long as the test wants to arrive.
    let release = Arc::new(AtomicBool::new(false));
    let body = b"content that arrives late".to_vec();
    let sha256 = hex::encode(sha2::Sha256::digest(&body));
    let (url, asked) = held_download(body, release.clone()).await;
    std::fs::write(
        dir.path().join("slow.yaml"),
        format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: slow\nspec:\n  os: linux\n  content:\n    url: {url}\n    sha256: {sha256}\n  action:\n    store:\n      path: /tmp/slow\n"
        ),
    )
    .unwrap();

    let running = start(dir.path(), &state, false)
        .await
        .expect("serve restarts");
    // Agents are answered, and built packages served, while the build waits.
    eventually("a PROLOG answered during the build", || async {
        (ocs(&https, prolog("lab-01")).await == 200).then_some(())
    })
    .await;
    assert_eq!(info(&https, &hello).await, 200);
    // The listener may answer before the first pass has asked for the slow content: wait
    // for the build to start (a race on a loaded machine), then check it still holds.
    eventually("the build has started", || async {
        asked.load(Ordering::SeqCst).then_some(())
    })
    .await;
    let (status, body) = get(running.admin_address, "/readyz").await;
    assert_eq!(status, 503, "the first pass is still building: {body}");

    release.store(true, Ordering::SeqCst);
    eventually("the first pass done", || async {
        (get(running.admin_address, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    running.stop().await.expect("serve stops cleanly");
}
