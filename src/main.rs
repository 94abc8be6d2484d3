//! The `armsrace` command line: a thin layer over the library.

mod cli;

fn main() {
    // `armsrace inspect | head` ends quietly, as Unix tools do, instead of panicking on the
    // first print after the reader closed the pipe (Rust ignores SIGPIPE by default).
    #[cfg(unix)]
    // SAFETY: signal(2) with SIG_DFL installs no handler code; called before any thread
    // starts, so nothing races on the disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    armsrace::backend::cpu::alloc::keep_freed_memory();
    if let Err(e) = cli::run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
