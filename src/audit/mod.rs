//! The audit trail: one record for every open and every change, per user,
//! chained with HMACs, encrypted, shipped to the volume's `audit/` area.
//!
//! - `record`: what a record holds and how its fields are spelled.
//! - `process`: who the caller is (user name, process name, executable).
//! - `segment`: the chain, the local segment file and the uploaded object.
//! - `log`: the writer a mount (or a CLI command) appends to.
//! - `query`: reading every segment back, verifying chains, filtering.
//! - `syslog`: the optional copy of each record to the local syslog.
//! - `witness`: the generations mounts recorded, against the store's.
//! - `review`: the access review and alerts for compliance officers.
//!
//! Layouts: FORMAT.md, "Audit segments".

mod log;
pub mod output;
mod process;
mod query;
mod record;
pub mod review;
pub(crate) mod segment;
mod syslog;
mod witness;

pub use log::{
    AuditError, AuditLog, AuditMode, AuditSettings, AuditStats, DEFAULT_RETENTION_DAYS, Syslog, retention_for,
};
pub use query::{
    Damage, Filter, Listed, Problem, ReadError, Segment, Segments, UserSummary, Verification, Verifier, read_segments,
    report, stream_segments, verify,
};
pub use record::{Event, Record, Subject, display_bytes, errno_name, flags_words};
pub use segment::AUDIT_PREFIX;
pub use witness::{LiveMetadata, chains_seen, check_chains_seen, check_freshness, open_chains};

#[cfg(test)]
mod tests;
