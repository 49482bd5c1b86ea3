//! `tessera serve` on a directory: the admin API shows the objects, and edits, breakage,
//! ConfigMap symlink swaps, renames and deletions are seen.

use std::path::Path;

use serde_json::Value;
use tessera::cli::{self, Running, ServeArgs};

use crate::support::{eventually, get, get_json, quickstart_copy};

async fn start(config: &Path, allow_empty: bool) -> Running {
    cli::start(ServeArgs {
        allow_empty,
        ..ServeArgs::for_config(config)
    })
    .await
    .expect("serve starts")
}

async fn object(running: &Running, kind: &str, name: &str) -> Option<Value> {
    let (status, body) = get(
        running.admin_address,
        &format!("/api/v1/objects/{kind}/{name}"),
    )
    .await;
    (status == 200).then(|| serde_json::from_str(&body).unwrap())
}

/// Waits until `kind/name` is listed, and returns it.
async fn until_present(running: &Running, kind: &str, name: &str) -> Value {
    let what = format!("{kind}/{name} listed");
    eventually(&what, || async { object(running, kind, name).await })
        .await
        .0
}

/// Waits until `kind/name` is no longer listed.
async fn until_absent(running: &Running, kind: &str, name: &str) {
    let what = format!("{kind}/{name} gone");
    eventually(&what, || async {
        object(running, kind, name).await.is_none().then_some(())
    })
    .await;
}

fn condition<'a>(object: &'a Value, kind: &str) -> &'a Value {
    object["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .unwrap_or_else(|| panic!("no {kind} condition in {object}"))
}

