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
#[command(after_help = "Example:
  tessera man --output-dir /usr/local/share/man/man1 && man tessera-get")]
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
}
