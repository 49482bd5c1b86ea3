//! Issuers and Certificates through the reconciler, with an injected clock, checked with
//! openssl as an independent verifier.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use tessera::desired;
use tessera::reconcile::certificates::Environment;
use tessera::reconcile::{Config, Reconciler};
use tessera::server::admin::{ObjectReport, Report};
use tessera::sources::dir::DirSource;

const ISSUER: &str = "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: ca\nspec:\n  selfSigned:\n    commonName: Test Root CA\n";

fn certificate(name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: {name}\nspec:\n  issuerRef:\n    name: ca\n  dnsNames: [{name}.example.com]\n  ipAddresses: [127.0.0.1]\n  usages: [server auth, digital signature]\n{extra}"
    )
}

struct Setup {
    config: tempfile::TempDir,
    state: tempfile::TempDir,
}

impl Setup {
    fn new(yaml: &str) -> Self {
        let config = tempfile::tempdir().unwrap();
        std::fs::write(config.path().join("pki.yaml"), yaml).unwrap();
        Self {
            config,
            state: tempfile::tempdir().unwrap(),
        }
    }

    /// A configuration in `config` (already holding CA files): an Issuer `ca` of type `ca`
    /// reading `cert_file` and `key_file` (with `extra` spec lines), and Certificate/web.
    fn with_ca_files(
        config: tempfile::TempDir,
        cert_file: &str,
        key_file: &str,
        extra: &str,
    ) -> Self {
        let yaml = format!(
            "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: ca\nspec:\n  ca:\n    certFile: {cert_file}\n    keyFile: {key_file}\n{extra}{}",
            certificate("web", "")
        );
        std::fs::write(config.path().join("pki.yaml"), yaml).unwrap();
        Self {
            config,
            state: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, yaml: &str) {
        std::fs::write(self.config.path().join("pki.yaml"), yaml).unwrap();
    }

    fn reconciler(&self) -> Reconciler {
        Reconciler::new(Config {
            state_dir: self.state.path().to_path_buf(),
            config_dir: self.config.path().to_path_buf(),
            options: desired::Options::default(),
            environment: Environment::new(|name| {
                (name == "TEST_JKS_PASSWORD").then(|| "jks-secret".to_owned())
            }),
            clock: Default::default(),
            runtime: None,
            gateway: None,
            secrets: None,
            leadership: tessera::leader::Leadership::always(),
            shared_database: false,
        })
    }

    fn pass(
        &self,
        reconciler: &mut Reconciler,
        now: jiff::Timestamp,
    ) -> (Report, Option<jiff::Timestamp>) {
        let snapshot = DirSource::new(self.config.path(), vec![]).unwrap().scan();
        let pass = reconciler.pass(&snapshot, now).unwrap();
        (pass.report, pass.wake)
    }

    fn files(&self, name: &str) -> PathBuf {
        self.state.path().join("certificates/default").join(name)
    }
}

fn object<'a>(report: &'a Report, kind: &str, name: &str) -> &'a ObjectReport {
    report
        .objects
        .iter()
        .find(|o| o.kind.as_str() == kind && o.name == name)
        .unwrap_or_else(|| panic!("{kind}/{name} not in the report"))
}

fn ready(object: &ObjectReport) -> (String, String, String) {
    let c = object
        .conditions
        .iter()
        .find(|c| c.type_ == tessera::server::admin::ConditionType::Ready)
        .unwrap();
    (
        c.status.as_str().to_owned(),
        c.reason.clone(),
        c.message.clone(),
    )
}

fn detail(object: &ObjectReport, field: &str) -> Value {
    object.details.get(field).cloned().unwrap_or(Value::Null)
}

