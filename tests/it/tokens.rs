//! `tessera token`: tokens are shown once, listed without their secret, and revocable.

use std::process::Command;

use tessera::pki::token::Token;
use tessera::store::db::Database;

fn tessera(state: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(assert_cmd::cargo::cargo_bin("tessera"))
        .arg("token")
        .args(args)
        .arg("--state")
        .arg(state)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[test]
fn a_token_is_printed_once_listed_without_its_secret_and_revoked() {
    let state = tempfile::tempdir().unwrap();
    Database::open(&state.path().join("state.db")).unwrap();

    let (ok, printed, told) = tessera(
        state.path(),
        &[
            "create",
            "--ttl",
            "2h",
            "--uses",
            "50",
            "--note",
            "lab rollout",
        ],
    );
    assert!(ok, "{told}");
    let token = Token::parse(printed.trim()).expect("the token, alone on stdout");
    assert!(told.contains("50 enrollments"), "{told}");
    let stored = Database::open(&state.path().join("state.db"))
        .unwrap()
        .tokens()
        .unwrap();
    assert!(
        token.matches(&stored[0].secret_sha256),
        "only its hash is stored"
    );

    let (ok, list, _) = tessera(state.path(), &["list"]);
    assert!(ok);
    assert!(list.contains(&token.id) && list.contains("0/50") && list.contains("usable"));
    assert!(list.contains("lab rollout"));
    assert!(
        !list.contains(printed.trim()),
        "the secret is never listed:\n{list}"
    );
    let (_, json, _) = tessera(state.path(), &["list", "--output", "json"]);
    assert!(!json.contains("secret"), "{json}");

    let (ok, _, _) = tessera(state.path(), &["revoke", printed.trim()]);
    assert!(ok, "revoked by the whole token as well as by its id");
    let (_, list, _) = tessera(state.path(), &["list"]);
    assert!(list.contains("revoked"), "{list}");
    let (ok, _, told) = tessera(state.path(), &["revoke", "000000000000"]);
    assert!(
        !ok && told.contains("no enrollment token 000000000000"),
        "{told}"
    );

    let (ok, _, told) = tessera(tempfile::tempdir().unwrap().path(), &["list"]);
    assert!(!ok && told.contains("no state database"), "{told}");
}
