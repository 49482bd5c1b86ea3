//! `tessera validate`: one clear problem per mistake, with file and line; exit codes; JSON.

use std::path::{Path, PathBuf};

use assert_cmd::Command;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Each mistake of `tests/fixtures/mistakes`: where it is and words the problem must use.
const EXPECTED: &[(&str, &str)] = &[
    (
        "api.yaml:1: Package/wrong-version: apiVersion:",
        "unknown apiVersion `tessera.dev/v1`",
    ),
    ("api.yaml:12: kind:", "unknown kind `Pakage`"),
    ("broken.yaml:7:", "YAML syntax error"),
    (
        "certificates.yaml:10: Certificate/bad-dns: spec.dnsNames[1]:",
        "`bad_name.example.com` is not a valid DNS name",
    ),
    (
        "certificates.yaml:21: Certificate/bad-ip: spec.ipAddresses[1]:",
        "`300.1.2.3` is not an IPv4 or IPv6 address",
    ),
    (
        "certificates.yaml:32: Certificate/bad-usage: spec.usages[0]:",
        "unknown value `server-auth`",
    ),
    (
        "certificates.yaml:42: Certificate/escaping-output: spec.outputDirectory:",
        "without `..`",
    ),
    (
        "packages.yaml:7: Package/unknown-field: spec.prority:",
        "unknown field `prority`",
    ),
    (
        "packages.yaml:18: Package/priority-too-high: spec.priority:",
        "between 0 and 10, got 11",
    ),
    (
        "packages.yaml:29: Package/no-action: spec.action:",
        "no action",
    ),
    (
        "packages.yaml:39: Package/two-actions: spec.action:",
        "2 actions (execute, store)",
    ),
    (
        "packages.yaml:51: Package/tiny-fragments: spec.fragmentSize:",
        "between 4Ki and 64Mi, got 1Ki",
    ),
    (
        "packages.yaml:59: Package/good: metadata.name:",
        "declared twice",
    ),
    (
        "references.yaml:6: Activation/orphan: spec.packageRef:",
        "Package/does-not-exist, which does not exist",
    ),
    (
        "references.yaml:14: Certificate/no-issuer: spec.issuerRef:",
        "Issuer/missing-ca, which does not exist",
    ),
];

#[test]
fn validate_reports_each_mistake_once_with_file_and_line() {
    let output = Command::cargo_bin("tessera")
        .unwrap()
        .args(["validate"])
        .arg(fixture("mistakes"))
        .output()
        .unwrap();
    assert_eq!(
        output.status.code(),
        Some(1),
        "a directory with problems exits 1"
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    for (place, words) in EXPECTED {
        let matching: Vec<&&str> = lines.iter().filter(|l| l.starts_with(place)).collect();
        assert_eq!(
            matching.len(),
            1,
            "expected one line starting {place:?}, got {matching:?}\n{stdout}"
        );
        assert!(
            matching[0].contains(words),
            "{place}: expected {words:?} in {:?}",
            matching[0]
        );
    }
    // Nothing beyond the mistakes, and a summary line.
    assert_eq!(lines.len(), EXPECTED.len() + 1, "{stdout}");
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with(&format!("{} problems in 5 files", EXPECTED.len())),
        "{stdout}"
    );
}

