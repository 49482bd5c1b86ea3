//! Ready-made content (`url`, `archive`) gets the checks a content directory gets: the
//! archive must be in the format agents of the package's OS unpack (zip for Windows,
//! tar.gz for Linux and macOS), and a `launch` command must name a file the archive holds.
//! Downloads come from a local web server on 127.0.0.1. And in Kubernetes, where there are
//! no files beside the objects, `directory` and `archive` content is refused with a reason
//! that says to use `url`.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use assert_cmd::Command;
use sha2::Digest;
use tessera::desired;
use tessera::reconcile::secrets::{Secrets, SecretsError, TlsSecret};
use tessera::reconcile::{Config, Reconciler};
use tessera::server::admin::{ConditionReport, ConditionStatus, ConditionType, ObjectKind, Report};
use tessera::sources::dir::DirSource;

use crate::support::StaticServer;

/// A tar.gz holding `files` (name, bytes, executable).
pub(crate) fn tar_gz(files: &[(&str, &[u8], bool)]) -> Vec<u8> {
    let gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gzip);
    for (name, data, executable) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(if *executable { 0o755 } else { 0o644 });
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, name, *data).unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

/// A zip holding `files` (name, bytes).
fn zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, data) in files {
        zip.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(data).unwrap();
    }
    zip.finish().unwrap().into_inner()
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// `p.yaml` in `config`: Package/app for `os`, content `content` (YAML lines below
/// `content:`), action `action` (below `action:`).
fn declare(config: &Path, os: &str, content: &str, action: &str) {
    std::fs::write(
        config.join("p.yaml"),
        format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: app\nspec:\n  os: {os}\n  content:\n{content}  action:\n{action}"
        ),
    )
    .unwrap();
}

/// `url` content lines for `name` on `server`, with the digest of `bytes`.
fn url(server: &StaticServer, name: &str, bytes: &[u8]) -> String {
    format!(
        "    url: http://127.0.0.1:{}/{name}\n    sha256: {}\n",
        server.port,
        sha256(bytes)
    )
}

fn launch(command: &str) -> String {
    format!("    launch:\n      command: {command}\n")
}

fn reconciler(config: &Path, state: &Path, secrets: Option<Arc<dyn Secrets>>) -> Reconciler {
    Reconciler::new(Config {
        state_dir: state.to_path_buf(),
        config_dir: config.to_path_buf(),
        options: desired::Options::default(),
        environment: Default::default(),
        clock: Default::default(),
        runtime: None,
        gateway: None,
        secrets,
        leadership: tessera::leader::Leadership::always(),
        shared_database: false,
    })
}

/// One pass over `config` as a directory source: the `Ready` condition of Package/app.
fn ready(config: &Path, state: &Path) -> ConditionReport {
    let snapshot = DirSource::new(config, vec![]).unwrap().scan();
    let report = reconciler(config, state, None)
        .pass(&snapshot, jiff::Timestamp::now())
        .unwrap()
        .report;
    ready_of(&report, "app")
}

fn ready_of(report: &Report, name: &str) -> ConditionReport {
    report
        .objects
        .iter()
        .find(|o| o.kind == ObjectKind::Package && o.name == name)
        .expect("package listed")
        .conditions
        .iter()
        .find(|c| c.type_ == ConditionType::Ready)
        .cloned()
        .expect("a Ready condition")
}

fn assert_refused(ready: &ConditionReport, reason: &str, words: &[&str]) {
    assert_eq!(
        (ready.status, ready.reason.as_str()),
        (ConditionStatus::False, reason),
        "{ready:?}"
    );
    for word in words {
        assert!(ready.message.contains(word), "{word:?} in {ready:?}");
    }
}

