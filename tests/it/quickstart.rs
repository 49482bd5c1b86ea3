//! The README's "First ten minutes", followed literally: the quickstart served, the real
//! Debian `ocsinventory-agent` run with the README's own command line, twice, and
//! `tessera status` showing every package installed. Only the ports (the test's server
//! listens on free ones), the path of the example (a copy) and the agent's private state
//! directory (`--basevardir`, instead of `/var/lib/ocsinventory-agent`) differ.

use std::path::Path;

use crate::ocs_agent;
use crate::support::{addresses, eventually, quickstart_copy, start};

/// The shell commands of the first fenced block after `heading` in `file`, with `\`
/// continuations joined and comments dropped.
fn commands(file: &str, heading: &str) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let section = text
        .split_once(heading)
        .unwrap_or_else(|| panic!("{file} has no {heading:?}"))
        .1;
    let block = section
        .split("```")
        .nth(1)
        .unwrap_or_else(|| panic!("{file}: no code block after {heading:?}"));
    let mut commands = Vec::new();
    let mut current = String::new();
    for line in block.lines().skip(1).map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(start) => current.push_str(start),
            None => {
                current.push_str(line);
                commands.push(std::mem::take(&mut current));
            }
        }
    }
    commands
}

/// The commands of README.md's walk-through that start with `program`.
fn walk_through(program: &str) -> Vec<String> {
    commands("README.md", "## First ten minutes")
        .into_iter()
        .filter(|command| command.starts_with(program))
        .collect()
}

#[test]
fn the_quickstart_readme_runs_the_agent_as_the_walk_through_does() {
    let example = commands("examples/quickstart/README.md", "Point an OCS agent at it");
    let readme = walk_through("ocsinventory-agent");
    assert_eq!(readme.len(), 2, "the walk-through runs the agent twice");
    assert_eq!(example, readme[..1], "the example's README disagrees");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_ten_minutes_get_the_real_agents_results_into_status() {
    let dir = quickstart_copy();
    let running = start(dir.path()).await;
    let (https, _) = addresses(&running).await;
    eventually("the server's CA certificate written", || async {
        crate::support::server_ca(dir.path()).exists().then_some(())
    })
    .await;

    let agent_state = tempfile::tempdir().unwrap();
    let example = format!("{}/", dir.path().display());
    for command in walk_through("ocsinventory-agent") {
        let mut args: Vec<String> = command
            .replace("https://127.0.0.1:8443", &format!("https://{https}"))
            .replace("examples/quickstart/", &example)
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect();
        args.push(format!("--basevardir={}", agent_state.path().display()));
        let run = tokio::task::block_in_place(|| ocs_agent::run_args(&args)).unwrap();
        assert!(run.completed(), "{command}: {run:?}");
    }

    let [status] = &walk_through("cargo run -- status")[..] else {
        panic!("the walk-through shows `cargo run -- status` once");
    };
    let args: Vec<String> = status
        .replace("examples/quickstart/", &example)
        .split_whitespace()
        .skip(3)
        .map(str::to_owned)
        .collect();
    let table = eventually("every package installed", || async {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tessera"))
            .args(&args)
            .output()
            .unwrap();
        let table = String::from_utf8(out.stdout).unwrap();
        // ACTIVATION PACKAGE ID TARGETS WAITING NOTIFIED STALE SUCCESS ERROR
        let rows: Vec<Vec<&str>> = table
            .lines()
            .map(|line| line.split_whitespace().collect())
            .filter(|row: &Vec<&str>| row.len() == 9 && row[3].parse::<u32>().is_ok())
            .collect();
        (rows.len() == 4 && rows.iter().all(|row| row[3] == "1" && row[7] == "1")).then_some(table)
    })
    .await
    .0;
    println!("{table}");
}
