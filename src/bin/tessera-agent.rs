//! `tessera-agent`: Tessera's agent as its own small binary for endpoints. Built with
//! `--no-default-features` it links none of the server's code (no Kubernetes, no database).

fn main() -> std::process::ExitCode {
    tessera::agent::cli::main()
}
