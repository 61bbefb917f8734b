//! The `airut` binary: parses the command line and hands over to [`airut::cli`].

/// mimalloc: the log's hot paths (appends from many tasks, replay threads)
/// allocate small buffers across threads, where glibc's malloc spent a fifth
/// of the CPU of an append.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    airut::cli::main()
}