const PACKAGE: &str = "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: p\nspec:\n  os: linux\n  priority: 5\n  action:\n    execute:\n      command: \"true\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_lists_the_quickstart_with_honest_conditions_and_writes_status_files() {
    let dir = quickstart_copy();
    let running = start(dir.path(), false).await;
    eventually("readyz", || async {
        (get(running.admin_address, "/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(get(running.admin_address, "/healthz").await.0, 200);

    // Everything becomes ready, the Server once its listeners are bound.
    let (list, _) = eventually("every object ready", || async {
        let list = get_json(running.admin_address, "/api/v1/objects").await;
        let all_ready = list["objects"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["kind"] == "Gateway" || condition(o, "Ready")["status"] == "True");
        all_ready.then_some(list)
    })
    .await;
    let objects = list["objects"].as_array().unwrap();
    assert_eq!(objects.len(), 15, "{list}");
    for object in objects {
        assert_eq!(object["observedGeneration"], 1, "{object}");
        assert!(
            object["problems"].as_array().unwrap().is_empty(),
            "{object}"
        );
    }
    let server = objects.iter().find(|o| o["kind"] == "Server").unwrap();
    assert_eq!(condition(server, "Ready")["reason"], "Serving", "{server}");
    let addresses = server["details"]["addresses"].as_array().unwrap();
    assert_eq!(addresses.len(), 2, "HTTPS and plain HTTP: {server}");
    let status = dir
        .path()
        .join(".tessera/status/default/package/hello.yaml");
    let text = std::fs::read_to_string(&status).expect("status file written");
    assert!(
        text.contains("kind: Package") && text.contains("observedGeneration: 1"),
        "{text}"
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_shows_within_a_second_and_a_broken_one_keeps_the_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, PACKAGE).unwrap();
    let running = start(dir.path(), false).await;
    until_present(&running, "Package", "p").await;

    std::fs::write(&file, PACKAGE.replace("priority: 5", "priority: 7")).unwrap();
    let (_, took) = eventually("edit seen", || async {
        object(&running, "Package", "p")
            .await
            .filter(|o| o["generation"] == 2 && o["observedGeneration"] == 2)
    })
    .await;
    println!("edit reflected in /api/v1/objects after {took:?}");

    std::fs::write(&file, PACKAGE.replace("priority: 5", "priority: 42")).unwrap();
    let (broken, _) = eventually("breakage seen", || async {
        object(&running, "Package", "p")
            .await
            .filter(|o| o["generation"] == 3)
    })
    .await;
    assert_eq!(
        broken["observedGeneration"], 2,
        "the last good version (generation 2) stays in effect"
    );
    let ready = condition(&broken, "Ready");
    assert_eq!(ready["reason"], "InvalidSpec");
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("generation 2, the last valid version"),
        "{ready}"
    );
    assert_eq!(condition(&broken, "Stalled")["status"], "True");
    let problem = &broken["problems"][0];
    assert_eq!(problem["file"], "p.yaml");
    assert_eq!(problem["line"], 7);
    assert_eq!(problem["field"], "spec.priority");
    let problems = get_json(running.admin_address, "/api/v1/problems").await;
    assert_eq!(problems.as_array().unwrap().len(), 1, "{problems}");
    running.stop().await.unwrap();
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_data_symlink_swap_is_seen() {
    use std::os::unix::fs::symlink;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The layout kubelet makes for a mounted ConfigMap.
    std::fs::create_dir(root.join("..2026_11_23_01")).unwrap();
    std::fs::write(root.join("..2026_11_23_01/p.yaml"), PACKAGE).unwrap();
    symlink("..2026_11_23_01", root.join("..data")).unwrap();
    symlink("..data/p.yaml", root.join("p.yaml")).unwrap();
    let running = start(root, false).await;
    until_present(&running, "Package", "p").await;

    // An update: a new timestamped directory, a temporary link, renamed over `..data`.
    std::fs::create_dir(root.join("..2026_11_23_02")).unwrap();
    std::fs::write(
        root.join("..2026_11_23_02/p.yaml"),
        PACKAGE.replace("priority: 5", "priority: 9"),
    )
    .unwrap();
    symlink("..2026_11_23_02", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_11_23_01")).unwrap();
    let (_, took) = eventually("swap seen", || async {
        object(&running, "Package", "p")
            .await
            .filter(|o| o["generation"] == 2)
    })
    .await;
    println!("..data swap reflected after {took:?}");
    assert!(
        get_json(running.admin_address, "/api/v1/problems")
            .await
            .as_array()
            .unwrap()
            .is_empty()
    );
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_renamed_into_place_and_deleted_are_seen() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), PACKAGE).unwrap();
    let running = start(dir.path(), false).await;
    until_present(&running, "Package", "p").await;

    // An editor writes a hidden temporary file, then renames it into place.
    let temporary = dir.path().join(".q.yaml.swp");
    std::fs::write(&temporary, PACKAGE.replace("name: p", "name: q")).unwrap();
    std::fs::rename(&temporary, dir.path().join("q.yaml")).unwrap();
    until_present(&running, "Package", "q").await;

    std::fs::remove_file(dir.path().join("p.yaml")).unwrap();
    until_absent(&running, "Package", "p").await;
    let status = dir.path().join(".tessera/status/default/package/p.yaml");
    eventually("status file removed", || async {
        (!status.exists()).then_some(())
    })
    .await;
    running.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_directory_prunes_nothing_without_allow_empty() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("p.yaml"), PACKAGE).unwrap();
    let running = start(dir.path(), false).await;
    until_present(&running, "Package", "p").await;
    std::fs::remove_file(dir.path().join("p.yaml")).unwrap();
    let (problems, _) = eventually("empty-source problem", || async {
        let problems = get_json(running.admin_address, "/api/v1/problems").await;
        (!problems.as_array().unwrap().is_empty()).then_some(problems)
    })
    .await;
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("--allow-empty"),
        "{problems}"
    );
    assert!(
        object(&running, "Package", "p").await.is_some(),
        "nothing pruned"
    );
    running.stop().await.unwrap();

    // With --allow-empty, the same emptying removes the object.
    std::fs::write(dir.path().join("p.yaml"), PACKAGE).unwrap();
    let running = start(dir.path(), true).await;
    until_present(&running, "Package", "p").await;
    std::fs::remove_file(dir.path().join("p.yaml")).unwrap();
    until_absent(&running, "Package", "p").await;
    running.stop().await.unwrap();
}

