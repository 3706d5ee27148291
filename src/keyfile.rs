//! Reading and writing key files and passphrase files.
//!
//! Like ssh with identity files, a secret file that group or others can
//! read is refused: the key would already be compromised. So is one owned
//! by anyone but root or the caller, or reached through a symlink owned by
//! anyone else: whoever owns it decides which key we use.

use crate::crypto::{KEY_LEN, SecretKey};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("{what} {path}: {error}")]
    Io {
        what: &'static str,
        path: String,
        error: std::io::Error,
    },
    #[error("{path} is accessible by group or others (mode {mode:04o}); run `chmod 600 {path}`")]
    TooOpen { path: String, mode: u32 },
    #[error("{0}: not a key file (expected 64 hexadecimal characters, as written by `s3vault keygen`)")]
    Malformed(String),
    #[error("{0}: the passphrase is empty")]
    EmptyPassphrase(String),
    #[error(
        "{path} is owned by uid {uid}, not by root or by the user running s3vault (uid {us}); refusing a {what} someone else controls"
    )]
    UntrustedOwner {
        path: String,
        what: &'static str,
        uid: u32,
        us: u32,
    },
    #[error("{0} is not a regular file or pipe of at most 64 KiB")]
    NotASecretFile(String),
}

/// Key and passphrase files are tiny; anything larger is not one.
const MAX_SECRET_FILE: u64 = 64 << 10;

/// Reads the secret file `path`, a `what` ("key file", "passphrase
/// file": errors name the file's role).
fn read_secret_file(path: &Path, what: &'static str) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let name = path.display().to_string();
    let io = |error| KeyFileError::Io {
        what,
        path: name.clone(),
        error,
    };
    let us = crate::os::effective_uid();
    let untrusted = |what, uid| KeyFileError::UntrustedOwner {
        path: name.clone(),
        what,
        uid,
        us,
    };
    let link = std::fs::symlink_metadata(path).map_err(io)?;
    if link.file_type().is_symlink() && link.uid() != 0 && link.uid() != us {
        return Err(untrusted("symlink", link.uid()));
    }
    // Checked on the file as opened, so it cannot be swapped in between.
    let mut file = std::fs::File::open(path).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    // A pipe is fine too: `--passphrase-file <(command)`.
    let pipe = std::os::unix::fs::FileTypeExt::is_fifo(&meta.file_type());
    if !(meta.is_file() || pipe) || meta.len() > MAX_SECRET_FILE {
        return Err(KeyFileError::NotASecretFile(name));
    }
    if meta.uid() != 0 && meta.uid() != us {
        return Err(untrusted(what, meta.uid()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(KeyFileError::TooOpen {
            path: name,
            mode: meta.mode() & 0o7777,
        });
    }
    let mut raw = Zeroizing::new(Vec::with_capacity(meta.len() as usize));
    std::io::Read::read_to_end(&mut std::io::Read::take(&mut file, MAX_SECRET_FILE + 1), &mut raw).map_err(io)?;
    if raw.len() as u64 > MAX_SECRET_FILE {
        return Err(KeyFileError::NotASecretFile(name));
    }
    Ok(raw)
}

/// Reads a key file: 64 hex digits (an optional trailing newline allowed).
pub fn read_key_file(path: &Path) -> Result<SecretKey, KeyFileError> {
    let raw = read_secret_file(path, "key file")?;
    let text = raw.strip_suffix(b"\n").unwrap_or(&raw);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    hex::decode_to_slice(text, key.as_mut()).map_err(|_| KeyFileError::Malformed(path.display().to_string()))?;
    Ok(SecretKey::from_bytes(&key))
}

/// Reads a passphrase file: its first line.
pub fn read_passphrase_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, KeyFileError> {
    let raw = read_secret_file(path, "passphrase file")?;
    let line = raw.split(|b| *b == b'\n').next().unwrap_or(&[]);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.is_empty() {
        return Err(KeyFileError::EmptyPassphrase(path.display().to_string()));
    }
    Ok(Zeroizing::new(line.to_vec()))
}

/// Writes a new random key file with mode 0600; never overwrites.
pub fn write_new_key_file(path: &Path) -> Result<(), KeyFileError> {
    let io = |error| KeyFileError::Io {
        what: "key file",
        path: path.display().to_string(),
        error,
    };
    let key = SecretKey::random();
    let mut text = Zeroizing::new(hex::encode(key.as_bytes()).into_bytes());
    text.push(b'\n');
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    file.write_all(&text).map_err(io)?;
    file.sync_all().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generated_key_file_reads_back_and_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new_key_file(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().mode() & 0o777, 0o600);
        read_key_file(&path).unwrap();
        assert!(write_new_key_file(&path).is_err(), "must not overwrite");
    }

    #[test]
    fn a_missing_file_is_named_by_its_role() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let e = read_key_file(&path).unwrap_err().to_string();
        assert!(e.starts_with("key file ") && e.contains("absent: No such file"), "{e}");
        let e = read_passphrase_file(&path).unwrap_err().to_string();
        assert!(e.starts_with("passphrase file "), "{e}");
    }

    #[test]
    fn readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new_key_file(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(read_key_file(&path), Err(KeyFileError::TooOpen { .. })));
    }

    #[test]
    fn a_key_file_or_symlink_owned_by_someone_else_is_refused() {
        if crate::os::effective_uid() != 0 {
            return; // giving a file away needs root
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        write_new_key_file(&path).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        read_key_file(&link).unwrap();
        std::os::unix::fs::lchown(&link, Some(4321), None).unwrap();
        let e = read_key_file(&link).unwrap_err();
        assert!(
            matches!(
                e,
                KeyFileError::UntrustedOwner {
                    what: "symlink",
                    uid: 4321,
                    ..
                }
            ),
            "{e}"
        );
        std::os::unix::fs::chown(&path, Some(1234), None).unwrap();
        let e = read_key_file(&path).unwrap_err();
        assert!(matches!(e, KeyFileError::UntrustedOwner { uid: 1234, .. }), "{e}");
        assert!(e.to_string().contains("uid 1234"), "{e}");
    }

    #[test]
    fn a_passphrase_can_come_through_a_pipe() {
        let (reader, mut writer) = std::io::pipe().unwrap();
        writer.write_all(b"from a pipe\n").unwrap();
        drop(writer);
        let fd = std::os::fd::AsRawFd::as_raw_fd(&reader);
        let path = format!("/proc/self/fd/{fd}");
        assert_eq!(
            read_passphrase_file(Path::new(&path)).unwrap().as_slice(),
            b"from a pipe"
        );
    }

    #[test]
    fn directories_and_oversized_files_are_not_key_files() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            read_key_file(dir.path()),
            Err(KeyFileError::NotASecretFile(_))
        ));
        let path = dir.path().join("big");
        std::fs::write(&path, vec![b'a'; 100 << 10]).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            read_passphrase_file(&path),
            Err(KeyFileError::NotASecretFile(_))
        ));
    }

    #[test]
    fn malformed_key_and_empty_passphrase_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, "not hex\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(read_key_file(&path), Err(KeyFileError::Malformed(_))));
        std::fs::write(&path, "\nsecond line").unwrap();
        assert!(matches!(
            read_passphrase_file(&path),
            Err(KeyFileError::EmptyPassphrase(_))
        ));
        std::fs::write(&path, "correct horse\r\nignored").unwrap();
        assert_eq!(read_passphrase_file(&path).unwrap().as_slice(), b"correct horse");
    }
}
