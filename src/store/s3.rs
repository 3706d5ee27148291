//! S3 object store through the official aws-sdk-s3 client.
//!
//! Credentials come from the default AWS chain (environment, profile, EC2
//! instance role via IMDSv2). The SDK's standard retry mode supplies
//! exponential backoff with jitter. Blocks are at most 16 MiB, far below the
//! 5 GiB single-PUT limit, so multipart upload is never needed.

use super::{ObjectInfo, ObjectStore, ObjectVersion, StoreError};
use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::interceptors::FinalizerInterceptorContextRef;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{BoxError, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime};
use aws_sdk_s3::types::{ChecksumAlgorithm, ObjectLockEnabled, ObjectLockMode, ObjectLockRetentionMode};
use bytes::Bytes;
use std::time::Duration;

/// Connection settings for S3 and S3-compatible servers.
#[derive(Clone, Debug, Default)]
pub struct S3Options {
    /// Endpoint URL override, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`) instead of virtual hosts.
    pub path_style: bool,
    /// AWS KMS endpoint override (KMS key slots).
    pub kms_endpoint: Option<String>,
}

#[derive(Debug)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
    /// Where this store is ("s3://bucket/prefix at http://endpoint"), for
    /// errors: the administrator must know which store failed.
    place: String,
    /// The bucket's default Object Lock mode, once `supports_retention`
    /// has looked; retained objects use it (GOVERNANCE if it has none).
    lock_mode: std::sync::OnceLock<ObjectLockMode>,
}

/// Plain HTTP would expose signed requests and let a network attacker
/// replay or withhold objects; it is accepted only on the loopback interface.
pub fn check_endpoint_url(endpoint: &str) -> Result<(), String> {
    let lower = endpoint.to_ascii_lowercase();
    if lower.starts_with("https://") {
        return Ok(());
    }
    let Some(rest) = lower.strip_prefix("http://") else {
        return Err(format!("endpoint {endpoint}: expected an http:// or https:// URL"));
    };
    let authority = rest.split('/').next().unwrap_or("");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if loopback {
        Ok(())
    } else {
        Err(format!(
            "endpoint {endpoint}: plain http is allowed only for loopback addresses; use https"
        ))
    }
}

/// An error and its causes on one line ("a: b: c"), skipping causes whose
/// text the previous message already contains (the SDK repeats itself).
pub(crate) fn one_line(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out.replace('\n', " ")
}

/// Who hears of each failed attempt while the SDK retries (`mount` on a
/// terminal, before it detaches): otherwise an unreachable endpoint is
/// silence until the last attempt fails, up to a minute later.
type AttemptReporter = Box<dyn Fn(&str) + Send + Sync>;
static ATTEMPT_REPORTER: std::sync::Mutex<Option<AttemptReporter>> = std::sync::Mutex::new(None);
/// Attempts the SDK makes at a request before it gives up.
const MAX_ATTEMPTS: u32 = 6;
/// Attempts that failed since the last one that got an answer.
static FAILED_ATTEMPTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Sets (or with `None` removes) the reporter of failed attempts; it gets
/// one line per failed attempt ("waiting for STORE: retrying (N), last
/// error: WHY").
pub fn report_failed_attempts(reporter: Option<AttemptReporter>) {
    *ATTEMPT_REPORTER.lock().unwrap_or_else(|e| e.into_inner()) = reporter;
}

/// Counts attempts that got no answer (a refused connection, a timeout)
/// and tells the reporter, naming the store.
#[derive(Debug)]
struct AttemptWatch {
    place: String,
}

impl Intercept for AttemptWatch {
    fn name(&self) -> &'static str {
        "AttemptWatch"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        use std::sync::atomic::Ordering;
        // A response, even an error one, means the store is reachable.
        if context.response().is_some() {
            FAILED_ATTEMPTS.store(0, Ordering::Relaxed);
            return Ok(());
        }
        let Some(Err(e)) = context.output_or_error() else {
            return Ok(());
        };
        let n = FAILED_ATTEMPTS.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(MAX_ATTEMPTS) {
            // The request's last attempt: its error comes next, no retry.
            return Ok(());
        }
        if let Some(report) = ATTEMPT_REPORTER.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            report(&format!(
                "waiting for {}: retrying ({n}), last error: {}",
                self.place,
                one_line(e)
            ));
        }
        Ok(())
    }
}

/// The AWS SDK configuration from the default chain (environment, profile,
/// EC2 instance role through IMDSv2), with us-east-1 when no region is set.
pub(crate) async fn load_sdk_config(region: Option<&str>) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    let sdk = loader.load().await;
    if sdk.region().is_none() {
        return sdk.into_builder().region(Region::new("us-east-1")).build();
    }
    sdk
}

