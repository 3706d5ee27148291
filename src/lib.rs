//! s3vault: an encrypted FUSE filesystem over S3 or a local directory.
//!
//! The modules follow the data flow of the design brief: the FUSE adapter
//! (`fuse`) feeds the filesystem core (`fs`), which keeps metadata in a
//! `meta` store and file data as blocks sealed by the `codec` under keys from
//! the `keyring`, kept in an object `store`. `superblock` and `volume` create
//! and unlock volumes; `control` and `daemon` run a mount; `audit` records
//! who opened and changed what.

pub mod admin;
pub mod audit;
pub mod cache;
pub mod codec;
pub mod control;
pub mod crypto;
pub mod daemon;
pub mod fs;
pub mod fsck;
pub mod fuse;
pub mod hardening;
pub mod journal;
pub mod keyfile;
pub mod keyring;
pub mod kms;
pub mod meta;
pub mod metrics;
pub mod mount;
pub mod mountpoint;
pub mod os;
pub mod restore;
pub mod store;
pub mod superblock;
pub mod units;
pub mod volume;

#[cfg(test)]
mod format_tests;
#[cfg(test)]
mod parser_fuzz_tests;
#[cfg(test)]
mod tamper_tests;
#[cfg(test)]
mod test_support;
