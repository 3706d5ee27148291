//! The tables of a volume in PostgreSQL (FORMAT.md, "Metadata in
//! PostgreSQL"). Each volume has a schema of its own, named after its id,
//! so one database can hold several volumes.

/// Format of the schema below; a volume of another one is refused.
/// Format 2 added `opened` and `open_pack`, format 3 `snapshot_pin`,
/// format 4 `file_lock`.
pub const FORMAT: i32 = 4;

/// Brings a format 1 schema (the search path set to it) to format 2.
pub const FROM_FORMAT_1: &str = "
BEGIN;
CREATE TABLE IF NOT EXISTS opened (
    ino bigint NOT NULL,
    host bytea NOT NULL,
    opens integer NOT NULL,
    PRIMARY KEY (ino, host));
CREATE TABLE IF NOT EXISTS open_pack (
    pack bytea PRIMARY KEY,
    host bytea NOT NULL);
UPDATE volume SET format = 2 WHERE format = 1;
COMMIT;";

/// Brings a format 2 schema to format 3.
pub const FROM_FORMAT_2: &str = "
BEGIN;
CREATE TABLE IF NOT EXISTS snapshot_pin (
    snapshot bytea NOT NULL,
    pack bytea NOT NULL,
    PRIMARY KEY (snapshot, pack));
CREATE INDEX IF NOT EXISTS snapshot_pin_by_pack ON snapshot_pin (pack);
UPDATE volume SET format = 3 WHERE format = 2;
COMMIT;";

/// Brings a format 3 schema to format 4.
pub const FROM_FORMAT_3: &str = "
BEGIN;
CREATE TABLE IF NOT EXISTS file_lock (
    ino bigint NOT NULL,
    host bytea NOT NULL,
    live integer NOT NULL,
    owner bigint NOT NULL,
    body bytea NOT NULL);
CREATE INDEX IF NOT EXISTS file_lock_by_ino ON file_lock (ino);
UPDATE volume SET format = 4 WHERE format = 3;
COMMIT;";

/// The schema of volume `id` (hex): also what a DBA sees in `\dn`.
pub fn schema_name(volume_id: &[u8]) -> String {
    format!("s3vault_{}", hex::encode(volume_id))
}

/// Only inode numbers, the tree's shape (which inode is linked from
/// which directory), chunk indexes and pack ids are in the clear: every
/// `bytea` but the ids and hashes is sealed (`meta::sealing`).
pub const TABLES: &str = "
CREATE TABLE volume (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    id bytea NOT NULL,
    format integer NOT NULL,
    generation bigint NOT NULL DEFAULT 0,
    head bytea);
CREATE SEQUENCE ino_seq START 2 MINVALUE 2;
CREATE TABLE inode (
    ino bigint PRIMARY KEY,
    orphan boolean NOT NULL,
    attrs bytea NOT NULL,
    usage bytea NOT NULL,
    target bytea);
CREATE INDEX inode_orphans ON inode (ino) WHERE orphan;
CREATE TABLE entry (
    id bigserial,
    parent bigint NOT NULL,
    name_mac bytea NOT NULL,
    ino bigint NOT NULL,
    name bytea NOT NULL,
    PRIMARY KEY (parent, name_mac));
CREATE UNIQUE INDEX entry_pages ON entry (parent, id);
CREATE INDEX entry_by_ino ON entry (ino, id);
CREATE TABLE xattr (
    ino bigint NOT NULL,
    name_mac bytea NOT NULL,
    body bytea NOT NULL,
    PRIMARY KEY (ino, name_mac));
CREATE TABLE chunk (
    ino bigint NOT NULL,
    idx bigint NOT NULL,
    pack bytea NOT NULL,
    place bytea NOT NULL,
    PRIMARY KEY (ino, idx));
CREATE INDEX chunk_by_pack ON chunk (pack);
CREATE TABLE garbage (
    pack bytea PRIMARY KEY,
    since timestamptz NOT NULL DEFAULT now());
CREATE TABLE usage (
    host bytea PRIMARY KEY,
    body bytea NOT NULL);
CREATE TABLE opened (
    ino bigint NOT NULL,
    host bytea NOT NULL,
    opens integer NOT NULL,
    PRIMARY KEY (ino, host));
CREATE TABLE open_pack (
    pack bytea PRIMARY KEY,
    host bytea NOT NULL);
CREATE TABLE snapshot_pin (
    snapshot bytea NOT NULL,
    pack bytea NOT NULL,
    PRIMARY KEY (snapshot, pack));
CREATE INDEX snapshot_pin_by_pack ON snapshot_pin (pack);
CREATE TABLE file_lock (
    ino bigint NOT NULL,
    host bytea NOT NULL,
    live integer NOT NULL,
    owner bigint NOT NULL,
    body bytea NOT NULL);
CREATE INDEX file_lock_by_ino ON file_lock (ino);
";
