//! Package building: deterministic archives, digit ids, digests agents check, the fragment
//! store's all-or-nothing writes, checked with `tar`, `md5sum` and Python's zipfile.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use tessera::desired;
use tessera::reconcile::{Config, Reconciler};
use tessera::server::admin::Report;
use tessera::sources::dir::DirSource;

fn package(name: &str, os: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: {name}\nspec:\n  os: {os}\n  priority: 5\n  fragmentSize: 4Ki\n{extra}"
    )
}

const CONTENT: &str =
    "  content:\n    directory: payload\n  action:\n    launch:\n      command: install.sh\n";

fn write_payload(config: &Path) {
    let payload = config.join("payload");
    std::fs::create_dir_all(payload.join("lib")).unwrap();
    std::fs::write(payload.join("install.sh"), "#!/bin/sh\necho installed\n").unwrap();
    // Not compressible: several fragments of 4 KiB.
    use sha2::Digest;
    let noise: Vec<u8> = (0..625u32)
        .flat_map(|i| sha2::Sha256::digest(i.to_be_bytes()).to_vec())
        .collect();
    std::fs::write(payload.join("lib/data.bin"), noise).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            payload.join("install.sh"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
    }
}

/// A configuration with Package/app (a Linux package from `payload/`), built once:
/// (configuration, state directory, package id).
fn built_app() -> (tempfile::TempDir, tempfile::TempDir, String) {
    let config = tempfile::tempdir().unwrap();
    write_payload(config.path());
    std::fs::write(
        config.path().join("p.yaml"),
        package("app", "linux", CONTENT),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let id = details(&pass(config.path(), state.path()), "app")["packageId"]
        .as_str()
        .unwrap()
        .to_owned();
    (config, state, id)
}

fn pass(config: &Path, state: &Path) -> Report {
    let mut reconciler = Reconciler::new(Config {
        state_dir: state.to_path_buf(),
        config_dir: config.to_path_buf(),
        options: desired::Options::default(),
        environment: Default::default(),
        clock: Default::default(),
        runtime: None,
        gateway: None,
        secrets: None,
        leadership: tessera::leader::Leadership::always(),
        shared_database: false,
    });
    let snapshot = DirSource::new(config, vec![]).unwrap().scan();
    reconciler
        .pass(&snapshot, jiff::Timestamp::now())
        .unwrap()
        .report
}

/// The `Ready` condition of Package/`name`.
fn ready_of(report: &Report, name: &str) -> tessera::server::admin::ConditionReport {
    let object = report
        .objects
        .iter()
        .find(|o| o.kind == tessera::server::admin::ObjectKind::Package && o.name == name)
        .expect("package listed");
    object
        .conditions
        .iter()
        .find(|c| c.type_ == tessera::server::admin::ConditionType::Ready)
        .cloned()
        .expect("a Ready condition")
}

fn details(report: &Report, name: &str) -> serde_json::Map<String, Value> {
    let object = report
        .objects
        .iter()
        .find(|o| o.kind == tessera::server::admin::ObjectKind::Package && o.name == name)
        .expect("package listed");
    let ready = object
        .conditions
        .iter()
        .find(|c| c.type_ == tessera::server::admin::ConditionType::Ready)
        .unwrap();
    assert_eq!(
        ready.status,
        tessera::server::admin::ConditionStatus::True,
        "{ready:?}"
    );
    object.details.clone()
}

/// The archive rebuilt from the fragments, as an agent does.
fn reassemble(state: &Path, id: &str, fragments: u64) -> Vec<u8> {
    (1..=fragments)
        .flat_map(|n| {
            std::fs::read(state.join("download").join(id).join(format!("{id}-{n}"))).unwrap()
        })
        .collect()
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_directory_becomes_the_same_tar_gz_and_id_everywhere_and_tar_reads_it() {
    let config = tempfile::tempdir().unwrap();
    write_payload(config.path());
    std::fs::write(
        config.path().join("p.yaml"),
        package("app", "linux", CONTENT),
    )
    .unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = details(&pass(config.path(), one.path()), "app");
    let second = details(&pass(config.path(), two.path()), "app");
    assert_eq!(
        first, second,
        "another state directory (a replica, a rebuild) gives the same package"
    );
    let id = first["packageId"].as_str().unwrap();
    assert!(
        id.len() == 10 && id.bytes().all(|b| b.is_ascii_digit()),
        "{id}"
    );
    let fragments = first["fragments"].as_u64().unwrap();
    assert!(
        fragments >= 5,
        "20 KB of noise in 4 KiB fragments: {fragments}"
    );

    let archive = reassemble(one.path(), id, fragments);
    assert_eq!(
        archive,
        reassemble(two.path(), id, fragments),
        "byte-identical fragments"
    );
    let file = one.path().join("app.tar.gz");
    std::fs::write(&file, &archive).unwrap();
    let md5 = run("md5sum", &[file.to_str().unwrap()]);
    assert_eq!(
        md5.split_whitespace().next().unwrap(),
        first["md5"].as_str().unwrap(),
        "MD5 of the whole archive, lowercase hex"
    );
    let listing = run("tar", &["-tvzf", file.to_str().unwrap(), "--numeric-owner"]);
    let lines: Vec<&str> = listing.lines().collect();
    assert_eq!(lines.len(), 3, "{listing}");
    assert!(
        lines[0].starts_with("-rwxr-xr-x 0/0") && lines[0].ends_with("install.sh"),
        "modes normalised, owner 0: {listing}"
    );
    assert!(lines[0].contains("1970-01-01"), "fixed times: {listing}");
    assert!(
        lines[1].starts_with("drwxr-xr-x") && lines[1].ends_with("lib/"),
        "{listing}"
    );
    assert!(
        lines[2].starts_with("-rw-r--r--") && lines[2].ends_with("lib/data.bin"),
        "{listing}"
    );

    let info = std::fs::read_to_string(one.path().join("download").join(id).join("info")).unwrap();
    for part in [
        format!("ID=\"{id}\""),
        "PRI=\"5\"".into(),
        "ACT=\"LAUNCH\"".into(),
        format!("DIGEST=\"{}\"", first["md5"].as_str().unwrap()),
        "PROTO=\"HTTPS\"".into(),
        format!("FRAGS=\"{fragments}\""),
        "NAME=\"install.sh\"".into(),
    ] {
        assert!(info.contains(&part), "{part} in {info}");
    }
}

#[test]
fn windows_packages_are_zip_archives_that_another_reader_opens() {
    let config = tempfile::tempdir().unwrap();
    write_payload(config.path());
    std::fs::write(
        config.path().join("p.yaml"),
        package("win", "windows", CONTENT),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let built = details(&pass(config.path(), state.path()), "win");
    let id = built["packageId"].as_str().unwrap();
    let archive = reassemble(state.path(), id, built["fragments"].as_u64().unwrap());
    let file = state.path().join("win.zip");
    std::fs::write(&file, archive).unwrap();
    let listing = run("python3", &["-m", "zipfile", "-l", file.to_str().unwrap()]);
    assert!(
        listing.contains("install.sh") && listing.contains("lib/data.bin"),
        "{listing}"
    );
    assert!(listing.contains("1980-01-01"), "fixed zip times: {listing}");
    let out = state.path().join("unzipped");
    run(
        "python3",
        &[
            "-m",
            "zipfile",
            "-e",
            file.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(out.join("install.sh")).unwrap(),
        "#!/bin/sh\necho installed\n"
    );
}

#[test]
fn an_edit_gives_a_new_id_and_the_old_package_is_removed() {
    let (config, state, old) = built_app();
    std::fs::write(
        config.path().join("payload/install.sh"),
        "#!/bin/sh\necho version 2\n",
    )
    .unwrap();
    let new = details(&pass(config.path(), state.path()), "app")["packageId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(old, new, "changed content, new package id");
    assert!(
        !state.path().join("download").join(&old).exists(),
        "the old version is removed"
    );
    assert!(
        state
            .path()
            .join("download")
            .join(&new)
            .join("info")
            .exists()
    );
    // A priority change (spec) is a new version too.
    std::fs::write(
        config.path().join("p.yaml"),
        package("app", "linux", CONTENT).replace("priority: 5", "priority: 0"),
    )
    .unwrap();
    let third = details(&pass(config.path(), state.path()), "app")["packageId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(third, new);
}

#[test]
fn command_only_packages_have_no_fragments_and_half_built_ones_are_never_listed() {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("p.yaml"),
        package(
            "cmd",
            "linux",
            "  action:\n    execute:\n      command: echo hello\n",
        ),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    // What a crash in the middle of a build leaves behind.
    let leftover = state.path().join("download/.building-1234567890-deadbeef");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("1234567890-1"), b"half").unwrap();
    let built = details(&pass(config.path(), state.path()), "cmd");
    assert_eq!(built["fragments"], 0);
    assert!(!built.contains_key("md5"));
    let id = built["packageId"].as_str().unwrap();
    let info =
        std::fs::read_to_string(state.path().join("download").join(id).join("info")).unwrap();
    assert!(
        info.contains("FRAGS=\"0\"")
            && info.contains("DIGEST=\"\"")
            && info.contains("COMMAND=\"echo hello\""),
        "{info}"
    );
    assert!(
        !leftover.exists(),
        "leftovers of an interrupted build are removed"
    );
    let entries: Vec<String> = std::fs::read_dir(state.path().join("download"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(entries, vec![id.to_owned()]);
}

#[test]
fn an_archive_with_the_wrong_sha256_is_refused() {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(config.path().join("app.tar.gz"), b"not really an archive").unwrap();
    let extra = format!(
        "  content:\n    archive: app.tar.gz\n    sha256: {}\n  action:\n    store:\n      path: /opt/app\n",
        "0".repeat(64)
    );
    std::fs::write(
        config.path().join("p.yaml"),
        package("app", "linux", &extra),
    )
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let report = pass(config.path(), state.path());
    let ready = ready_of(&report, "app");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "DigestMismatch"),
        "{ready:?}"
    );
}

#[test]
fn a_failed_rebuild_keeps_the_last_version_in_the_store() {
    let (config, state, id) = built_app();
    // The content disappears for a moment (a checkout in progress): the build fails...
    std::fs::rename(
        config.path().join("payload"),
        config.path().join("payload.moved"),
    )
    .unwrap();
    let report = pass(config.path(), state.path());
    let ready = ready_of(&report, "app");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "BuildFailed"),
        "{ready:?}"
    );
    assert!(
        ready.message.contains("payload"),
        "the message names the directory: {}",
        ready.message
    );
    // ...but the version agents may be fetching stays.
    assert!(
        state
            .path()
            .join("download")
            .join(&id)
            .join("info")
            .exists()
    );
}

#[test]
fn content_from_a_url_is_downloaded_once_checked_and_used_as_is() {
    let site = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..20_000u32).flat_map(|i| i.to_le_bytes()).collect();
    let archive = crate::url_content::tar_gz(&[("data.bin", &data, false)]);
    std::fs::write(site.path().join("app.tar.gz"), &archive).unwrap();
    use sha2::Digest;
    let sha = hex::encode(sha2::Sha256::digest(&archive));
    let server = crate::support::StaticServer::start(site.path());
    let port = server.port;

    let config = tempfile::tempdir().unwrap();
    let write = |sha: &str| {
        let extra = format!(
            "  content:\n    url: http://127.0.0.1:{port}/app.tar.gz\n    sha256: {sha}\n  action:\n    store:\n      path: /opt/app\n"
        );
        std::fs::write(
            config.path().join("p.yaml"),
            package("app", "linux", &extra),
        )
        .unwrap();
    };
    write(&"0".repeat(64));
    let state = tempfile::tempdir().unwrap();
    let ready = ready_of(&pass(config.path(), state.path()), "app");
    assert_eq!(
        ready.status,
        tessera::server::admin::ConditionStatus::False,
        "{ready:?}"
    );
    assert!(
        ready.message.contains(&sha) && ready.message.contains("spec.content.sha256"),
        "the message gives the real digest: {ready:?}"
    );

    write(&sha);
    let report = pass(config.path(), state.path());
    assert_eq!(
        ready_of(&report, "app").status,
        tessera::server::admin::ConditionStatus::True
    );
    let built = details(&report, "app");
    assert_eq!(built["sha256"], sha.as_str());
    assert_eq!(built["size"], archive.len());
    // Cached under its digest: the site going away changes nothing.
    drop(server);
    assert!(state.path().join("cache/urls").join(&sha).is_file());
    std::fs::remove_dir_all(state.path().join("packages")).unwrap();
    let again = pass(config.path(), state.path());
    assert_eq!(details(&again, "app")["packageId"], built["packageId"]);
}

/// Two servers each build from their own checkout of the configuration, made at different
/// times: file times differ, the packages must not (same ids, same bytes in every
/// fragment, same `info`), for tar.gz and zip alike.
#[test]
fn two_checkouts_with_different_file_times_build_byte_identical_packages() {
    let checkout = || {
        let config = tempfile::tempdir().unwrap();
        write_payload(config.path());
        std::fs::write(
            config.path().join("p.yaml"),
            package("app", "linux", CONTENT) + &package("win", "windows", CONTENT),
        )
        .unwrap();
        config
    };
    let (first, second) = (checkout(), checkout());
    let past = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    for file in ["payload/install.sh", "payload/lib/data.bin"] {
        std::fs::File::options()
            .write(true)
            .open(second.path().join(file))
            .unwrap()
            .set_modified(past)
            .unwrap();
    }
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (report_one, report_two) = (
        pass(first.path(), one.path()),
        pass(second.path(), two.path()),
    );
    for name in ["app", "win"] {
        let built = details(&report_one, name);
        assert_eq!(built, details(&report_two, name), "{name}");
        let id = built["packageId"].as_str().unwrap();
        let fragments = built["fragments"].as_u64().unwrap();
        assert!(fragments > 1, "{name}: {fragments} fragments");
        for n in 1..=fragments {
            let fragment = |state: &Path| {
                std::fs::read(state.join("download").join(id).join(format!("{id}-{n}"))).unwrap()
            };
            assert!(
                fragment(one.path()) == fragment(two.path()),
                "{name}: fragment {n} differs"
            );
        }
        let info =
            |state: &Path| std::fs::read(state.join("download").join(id).join("info")).unwrap();
        assert_eq!(info(one.path()), info(two.path()), "{name}: info");
    }
}
