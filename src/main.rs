//! The `tessera` binary: everything is in `tessera::cli`.

fn main() -> std::process::ExitCode {
    tessera::cli::main()
}