#[test]
fn the_readme_quickstart_command_serves_the_admin_api_to_curl() {
    let dir = quickstart_copy();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .args(["serve", "--config"])
        .arg(dir.path())
        .args(["--admin-address", &format!("127.0.0.1:{port}")])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/api/v1/objects");
    let start = std::time::Instant::now();
    let body = loop {
        let output = std::process::Command::new("curl")
            .args(["-sf", &url])
            .output()
            .expect("curl is installed by scripts/setup.sh");
        if output.status.success() {
            break String::from_utf8(output.stdout).unwrap();
        }
        assert!(
            start.elapsed() < crate::support::PATIENCE,
            "admin API never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["objects"].as_array().unwrap().len(), 15);
    let logs = String::from_utf8_lossy(&output.stderr);
    assert!(
        logs.contains("reconciled"),
        "one log line per reconcile:\n{logs}"
    );
}

/// `tessera serve --config` says once what it serves (the line was logged twice).
#[test]
fn the_serving_line_is_logged_once() {
    use std::io::{BufRead, BufReader};
    use std::process::{Child, Command, Stdio};

    /// Kills the server even when the test panics.
    struct Killed(Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    let config = quickstart_copy();
    let mut child = Killed(
        Command::new(assert_cmd::cargo::cargo_bin("tessera"))
            .args(["serve", "--config"])
            .arg(config.path())
            .args(["--admin-address", "127.0.0.1:0", "--log", "info"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tessera serve starts"),
    );
    let stderr = child.0.stderr.take().unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });
    // Both lines, when there were two, came before the first pass.
    let mut serving = Vec::new();
    loop {
        let line = lines
            .recv_timeout(crate::support::PATIENCE * 3)
            .expect("a first reconcile pass is logged");
        if line.contains(": serving config=") {
            serving.push(line);
        } else if line.contains(": reconciled ") {
            break;
        }
    }
    assert_eq!(serving.len(), 1, "{serving:#?}");
    drop(child);
}

/// A listener whose port is taken makes the Server BindFailed with the cause (not
/// Pending), and is bound by itself once the port is free: no edit, no restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_whose_port_is_taken_is_bind_failed_and_bound_once_it_is_free() {
    let dir = quickstart_copy();
    let blocker = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = blocker.local_addr().unwrap().port();
    let server = dir.path().join("server.yaml");
    let text = std::fs::read_to_string(&server).unwrap();
    std::fs::write(
        &server,
        text.replace("https: 127.0.0.1:0", &format!("https: 127.0.0.1:{port}")),
    )
    .unwrap();
    let running = crate::support::start(dir.path()).await;

    let condition = |object: &Value| {
        let ready = object["conditions"]
            .as_array()?
            .iter()
            .find(|c| c["type"] == "Ready")?
            .clone();
        Some((
            ready["status"].as_str()?.to_owned(),
            ready["reason"].as_str()?.to_owned(),
            ready["message"].as_str()?.to_owned(),
        ))
    };
    let (failed, _) = eventually("the Server BindFailed", || async {
        let (status, body) = get(running.admin_address, "/api/v1/objects/Server/tessera").await;
        let server: Value = (status == 200).then(|| serde_json::from_str(&body).unwrap())?;
        condition(&server).filter(|(_, reason, _)| reason == "BindFailed")
    })
    .await;
    assert_eq!(failed.0, "False");
    assert!(
        failed.2.contains(&format!("127.0.0.1:{port}")) && failed.2.contains("in use"),
        "the message names the address and the cause: {}",
        failed.2
    );

    drop(blocker);
    let (serving, _) = eventually("the Server bound once the port is free", || async {
        let (status, body) = get(running.admin_address, "/api/v1/objects/Server/tessera").await;
        let server: Value = (status == 200).then(|| serde_json::from_str(&body).unwrap())?;
        condition(&server).filter(|(status, _, _)| status == "True")
    })
    .await;
    assert_eq!(serving.1, "Serving");
    assert!(
        serving.2.contains(&format!("127.0.0.1:{port}")),
        "{}",
        serving.2
    );
    running.stop().await.unwrap();
}
