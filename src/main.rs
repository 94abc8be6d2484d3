//! The `armsrace` command line: a thin layer over the library.

mod cli;

fn main() {
    armsrace::backend::cpu::alloc::keep_freed_memory();
    if let Err(e) = cli::run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