fn openssl(args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl is installed by scripts/setup.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

/// `openssl verify` of `dir`'s tls.crt against its ca.crt.
fn verify(dir: &Path) -> (bool, String) {
    openssl(&[
        "verify",
        "-CAfile",
        path(&dir.join("ca.crt")),
        path(&dir.join("tls.crt")),
    ])
}

/// `openssl verify -crl_check` of `dir`'s tls.crt against `ca` and `crl`.
fn verify_with_crl(crl: &Path, ca: &Path, dir: &Path) -> (bool, String) {
    let leaf = dir.join("tls.crt");
    openssl(&[
        "verify",
        "-crl_check",
        "-CRLfile",
        path(crl),
        "-CAfile",
        path(ca),
        path(&leaf),
    ])
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

#[test]
fn issued_files_pass_openssl_and_show_the_asked_names_usages_and_lifetime() {
    let setup = Setup::new(&format!(
        "{ISSUER}{}",
        certificate("web", "  duration: 720h\n")
    ));
    let mut reconciler = setup.reconciler();
    let (report, wake) = setup.pass(&mut reconciler, now());
    let web = object(&report, "Certificate", "web");
    assert_eq!(ready(web).0, "True", "{:?}", ready(web));
    assert_eq!(detail(web, "revision"), 1);
    assert_eq!(ready(object(&report, "Issuer", "ca")).0, "True");
    let renewal: jiff::Timestamp = detail(web, "renewalTime")
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    // The loop wakes at what comes first: this renewal, or the CRL's refresh at 2/3 of a week.
    let issuer = object(&report, "Issuer", "ca");
    let crl_next: jiff::Timestamp = detail(issuer, "crlNextUpdate")
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let crl_refresh =
        crl_next - (crl_next.duration_since(now()) + jiff::SignedDuration::from_mins(5)) / 3;
    let wake = wake.unwrap();
    assert!(wake <= renewal, "wakes no later than the renewal");
    assert!(
        (wake.duration_since(crl_refresh)).abs() < jiff::SignedDuration::from_secs(5),
        "{wake} vs {crl_refresh}"
    );

    let dir = setup.files("web");
    let (ok, out) = verify(&dir);
    assert!(ok, "{out}");
    let (_, text) = openssl(&["x509", "-in", path(&dir.join("tls.crt")), "-noout", "-text"]);
    assert!(text.contains("DNS:web.example.com"), "{text}");
    assert!(text.contains("IP Address:127.0.0.1"), "{text}");
    assert!(text.contains("TLS Web Server Authentication"), "{text}");
    assert!(text.contains("Digital Signature"), "{text}");
    assert!(text.contains("CA:FALSE"), "{text}");
    let (_, end) = openssl(&[
        "x509",
        "-in",
        path(&dir.join("tls.crt")),
        "-noout",
        "-enddate",
    ]);
    let (_, start) = openssl(&[
        "x509",
        "-in",
        path(&dir.join("tls.crt")),
        "-noout",
        "-startdate",
    ]);
    assert!(!end.is_empty() && !start.is_empty());
    let not_after: jiff::Timestamp = detail(web, "notAfter").as_str().unwrap().parse().unwrap();
    let days = (not_after - now()).total(jiff::Unit::Hour).unwrap() / 24.0;
    assert!((29.9..30.1).contains(&days), "720h asked, got {days} days");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("tls.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "private keys are readable by the owner only");
        let ca_key = setup.state.path().join("pki/issuers/default/ca/ca.key");
        assert_eq!(
            std::fs::metadata(ca_key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let (ok, out) = openssl(&["pkey", "-in", path(&dir.join("tls.key")), "-noout"]);
    assert!(ok, "openssl reads the key: {out}");
}

#[test]
fn a_chain_root_intermediate_leaf_verifies() {
    let yaml = format!(
        "{ISSUER}{}---\napiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: intermediate\nspec:\n  ca:\n    certificateRef:\n      name: intermediate-ca\n---\napiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: leaf\nspec:\n  issuerRef:\n    name: intermediate\n  dnsNames: [leaf.example.com]\n  usages: [server auth]\n",
        "---\napiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: intermediate-ca\nspec:\n  issuerRef:\n    name: ca\n  commonName: Test Intermediate CA\n  isCA: true\n  duration: 8760h\n"
    );
    let setup = Setup::new(&yaml);
    let mut reconciler = setup.reconciler();
    let (report, _) = setup.pass(&mut reconciler, now());
    for (kind, name) in [
        ("Issuer", "ca"),
        ("Certificate", "intermediate-ca"),
        ("Issuer", "intermediate"),
        ("Certificate", "leaf"),
    ] {
        assert_eq!(
            ready(object(&report, kind, name)).0,
            "True",
            "{kind}/{name}: {:?}",
            ready(object(&report, kind, name))
        );
    }
    let leaf = setup.files("leaf");
    let chain = std::fs::read_to_string(leaf.join("tls.crt")).unwrap();
    assert_eq!(
        chain.matches("BEGIN CERTIFICATE").count(),
        2,
        "tls.crt holds the leaf and the intermediate"
    );
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        path(&leaf.join("ca.crt")),
        "-untrusted",
        path(&leaf.join("tls.crt")),
        path(&leaf.join("tls.crt")),
    ]);
    assert!(ok, "{out}");
    // Without the intermediate, the leaf does not verify against the root alone.
    let only_leaf = leaf.join("only-leaf.pem");
    std::fs::write(
        &only_leaf,
        &chain[..chain.find("-----END CERTIFICATE-----").unwrap() + 26],
    )
    .unwrap();
    let (ok, _) = openssl(&[
        "verify",
        "-CAfile",
        path(&leaf.join("ca.crt")),
        path(&only_leaf),
    ]);
    assert!(!ok, "a leaf alone must not verify without its intermediate");
}

#[test]
fn renewal_happens_at_the_computed_time_and_never_before() {
    let setup = Setup::new(&format!(
        "{ISSUER}{}",
        certificate("short", "  duration: 2h\n  renewBefore: 30m\n")
    ));
    let mut reconciler = setup.reconciler();
    // Certificates count whole seconds.
    let start = jiff::Timestamp::from_second(now().as_second()).unwrap();
    let (report, wake) = setup.pass(&mut reconciler, start);
    let first = object(&report, "Certificate", "short");
    let serial = detail(first, "serialNumber");
    let renew_at = wake.expect("a renewal time");
    // 2h lifetime from `start`, renewed 30m before the end.
    assert_eq!(renew_at, start + jiff::SignedDuration::from_mins(90));

    let (report, _) = setup.pass(
        &mut reconciler,
        renew_at - jiff::SignedDuration::from_secs(1),
    );
    let before = object(&report, "Certificate", "short");
    assert_eq!(detail(before, "serialNumber"), serial, "not renewed early");
    assert_eq!(detail(before, "revision"), 1);

    let (report, wake) = setup.pass(&mut reconciler, renew_at);
    let after = object(&report, "Certificate", "short");
    assert_ne!(
        detail(after, "serialNumber"),
        serial,
        "renewed at the renewal time"
    );
    assert_eq!(detail(after, "revision"), 2);
    assert_eq!(ready(after).0, "True");
    assert!(wake.unwrap() > renew_at);
}

#[test]
fn a_spec_change_reissues_at_once_and_a_restart_reissues_nothing() {
    let setup = Setup::new(&format!("{ISSUER}{}", certificate("web", "")));
    let mut reconciler = setup.reconciler();
    let t = now();
    let (report, _) = setup.pass(&mut reconciler, t);
    let serial = detail(object(&report, "Certificate", "web"), "serialNumber");

    // A restart: a new reconciler over the same state keeps what exists.
    let mut restarted = setup.reconciler();
    let (report, _) = setup.pass(&mut restarted, t + jiff::SignedDuration::from_secs(5));
    let web = object(&report, "Certificate", "web");
    assert_eq!(detail(web, "serialNumber"), serial);
    assert_eq!(
        detail(web, "revision"),
        1,
        "the revision survives a restart"
    );

    setup.write(&format!(
        "{ISSUER}{}",
        certificate("web", "").replace("[127.0.0.1]", "[127.0.0.1, 10.1.2.3]")
    ));
    let (report, _) = setup.pass(&mut restarted, t + jiff::SignedDuration::from_secs(10));
    let web = object(&report, "Certificate", "web");
    assert_ne!(detail(web, "serialNumber"), serial);
    assert_eq!(detail(web, "revision"), 2);
    let (_, text) = openssl(&[
        "x509",
        "-in",
        path(&setup.files("web").join("tls.crt")),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(text.contains("10.1.2.3"), "{text}");
}

#[test]
fn a_failed_issuance_backs_off_and_a_spec_change_retries_at_once() {
    // The output directory cannot be made: a plain file stands where it should be.
    let blocked = "  outputDirectory: blocked/web\n";
    let setup = Setup::new(&format!("{ISSUER}{}", certificate("web", blocked)));
    std::fs::write(setup.state.path().join("blocked"), "not a directory").unwrap();
    let mut reconciler = setup.reconciler();
    let t = now();
    let (report, wake) = setup.pass(&mut reconciler, t);
    let web = object(&report, "Certificate", "web");
    let (status, reason, message) = ready(web);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "IssuanceFailed")
    );
    assert!(
        message.contains("blocked"),
        "the failure names the path: {message}"
    );
    assert_eq!(
        wake,
        Some(t + jiff::SignedDuration::from_mins(1)),
        "first retry within a minute"
    );
    let issuing = web
        .conditions
        .iter()
        .find(|c| c.type_ == tessera::server::admin::ConditionType::Issuing)
        .unwrap();
    assert_eq!(
        issuing.status,
        tessera::server::admin::ConditionStatus::True
    );

    // Before the retry time nothing is tried; at it, the second failure doubles the wait.
    let (report, _) = setup.pass(&mut reconciler, t + jiff::SignedDuration::from_secs(30));
    assert_eq!(
        detail(object(&report, "Certificate", "web"), "lastFailureTime"),
        // Status times are whole seconds, as Kubernetes' metav1.Time writes them.
        Value::String(t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
    );
    let (_, wake) = setup.pass(&mut reconciler, t + jiff::SignedDuration::from_mins(1));
    assert_eq!(
        wake,
        Some(t + jiff::SignedDuration::from_mins(3)),
        "then two minutes"
    );

    // Fixing the spec is tried at once, without waiting for the backoff.
    setup.write(&format!("{ISSUER}{}", certificate("web", "")));
    let (report, _) = setup.pass(&mut reconciler, t + jiff::SignedDuration::from_secs(61));
    assert_eq!(ready(object(&report, "Certificate", "web")).0, "True");
}

#[test]
fn a_ca_issuer_signs_with_a_key_pair_made_by_openssl() {
    let config = tempfile::tempdir().unwrap();
    openssl_ca(config.path(), "corp-ca", "/CN=Corp Root CA");
    let setup = Setup::with_ca_files(config, "corp-ca.crt", "corp-ca.key", "");
    let mut reconciler = setup.reconciler();
    let (report, _) = setup.pass(&mut reconciler, now());
    let issuer = object(&report, "Issuer", "ca");
    assert_eq!(ready(issuer).0, "True", "{:?}", ready(issuer));
    assert_eq!(detail(issuer, "subject"), "CN=Corp Root CA");
    let (ok, out) = openssl(&[
        "verify",
        "-CAfile",
        path(&setup.config.path().join("corp-ca.crt")),
        path(&setup.files("web").join("tls.crt")),
    ]);
    assert!(ok, "{out}");
    // The leaf cannot outlive the 30-day CA, although 90 days are the default.
    let not_after: jiff::Timestamp = detail(object(&report, "Certificate", "web"), "notAfter")
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(not_after <= now() + jiff::SignedDuration::from_hours(30 * 24 + 1));
}

#[test]
fn a_ca_issuer_with_a_key_that_is_not_the_certificates_is_refused() {
    let config = tempfile::tempdir().unwrap();
    for name in ["a", "b"] {
        openssl_ca(config.path(), name, "/CN=CA");
    }
    let setup = Setup::with_ca_files(config, "a.crt", "b.key", "");
    let mut reconciler = setup.reconciler();
    let (report, _) = setup.pass(&mut reconciler, now());
    let (status, reason, message) = ready(object(&report, "Issuer", "ca"));
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ErrorLoadingCA")
    );
    assert!(message.contains("does not belong"), "{message}");
    // Waiting on an issuer that failed would never end by itself: said, not progressing.
    let (status, reason, message) = ready(object(&report, "Certificate", "web"));
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "DependencyFailed")
    );
    assert!(
        message.starts_with("Issuer/ca is not ready (ErrorLoadingCA): "),
        "{message}"
    );
}

#[test]
fn keystores_open_in_openssl_and_keytool_with_their_passwords() {
    let keystores = "  keystores:\n    pkcs12:\n      passwordFile: p12-password.txt\n    jks:\n      keystore:\n        passwordEnv: TEST_JKS_PASSWORD\n      truststore:\n        passwordFile: trust-password.txt\n";
    let setup = Setup::new(&format!("{ISSUER}{}", certificate("java", keystores)));
    std::fs::write(setup.config.path().join("p12-password.txt"), "p12-secret\n").unwrap();
    std::fs::write(
        setup.config.path().join("trust-password.txt"),
        "trust-secret",
    )
    .unwrap();
    let mut reconciler = setup.reconciler();
    let (report, _) = setup.pass(&mut reconciler, now());
    let java = object(&report, "Certificate", "java");
    assert_eq!(ready(java).0, "True", "{:?}", ready(java));
    assert!(
        !ready(java).2.contains("not yet supported"),
        "{:?}",
        ready(java)
    );
    let dir = setup.files("java");

    let p12 = dir.join("keystore.p12");
    let (ok, out) = openssl(&[
        "pkcs12",
        "-in",
        path(&p12),
        "-passin",
        "pass:p12-secret",
        "-nodes",
        "-info",
    ]);
    assert!(ok, "openssl opens keystore.p12: {out}");
    assert!(
        out.contains("BEGIN PRIVATE KEY") && out.contains("subject=CN=")
            || out.contains("subject="),
        "{out}"
    );
    assert_eq!(
        out.matches("BEGIN CERTIFICATE").count(),
        2,
        "leaf and root: {out}"
    );
    let (ok, _) = openssl(&[
        "pkcs12",
        "-in",
        path(&p12),
        "-passin",
        "pass:wrong",
        "-nodes",
        "-info",
    ]);
    assert!(!ok, "a wrong password is refused");

    let keytool = |args: &[&str]| {
        let output = Command::new("keytool")
            .args(args)
            .output()
            .expect("keytool (the JDK) is installed");
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    };
    let list = |store: &str, password: &str| {
        keytool(&[
            "-list",
            "-v",
            "-storetype",
            "JKS",
            "-keystore",
            path(&dir.join(store)),
            "-storepass",
            password,
        ])
    };
    let (ok, out) = list("keystore.jks", "jks-secret");
    assert!(ok, "keytool opens keystore.jks: {out}");
    assert!(
        out.contains("Alias name: certificate") && out.contains("PrivateKeyEntry"),
        "{out}"
    );
    assert!(out.contains("Certificate chain length: 2"), "{out}");
    let (ok, out) = list("keystore.jks", "not-it");
    assert!(!ok, "keytool refuses a wrong password: {out}");
    let (ok, out) = list("truststore.jks", "trust-secret");
    assert!(ok, "keytool opens truststore.jks: {out}");
    assert!(
        out.contains("Alias name: ca")
            && out.contains("trustedCertEntry")
            && out.contains("CN=Test Root CA"),
        "{out}"
    );
    // keytool can take the private key out with the store password, so the key protector is right.
    let exported = dir.join("exported.p12");
    let (ok, out) = keytool(&[
        "-importkeystore",
        "-srckeystore",
        path(&dir.join("keystore.jks")),
        "-srcstoretype",
        "JKS",
        "-srcstorepass",
        "jks-secret",
        "-destkeystore",
        path(&exported),
        "-deststoretype",
        "PKCS12",
        "-deststorepass",
        "exported",
        "-noprompt",
    ]);
    assert!(ok, "keytool recovers the private key: {out}");

    // A new password rewrites the keystore; an unchanged one leaves it alone.
    let before = std::fs::read(&p12).unwrap();
    let (_, _) = setup.pass(&mut reconciler, now());
    assert_eq!(
        std::fs::read(&p12).unwrap(),
        before,
        "unchanged keystores are not rewritten"
    );
    std::fs::write(setup.config.path().join("p12-password.txt"), "rotated\n").unwrap();
    let (_, _) = setup.pass(&mut reconciler, now());
    let (ok, out) = openssl(&[
        "pkcs12",
        "-in",
        path(&p12),
        "-passin",
        "pass:rotated",
        "-nodes",
        "-info",
    ]);
    assert!(ok, "the keystore follows the new password: {out}");
}

#[test]
fn a_missing_keystore_password_is_reported_not_ignored() {
    let keystores = "  keystores:\n    pkcs12:\n      passwordEnv: NOT_SET_ANYWHERE\n";
    let setup = Setup::new(&format!("{ISSUER}{}", certificate("java", keystores)));
    let mut reconciler = setup.reconciler();
    let (report, _) = setup.pass(&mut reconciler, now());
    let (status, reason, message) = ready(object(&report, "Certificate", "java"));
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "KeystoreFailed")
    );
    assert!(message.contains("NOT_SET_ANYWHERE is not set"), "{message}");
    assert!(
        setup.files("java").join("tls.crt").exists(),
        "the PEM files are still written"
    );
}

