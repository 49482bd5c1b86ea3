//! Every example configuration validates with no problem.

use std::path::Path;

use assert_cmd::Command;

#[test]
fn every_example_validates_without_problems() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&examples).unwrap().flatten() {
        if !entry.path().is_dir() {
            continue;
        }
        seen += 1;
        let state = tessera::cli::evaluate_dir(&entry.path()).unwrap();
        assert!(
            state.problems.is_empty(),
            "{}:\n{}",
            entry.path().display(),
            state
                .problems
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(
            !state.entries.is_empty(),
            "{} declares nothing",
            entry.path().display()
        );
    }
    assert!(seen >= 1, "no example directories found");
}

#[test]
fn the_quickstart_declares_what_the_readme_promises() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart");
    let state = tessera::cli::evaluate_dir(&dir).unwrap();
    use tessera::resources::Kind;
    assert_eq!(state.count(Kind::Issuer), 1);
    assert_eq!(state.count(Kind::Certificate), 1);
    assert_eq!(state.count(Kind::Server), 1);
    // Every package kind the OCS agents run: launch, execute with and without content,
    // store; one of them priority 0.
    assert_eq!(state.count(Kind::Package), 4);
    assert_eq!(state.count(Kind::Activation), 4);
    assert_eq!(state.count(Kind::Affectation), 4);
    // The binary agrees, as a pre-commit hook would run it.
    Command::cargo_bin("tessera")
        .unwrap()
        .arg("validate")
        .arg(&dir)
        .assert()
        .success();
}
