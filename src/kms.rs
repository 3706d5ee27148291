//! AWS KMS key slots: the master key wrapped by a KMS key.
//!
//! A mount then needs no secret on disk, only the instance role's
//! `kms:Decrypt` on that key. The encryption context names the volume, so
//! KMS refuses to unwrap a blob copied from another volume's superblock, and
//! CloudTrail records which volume each Decrypt was for.

use crate::crypto::{KEY_LEN, SecretKey};
use crate::keyring::VolumeId;
use crate::store::S3Options;
use crate::store::s3::{load_sdk_config, one_line};
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use zeroize::Zeroizing;

const CONTEXT_KEY: &str = "s3vault-volume";

#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error("AWS KMS denied {action} on key {key}: {detail}")]
    AccessDenied {
        action: &'static str,
        key: String,
        detail: String,
    },
    #[error("AWS KMS key {key} is disabled or pending deletion: {detail}")]
    Disabled { key: String, detail: String },
    #[error("AWS KMS key {key} not found: {detail}")]
    NotFound { key: String, detail: String },
    #[error("AWS KMS could not unwrap the key slot for key {key}: {detail}")]
    Invalid { key: String, detail: String },
    #[error("AWS KMS {action} failed for key {key}: {detail}")]
    Other {
        action: &'static str,
        key: String,
        detail: String,
    },
}

impl KmsError {
    /// Whether an administrator must change configuration (exit code 2)
    /// rather than retry (exit code 1).
    pub fn is_usage(&self) -> bool {
        !matches!(self, KmsError::Other { .. })
    }
}

pub struct Kms {
    client: aws_sdk_kms::Client,
}

fn context(volume_id: &VolumeId) -> String {
    hex::encode(volume_id)
}

fn map<E>(action: &'static str, key: &str, e: SdkError<E, aws_sdk_kms::config::http::HttpResponse>) -> KmsError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let key = key.to_string();
    // A service error's own message says it best; the SDK's rendering of
    // an unmodelled one is a debug dump.
    let detail = match (e.code(), e.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => one_line(&e),
    };
    match e.code() {
        Some("AccessDeniedException") => KmsError::AccessDenied { action, key, detail },
        Some("DisabledException" | "KMSInvalidStateException") => KmsError::Disabled { key, detail },
        Some("NotFoundException") => KmsError::NotFound { key, detail },
        Some("InvalidCiphertextException" | "IncorrectKeyException") => KmsError::Invalid { key, detail },
        _ => KmsError::Other { action, key, detail },
    }
}

impl Kms {
    pub async fn new(opts: &S3Options) -> Result<Kms, String> {
        let sdk = load_sdk_config(opts.region.as_deref()).await;
        let mut config = aws_sdk_kms::config::Builder::from(&sdk);
        if let Some(endpoint) = &opts.kms_endpoint {
            crate::store::check_endpoint_url(endpoint)?;
            config = config.endpoint_url(endpoint);
        }
        Ok(Kms {
            client: aws_sdk_kms::Client::from_conf(config.build()),
        })
    }

    /// Wraps the master key with KMS key `key_id` (kms:Encrypt).
    pub async fn wrap(&self, key_id: &str, master: &SecretKey, volume_id: &VolumeId) -> Result<Vec<u8>, KmsError> {
        let resp = self
            .client
            .encrypt()
            .key_id(key_id)
            .plaintext(Blob::new(master.as_bytes().to_vec()))
            .encryption_context(CONTEXT_KEY, context(volume_id))
            .send()
            .await
            .map_err(|e| map("kms:Encrypt", key_id, e))?;
        resp.ciphertext_blob()
            .map(|b| b.as_ref().to_vec())
            .ok_or_else(|| KmsError::Other {
                action: "kms:Encrypt",
                key: key_id.to_string(),
                detail: "no ciphertext in the response".into(),
            })
    }

    /// Unwraps a KMS slot's blob (kms:Decrypt).
    pub async fn unwrap(&self, key_id: &str, blob: &[u8], volume_id: &VolumeId) -> Result<SecretKey, KmsError> {
        let resp = self
            .client
            .decrypt()
            .key_id(key_id)
            .ciphertext_blob(Blob::new(blob.to_vec()))
            .encryption_context(CONTEXT_KEY, context(volume_id))
            .send()
            .await
            .map_err(|e| map("kms:Decrypt", key_id, e))?;
        // Taken out of the response (not copied), so the only plaintext
        // left is wiped when `plain` drops. The SDK's own buffers of the
        // HTTP body are beyond our reach: see ARCHITECTURE.md, "Keys in
        // memory".
        let plain = Zeroizing::new(resp.plaintext.map(Blob::into_inner).unwrap_or_default());
        let bytes: &[u8; KEY_LEN] = plain.as_slice().try_into().map_err(|_| KmsError::Invalid {
            key: key_id.to_string(),
            detail: "the unwrapped key has the wrong length".into(),
        })?;
        Ok(SecretKey::from_bytes(bytes))
    }
}