#[test]
fn a_revoked_certificate_is_in_the_crl_refused_by_openssl_and_replaced_once_unrevoked() {
    let both = |revoked: &str| {
        format!(
            "{ISSUER}{}{}",
            certificate("web", revoked),
            certificate("other", "")
        )
    };
    let setup = Setup::new(&both(""));
    let mut reconciler = setup.reconciler();
    let t = now();
    let (report, _) = setup.pass(&mut reconciler, t);
    let serial = detail(object(&report, "Certificate", "web"), "serialNumber")
        .as_str()
        .unwrap()
        .to_owned();
    let crl = setup.state.path().join("pki/issuers/default/ca/crl.pem");
    assert_eq!(
        detail(object(&report, "Issuer", "ca"), "crlNumber"),
        1,
        "a CRL is published from the start"
    );

    setup.write(&both("  revoked: true\n"));
    let (report, _) = setup.pass(&mut reconciler, t + jiff::SignedDuration::from_secs(1));
    let web = object(&report, "Certificate", "web");
    let (status, reason, message) = ready(web);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "Revoked"),
        "{message}"
    );
    assert_eq!(detail(object(&report, "Issuer", "ca"), "crlNumber"), 2);
    assert_eq!(
        detail(object(&report, "Issuer", "ca"), "revokedCertificates"),
        1
    );

    let (ok, text) = openssl(&["crl", "-in", path(&crl), "-noout", "-text"]);
    assert!(ok, "{text}");
    assert!(
        text.to_ascii_lowercase().contains(&serial),
        "serial {serial} listed:\n{text}"
    );
    let ca = setup.files("web").join("ca.crt");
    let (ok, out) = verify_with_crl(&crl, &ca, &setup.files("web"));
    assert!(
        !ok && out.contains("certificate revoked"),
        "openssl refuses the revoked leaf: {out}"
    );
    let (ok, out) = verify_with_crl(&crl, &ca, &setup.files("other"));
    assert!(
        ok,
        "a certificate not revoked still verifies with the CRL: {out}"
    );

    // Clearing `revoked` issues a new certificate; the old serial stays revoked.
    setup.write(&both(""));
    let (report, _) = setup.pass(&mut reconciler, t + jiff::SignedDuration::from_secs(2));
    let web = object(&report, "Certificate", "web");
    assert_eq!(ready(web).0, "True");
    assert_ne!(detail(web, "serialNumber"), Value::String(serial.clone()));
    assert_eq!(detail(web, "revision"), 2);
    let (ok, out) = verify_with_crl(&crl, &ca, &setup.files("web"));
    assert!(ok, "the replacement verifies: {out}");
    let (_, text) = openssl(&["crl", "-in", path(&crl), "-noout", "-text"]);
    assert!(
        text.to_ascii_lowercase().contains(&serial),
        "still revoked:\n{text}"
    );
}

