//! The `s3vault` command. Everything but process setup lives in `cli/`.

mod cli;

fn main() {
    s3vault::hardening::harden_process();
    if let Err(cli::Exit(code, error)) = cli::run(std::env::args_os().collect()) {
        eprintln!("s3vault: {error:#}");
        std::process::exit(code);
    }
}
