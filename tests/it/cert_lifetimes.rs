//! Certificate lifetimes: validation refuses those that would be renewed at once, and the
//! reconciler cannot issue in a loop even when handed one (issue 13, item 9).

use assert_cmd::Command;
use serde_json::Value;
use tessera::desired::{self, Served};
use tessera::reconcile::certificates::{Certificates, Environment};
use tessera::resources::quantity::Duration;
use tessera::resources::{Kind, ObjectKey, Resource};
use tessera::sources::dir::DirSource;

const ISSUER: &str = "apiVersion: tessera.dev/v1alpha1\nkind: Issuer\nmetadata:\n  name: ca\nspec:\n  selfSigned:\n    commonName: Test Root CA\n";

fn certificate(name: &str, extra: &str) -> String {
    format!(
        "---\napiVersion: tessera.dev/v1alpha1\nkind: Certificate\nmetadata:\n  name: {name}\nspec:\n  issuerRef:\n    name: ca\n  dnsNames: [{name}.example.com]\n{extra}"
    )
}

#[test]
fn a_one_minute_certificate_is_issued_at_most_once_per_interval_over_ten_minutes() {
    // A valid spec, then its duration cut to 1m behind validation's back (as a CRD written
    // before validation refused it, or a bug, would): the reconciler alone must not loop.
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("pki.yaml"),
        format!("{ISSUER}{}", certificate("short", "")),
    )
    .unwrap();
    let snapshot = DirSource::new(config.path(), vec![]).unwrap().scan();
    let mut desired = desired::evaluate(&snapshot, None, desired::Options::default());
    let key = ObjectKey {
        kind: Kind::Certificate,
        namespace: "default".into(),
        name: "short".into(),
    };
    let entry = desired.entries.get_mut(&key).expect("the certificate");
    let Served::Current(resource) = &mut entry.served else {
        panic!("the certificate is valid: {:?}", entry.problems)
    };
    let Resource::Certificate(short) = resource.as_mut() else {
        unreachable!()
    };
    short.spec.duration = Some(Duration::from_secs(60));

    let mut certificates = Certificates::new(
        state.path().to_path_buf(),
        config.path().to_path_buf(),
        Environment::default(),
    );
    let start = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second()).unwrap();
    let ten_minutes = 600;
    let mut issuances = 0i64;
    let mut serial: Option<String> = None;
    // A pass every virtual second, as a reconcile loop woken by anything would make.
    for second in 0..=ten_minutes {
        let now = start + jiff::SignedDuration::from_secs(second);
        let (outcomes, _) = certificates.reconcile(&desired, now);
        let current = outcomes[&key]
            .details
            .get("serialNumber")
            .and_then(Value::as_str)
            .map(str::to_owned);
        if current.is_some() && current != serial {
            issuances += 1;
            serial = current;
        }
    }
    // The backoff interval is 10 minutes: one issuance per interval begun.
    let intervals = ten_minutes / tessera::pki::renewal::MIN_INTERVAL.as_secs() + 1;
    assert!(
        issuances <= intervals,
        "{issuances} issuances in ten minutes of a one-minute certificate (at most {intervals})"
    );
    let record: Value = serde_json::from_slice(
        &std::fs::read(state.path().join("pki/certificates/default/short.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(record["revision"], issuances, "{record}");
    assert!(
        record["issuedAt"].as_array().is_some_and(|a| !a.is_empty()),
        "the issuances are recorded: {record}"
    );
}

#[test]
fn a_restart_does_not_lift_the_limit_on_issuances() {
    // Two Certificates writing to one directory each see the other's certificate: a
    // "spec changed" ping-pong that only the issuance limit stops, also across restarts.
    let config = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let shared = "  outputDirectory: shared/tls\n";
    std::fs::write(
        config.path().join("pki.yaml"),
        format!(
            "{ISSUER}{}{}",
            certificate("one", shared),
            certificate("two", shared)
        ),
    )
    .unwrap();
    let snapshot = DirSource::new(config.path(), vec![]).unwrap().scan();
    let desired = desired::evaluate(&snapshot, None, desired::Options::default());
    let start = jiff::Timestamp::now();
    let revision = |name: &str| -> i64 {
        let path = state
            .path()
            .join(format!("pki/certificates/default/{name}.json"));
        std::fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| v["revision"].as_i64())
            .unwrap_or(0)
    };
    for restart in 0..3 {
        let mut certificates = Certificates::new(
            state.path().to_path_buf(),
            config.path().to_path_buf(),
            Environment::default(),
        );
        for second in 0..20 {
            let now = start + jiff::SignedDuration::from_secs(restart * 20 + second);
            certificates.reconcile(&desired, now);
        }
    }
    // A minute of passes and two restarts, all within one interval.
    let max = tessera::pki::renewal::MAX_ISSUANCES_PER_INTERVAL as i64;
    assert!(revision("one") <= max, "one: {}", revision("one"));
    assert!(revision("two") <= max, "two: {}", revision("two"));
}

/// `tessera validate` on one Certificate document with `extra` spec lines: (exit code, output).
fn validate(extra: &str) -> (Option<i32>, String) {
    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("pki.yaml"),
        format!("{ISSUER}{}", certificate("web", extra)),
    )
    .unwrap();
    let output = Command::cargo_bin("tessera")
        .unwrap()
        .arg("validate")
        .arg(config.path())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code(), text)
}

