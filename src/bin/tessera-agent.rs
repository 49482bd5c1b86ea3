//! `tessera-agent`: Tessera's agent as its own small binary for endpoints.

fn main() -> std::process::ExitCode {
    tessera::cli::agent_main()
}