#[test]
fn serials_listed_on_the_issuer_are_revoked_and_the_crl_is_refreshed_before_it_expires() {
    let setup = Setup::new(&format!(
        "{}  crlValidity: 3h\n{}",
        ISSUER,
        certificate("web", "")
    ));
    let mut reconciler = setup.reconciler();
    let t = now();
    let (report, wake) = setup.pass(&mut reconciler, t);
    let serial = detail(object(&report, "Certificate", "web"), "serialNumber")
        .as_str()
        .unwrap()
        .to_owned();
    // The CRL is due for refresh at 2/3 of its 3h validity: the loop wakes by then.
    assert!(wake.unwrap() <= t + jiff::SignedDuration::from_hours(2));
    let (report, _) = setup.pass(&mut reconciler, t + jiff::SignedDuration::from_mins(115));
    assert_eq!(detail(object(&report, "Issuer", "ca"), "crlNumber"), 1);
    let (report, _) = setup.pass(&mut reconciler, t + jiff::SignedDuration::from_mins(121));
    assert_eq!(
        detail(object(&report, "Issuer", "ca"), "crlNumber"),
        2,
        "refreshed after 2/3 of its validity"
    );

    // Listing the serial on the Issuer revokes it; the Certificate gets a new one.
    let colon_serial: Vec<String> = serial
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).to_uppercase())
        .collect();
    setup.write(&format!(
        "{}  revokedSerials: [\"{}\"]\n{}",
        ISSUER,
        colon_serial.join(":"),
        certificate("web", "")
    ));
    let (report, _) = setup.pass(&mut reconciler, t + jiff::SignedDuration::from_mins(122));
    let web = object(&report, "Certificate", "web");
    assert_ne!(
        detail(web, "serialNumber"),
        Value::String(serial.clone()),
        "re-issued because revoked"
    );
    assert_eq!(
        detail(object(&report, "Issuer", "ca"), "revokedCertificates"),
        1
    );
    let crl = setup.state.path().join("pki/issuers/default/ca/crl.pem");
    let (_, text) = openssl(&["crl", "-in", path(&crl), "-noout", "-text"]);
    assert!(text.to_ascii_lowercase().contains(&serial), "{text}");
}