#[test]
fn validation_refuses_lifetimes_that_would_be_renewed_at_once() {
    for (extra, line, field, words) in [
        (
            "  duration: 1m\n",
            17,
            "spec.duration",
            "a certificate must live at least 1h, got 1m",
        ),
        (
            "  duration: 59m\n",
            17,
            "spec.duration",
            "at least 1h, got 59m",
        ),
        (
            "  duration: 1h\n  renewBefore: 55m\n",
            18,
            "spec.renewBefore",
            "leaves less than 10m between issuance and renewal of a 1h certificate, so each new certificate would be due at once: use at most 50m",
        ),
        (
            "  duration: 1h\n  renewBeforePercentage: 80\n",
            18,
            "spec.renewBeforePercentage",
            "renewBeforePercentage 80 of a 1h certificate (backdated 5m) leaves less than 10m between issuance and renewal, so each new certificate would be due at once: use at most 76",
        ),
        (
            "  duration: 2h\n  renewBefore: 2h\n",
            18,
            "spec.renewBefore",
            "must be shorter than the duration (2h)",
        ),
    ] {
        let (code, text) = validate(extra);
        assert_eq!(code, Some(1), "{extra}: {text}");
        let place = format!("pki.yaml:{line}: Certificate/web: {field}:");
        assert!(
            text.lines()
                .any(|l| l.contains(&place) && l.contains(words)),
            "{extra}: wanted `{place} … {words}` in:\n{text}"
        );
        assert_eq!(
            text.matches("Certificate/web").count(),
            1,
            "one problem: {text}"
        );
    }
    // The limits themselves pass, and so does cert-manager's default.
    for extra in [
        "  duration: 1h\n",
        "  duration: 1h\n  renewBefore: 50m\n",
        "  duration: 1h\n  renewBeforePercentage: 76\n",
        "",
    ] {
        let (code, text) = validate(extra);
        assert_eq!(code, Some(0), "{extra}: {text}");
    }
}

#[test]
fn the_limits_in_resources_are_the_pki_constants() {
    // `resources` imports nothing of the crate, so it repeats two values of `pki`.
    use tessera::resources::certificate::{BACKDATE, MIN_KEPT};
    assert_eq!(
        BACKDATE.as_std(),
        std::time::Duration::try_from(tessera::pki::authority::BACKDATE).unwrap()
    );
    assert_eq!(
        MIN_KEPT.as_std(),
        std::time::Duration::try_from(tessera::pki::renewal::MIN_INTERVAL).unwrap()
    );
}
