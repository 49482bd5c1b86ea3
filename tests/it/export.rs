//! `tessera export`: the download tree, served by a plain static web server, is what agents
//! need; packages no longer activated are pruned; a broken configuration exports nothing.

use std::process::Command;

use assert_cmd::cargo::cargo_bin;

use crate::support::quickstart_copy;

fn export(config: &std::path::Path, output: &std::path::Path) -> (i32, String) {
    let result = Command::new(cargo_bin("tessera"))
        .args(["export", "--config"])
        .arg(config)
        .arg("--output")
        .arg(output)
        .output()
        .unwrap();
    (
        result.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&result.stdout).into_owned(),
    )
}

fn curl(url: &str) -> Vec<u8> {
    let output = Command::new("curl")
        .args(["-sf", url])
        .output()
        .expect("curl");
    assert!(output.status.success(), "GET {url}");
    output.stdout
}

#[test]
fn an_exported_tree_served_by_a_static_server_gives_agents_what_the_info_file_promises() {
    let config = quickstart_copy();
    let mirror = tempfile::tempdir().unwrap();
    let (code, out) = export(config.path(), mirror.path());
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 packages"), "{out}");

    let server = crate::support::StaticServer::start(mirror.path());
    let port = server.port;

    let mut checked = 0;
    for entry in std::fs::read_dir(mirror.path()).unwrap().flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let info = String::from_utf8(curl(&format!("http://127.0.0.1:{port}/{id}/info"))).unwrap();
        let attribute = |name: &str| {
            let start = info.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
            info[start..start + info[start..].find('"').unwrap()].to_owned()
        };
        assert_eq!(attribute("ID"), id);
        let fragments: usize = attribute("FRAGS").parse().unwrap();
        let archive: Vec<u8> = (1..=fragments)
            .flat_map(|n| curl(&format!("http://127.0.0.1:{port}/{id}/{id}-{n}")))
            .collect();
        use md5::Digest;
        // A command-only package has no payload and no digest.
        let expected = if fragments == 0 {
            String::new()
        } else {
            hex::encode(md5::Md5::digest(&archive))
        };
        assert_eq!(
            expected,
            attribute("DIGEST"),
            "the fragments served add up to the digest"
        );
        checked += 1;
    }
    drop(server);
    assert_eq!(checked, 4);

    // Without its Activation a package is no longer published: the next export prunes it.
    let tools = config.path().join("packages/tools.yaml");
    let text = std::fs::read_to_string(&tools).unwrap();
    std::fs::write(&tools, &text[..text.find("---").unwrap()]).unwrap();
    let affectations = config.path().join("affectations.yaml");
    let text = std::fs::read_to_string(&affectations).unwrap();
    std::fs::write(&affectations, &text[..text.find("---").unwrap()]).unwrap();
    let (code, out) = export(config.path(), mirror.path());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("removed ") && out.contains("3 packages in"),
        "{out}"
    );
    assert_eq!(std::fs::read_dir(mirror.path()).unwrap().count(), 3);
}

#[test]
fn a_configuration_with_package_problems_exports_nothing() {
    let config = quickstart_copy();
    let hello = config.path().join("packages/hello.yaml");
    let text = std::fs::read_to_string(&hello)
        .unwrap()
        .replace("priority: 5", "priority: 50");
    std::fs::write(&hello, text).unwrap();
    let mirror = tempfile::tempdir().unwrap();
    let result = Command::new(cargo_bin("tessera"))
        .args(["export", "--config"])
        .arg(config.path())
        .arg("--output")
        .arg(mirror.path())
        .output()
        .unwrap();
    assert_eq!(result.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&result.stdout).contains("spec.priority"));
    assert!(String::from_utf8_lossy(&result.stderr).contains("nothing was exported"));
    assert_eq!(std::fs::read_dir(mirror.path()).unwrap().count(), 0);
}

/// A package that passes validation but fails to build (its launched script is gone) makes
/// the whole export fail: the mirror keeps what it had, not some packages of each version.
#[test]
fn a_package_that_fails_to_build_exports_nothing_and_leaves_the_mirror_as_it_was() {
    let config = quickstart_copy();
    let mirror = tempfile::tempdir().unwrap();
    let (code, out) = export(config.path(), mirror.path());
    assert_eq!(code, 0, "{out}");
    let listing = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing(mirror.path());
    assert_eq!(before.len(), 4, "{before:?}");

    // A change to another package (a new id to export), and hello's script removed.
    let tools = config.path().join("packages/tools/motd-lab.txt");
    std::fs::write(&tools, "a new message of the day\n").unwrap();
    std::fs::remove_file(config.path().join("packages/hello/hello.sh")).unwrap();
    let (code, out) = export(config.path(), mirror.path());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("Package/hello: not built"), "{out}");
    assert_eq!(listing(mirror.path()), before, "nothing written or removed");
}
