//! Administration of a volume's superblock: `info` and key slots.
//!
//! Key slots wrap the one master key, so adding or removing a slot changes
//! who can unlock the volume without re-encrypting any data.

use crate::journal::live;
use crate::keyfile::{KeyFileError, read_key_file, read_passphrase_file};
use crate::store::{ObjectStore, S3Options};
use crate::superblock::{Argon2Params, SlotKind, Superblock, Unlock};
use crate::volume::{self, VolumeError};
use bytes::Bytes;
use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

/// A UTC timestamp for Unix seconds (civil-from-days, H. Hinnant).
pub fn utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn slot_kind(kind: SlotKind) -> &'static str {
    match kind {
        SlotKind::KeyFile => "key-file",
        SlotKind::Passphrase => "passphrase",
        SlotKind::Kms => "aws-kms",
    }
}

/// The slot table, one line per slot.
pub fn describe_slots(sb: &Superblock) -> String {
    let mut out = String::new();
    for (index, slot) in sb.slots.iter().enumerate() {
        let _ = write!(
            out,
            "  {index}  {}  {:<10}  created {}",
            slot.id(),
            slot_kind(slot.kind),
            utc(slot.created)
        );
        if slot.kind == SlotKind::Passphrase {
            let Argon2Params { m_kib, t, p } = slot.argon2;
            let _ = write!(out, "  (Argon2id m={m_kib} KiB, t={t}, p={p})");
        }
        if slot.kind == SlotKind::Kms {
            let _ = write!(out, "  ({})", slot.kms_key_id);
        }
        out.push('\n');
    }
    out
}

/// `s3vault info`: what the superblock says, no secrets (needs no key);
/// with `unlock`, also the live state's generation and chain head.
pub async fn info(
    store: Arc<dyn ObjectStore>,
    url: &str,
    unlock: Option<&Unlock>,
    aws: &S3Options,
) -> Result<String, VolumeError> {
    let sb = volume::read_superblock(store.as_ref(), url).await?;
    let mut out = format!(
        "format version  {}\nvolume id       {}\nchunk size      {} bytes\ncipher          AES-256-GCM\ncreated         {}\nrevision        {}\nkey slots       {}\n{}",
        sb.format,
        hex::encode(sb.volume_id),
        sb.chunk_size,
        utc(sb.created),
        sb.revision,
        sb.slots.len(),
        describe_slots(&sb)
    );
    if sb.has_shared_metadata() && unlock.is_none() {
        out.push_str("metadata        in PostgreSQL (unlock to see where)\n");
    }
    if let Some(unlock) = unlock {
        let volume = volume::unlock(store.clone(), url, unlock, aws).await?;
        if let Some(conninfo) = volume.superblock.metadata_location(&volume.ring)? {
            let target = crate::meta::postgres::Target::parse(&conninfo)?;
            let _ = writeln!(out, "metadata        {} (PostgreSQL)", target.describe());
            return Ok(out);
        }
        match live::newest_position(store.as_ref(), &volume.ring).await? {
            Some(position) => {
                let _ = write!(
                    out,
                    "generation      {}\nchain head      {}\n",
                    position.generation,
                    position.head_hex()
                );
            }
            None => out.push_str("generation      none: no checkpoint in the store (run `s3vault fsck`)\n"),
        }
        // An anchor is the record a host that never mounted the volume
        // can compare with; without Object Lock there is none.
        if store.supports_retention().await.unwrap_or(false) {
            match volume::newest_anchor(&volume).await? {
                Some(anchor) => {
                    let _ = writeln!(
                        out,
                        "anchor          {} (generation {}, revision {}, laid {})",
                        anchor.key(),
                        anchor.seen.state.generation,
                        anchor.seen.revision,
                        utc(anchor.written)
                    );
                }
                None => out.push_str("anchor          none yet (laid by the next read-write mount)\n"),
            }
        }
    }
    Ok(out)
}

/// What a new slot is unlocked by.
pub enum NewSlot {
    Local(Unlock),
    /// A KMS key id, ARN or alias.
    Kms(String),
}

pub fn new_slot(
    key_file: Option<&Path>,
    passphrase_file: Option<&Path>,
    kms_key_id: Option<&str>,
) -> Result<NewSlot, KeyFileError> {
    match (key_file, passphrase_file, kms_key_id) {
        (Some(path), _, _) => Ok(NewSlot::Local(Unlock::KeyFile(read_key_file(path)?))),
        (None, Some(path), _) => Ok(NewSlot::Local(Unlock::Passphrase(read_passphrase_file(path)?))),
        (None, None, Some(key)) => Ok(NewSlot::Kms(key.to_string())),
        (None, None, None) => unreachable!("the CLI requires one of them"),
    }
}

/// Adds a slot; `unlock` proves the caller may unlock the volume.
pub async fn add_slot(
    store: Arc<dyn ObjectStore>,
    url: &str,
    unlock: &Unlock,
    aws: &S3Options,
    new: &NewSlot,
    cost: Argon2Params,
) -> Result<String, VolumeError> {
    let mut sb = volume::read_superblock(store.as_ref(), url).await?;
    let (_, master) = volume::open_slot(&sb, unlock, aws).await?;
    match new {
        NewSlot::Local(new) => sb.add_slot(&master, new, cost, crate::os::now_secs())?,
        NewSlot::Kms(key_id) => {
            let kms = crate::kms::Kms::new(aws).await.map_err(VolumeError::KmsSetup)?;
            let blob = kms.wrap(key_id, &master, &sb.volume_id).await?;
            sb.add_kms_slot(&master, key_id, blob, crate::os::now_secs())?;
        }
    }
    store.put(volume::SUPERBLOCK_KEY, Bytes::from(sb.encode())).await?;
    Ok(sb.slots.last().map(|s| s.id()).unwrap_or_default())
}

/// Removes the slot named by index or id. The caller must unlock with a
/// different slot: removing the one you hold would prove nothing about the
/// rest, and could lock the last holder out.
pub async fn remove_slot(
    store: Arc<dyn ObjectStore>,
    url: &str,
    unlock: &Unlock,
    aws: &S3Options,
    which: &str,
) -> Result<(), VolumeError> {
    let mut sb = volume::read_superblock(store.as_ref(), url).await?;
    let (used, master) = volume::open_slot(&sb, unlock, aws).await?;
    let index = sb
        .slots
        .iter()
        .position(|s| s.id() == which)
        .or_else(|| which.parse::<usize>().ok().filter(|i| *i < sb.slots.len()))
        .ok_or(VolumeError::Superblock(crate::superblock::SuperblockError::NoSuchSlot))?;
    if sb.slots.len() == 1 {
        return Err(crate::superblock::SuperblockError::LastSlot.into());
    }
    if index == used {
        return Err(VolumeError::SlotInUse);
    }
    sb.remove_slot(&master, index)?;
    store.put(volume::SUPERBLOCK_KEY, Bytes::from(sb.encode())).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc(1_795_000_000), "2026-11-18 11:06:40 UTC");
    }
}