impl S3Store {
    /// Starts a GET of `key`: headers read, body not yet.
    async fn get_object(
        &self,
        key: &str,
        version: Option<&str>,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StoreError> {
        self.client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .set_version_id(version.map(str::to_string))
            .send()
            .await
            .map_err(|e| self.map("s3:GetObject", e))
    }
    pub async fn new(bucket: &str, prefix: &str, opts: &S3Options) -> Result<S3Store, StoreError> {
        if let Some(endpoint) = &opts.endpoint {
            check_endpoint_url(endpoint).map_err(|detail| StoreError::Other {
                action: "configure",
                detail,
            })?;
        }
        let sdk = load_sdk_config(opts.region.as_deref()).await;
        let mut config = aws_sdk_s3::config::Builder::from(&sdk)
            .force_path_style(opts.path_style)
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(120))
                    .build(),
            )
            // Every object is AEAD-sealed, which is a stronger check than a
            // CRC; skip the extra checksum work and headers.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if let Some(endpoint) = &opts.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let url = format!("s3://{bucket}/{prefix}");
        let url = url.trim_end_matches('/');
        let place = match &opts.endpoint {
            Some(endpoint) => format!("{url} at {endpoint}"),
            None => url.to_string(),
        };
        config = config.interceptor(AttemptWatch { place: place.clone() });
        Ok(S3Store {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            place,
            lock_mode: std::sync::OnceLock::new(),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// A response body that broke off.
    fn cut_off(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Unreachable(format!("{}: {e}", self.place))
    }

    fn map<E>(&self, action: &'static str, e: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let status = match &e {
            SdkError::ServiceError(se) => Some(se.raw().status().as_u16()),
            SdkError::ResponseError(re) => Some(re.raw().status().as_u16()),
            _ => None,
        };
        let code = e.code().map(str::to_string);
        let detail = format!("{}: {}", self.place, one_line(&e));
        match (code.as_deref(), status) {
            (Some("NoSuchBucket"), _) => StoreError::NoSuchBucket(self.bucket.clone()),
            (Some("NoSuchKey" | "NotFound"), _) | (None, Some(404)) => StoreError::NotFound,
            (Some("PreconditionFailed"), _) | (_, Some(412)) => StoreError::AlreadyExists,
            (Some("AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch"), _) | (_, Some(403)) => {
                StoreError::AccessDenied { action, detail }
            }
            _ if matches!(e, SdkError::DispatchFailure(_)) && detail.contains("loading credentials") => {
                StoreError::Credentials(detail)
            }
            _ if matches!(e, SdkError::DispatchFailure(_) | SdkError::TimeoutError(_)) => {
                StoreError::Unreachable(detail)
            }
            _ => StoreError::Other { action, detail },
        }
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        // Every object is sealed (AES-GCM, bound to its name), so a SHA-256
        // of the payload in the signature adds no integrity, only CPU; the
        // request itself stays signed, and TLS covers it on the wire.
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .body(ByteStream::from(data))
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.map("s3:PutObject", e))?;
        Ok(())
    }