#[test]
fn validate_json_lists_the_same_problems_for_machines() {
    let output = Command::cargo_bin("tessera")
        .unwrap()
        .args(["validate", "--output", "json"])
        .arg(fixture("mistakes"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let problems = json["problems"].as_array().unwrap();
    assert_eq!(problems.len(), EXPECTED.len());
    let priority = problems
        .iter()
        .find(|p| p["field"] == "spec.priority")
        .expect("priority problem");
    assert_eq!(priority["file"], "packages.yaml");
    assert_eq!(priority["line"], 18);
    assert_eq!(priority["object"]["kind"], "Package");
    assert_eq!(priority["object"]["name"], "priority-too-high");
}

#[test]
fn validate_exits_zero_on_a_clean_directory_and_explains_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: p\nspec:\n  os: linux\n  action:\n    execute:\n      command: \"true\"\n",
    )
    .unwrap();
    Command::cargo_bin("tessera")
        .unwrap()
        .arg("validate")
        .arg(dir.path())
        .assert()
        .success()
        .stdout("1 objects, no problems\n");
    let missing = Command::cargo_bin("tessera")
        .unwrap()
        .args(["validate", "/nonexistent/tessera-config"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("/nonexistent/tessera-config is not a directory")
    );
}

/// Mistakes of the gateway's and the edge's settings, each named with its field.
#[test]
fn validate_explains_gateway_and_trust_mistakes() {
    let dir = tempfile::tempdir().unwrap();
    let issuers = "apiVersion: tessera.dev/v1alpha1
kind: Issuer
metadata:
  name: trust-with-revocations
spec:
  revokedSerials: [\"0a\"]
  ca:
    certFile: inside.crt
---
apiVersion: tessera.dev/v1alpha1
kind: Issuer
metadata:
  name: key-and-crl
spec:
  ca:
    certFile: ca.crt
    keyFile: ca.key
    crlFile: ca.crl
---
apiVersion: tessera.dev/v1alpha1
kind: Issuer
metadata:
  name: crl-alone
spec:
  ca:
    crlFile: ca.crl
";
    let gateways = "apiVersion: tessera.dev/v1alpha1
kind: Gateway
metadata:
  name: unnamed-inside
spec:
  listen: 127.0.0.1:443
  mode: tunnel
  backend: inside:8443
  certificateRef: {name: edge}
  trustedClientIssuers: [{name: crl-alone}]
  dialOut:
    listen: 127.0.0.1:443
    trustedServerIssuers: [{name: crl-alone}]
    names: []
---
apiVersion: tessera.dev/v1alpha1
kind: Gateway
metadata:
  name: terminate-blind
spec:
  listen: 127.0.0.1:444
  mode: terminate
  backend: inside:8443
  certificateRef: {name: edge}
  backendCertificateRef: {name: edge}
  trustedClientIssuers: [{name: crl-alone}]
";
    std::fs::write(dir.path().join("issuers.yaml"), issuers).unwrap();
    std::fs::write(dir.path().join("gateways.yaml"), gateways).unwrap();
    let output = Command::cargo_bin("tessera")
        .unwrap()
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stdout = String::from_utf8(output.stdout).unwrap();
    for (place, words) in [
        (
            "issuers.yaml:6: Issuer/trust-with-revocations: spec.revokedSerials:",
            "trust-only issuer",
        ),
        (
            "issuers.yaml:18: Issuer/key-and-crl: spec.ca.crlFile:",
            "publishes its own CRL",
        ),
        (
            "issuers.yaml:25: Issuer/crl-alone: spec.ca.certFile:",
            "need the CA certificate",
        ),
        (
            "gateways.yaml:12: Gateway/unnamed-inside: spec.dialOut.listen:",
            "address of their own",
        ),
        (
            "gateways.yaml:14: Gateway/unnamed-inside: spec.dialOut.names:",
            "would be taken for a server",
        ),
        (
            "Gateway/terminate-blind: spec.backendIssuerRef:",
            "verifies the backend's certificate",
        ),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(place) && l.contains(words)),
            "expected {place:?} with {words:?} in:\n{stdout}"
        );
    }
}

/// What only building would find: a launched file missing from the content, an archive
/// that does not match its digest, a content directory that is not there, a download
/// address with no host. Each named with file, line, object and field, all of them.
#[test]
fn validate_finds_what_building_would_refuse_without_building() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir_all(root.join("packages/hello")).unwrap();
    std::fs::write(root.join("packages/hello/install.sh"), "true\n").unwrap();
    std::fs::write(
        root.join("packages/bundle.tar.gz"),
        b"not the archive named",
    )
    .unwrap();
    let package = |name: &str, content: &str, action: &str| {
        format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: {name}\nspec:\n  os: linux\n  content:\n{content}  action:\n{action}---\n"
        )
    };
    let text = [
        package(
            "launch-missing",
            "    directory: hello\n",
            "    launch:\n      command: hello.sh --quiet\n",
        ),
        package(
            "wrong-digest",
            &format!(
                "    archive: bundle.tar.gz\n    sha256: {}\n",
                "ab".repeat(32)
            ),
            "    store:\n      path: /opt/x\n",
        ),
        package(
            "no-directory",
            "    directory: gone\n",
            "    execute:\n      command: ./install.sh\n",
        ),
        package(
            "no-host",
            &format!(
                "    url: https:///x.tar.gz\n    sha256: {}\n",
                "ab".repeat(32)
            ),
            "    store:\n      path: /opt/x\n",
        ),
    ]
    .concat();
    std::fs::write(root.join("packages/all.yaml"), &text).unwrap();
    let output = Command::cargo_bin("tessera")
        .unwrap()
        .arg("validate")
        .arg(root)
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for (place, words) in [
        (
            "packages/all.yaml:11: Package/launch-missing: spec.action.launch.command:",
            "\"hello.sh\"",
        ),
        (
            "packages/all.yaml:21: Package/wrong-digest: spec.content.sha256:",
            "the archive's SHA-256 is",
        ),
        (
            "packages/all.yaml:33: Package/no-directory: spec.content.directory:",
            "failed to read content directory",
        ),
        (
            "packages/all.yaml:45: Package/no-host: spec.content.url:",
            "names no host",
        ),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(place) && l.contains(words)),
            "expected {place:?} with {words:?} in:\n{stdout}"
        );
    }
    assert!(
        stdout.ends_with("4 problems in 1 file; 0 of 4 objects valid\n"),
        "{stdout}"
    );
}

