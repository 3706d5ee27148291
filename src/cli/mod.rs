//! The `s3vault` command line: clap types, one file per command family,
//! raw arguments → validated configuration → the library call. Errors carry
//! their exit code (2 for usage and configuration, 1 for runtime failures;
//! fsck's own codes); `main` prints the chain and exits with it.

mod audit;
mod check;
mod client;
mod examples;
mod key;
mod mount;
mod options;
mod restore;
mod snapshot;

use anyhow::anyhow;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use s3vault::journal::snapshots;
use s3vault::keyfile;
use s3vault::store::{Location, S3Options};
use s3vault::superblock::Unlock;
use s3vault::volume;
use std::ffi::OsString;
use std::io::IsTerminal;
use std::path::PathBuf;
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(
    name = "s3vault",
    version,
    about = "Encrypted filesystem over S3 or a local directory"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a new random 256-bit key file (mode 0600).
    Keygen {
        /// Where to write the key; an existing file is never overwritten.
        path: PathBuf,
    },
    /// Create a new volume at URL (s3://bucket[/prefix] or file:///abs/path).
    Init(key::InitArgs),
    /// Mount the volume at URL on MOUNTPOINT; returns once the mount is usable.
    Mount(mount::MountArgs),
    /// Wait for every pending upload (with a progress bar), flush the
    /// metadata, then unmount.
    Umount(client::UmountArgs),
    /// Show a running mount's state: open files, pending metadata, audit log.
    Status(client::StatusArgs),
    /// Show a volume's format, id, block size and key slots (no key needed).
    Info {
        /// Volume URL: s3://bucket[/prefix] or file:///absolute/path.
        url: String,
        /// With a key (--key-file, --passphrase-file or --kms): also the
        /// live metadata generation and its journal chain head, to compare
        /// with what another host or the audit log has seen.
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// List, add or remove the key slots that unlock a volume.
    Key {
        #[command(subcommand)]
        action: key::KeyCommand,
    },
    /// Read, filter, verify and summarise the audit trail in the store.
    Audit {
        #[command(subcommand)]
        action: audit::AuditCommand,
    },
    /// Create, list or delete named point-in-time snapshots of a volume.
    Snapshot {
        #[command(subcommand)]
        action: snapshot::SnapshotCommand,
    },
    /// Check that every file's blocks are in the store and open with the key
    /// (live state and snapshots); find objects nothing references. Exit
    /// codes as e2fsck: 0 clean, 1 errors corrected, 4 errors left, 8 failed.
    Fsck(check::FsckArgs),
    /// Delete data objects that neither the volume nor any snapshot
    /// references (safe while the volume is mounted).
    Gc(check::GcArgs),
    /// Copy files out of a snapshot into a local directory, byte for byte,
    /// never overwriting anything there.
    Restore(restore::RestoreArgs),
    /// Copy out the files a cache directory changed that never reached the
    /// store (a mount fenced by another writer), never overwriting.
    Recover(restore::RecoverArgs),
    /// Print the shell completion script for SHELL to standard output.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Write the man pages (s3vault.1 and one per command) into DIR.
    Manpages {
        /// Directory to write the pages into (created if missing).
        dir: PathBuf,
    },
}

/// The volume a command reads, and how to unlock it.
#[derive(Args, Debug)]
struct VolumeArgs {
    /// Volume URL: s3://bucket[/prefix] or file:///absolute/path.
    url: String,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    s3: S3Args,
}

#[derive(Args, Debug)]
struct KeyArgs {
    /// Key file written by `s3vault keygen`.
    #[arg(long, value_name = "PATH", conflicts_with = "passphrase_file")]
    key_file: Option<PathBuf>,
    /// File whose first line is the passphrase (without a key option, a
    /// terminal prompts for one).
    #[arg(long, value_name = "PATH")]
    passphrase_file: Option<PathBuf>,
    /// Unlock through the volume's AWS KMS key slots (needs kms:Decrypt).
    #[arg(long, conflicts_with_all = ["key_file", "passphrase_file"])]
    kms: bool,
}

#[derive(Args, Debug)]
struct S3Args {
    /// S3 endpoint URL (plain http only for loopback addresses).
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,
    /// AWS region [default: from the AWS configuration, else us-east-1].
    #[arg(long, value_name = "REGION")]
    region: Option<String>,
    /// Use path-style requests (most S3-compatible servers need this).
    #[arg(long)]
    path_style: bool,
    /// AWS KMS endpoint URL, for KMS key slots (plain http only for loopback).
    #[arg(long, value_name = "URL")]
    kms_endpoint: Option<String>,
}

impl S3Args {
    /// The S3 settings, refusing plain http to a non-loopback endpoint.
    fn options(&self) -> Result<S3Options, Exit> {
        for endpoint in self.endpoint.iter().chain(&self.kms_endpoint) {
            s3vault::store::check_endpoint_url(endpoint).map_err(|e| usage(anyhow!(e)))?;
        }
        Ok(S3Options {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            path_style: self.path_style,
            kms_endpoint: self.kms_endpoint.clone(),
        })
    }
}

/// A failure with its exit code.
pub struct Exit(pub i32, pub anyhow::Error);

fn usage(e: impl Into<anyhow::Error>) -> Exit {
    Exit(2, e.into())
}

fn runtime_err(e: impl Into<anyhow::Error>) -> Exit {
    Exit(1, e.into())
}

fn volume_exit(e: volume::VolumeError) -> Exit {
    Exit(if e.is_usage() { 2 } else { 1 }, e.into())
}

/// A snapshot named wrongly or not there is the caller's mistake (2, as
/// `mount --snapshot` says it); anything else is a runtime failure.
fn snapshot_exit(e: snapshots::SnapshotError) -> Exit {
    match e {
        snapshots::SnapshotError::BadName | snapshots::SnapshotError::NotFound(_) => usage(e),
        e => runtime_err(e),
    }
}

fn location(url: &str) -> Result<Location, Exit> {
    Location::parse(url).map_err(|e| usage(anyhow!(e)))
}

fn read_unlock(key: &KeyArgs, confirm: bool) -> Result<Unlock, Exit> {
    if key.kms {
        return Ok(Unlock::Kms);
    }
    if let Some(path) = &key.key_file {
        return Ok(Unlock::KeyFile(keyfile::read_key_file(path).map_err(usage)?));
    }
    if let Some(path) = &key.passphrase_file {
        return Ok(Unlock::Passphrase(keyfile::read_passphrase_file(path).map_err(usage)?));
    }
    if !std::io::stdin().is_terminal() {
        return Err(usage(anyhow!(
            "no key given: use --key-file or --passphrase-file (or run on a terminal to be prompted)"
        )));
    }
    let pass = Zeroizing::new(rpassword::prompt_password("Passphrase: ").map_err(runtime_err)?);
    if pass.is_empty() {
        return Err(usage(anyhow!("the passphrase is empty")));
    }
    if confirm {
        let again = Zeroizing::new(rpassword::prompt_password("Repeat passphrase: ").map_err(runtime_err)?);
        if *again != *pass {
            return Err(usage(anyhow!("the passphrases differ")));
        }
    }
    Ok(Unlock::Passphrase(Zeroizing::new(pass.as_bytes().to_vec())))
}

/// fuser logs request contents (file names) at warn and below, so it is
/// capped at error; its mount code logs a failed second unmount when a
/// session ends after `fusermount3 -u`, which is expected, so it is off.
fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, Exit> {
    if !matches!(level, "error" | "warn" | "info" | "debug" | "trace") {
        return Err(usage(anyhow!(
            "log level {level:?}: use error, warn, info, debug or trace"
        )));
    }
    // aws_config warns at length on every host that is not EC2; the one
    // line we print when credentials are really missing says enough.
    let directives = format!("s3vault={level},fuser=error,fuser::mnt=off,aws_config=error,warn");
    let filter = tracing_subscriber::EnvFilter::try_from_env("S3VAULT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(directives));
    // Whatever S3VAULT_LOG says, fuser never logs below error.
    Ok(filter
        .add_directive("fuser=error".parse().map_err(usage)?)
        .add_directive("fuser::mnt=off".parse().map_err(usage)?))
}

fn init_logging(filter: tracing_subscriber::EnvFilter, ansi: bool) {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .init();
}

/// Logging for a one-shot command: warnings and errors on stderr.
fn init_command_logging() -> Result<(), Exit> {
    init_logging(log_filter("warn")?, std::io::stderr().is_terminal());
    Ok(())
}

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output, Exit> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(runtime_err)?;
    Ok(rt.block_on(f))
}

/// Unlocks the volume at `url` for a one-shot command, wherever its
/// metadata lives.
async fn open_any_volume(
    location: &Location,
    url: &str,
    unlock: &Unlock,
    s3: &S3Options,
) -> Result<volume::Volume, volume::VolumeError> {
    let store = location.open(s3).await?;
    volume::unlock(store, url, unlock, s3).await
}

/// Unlocks the volume at `url` for a one-shot command that reads its
/// metadata from the bucket (`command`: refused on a volume whose metadata
/// is in PostgreSQL).
async fn open_volume(
    location: &Location,
    url: &str,
    unlock: &Unlock,
    s3: &S3Options,
    command: &str,
) -> Result<volume::Volume, volume::VolumeError> {
    let volume = open_any_volume(location, url, unlock, s3).await?;
    volume::require_embedded(&volume, command)?;
    Ok(volume)
}

/// The command line with every command's examples.
fn command() -> clap::Command {
    examples::with_examples(Cli::command())
}

/// Parses `args` (mount(8)'s helper convention, `s3vault SOURCE MOUNTPOINT
/// -o OPTIONS`, included) and runs the command.
pub fn run(args: Vec<OsString>) -> Result<(), Exit> {
    let args = options::mount_helper_args(args);
    let matches = command().get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if !matches!(cli.command, Command::Mount(_) | Command::Umount(_)) {
        end_quietly_on_closed_output();
    }
    match cli.command {
        Command::Keygen { path } => key::keygen(&path),
        Command::Init(args) => key::init(args),
        Command::Mount(args) => {
            let mount_matches = matches
                .subcommand_matches("mount")
                .expect("the mount subcommand matched");
            mount::run(mount::with_o_options(args, mount_matches)?)
        }
        Command::Umount(args) => client::umount(&args),
        Command::Status(args) => client::status(&args),
        Command::Info { url, key, s3 } => key::info(&url, &key, &s3),
        Command::Key { action } => key::run(action),
        Command::Audit { action } => audit::run(action),
        Command::Snapshot { action } => snapshot::run(action),
        Command::Fsck(args) => check::fsck(args),
        Command::Gc(args) => check::gc(args),
        Command::Restore(args) => restore::run(args),
        Command::Recover(args) => restore::recover(args),
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut command(), "s3vault", &mut std::io::stdout());
            Ok(())
        }
        Command::Manpages { dir } => manpages(&dir),
    }
}

