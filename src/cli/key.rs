//! `s3vault keygen`, `init`, `info` and `key list|add|remove`: creating a
//! volume and managing what unlocks it.

use super::{
    Exit, KeyArgs, S3Args, block_on, init_command_logging, init_logging, location, log_filter, read_unlock,
    runtime_err, usage, volume_exit,
};
use anyhow::anyhow;
use clap::{Args, Subcommand};
use s3vault::audit;
use s3vault::superblock::{self, DEFAULT_ARGON2};
use s3vault::{admin, keyfile, volume};
use std::io::IsTerminal;
use std::path::Path;

#[derive(Args)]
pub struct InitArgs {
    /// Volume URL: s3://bucket[/prefix] or file:///absolute/path.
    url: String,
    /// Chunk size, the unit data is sealed in: 4K..1M, a power of two.
    #[arg(long, alias = "block-size", value_name = "SIZE", default_value = "16K", value_parser = parse_chunk_size)]
    chunk_size: u32,
    /// Keep the metadata in PostgreSQL instead of the bucket:
    /// postgresql://USER@HOST[:PORT]/DB, completed from libpq's PG*
    /// variables (the password from PGPASSWORD, never on the command line).
    /// TLS is required unless the server is on this machine.
    #[arg(long, value_name = "URL", conflicts_with = "metadata_file")]
    metadata: Option<String>,
    /// Like --metadata, the connection string read from this file (which
    /// may hold the password; keep it mode 0600).
    #[arg(long, value_name = "PATH")]
    metadata_file: Option<std::path::PathBuf>,
    #[command(flatten)]
    key: KeyArgs,
    #[command(flatten)]
    s3: S3Args,
}

/// The connection string `init` records for --metadata or
/// --metadata-file, completed from the environment.
fn shared_metadata(given: Option<String>, file: Option<&Path>) -> Result<Option<String>, Exit> {
    use s3vault::meta::postgres::Target;
    let given = match (given, file) {
        (Some(url), _) => {
            if Target::parse(&url).is_ok_and(|t| t.has_password()) {
                return Err(usage(anyhow!(
                    "--metadata holds a password, which every user of this host can read in the process list; \
                     put it in PGPASSWORD or in a --metadata-file (mode 0600)"
                )));
            }
            url
        }
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| usage(anyhow!("metadata connection file {}: {e}", path.display())))?
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    Target::complete(&given, |name| std::env::var(name).ok())
        .map(Some)
        .map_err(usage)
}

#[derive(Subcommand)]
pub enum KeyCommand {
    /// List the key slots (needs a key that unlocks the volume).
    List {
        /// Volume URL: s3://bucket[/prefix] or file:///absolute/path.
        url: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
    /// Add a slot for a new key file or passphrase.
    Add {
        /// Volume URL: s3://bucket[/prefix] or file:///absolute/path.
        url: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
        /// Key file the new slot opens with (write one with `s3vault keygen`).
        #[arg(
            long,
            value_name = "PATH",
            required_unless_present_any = ["new_passphrase_file", "new_kms_key_id"],
            conflicts_with_all = ["new_passphrase_file", "new_kms_key_id"]
        )]
        new_key_file: Option<std::path::PathBuf>,
        /// File whose first line is the new slot's passphrase.
        #[arg(long, value_name = "PATH", conflicts_with = "new_kms_key_id")]
        new_passphrase_file: Option<std::path::PathBuf>,
        /// AWS KMS key (id, ARN or alias) to wrap the volume key with (needs kms:Encrypt).
        #[arg(long, value_name = "ARN")]
        new_kms_key_id: Option<String>,
    },
    /// Remove a slot (by number or id from `key list`); unlock with another slot.
    Remove {
        /// Volume URL: s3://bucket[/prefix] or file:///absolute/path.
        url: String,
        /// The slot to remove: its number or id, as `s3vault key list` shows them.
        slot: String,
        #[command(flatten)]
        key: KeyArgs,
        #[command(flatten)]
        s3: S3Args,
    },
}

fn parse_chunk_size(s: &str) -> Result<u32, String> {
    let size = s3vault::units::parse_size(s)?;
    let size = u32::try_from(size).map_err(|_| format!("{s:?} is too large"))?;
    superblock::check_chunk_size(size).map_err(|e| e.to_string())?;
    Ok(size)
}

pub fn keygen(path: &Path) -> Result<(), Exit> {
    keyfile::write_new_key_file(path).map_err(usage)?;
    println!(
        "wrote a new key to {} (mode 0600); keep a copy somewhere safe: without it the volume cannot be read",
        path.display()
    );
    Ok(())
}