#[test]
fn a_url_archive_without_the_launched_file_is_refused_by_name() {
    let site = tempfile::tempdir().unwrap();
    let archive = tar_gz(&[("install.sh", b"#!/bin/sh\ntrue\n", true)]);
    std::fs::write(site.path().join("app.tar.gz"), &archive).unwrap();
    let server = StaticServer::start(site.path());
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();

    let content = url(&server, "app.tar.gz", &archive);
    declare(
        config.path(),
        "linux",
        &content,
        &launch("setup.sh --quiet"),
    );
    assert_refused(
        &ready(config.path(), state.path()),
        "InvalidContent",
        &[
            "spec.action.launch.command",
            "\"setup.sh\"",
            "app.tar.gz has no such file",
        ],
    );
    // Nothing half-built is left to serve.
    let stored = std::fs::read_dir(state.path().join("download"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(stored, 0, "no package stored");

    // The file the archive holds (agents run it as `./install.sh` either way).
    declare(config.path(), "linux", &content, &launch("./install.sh"));
    let ready = ready(config.path(), state.path());
    assert_eq!(ready.status, ConditionStatus::True, "{ready:?}");
}

#[test]
fn a_url_archive_in_the_wrong_format_for_its_os_is_refused() {
    let site = tempfile::tempdir().unwrap();
    let targz = tar_gz(&[("setup.exe", b"MZ", false)]);
    let windows_zip = zip(&[("bin/Setup.EXE", b"MZ")]);
    let not_an_archive = b"<html>a login page</html>".to_vec();
    std::fs::write(site.path().join("app.tar.gz"), &targz).unwrap();
    std::fs::write(site.path().join("app.zip"), &windows_zip).unwrap();
    std::fs::write(site.path().join("download"), &not_an_archive).unwrap();
    let server = StaticServer::start(site.path());
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();

    // Windows agents unpack zip only.
    declare(
        config.path(),
        "windows",
        &url(&server, "app.tar.gz", &targz),
        &launch("setup.exe /S"),
    );
    assert_refused(
        &ready(config.path(), state.path()),
        "InvalidContent",
        &["spec.content.url", "is a tar.gz archive", "windows", "zip"],
    );
    // And Linux ones are told tar.gz.
    declare(
        config.path(),
        "linux",
        &url(&server, "app.zip", &windows_zip),
        "    store:\n      path: /opt/app\n",
    );
    assert_refused(
        &ready(config.path(), state.path()),
        "InvalidContent",
        &["spec.content.url", "is a zip archive", "tar.gz"],
    );
    // A page that is no archive at all (a URL that answers with a login page, say).
    declare(
        config.path(),
        "linux",
        &url(&server, "download", &not_an_archive),
        "    store:\n      path: /opt/app\n",
    );
    assert_refused(
        &ready(config.path(), state.path()),
        "InvalidContent",
        &["spec.content.url", "is not an archive"],
    );

    // The zip on Windows, launching a file as Windows finds it (case, `\`).
    declare(
        config.path(),
        "windows",
        &url(&server, "app.zip", &windows_zip),
        &launch("'\"bin\\setup.exe\" /S'"),
    );
    let ready = ready(config.path(), state.path());
    assert_eq!(ready.status, ConditionStatus::True, "{ready:?}");
}

#[test]
fn archive_content_gets_the_same_checks_when_built_and_validated() {
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let archive = tar_gz(&[("install.sh", b"#!/bin/sh\ntrue\n", true)]);
    // Named for Windows (its name is checked with the spec), a tar.gz inside.
    std::fs::write(config.path().join("app.zip"), &archive).unwrap();
    std::fs::write(config.path().join("app.tar.gz"), &archive).unwrap();
    let content = |name: &str| format!("    archive: {name}\n    sha256: {}\n", sha256(&archive));
    declare(
        config.path(),
        "windows",
        &content("app.zip"),
        &launch("install.sh"),
    );
    assert_refused(
        &ready(config.path(), state.path()),
        "InvalidContent",
        &["spec.content.archive", "is a tar.gz archive", "zip"],
    );
    declare(
        config.path(),
        "linux",
        &content("app.tar.gz"),
        &launch("missing.sh"),
    );
    assert_refused(
        &ready(config.path(), state.path()),
        "InvalidContent",
        &["spec.action.launch.command", "\"missing.sh\""],
    );

    // `tessera validate` finds the same without building, and a download named for the
    // wrong format by its file name without downloading.
    std::fs::write(
        config.path().join("p.yaml"),
        format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: local\nspec:\n  os: windows\n  content:\n{}  action:\n{}---\napiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: remote\nspec:\n  os: windows\n  content:\n    url: https://downloads.example/app.tgz?v=2\n    sha256: {}\n  action:\n{}",
            content("app.zip"),
            launch("install.sh"),
            "ab".repeat(32),
            launch("setup.exe")
        ),
    )
    .unwrap();
    let output = Command::cargo_bin("tessera")
        .unwrap()
        .arg("validate")
        .arg(config.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for (place, words) in [
        (
            "Package/local: spec.content.archive:",
            "is a tar.gz archive",
        ),
        (
            "Package/remote: spec.content.url:",
            "names a tar.gz archive",
        ),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(place) && l.contains(words) && l.contains("zip")),
            "expected {place:?} with {words:?} in:\n{stdout}"
        );
    }
}

/// Secrets nobody reads here: Kubernetes mode without an API server.
#[derive(Debug)]
pub(crate) struct NoSecrets;

impl Secrets for NoSecrets {
    fn read_key_pair(&self, namespace: &str, name: &str) -> Result<(String, String), SecretsError> {
        Err(SecretsError::NotFound {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    fn write(&self, _: &TlsSecret) -> Result<(), SecretsError> {
        Ok(())
    }
}

#[test]
fn in_kubernetes_directory_and_archive_content_is_refused_for_url() {
    let state = tempfile::tempdir().unwrap();
    let package = |name: &str, content: &str| {
        format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: {name}\n  namespace: lab\nspec:\n  os: linux\n  content:\n{content}  action:\n    execute:\n      command: sh run.sh\n"
        )
    };
    let documents = [
        (
            "Package/lab/hello",
            package("hello", "    directory: hello\n"),
        ),
        (
            "Package/lab/bundle",
            package(
                "bundle",
                &format!(
                    "    archive: bundle.tar.gz\n    sha256: {}\n",
                    "ab".repeat(32)
                ),
            ),
        ),
    ];
    let snapshot = tessera::resources::Snapshot {
        revision: "1".into(),
        files: documents
            .iter()
            .map(|(path, text)| tessera::resources::SourceFile {
                path: (*path).to_owned(),
                text: text.clone(),
            })
            .collect(),
        problems: Vec::new(),
        root: None,
    };
    let report = reconciler(state.path(), state.path(), Some(Arc::new(NoSecrets)))
        .pass(&snapshot, jiff::Timestamp::now())
        .unwrap()
        .report;
    for (name, field) in [("hello", "directory"), ("bundle", "archive")] {
        assert_refused(
            &ready_of(&report, name),
            "ContentNeedsURL",
            &[
                &format!("spec.content.{field}:"),
                "in Kubernetes a Package's content is a `url` with its `sha256`",
            ],
        );
        assert!(
            !ready_of(&report, name).message.contains("No such file"),
            "{:?}",
            ready_of(&report, name)
        );
    }
}
