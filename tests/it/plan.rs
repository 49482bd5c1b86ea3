//! `tessera plan`: a changed copy of a served configuration, against the state directory of
//! the server that applied the original and where computers have checked in: the packages
//! built, and the computers that would receive or lose one; exit codes; nothing written.

use std::collections::BTreeMap;
use std::path::Path;

use assert_cmd::Command;
use serde_json::Value;
use tessera::store::db::{Database, Facts};

use crate::support::{eventually, get, quickstart_copy};

/// Every file below `dir` with its size and modification time, but SQLite's `-wal` and
/// `-shm` sidecars: SQLite removes them, empty, when the last connection closes, reading or
/// not. The database file itself is compared.
fn listing(dir: &Path) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap().flatten() {
            let metadata = entry.metadata().unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            if metadata.is_dir() {
                stack.push(entry.path());
            } else if !name.ends_with("-wal") && !name.ends_with("-shm") {
                found.insert(
                    entry.path().display().to_string(),
                    (metadata.len(), metadata.modified().unwrap()),
                );
            }
        }
    }
    found
}

fn plan(dir: &Path, state: &Path, json: bool) -> (i32, String) {
    let mut command = Command::cargo_bin("tessera").unwrap();
    command.arg("plan").arg(dir).arg("--state").arg(state);
    if json {
        command.args(["--output", "json"]);
    }
    let output = command.output().unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    (output.status.code().unwrap(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_lists_the_computers_a_change_would_reach_and_writes_nothing() {
    let served = quickstart_copy();
    let running = crate::support::start(served.path()).await;
    eventually("every package built", || async {
        let (status, body) = get(running.admin_address, "/api/v1/objects?kind=Package").await;
        let list: Value = (status == 200).then(|| serde_json::from_str(&body).unwrap())?;
        let packages = list["objects"].as_array()?;
        (packages.len() == 4
            && packages
                .iter()
                .all(|p| p["details"]["packageId"].is_string()))
        .then_some(())
    })
    .await;
    running.stop().await.unwrap();
    let state = served.path().join(".tessera");

    // Computers that checked in: two in the lab, one elsewhere (all Linux).
    {
        let db = Database::open(&state.join("state.db")).unwrap();
        for (name, tags) in [
            ("lab-1", vec!["lab"]),
            ("lab-2", vec!["lab"]),
            ("office-1", vec![]),
        ] {
            let id = format!("{name}-2026-01-01-00-00-00");
            db.contact(&id, 1).unwrap();
            db.record_inventory(
                &id,
                &Facts {
                    name: name.into(),
                    os_name: "Debian GNU/Linux 12".into(),
                    tags: tags.into_iter().map(str::to_owned).collect(),
                    ..Facts::default()
                },
                b"",
                1,
            )
            .unwrap();
        }
    }
    let before = listing(&state);

    // The configuration as served: nothing would change.
    let (code, text) = plan(served.path(), &state, false);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("no changes"), "{text}");

    // A changed copy: a new package for the lab, hello's script edited, and the baseline
    // no longer deployed anywhere.
    let changed = tempfile::tempdir().unwrap();
    crate::support::copy_dir(served.path(), changed.path());
    std::fs::remove_dir_all(changed.path().join(".tessera")).unwrap();
    let affectations = changed.path().join("affectations.yaml");
    let text = std::fs::read_to_string(&affectations).unwrap();
    let (kept, baseline) = text
        .split_once("---\napiVersion: tessera.dev/v1alpha1\nkind: Affectation\nmetadata:\n  name: baseline-everywhere")
        .expect("the baseline affectation");
    assert!(!baseline.contains("---"), "it is the last document");
    std::fs::write(&affectations, kept).unwrap();
    std::fs::write(
        changed.path().join("packages/pushed.yaml"),
        "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: pushed\nspec:\n  os: linux\n  action:\n    execute:\n      command: echo pushed\n---\napiVersion: tessera.dev/v1alpha1\nkind: Activation\nmetadata:\n  name: pushed\nspec:\n  packageRef:\n    name: pushed\n---\napiVersion: tessera.dev/v1alpha1\nkind: Affectation\nmetadata:\n  name: lab-pushed\nspec:\n  activationRef:\n    name: pushed\n  targets:\n    tags: [lab]\n    os: [linux]\n",
    )
    .unwrap();
    let script = changed.path().join("packages/hello/hello.sh");
    let mut text = std::fs::read_to_string(&script).unwrap();
    text.push_str("\n# edited\n");
    std::fs::write(&script, text).unwrap();

    let (code, text) = plan(changed.path(), &state, false);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("would receive: 2 computers: lab-1, lab-2"),
        "{text}"
    );
    assert!(
        text.contains("would lose: 3 computers: lab-1, lab-2, office-1"),
        "{text}"
    );
    assert!(text.contains("+ Package/pushed: build "), "{text}");
    assert!(text.contains("~ Package/hello: rebuild "), "{text}");
    assert!(text.contains("- Affectation/baseline-everywhere"), "{text}");

    let (code, text) = plan(changed.path(), &state, true);
    assert_eq!(code, 2, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["changes"], true);
    assert_eq!(body["computers"], 3);
    let pushed = body["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["activation"] == "default/pushed")
        .expect("the pushed activation");
    assert_eq!(pushed["receive"]["count"], 2, "{pushed}");
    assert_eq!(pushed["lose"]["count"], 0, "{pushed}");
    // hello's new version reaches the lab again (neither computer lists it as installed).
    let hello = body["deployments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["activation"] == "default/hello")
        .expect("hello rebuilt");
    assert_eq!(
        hello["receive"]["names"],
        serde_json::json!(["lab-1", "lab-2"])
    );

    // The same change as a branch of a repository, planned without a checkout.
    let repository = tempfile::tempdir().unwrap();
    crate::support::copy_dir(changed.path(), &repository.path().join("fleet"));
    crate::git::git(
        repository.path(),
        &["init", "--quiet", "--initial-branch", "proposal"],
    );
    crate::git::git(repository.path(), &["add", "--all"]);
    crate::git::git(
        repository.path(),
        &["commit", "--quiet", "-m", "a proposal"],
    );
    let output = Command::cargo_bin("tessera")
        .unwrap()
        .args(["plan", "--branch", "proposal", "--path", "fleet", "--git"])
        .arg(format!("file://{}", repository.path().display()))
        .arg("--state")
        .arg(&state)
        .output()
        .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("would receive: 2 computers: lab-1, lab-2"),
        "{text}"
    );

    // A broken document is an error, whatever else changes.
    std::fs::write(changed.path().join("broken.yaml"), "kind: [\n").unwrap();
    let (code, text) = plan(changed.path(), &state, false);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("problems:"), "{text}");

    assert_eq!(
        listing(&state),
        before,
        "plan wrote nothing to the state directory"
    );
}

/// A content-only edit (a package's script, not its YAML) is rebuilt by a running server
/// within the latency of a YAML edit, and `plan` on the same directory then agrees with
/// what it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_content_only_edit_is_served_at_once_and_plan_agrees() {
    // Well under the 5-minute periodic pass: only a file event can meet it.
    const BOUND: std::time::Duration = std::time::Duration::from_secs(30);
    let served = quickstart_copy();
    let running = crate::support::start(served.path()).await;
    let hello = |running: std::net::SocketAddr| async move {
        let (status, body) = get(running, "/api/v1/objects/Package/hello").await;
        let package: Value = (status == 200).then(|| serde_json::from_str(&body).ok())??;
        package["details"]["packageId"].as_str().map(str::to_owned)
    };
    let admin = running.admin_address;
    let (first, _) = eventually("hello built", || hello(admin)).await;
    // The version of the configuration served: a content edit is a new one.
    let revision = || async {
        crate::support::get_json(admin, "/api/v1/objects").await["revision"]
            .as_str()
            .map(str::to_owned)
    };
    let before = revision().await.expect("a revision");

    let script = served.path().join("packages/hello/hello.sh");
    let mut text = std::fs::read_to_string(&script).unwrap();
    text.push_str("\n# edited, and nothing else\n");
    std::fs::write(&script, text).unwrap();
    let started = std::time::Instant::now();
    let second = loop {
        // Passes of the start-up (certificates issued, listeners bound) also rebuild what
        // changed: the revision tells that the edit itself was noticed.
        let now = revision().await;
        if let Some(id) = hello(admin).await.filter(|id| *id != first)
            && now.as_ref().is_some_and(|now| *now != before)
        {
            break id;
        }
        assert!(
            started.elapsed() < BOUND,
            "Package/hello still {first}, or revision still {before}, {BOUND:?} after its script changed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    // What plan compares with: the configuration the server applied, with the new id.
    eventually("the applied configuration recorded", || async {
        let state = served.path().join(".tessera");
        let applied = std::fs::read_to_string(state.join("applied.json")).ok()?;
        applied.contains(&second).then_some(())
    })
    .await;
    running.stop().await.unwrap();

    let (code, text) = plan(served.path(), &served.path().join(".tessera"), true);
    assert_eq!(code, 0, "plan sees what serve built: {text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["packages"], serde_json::json!([]), "{text}");
    assert_eq!(body["revision"], body["appliedRevision"], "{text}");
}