/// Whether `dir`'s tls.crt verifies with openssl against `trusted` alone (PEM text),
/// with the rest of tls.crt as untrusted intermediates.
/// `at` is the (simulated) time of the check.
fn verifies_with(dir: &Path, trusted: &str, at: jiff::Timestamp) -> (bool, String) {
    let anchors = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(anchors.path(), trusted).unwrap();
    let tls = dir.join("tls.crt");
    let at = at.as_second().to_string();
    openssl(&[
        "verify",
        "-attime",
        &at,
        "-CAfile",
        path(anchors.path()),
        "-untrusted",
        path(&tls),
        path(&tls),
    ])
}

#[test]
fn a_ca_rollover_walks_every_phase_without_stranding_a_client_that_knows_only_the_old_ca() {
    let issuer = "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: ca\nspec:\n  selfSigned:\n    commonName: Rolling CA\n    duration: 3h\n  rolloverOverlap: 30m\n";
    let setup = Setup::new(&format!(
        "{issuer}{}",
        certificate("web", "  duration: 1h\n")
    ));
    let mut reconciler = setup.reconciler();
    let t0 = jiff::Timestamp::from_second(now().as_second()).unwrap();
    let phase = |report: &Report| detail(object(report, "Issuer", "ca"), "rolloverPhase");
    let web = setup.files("web");

    let (t1, t2) = (
        t0 + jiff::SignedDuration::from_mins(121),
        t0 + jiff::SignedDuration::from_mins(152),
    );
    let (report, _) = setup.pass(&mut reconciler, t0);
    assert_eq!(phase(&report), Value::Null, "no rollover at first");
    // The client: it learned the trust bundle once, at the start, and never again.
    let old_bundle = std::fs::read_to_string(web.join("ca.crt")).unwrap();
    assert_eq!(old_bundle.matches("BEGIN CERTIFICATE").count(), 1);
    assert!(verifies_with(&web, &old_bundle, t0).0);

    // A third of the CA's 3h life remains: the overlap begins, with both CAs in the bundle.
    let (report, wake) = setup.pass(&mut reconciler, t1);
    assert_eq!(phase(&report), "Overlap");
    let bundle = std::fs::read_to_string(web.join("ca.crt")).unwrap();
    assert_eq!(
        bundle.matches("BEGIN CERTIFICATE").count(),
        2,
        "old and new CA offered to clients"
    );
    assert!(bundle.starts_with(&old_bundle));
    let new_ca = bundle[old_bundle.len()..].to_owned();
    let (ok, out) = verifies_with(&web, &old_bundle, t1);
    assert!(ok, "overlap: still verifies with the old CA alone: {out}");
    assert!(
        wake.unwrap() <= t0 + jiff::SignedDuration::from_mins(151),
        "wakes when the overlap ends"
    );

    // The overlap is over: the new CA signs and every leaf is re-issued, with the
    // cross-certificate after it. One pass finishes re-issuing and completes the rollover.
    let (report, wake) = setup.pass(&mut reconciler, t2);
    let web_object = object(&report, "Certificate", "web");
    assert_eq!(ready(web_object).0, "True");
    let (ok, out) = verifies_with(&web, &old_bundle, t2);
    assert!(
        ok,
        "re-issued leaf verifies for a client that knows only the old CA: {out}"
    );
    let (ok, out) = verifies_with(&web, &new_ca, t2);
    assert!(ok, "and for a client that knows only the new CA: {out}");
    assert_eq!(
        phase(&report),
        "Complete",
        "every leaf re-issued: the old CA leaves the bundle"
    );
    assert_eq!(wake, Some(t2), "a pass right away");

    let (report, _) = setup.pass(&mut reconciler, t2);
    assert_eq!(phase(&report), Value::Null);
    let bundle = std::fs::read_to_string(web.join("ca.crt")).unwrap();
    assert_eq!(bundle, new_ca, "the bundle now holds the new CA only");
    let (ok, out) = verifies_with(&web, &old_bundle, t2);
    assert!(
        ok,
        "the old-only client is still not stranded while the old CA lives: {out}"
    );
    let issuer_facts = object(&report, "Issuer", "ca");
    assert_ne!(detail(issuer_facts, "serialNumber"), Value::Null);
}

