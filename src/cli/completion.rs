//! `tessera completion SHELL` and `tessera man`: shell completions and man pages, generated
//! from the same clap tree the commands parse with, so they never fall behind.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Cli;

/// `tessera completion`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera completion bash > /etc/bash_completion.d/tessera
  tessera completion zsh > \"${fpath[1]}/_tessera\"
  tessera completion fish > ~/.config/fish/completions/tessera.fish")]
pub(super) struct CompletionArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

/// `tessera man`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  tessera man --output-dir /usr/local/share/man/man1 && man tessera-get
  tessera man --output-dir target/man")]
pub(super) struct ManArgs {
    /// Where to write `tessera.1` and one page per command (`tessera-get.1`...).
    #[arg(long, value_name = "DIR")]
    output_dir: PathBuf,
}

/// Writes the completion script to standard output.
pub(super) fn completion(args: &CompletionArgs) -> Result<ExitCode> {
    let mut command = Cli::command();
    clap_complete::generate(args.shell, &mut command, "tessera", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Writes the man pages into the directory asked for.
pub(super) fn man(args: &ManArgs) -> Result<ExitCode> {
    std::fs::create_dir_all(&args.output_dir)
        .with_context(|| format!("failed to create {}", args.output_dir.display()))?;
    clap_mangen::generate_to(Cli::command(), &args.output_dir).with_context(|| {
        format!(
            "failed to write the man pages into {}",
            args.output_dir.display()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_the_subcommands_and_man_pages_are_written_per_command() {
        let mut script = Vec::new();
        clap_complete::generate(Shell::Bash, &mut Cli::command(), "tessera", &mut script);
        let script = String::from_utf8(script).unwrap();
        for command in ["get", "describe", "computers", "serve"] {
            assert!(script.contains(command), "{command} missing");
        }
        let dir = tempfile::tempdir().unwrap();
        man(&ManArgs {
            output_dir: dir.path().to_owned(),
        })
        .unwrap();
        let page = std::fs::read_to_string(dir.path().join("tessera-get.1")).unwrap();
        assert!(page.contains(".TH"), "{page}");
    }

    /// A command with more flags than this lists them under headings (Source, State,
    /// Output...): beyond about a screenful, one flat list is hard to scan.
    const FLAGS_WITHOUT_HEADINGS: usize = 8;

    #[test]
    fn every_command_shows_examples_and_groups_its_flags_when_it_has_many() {
        let mut root = Cli::command();
        // Propagates the global flags (and help) to the subcommands, as parsing does.
        root.build();
        let mut missing = Vec::new();
        let mut flat = Vec::new();
        // `help` is clap's own (`tessera help serve` prints serve's help).
        let mut pending: Vec<(String, clap::Command)> = root
            .get_subcommands()
            .filter(|c| c.get_name() != "help")
            .map(|c| (format!("tessera {}", c.get_name()), c.clone()))
            .collect();
        while let Some((path, mut command)) = pending.pop() {
            pending.extend(
                command
                    .get_subcommands()
                    .filter(|c| c.get_name() != "help")
                    .map(|c| (format!("{path} {}", c.get_name()), c.clone())),
            );
            let help = command.render_long_help().to_string();
            if !help.lines().any(|line| line.starts_with("Examples")) {
                missing.push(path.clone());
            }
            let own: Vec<&clap::Arg> = command
                .get_arguments()
                .filter(|a| !a.is_global_set() && !a.is_positional())
                .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
                .collect();
            if own.len() > FLAGS_WITHOUT_HEADINGS
                && own.iter().any(|a| a.get_help_heading().is_none())
            {
                flat.push(path);
            }
        }
        assert!(
            missing.is_empty(),
            "no Examples: section in --help of {missing:?}"
        );
        assert!(flat.is_empty(), "flags without a heading in {flat:?}");
    }
}