/// One mistake does not hide the next ones of the same object: unknown fields, a wrong
/// apiVersion, and the checks of what is left are all reported.
#[test]
fn validate_reports_every_problem_of_an_object() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("p.yaml"),
        "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: p\nspec:\n  os: linux\n  prority: 3\n  fragmentSize: 1Ki\n  priority: 11\n  action:\n    lauch:\n      command: setup.sh\n---\napiVersion: tessera.dev/v1\nkind: Package\nmetadata:\n  name: q\nspec:\n  os: linux\n  priority: 11\n  action:\n    execute:\n      command: 'true'\n",
    )
    .unwrap();
    let output = Command::cargo_bin("tessera")
        .unwrap()
        .arg("validate")
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    for (place, words) in [
        (
            "p.yaml:7: Package/p: spec.prority:",
            "unknown field `prority`",
        ),
        (
            "p.yaml:8: Package/p: spec.fragmentSize:",
            "between 4Ki and 64Mi",
        ),
        (
            "p.yaml:9: Package/p: spec.priority:",
            "between 0 and 10, got 11",
        ),
        (
            "p.yaml:11: Package/p: spec.action.lauch:",
            "unknown field `lauch`",
        ),
        ("p.yaml:14: Package/q: apiVersion:", "unknown apiVersion"),
        (
            "p.yaml:20: Package/q: spec.priority:",
            "between 0 and 10, got 11",
        ),
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(place) && l.contains(words)),
            "expected {place:?} with {words:?} in:\n{stdout}"
        );
    }
}

/// A Server's or a Gateway's `certificateSecretRef` names a Kubernetes Secret, which only
/// Kubernetes mode reads (`serve` refuses it elsewhere with `SecretsNeedKubernetes`):
/// `validate` of a directory says so, with file, line, field and reason.
#[test]
fn a_certificate_secret_ref_is_a_problem_in_a_directory() {
    let edit = |from: &str, file: &str, reference: &str| {
        let dir = tempfile::tempdir().unwrap();
        crate::support::copy_dir(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join(from),
            dir.path(),
        );
        let path = dir.path().join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let old = format!("  certificateRef:\n    name: {reference}\n");
        assert!(text.contains(&old), "{text}");
        let new = text.replace(
            &old,
            "  certificateSecretRef:\n    name: from-cert-manager\n",
        );
        std::fs::write(&path, new).unwrap();
        dir
    };
    for (dir, place) in [
        (
            edit("examples/quickstart", "server.yaml", "tessera-server"),
            "server.yaml:10: Server/tessera: spec.certificateSecretRef:",
        ),
        (
            edit("examples/gateway", "gateway.yaml", "gateway-tls"),
            "gateway.yaml:50: Gateway/dmz: spec.certificateSecretRef:",
        ),
    ] {
        let output = Command::cargo_bin("tessera")
            .unwrap()
            .arg("validate")
            .arg(dir.path())
            .output()
            .unwrap();
        let stdout = String::from_utf8(output.stdout).unwrap();
        assert_eq!(output.status.code(), Some(1), "{stdout}");
        assert!(
            stdout.lines().any(|l| l.starts_with(place)
                && l.contains("SecretsNeedKubernetes")
                && l.contains("from-cert-manager")),
            "expected {place:?} in:\n{stdout}"
        );
    }
}