    async fn put_new(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .if_none_match("*")
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.map("s3:PutObject", e))?;
        Ok(())
    }

    async fn put_new_retained(&self, key: &str, data: Bytes, until: std::time::SystemTime) -> Result<(), StoreError> {
        let mode = self.lock_mode.get().cloned().unwrap_or(ObjectLockMode::Governance);
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .if_none_match("*")
            .object_lock_mode(mode)
            .object_lock_retain_until_date(DateTime::from(until))
            // S3 requires an integrity checksum on PUTs with a retention.
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.map("s3:PutObject", e))?;
        Ok(())
    }

    async fn supports_retention(&self) -> Result<bool, StoreError> {
        let resp = match self
            .client
            .get_object_lock_configuration()
            .bucket(&self.bucket)
            .send()
            .await
        {
            Ok(resp) => resp,
            // A server that does not implement Object Lock has none.
            Err(e)
                if matches!(
                    e.code(),
                    Some("ObjectLockConfigurationNotFoundError" | "NotImplemented")
                ) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(self.map("s3:GetBucketObjectLockConfiguration", e)),
        };
        let Some(config) = resp.object_lock_configuration() else {
            return Ok(false);
        };
        let default_mode = config
            .rule()
            .and_then(|r| r.default_retention())
            .and_then(|d| d.mode())
            .map(|m| match m {
                ObjectLockRetentionMode::Compliance => ObjectLockMode::Compliance,
                _ => ObjectLockMode::Governance,
            });
        let _ = self.lock_mode.set(default_mode.unwrap_or(ObjectLockMode::Governance));
        Ok(config.object_lock_enabled() == Some(&ObjectLockEnabled::Enabled))
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        Ok(self.get_tagged(key).await?.0)
    }

    async fn get_at_most(&self, key: &str, limit: u64) -> Result<Bytes, StoreError> {
        self.get_version_at_most(key, None, limit).await
    }

    async fn get_version_at_most(&self, key: &str, version: Option<&str>, limit: u64) -> Result<Bytes, StoreError> {
        let resp = self.get_object(key, version).await?;
        let too_large = StoreError::TooLarge { limit };
        if resp.content_length().is_some_and(|n| n < 0 || n as u64 > limit) {
            return Err(too_large);
        }
        // Read chunk by chunk, in case the length the server announced lies.
        let mut body = resp.body;
        let mut data = Vec::new();
        while let Some(chunk) = body.try_next().await.map_err(|e| self.cut_off(e))? {
            if (data.len() + chunk.len()) as u64 > limit {
                return Err(too_large);
            }
            data.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(data))
    }

    async fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Bytes, StoreError> {
        let end = start + len;
        if len == 0 {
            return Ok(Bytes::new());
        }
        let resp = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .range(format!("bytes={start}-{}", end - 1))
            .send()
            .await
            .map_err(|e| {
                // 416: the object ends before `start`.
                if e.code() == Some("InvalidRange") || e.raw_response().is_some_and(|r| r.status().as_u16() == 416) {
                    StoreError::TooShort { end }
                } else {
                    self.map("s3:GetObject", e)
                }
            })?;
        // Read chunk by chunk, in case the server sends more than asked.
        let mut body = resp.body;
        let mut data = Vec::with_capacity(len as usize);
        while let Some(chunk) = body.try_next().await.map_err(|e| self.cut_off(e))? {
            if (data.len() + chunk.len()) as u64 > len {
                return Err(StoreError::Other {
                    action: "s3:GetObject",
                    detail: "the server sent more than the range asked for".into(),
                });
            }
            data.extend_from_slice(&chunk);
        }
        if (data.len() as u64) < len {
            return Err(StoreError::TooShort { end });
        }
        Ok(Bytes::from(data))
    }

    async fn get_tagged(&self, key: &str) -> Result<(Bytes, String), StoreError> {
        let resp = self.get_object(key, None).await?;
        let tag = resp.e_tag().unwrap_or_default().to_string();
        let body = resp.body.collect().await.map_err(|e| self.cut_off(e))?;
        Ok((body.into_bytes(), tag))
    }

    async fn put_if_tag(&self, key: &str, data: Bytes, tag: &str) -> Result<String, StoreError> {
        let resp = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .if_match(tag)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.map("s3:PutObject", e))?;
        Ok(resp.e_tag().unwrap_or_default().to_string())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(self.key(key))
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match self.map("s3:DeleteObject", e) {
                StoreError::NotFound => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.key(prefix))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.map("s3:ListBucket", e))?;
            for object in resp.contents() {
                if let Some(key) = object.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    objects.push(ObjectInfo {
                        key: key.to_string(),
                        size: object.size().unwrap_or(0).max(0) as u64,
                        modified: object
                            .last_modified()
                            .and_then(|t| std::time::SystemTime::try_from(*t).ok())
                            .unwrap_or(std::time::UNIX_EPOCH),
                    });
                }
            }
            match resp.next_continuation_token() {
                Some(next) if resp.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn list_versions(&self, prefix: &str) -> Result<Vec<ObjectVersion>, StoreError> {
        let mut versions = Vec::new();
        let (mut key_marker, mut version_marker) = (None, None);
        loop {
            let resp = self
                .client
                .list_object_versions()
                .bucket(&self.bucket)
                .prefix(self.key(prefix))
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| self.map("s3:ListBucketVersions", e))?;
            // S3 lists the versions of a key newest first; delete markers
            // come separately and hide nothing from this listing.
            for version in resp.versions() {
                if let Some(key) = version.key().and_then(|k| k.strip_prefix(&self.prefix)) {
                    versions.push(ObjectVersion {
                        key: key.to_string(),
                        id: version.version_id().map(str::to_string),
                    });
                }
            }
            if resp.is_truncated() != Some(true) {
                break;
            }
            key_marker = resp.next_key_marker().map(str::to_string);
            version_marker = resp.next_version_id_marker().map(str::to_string);
            if key_marker.is_none() {
                break;
            }
        }
        // Stable: keeps each key's versions newest first.
        versions.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(versions)
    }
}

#[cfg(test)]
mod tests {
    use super::check_endpoint_url as check_endpoint;

    #[test]
    fn plain_http_only_on_loopback() {
        assert!(check_endpoint("https://s3.eu-west-1.amazonaws.com").is_ok());
        assert!(check_endpoint("http://127.0.0.1:9000").is_ok());
        assert!(check_endpoint("http://127.8.0.1:9000/").is_ok());
        assert!(check_endpoint("http://localhost:9000").is_ok());
        assert!(check_endpoint("http://[::1]:9000").is_ok());
        assert!(check_endpoint("http://10.0.0.5:9000").is_err());
        assert!(check_endpoint("http://example.com").is_err());
        assert!(check_endpoint("http://127.0.0.1.evil.com").is_err());
        assert!(check_endpoint("ftp://127.0.0.1").is_err());
    }
}