pub fn init(args: InitArgs) -> Result<(), Exit> {
    let InitArgs {
        url,
        chunk_size,
        metadata,
        metadata_file,
        key,
        s3,
    } = args;
    let location = location(&url)?;
    let shared = shared_metadata(metadata, metadata_file.as_deref())?;
    if key.kms {
        return Err(usage(anyhow!(
            "init needs a key file or a passphrase; add a KMS slot afterwards with `s3vault key add --new-kms-key-id`"
        )));
    }
    let unlock = read_unlock(&key, true)?;
    init_logging(log_filter("info")?, std::io::stderr().is_terminal());
    let s3 = s3.options()?;
    let id = block_on(async {
        let store = location.open(&s3).await.map_err(volume::VolumeError::from)?;
        volume::init(
            store,
            &url,
            chunk_size,
            &unlock,
            DEFAULT_ARGON2,
            s3vault::os::real_ids(),
            shared.as_deref(),
        )
        .await
    })?
    .map_err(volume_exit)?;
    let place = match &shared {
        Some(conninfo) => format!(
            ", metadata in {}",
            s3vault::meta::postgres::Target::parse(conninfo)
                .map_err(usage)?
                .describe()
        ),
        None => String::new(),
    };
    println!(
        "created volume {} at {url} (chunk size {chunk_size}{place})",
        hex::encode(id)
    );
    Ok(())
}

pub fn info(url: &str, key: &KeyArgs, s3: &S3Args) -> Result<(), Exit> {
    let location = location(url)?;
    let given = key.kms || key.key_file.is_some() || key.passphrase_file.is_some();
    let unlock = if given { Some(read_unlock(key, false)?) } else { None };
    init_command_logging()?;
    let s3 = s3.options()?;
    let text = block_on(async {
        let store = location.open(&s3).await.map_err(volume::VolumeError::from)?;
        admin::info(store, url, unlock.as_ref(), &s3).await
    })?
    .map_err(volume_exit)?;
    print!("{text}");
    Ok(())
}

pub fn run(action: KeyCommand) -> Result<(), Exit> {
    let (KeyCommand::List { url, key, s3 }
    | KeyCommand::Add { url, key, s3, .. }
    | KeyCommand::Remove { url, key, s3, .. }) = &action;
    let location = location(url)?;
    let unlock = read_unlock(key, false)?;
    let new = match &action {
        KeyCommand::Add {
            new_key_file,
            new_passphrase_file,
            new_kms_key_id,
            ..
        } => Some(
            admin::new_slot(
                new_key_file.as_deref(),
                new_passphrase_file.as_deref(),
                new_kms_key_id.as_deref(),
            )
            .map_err(usage)?,
        ),
        _ => None,
    };
    init_command_logging()?;
    let url = url.clone();
    let s3 = s3.options()?;
    let (message, recorded) = block_on(async {
        let store = location.open(&s3).await.map_err(volume::VolumeError::from)?;
        let volume = volume::unlock(store.clone(), &url, &unlock, &s3).await?;
        let (message, change) = match (&action, &new) {
            (KeyCommand::List { .. }, _) => (admin::describe_slots(&volume.superblock), None),
            (KeyCommand::Add { .. }, Some(new)) => {
                let id = admin::add_slot(store.clone(), &url, &unlock, &s3, new, DEFAULT_ARGON2).await?;
                (format!("added key slot {id}\n"), Some((audit::Event::KeyAdd, id)))
            }
            (KeyCommand::Remove { slot, .. }, _) => {
                admin::remove_slot(store.clone(), &url, &unlock, &s3, slot).await?;
                (
                    format!("removed key slot {slot}\n"),
                    Some((audit::Event::KeyRemove, slot.clone())),
                )
            }
            (KeyCommand::Add { .. }, None) => unreachable!("add always has a new slot"),
        };
        if change.is_some()
            && let Some(retain_for) = super::audit::cli_audit_settings(store.as_ref()).await.retain_for
        {
            volume::anchor_key_change(&volume, &url, retain_for).await?;
        }
        let recorded = match change {
            Some((event, slot)) => {
                super::audit::record_cli_event(volume.ring.clone(), store, event, format!("slot={slot}")).await
            }
            None => Ok(()),
        };
        Ok::<_, volume::VolumeError>((message, recorded))
    })?
    .map_err(volume_exit)?;
    print!("{message}");
    recorded.map_err(|e| runtime_err(anyhow!("the change is made, but its audit record is not stored: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_defaults_to_the_superblock_chunk_size() {
        let command = <InitArgs as clap::Args>::augment_args(clap::Command::new("init"));
        let arg = command
            .get_arguments()
            .find(|a| a.get_id() == "chunk_size")
            .expect("a --chunk-size argument");
        let default = arg.get_default_values()[0].to_str().unwrap();
        assert_eq!(parse_chunk_size(default), Ok(superblock::DEFAULT_CHUNK_SIZE));
    }
}
