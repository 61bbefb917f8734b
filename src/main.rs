//! The `airut` binary: parses the command line and hands over to [`airut::cli`].

fn main() -> std::process::ExitCode {
    airut::cli::main()
}