#[tokio::test(start_paused = true)]
async fn the_reconcile_loop_renews_on_its_own_when_the_time_comes() {
    use tessera::reconcile::{self, Clock};
    let setup = Setup::new(&format!(
        "{ISSUER}{}",
        certificate("web", "  duration: 1h\n  renewBefore: 20m\n")
    ));
    // Time as the paused tokio clock advances it: no real waiting.
    let base = jiff::Timestamp::from_second(now().as_second()).unwrap();
    let start = tokio::time::Instant::now();
    let clock = Clock::new(move || base + jiff::SignedDuration::try_from(start.elapsed()).unwrap());
    let snapshot = DirSource::new(setup.config.path(), vec![]).unwrap().scan();
    let (_snapshots_tx, snapshots) = tokio::sync::watch::channel(snapshot);
    let (reports_tx, mut reports) = tokio::sync::watch::channel(Report::default());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = Config {
        state_dir: setup.state.path().to_path_buf(),
        config_dir: setup.config.path().to_path_buf(),
        options: desired::Options::default(),
        environment: Environment::default(),
        clock,
        runtime: None,
        gateway: None,
        secrets: None,
        leadership: tessera::leader::Leadership::always(),
        shared_database: false,
    };
    let task = tokio::spawn(reconcile::run(
        snapshots,
        reports_tx,
        config,
        shutdown.clone(),
    ));

    let revision = |report: &Report| {
        report
            .objects
            .iter()
            .find(|o| o.kind == tessera::server::admin::ObjectKind::Certificate)
            .and_then(|o| o.details.get("revision").and_then(Value::as_i64))
    };
    let mut serials = Vec::new();
    for expected in 1..=3 {
        let report = tokio::time::timeout(std::time::Duration::from_secs(3600), async {
            loop {
                reports.changed().await.unwrap();
                let report = reports.borrow_and_update().clone();
                if revision(&report) == Some(expected) {
                    return report;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("revision {expected} never came"));
        serials.push(detail(
            object(&report, "Certificate", "web"),
            "serialNumber",
        ));
        // Issued at `base`, then renewed 40 minutes into each one-hour life.
        let elapsed = start.elapsed().as_secs();
        assert_eq!(
            elapsed,
            40 * 60 * (expected as u64 - 1),
            "revision {expected} at {elapsed}s"
        );
    }
    assert_ne!(serials[0], serials[1]);
    assert_ne!(serials[1], serials[2]);
    shutdown.cancel();
    task.await.unwrap().unwrap();
}

/// Makes a self-signed CA with openssl: `<name>.crt`, `<name>.key` in `dir`.
fn openssl_ca(dir: &Path, name: &str, subject: &str) {
    let (ok, out) = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        path(&dir.join(format!("{name}.key"))),
        "-out",
        path(&dir.join(format!("{name}.crt"))),
        "-subj",
        subject,
        "-days",
        "30",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    assert!(ok, "{out}");
}

#[test]
fn replacing_a_ca_issuers_files_rolls_over_without_stranding_clients_of_the_old_ca() {
    let config = tempfile::tempdir().unwrap();
    openssl_ca(config.path(), "corp", "/CN=Corp Root 2026");
    let setup = Setup::with_ca_files(config, "corp.crt", "corp.key", "  rolloverOverlap: 1h\n");
    let mut reconciler = setup.reconciler();
    let phase = |report: &Report| detail(object(report, "Issuer", "ca"), "rolloverPhase");
    let web = setup.files("web");
    let t0 = jiff::Timestamp::from_second(now().as_second()).unwrap();

    let (report, _) = setup.pass(&mut reconciler, t0);
    assert_eq!(ready(object(&report, "Certificate", "web")).0, "True");
    let old_root = std::fs::read_to_string(setup.config.path().join("corp.crt")).unwrap();
    assert!(verifies_with(&web, &old_root, t0).0);

    // The operator replaces the files with a new root: the overlap begins.
    openssl_ca(setup.config.path(), "corp", "/CN=Corp Root 2027");
    let new_root = std::fs::read_to_string(setup.config.path().join("corp.crt")).unwrap();
    let t1 = t0 + jiff::SignedDuration::from_secs(10);
    let (report, _) = setup.pass(&mut reconciler, t1);
    assert_eq!(phase(&report), "Overlap");
    let bundle = std::fs::read_to_string(web.join("ca.crt")).unwrap();
    assert!(
        bundle.contains(old_root.trim()) && bundle.contains(new_root.trim()),
        "both roots offered"
    );
    assert!(
        verifies_with(&web, &old_root, t1).0,
        "leaves still from the old CA"
    );

    let t2 = t1 + jiff::SignedDuration::from_mins(61);
    let (report, _) = setup.pass(&mut reconciler, t2);
    assert_eq!(phase(&report), "Complete");
    let (ok, out) = verifies_with(&web, &old_root, t2);
    assert!(ok, "a client of the old root is not stranded: {out}");
    let (ok, out) = verifies_with(&web, &new_root, t2);
    assert!(ok, "a client of the new root verifies: {out}");
    let (report, _) = setup.pass(&mut reconciler, t2);
    assert_eq!(phase(&report), Value::Null);
    assert_eq!(
        detail(object(&report, "Issuer", "ca"), "subject"),
        "CN=Corp Root 2027"
    );
    assert_eq!(
        std::fs::read_to_string(web.join("ca.crt")).unwrap().trim(),
        new_root.trim()
    );
}

#[test]
fn rsa_keys_are_generated_and_read_by_openssl() {
    let rsa = "  privateKey:\n    algorithm: RSA\n    size: 2048\n";
    let setup = Setup::new(&format!("{ISSUER}{}", certificate("legacy", rsa)));
    let mut reconciler = setup.reconciler();
    let (report, wake) = setup.pass(&mut reconciler, now());
    let legacy = object(&report, "Certificate", "legacy");
    assert_eq!(ready(legacy).0, "True", "{:?}", ready(legacy));
    let dir = setup.files("legacy");
    let (_, text) = openssl(&["x509", "-in", path(&dir.join("tls.crt")), "-noout", "-text"]);
    assert!(
        text.contains("rsaEncryption") && text.contains("2048 bit"),
        "{text}"
    );
    let (ok, out) = verify(&dir);
    assert!(ok, "{out}");
    let (ok, out) = openssl(&["rsa", "-in", path(&dir.join("tls.key")), "-check", "-noout"]);
    assert!(ok && out.contains("RSA key ok"), "{out}");
    // The next pass sees an RSA 2048 key as what was asked: nothing is re-issued.
    let (report, _) = setup.pass(
        &mut reconciler,
        wake.unwrap() - jiff::SignedDuration::from_secs(1),
    );
    assert_eq!(
        detail(object(&report, "Certificate", "legacy"), "revision"),
        1
    );
}
