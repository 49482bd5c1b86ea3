//! `kill -9` of `tessera serve` in the middle of a package build, after a real agent's
//! deployment: on restart nothing recorded is lost and no half-built package is served.
//!
//! Two 48 MiB builds of a debug binary take from seconds to minutes with the machine's load,
//! so every wait is for a condition, checked while the server runs (it fails at once when
//! the server has exited), never against a clock budget; `LAST_RESORT` only ends a wait
//! that would otherwise hang. The server is killed when the test ends, even by a panic,
//! before its temporary directory is removed.

use std::io::Read;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ocs_agent::{self, OcsAgent};
use crate::support::{Reaped, free_port, quickstart_copy, serve_child};

/// A wait that lasts this long is a hung server, not a slow one: far above the 17 to 28 s
/// the whole test takes on an idle machine, and the 30 s of the budget that once failed it
/// under load.
const LAST_RESORT: Duration = Duration::from_secs(600);

const BIG: &str = "apiVersion: tessera.dev/v1alpha1
kind: Package
metadata:
  name: big
spec:
  os: linux
  content:
    directory: big
  action:
    store:
      path: INSTALL_PATH/big
---
apiVersion: tessera.dev/v1alpha1
kind: Activation
metadata:
  name: big
spec:
  packageRef:
    name: big
";

/// GET on the admin API with curl (the server runs as another process).
fn admin(port: u16, path: &str) -> Option<Value> {
    let output = Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{port}{path}")])
        .output()
        .expect("curl is installed by scripts/setup.sh");
    output
        .status
        .success()
        .then(|| serde_json::from_slice(&output.stdout).ok())
        .flatten()
}

/// Polls `check` while `server` runs, until it gives something.
fn until<T>(what: &str, server: &mut Reaped, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(found) = check() {
            return found;
        }
        server.assert_running(what);
        assert!(
            start.elapsed() < LAST_RESORT,
            "still waiting for {what} after {LAST_RESORT:?}: the server hangs"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn https_address(port: u16, server: &mut Reaped) -> String {
    until("the Server serving", server, || {
        let server = admin(port, "/api/v1/objects/Server/tessera")?;
        let list = server["details"]["addresses"].as_array()?.clone();
        (list.len() == 2).then(|| list[0].as_str().unwrap().to_owned())
    })
}

/// (activation, state, code) of every deployment of `device`.
fn states(port: u16, device: &str) -> Vec<(String, String, String)> {
    let found = admin(port, &format!("/api/v1/computers/{device}")).unwrap_or_default();
    found[0]["deployments"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|d| {
                    (
                        d["activation"].as_str().unwrap_or_default().to_owned(),
                        d["state"].as_str().unwrap_or_default().to_owned(),
                        d["code"].as_str().unwrap_or_default().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Every package directory of the store is complete: its fragments add up to the digest
/// of its `info` file.
fn assert_store_complete(download: &Path) {
    for entry in std::fs::read_dir(download).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue; // temporary names are never served (ids are all digits)
        }
        let info = std::fs::read_to_string(entry.path().join("info")).unwrap();
        let attribute = |key: &str| {
            let start = info.find(&format!(" {key}=\"")).unwrap() + key.len() + 3;
            info[start..start + info[start..].find('"').unwrap()].to_owned()
        };
        let fragments: usize = attribute("FRAGS").parse().unwrap();
        let mut digest = <md5::Md5 as md5::Digest>::new();
        for n in 1..=fragments {
            let mut bytes = Vec::new();
            std::fs::File::open(entry.path().join(format!("{name}-{n}")))
                .unwrap()
                .read_to_end(&mut bytes)
                .unwrap();
            md5::Digest::update(&mut digest, &bytes);
        }
        if fragments > 0 {
            assert_eq!(
                hex::encode(md5::Digest::finalize(digest)),
                attribute("DIGEST"),
                "package {name} is complete"
            );
        }
    }
}

#[test]
fn kill_9_during_a_build_loses_no_state_and_serves_no_half_built_package() {
    let dir = quickstart_copy();
    let port = free_port();
    let mut server = serve_child(dir.path(), port);
    let https = https_address(port, &mut server);

    // A real deployment first: its results must survive the crash.
    let ca = crate::support::server_ca(dir.path());
    let agent = OcsAgent::new(
        &format!("https://{https}/ocsinventory"),
        &ca,
        &ocs_agent::device_id(2).unwrap(),
    )
    .unwrap();
    for _ in 0..2 {
        assert!(agent.run().unwrap().completed());
    }
    let device = agent.device_id().to_owned();
    let before = states(port, &device);
    assert_eq!(before.len(), 4, "{before:?}");
    assert!(before.iter().all(|(_, s, _)| s == "success"), "{before:?}");

    // A large package: killed while it is being built.
    let content = dir.path().join("big");
    std::fs::create_dir_all(&content).unwrap();
    let mut noise = vec![0u8; 48 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut noise)
        .unwrap();
    std::fs::write(content.join("data.bin"), &noise).unwrap();
    let state = dir.path().join(".tessera");
    let built = || {
        std::fs::read_dir(state.join("download"))
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .count()
    };
    let built_before = built();
    std::fs::write(dir.path().join("big.yaml"), BIG).unwrap();
    until("the build to start", &mut server, || {
        // Seen only once finished, it could not be interrupted: say so rather than wait.
        assert_eq!(
            built(),
            built_before,
            "the big package was built before the test saw its build"
        );
        let in_build = std::fs::read_dir(state.join("build"))
            .map(|d| d.count() > 0)
            .unwrap_or(false);
        let in_store = std::fs::read_dir(state.join("download"))
            .unwrap()
            .flatten()
            .any(|e| {
                !e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            });
        (in_build || in_store).then_some(())
    });
    server.0.kill().unwrap(); // SIGKILL
    server.0.wait().unwrap();
    assert_store_complete(&state.join("download"));

    // Restart: the recorded results are all there, and the big package is built whole.
    let mut server = serve_child(dir.path(), port);
    https_address(port, &mut server);
    assert_eq!(states(port, &device), before);
    let id = until("the big package rebuilt", &mut server, || {
        let package = admin(port, "/api/v1/objects/Package/big")?;
        package["details"]["packageId"].as_str().map(str::to_owned)
    });
    let leftovers: Vec<_> = std::fs::read_dir(state.join("download"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.bytes().all(|b| b.is_ascii_digit()))
        .collect();
    assert!(
        leftovers.is_empty(),
        "temporary directories removed: {leftovers:?}"
    );
    assert_store_complete(&state.join("download"));
    assert!(state.join("download").join(&id).join("info").is_file());
    drop(server);
    // Removed here, so a failure to remove it (a process still writing) is seen.
    dir.close().expect("the temporary directory is removed");
}