/// `s3vault status | head`: when the reader of our output goes away, end
/// as other Unix tools do (killed by SIGPIPE, which Rust ignores by
/// default), not with a panic about a broken pipe. Not for the mount
/// daemon, whose writes to sockets must fail as errors, never kill it.
fn end_quietly_on_closed_output() {
    // SAFETY: restoring a signal's default disposition before any thread
    // is started has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Writes `s3vault.1` and a page per command (`s3vault-mount.1`, ...) into
/// `dir`.
fn manpages(dir: &std::path::Path) -> Result<(), Exit> {
    std::fs::create_dir_all(dir)
        .and_then(|()| clap_mangen::generate_to(command(), dir))
        .map_err(|e| runtime_err(anyhow!("cannot write the man pages into {}: {e}", dir.display())))?;
    println!("wrote the man pages into {}", dir.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_name_every_command() {
        let mut script = Vec::new();
        clap_complete::generate(clap_complete::Shell::Bash, &mut Cli::command(), "s3vault", &mut script);
        let script = String::from_utf8(script).unwrap();
        for command in Cli::command().get_subcommands() {
            assert!(script.contains(command.get_name()), "{} missing", command.get_name());
        }
    }

    #[test]
    fn every_positional_argument_is_described() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for arg in command.get_positionals() {
                if arg.get_help().is_none() {
                    missing.push(format!("{path} <{}>", arg.get_id()));
                }
            }
            for sub in command.get_subcommands() {
                walk(sub, &format!("{path} {}", sub.get_name()), missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "s3vault", &mut missing);
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[test]
    fn man_pages_cover_every_command() {
        let dir = tempfile::tempdir().unwrap();
        assert!(manpages(dir.path()).is_ok());
        let main = std::fs::read_to_string(dir.path().join("s3vault.1")).unwrap();
        assert!(main.starts_with(".ie") || main.contains(".TH"), "{main:.200}");
        for command in Cli::command().get_subcommands() {
            let page = dir.path().join(format!("s3vault-{}.1", command.get_name()));
            assert!(page.exists(), "no {}", page.display());
        }
        let mount = std::fs::read_to_string(dir.path().join("s3vault-mount.1")).unwrap();
        assert!(
            mount.contains("Examples:") && mount.contains("s3vault mount s3://"),
            "{mount}"
        );
    }
}
