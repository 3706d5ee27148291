//! The one error type at the filesystem boundary: an errno for the kernel.
//!
//! Failures below the core (metadata database, object store, integrity) are
//! logged here, once, with inode numbers but never names, and become EIO.

use crate::cache::FetchError;
use crate::codec::CodecError;
use crate::journal::{StateError, SyncError};
use crate::meta::MetaError;
use crate::store::StoreError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsError(pub i32);

pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    pub fn errno(self) -> i32 {
        // A conflict outside `Core::transact`'s retries (a lone statement
        // that lost) is a failed operation, not a lock deadlock.
        if self == FsError::CONFLICT {
            tracing::warn!("a metadata statement kept conflicting with other hosts'; failing it with EIO");
            return libc::EIO;
        }
        self.0
    }
}

macro_rules! errno {
    ($($name:ident),* $(,)?) => {
        impl FsError {
            $(pub const $name: FsError = FsError(libc::$name);)*
        }
    };
}

errno!(
    ENXIO,
    ENOENT,
    EEXIST,
    ENOTDIR,
    EISDIR,
    ENOTEMPTY,
    EINVAL,
    EIO,
    EROFS,
    ENAMETOOLONG,
    EBADF,
    EPERM,
    EFBIG,
    ENOSYS,
    EXDEV,
    ENODATA,
    EOPNOTSUPP,
    ERANGE,
    E2BIG,
    EACCES,
    ENOSPC,
    ETIMEDOUT,
);

impl FsError {
    /// A metadata transaction lost to another host's: `Core::transact`
    /// runs it again and never hands this errno to the kernel.
    pub(crate) const CONFLICT: FsError = FsError(libc::EDEADLK);
}

impl std::fmt::Display for FsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

impl From<MetaError> for FsError {
    fn from(e: MetaError) -> Self {
        match e {
            MetaError::Conflict(_) => return FsError::CONFLICT,
            // Logged once per outage, where it is noticed
            // (`meta::postgres`), not once per file operation.
            MetaError::Unreachable(_) => {}
            e => tracing::error!(error = %e, "metadata store failure"),
        }
        FsError::EIO
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        tracing::error!(error = %e, "object store failure");
        FsError::EIO
    }
}

impl From<CodecError> for FsError {
    fn from(e: CodecError) -> Self {
        tracing::error!(error = %e, "object failed to open");
        FsError::EIO
    }
}

impl From<StateError> for FsError {
    fn from(e: StateError) -> Self {
        tracing::error!(error = %e, "metadata state failure");
        FsError::EIO
    }
}

impl From<SyncError> for FsError {
    fn from(e: SyncError) -> Self {
        match e {
            SyncError::Fenced => FsError::EROFS,
            SyncError::Store(e) => e.into(),
            SyncError::Meta(e) => e.into(),
            SyncError::State(e) => e.into(),
            SyncError::Cache(e) => {
                tracing::error!(error = %e, "cannot write file data to the cache");
                FsError::EIO
            }
        }
    }
}

impl From<FetchError> for FsError {
    fn from(_: FetchError) -> Self {
        // Logged where it happened, with the chunk's inode and index.
        FsError::EIO
    }
}
