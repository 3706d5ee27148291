#!/usr/bin/env python3
"""Known-answer vectors of the volume format, written from FORMAT.md alone.

This is a second implementation of the format's cryptographic layouts (key
derivation, associated data, sealed objects, the superblock and its MAC, the
audit chain), independent of the Rust code: `cargo test` opens and checks
what it writes (src/format_tests.rs). Run it again only when the format
changes on purpose (with a version bump in FORMAT.md):

    python3 scripts/format-vectors.py > tests/golden/vectors.json

Needs the `cryptography` package. Nonces are fixed here so the output is
stable; s3vault itself always takes them from the CSPRNG.
"""
import hashlib
import hmac
import json
import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869), 32 bytes of output."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    return hmac.new(prk, info + b"\x01", hashlib.sha256).digest()


def seal(key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


MASTER = bytes(range(32))
VOLUME_ID = bytes(range(0xA0, 0xB0))
OBJECT_ID = bytes(range(0xB0, 0xC0))
KEY_FILE_KEY = bytes(range(0x40, 0x60))
SLOT_SALT = bytes(range(0xC0, 0xD0))
NONCE = bytes(range(0xE0, 0xEC))

PURPOSES = {
    "data": b"s3vault v1 data blocks",
    "metadata": b"s3vault v1 metadata objects",
    "audit": b"s3vault v1 audit log",
    "database": b"s3vault v1 local metadata database",
    "superblock": b"s3vault v1 superblock mac",
}
sub = {name: hkdf(MASTER, VOLUME_ID, info) for name, info in PURPOSES.items()}


def object_key(subkey: bytes, object_id: bytes) -> bytes:
    return hkdf(subkey, b"", b"s3vault v1 object key" + object_id)


def chunk_aad(pack_id: bytes, offset: int, ino: int, index: int) -> bytes:
    return b"s3vault v3 chunk" + VOLUME_ID + pack_id + struct.pack(">QQQ", offset, ino, index)


def frame_aad(label: bytes, name: str, object_id: bytes, index: int, last: bool) -> bytes:
    return label + VOLUME_ID + name.encode() + b"\x00" + object_id + struct.pack(">IB", index, last)


def local_audit_aad(object_id: bytes, index: int) -> bytes:
    return b"s3vault v1 audit local frame" + VOLUME_ID + object_id + struct.pack(">Q", index)


def framed(magic: bytes, subkey: bytes, label: bytes, name: str, plaintext: bytes) -> bytes:
    """A framed object with one frame (plaintexts here are under 1 MiB)."""
    key = object_key(subkey, OBJECT_ID)
    sealed = seal(key, NONCE, frame_aad(label, name, OBJECT_ID, 0, True), plaintext)
    return magic + b"\x01" + OBJECT_ID + struct.pack(">I", len(sealed)) + sealed


LOCATION = b"host='db.example' user='vault' password='known answer' dbname='meta' sslmode='require'"


def superblock(version: int, revision: int) -> bytes:
    """The revision follows the creation time (formats 2, 3 and 4); format 4
    ends its body with the sealed location of the metadata database."""
    created = 1_790_000_000
    slot_params = struct.pack(">BBQIII", 1, 0, created, 0, 0, 0) + SLOT_SALT
    kek = hkdf(KEY_FILE_KEY, SLOT_SALT, b"s3vault v1 key-file slot")
    wrapped = seal(kek, NONCE, b"s3vault v1 key slot" + VOLUME_ID + slot_params, MASTER)
    slot = slot_params + struct.pack(">H", 0) + struct.pack(">H", len(wrapped)) + wrapped
    header = struct.pack(">IBQ", 64 << 10, 1, created) + struct.pack(">Q", revision)
    body = b"S3VAULT\x00" + struct.pack(">H", version) + VOLUME_ID + header + b"\x01" + slot
    if version == 4:
        location_key = hkdf(sub["superblock"], b"", b"s3vault v1 metadata location")
        sealed = seal(location_key, NONCE, b"s3vault v1 metadata location" + VOLUME_ID, LOCATION)
        body += b"\x01" + struct.pack(">H", len(sealed)) + sealed
    return body + hmac.new(sub["superblock"], body, hashlib.sha256).digest()


journal_chain_key = hkdf(sub["metadata"], b"", b"s3vault v1 journal chain")

# Rows of the shared metadata database (FORMAT.md, "Metadata in PostgreSQL").
row_key = hkdf(sub["metadata"], b"", b"s3vault v1 shared database rows")
name_key = hkdf(sub["metadata"], b"", b"s3vault v1 shared database names")
ROW_SALT = bytes(range(0x10, 0x20))


def row_aad(label: bytes, a: int, b: int, tail: bytes) -> bytes:
    return b"s3vault v1 row " + VOLUME_ID + bytes([len(label)]) + label + struct.pack(">QQ", a, b) + tail


def seal_row(aad: bytes, plaintext: bytes) -> bytes:
    return ROW_SALT + seal(hkdf(row_key, ROW_SALT, b"s3vault v1 row seal"), NONCE, aad, plaintext)


ENTRY_NAME = b"known answer.txt"
entry_mac = hmac.new(name_key, b"entry" + struct.pack(">Q", 1) + ENTRY_NAME, hashlib.sha256).digest()


def journal_head(number: int, prev: bytes, ops: bytes) -> bytes:
    return hmac.new(journal_chain_key, b"s3vault v1 journal head" + struct.pack(">Q", number) + prev + ops, hashlib.sha256).digest()


CHUNK = b"known answer: one chunk of one file"
# The chunk sits at byte 131072 of its pack, as chunk 3 of inode 7.
CHUNK_OFFSET = 131072
STATE = b"\x01known answer: a metadata state"
AUDIT = b"known answer: an audit segment"
CHECKPOINT = "meta/00000000000000000042.snap"
AUDIT_NAME = "audit/0123456789abcdef/000000000001"
chain_key = hkdf(sub["audit"], b"", b"s3vault v1 audit chain")
prev = bytes(32)
record = b'{"seq":1,"event":"open"}'
SEGMENT = "journal/00000000000000000043"
# One operation: delete inode 9 (tag 16).
OPS = b"\x10" + struct.pack(">Q", 9)
genesis = journal_head(1, bytes(32), b"")
checkpoint_head = journal_head(42, genesis, b"")
segment_plaintext = b"\x02" + checkpoint_head + OPS
# A state of one record: the next inode number is 10 (tag 5).
checkpoint_v2_plaintext = b"\x02" + checkpoint_head + b"\x02\x05" + struct.pack(">Q", 10)
# Anchor 3, laid at generation 43 (after the segment above), superblock
# revision 5, at 1795000000 (seconds since the epoch).
ANCHOR = "anchor/%020d" % (2**64 - 1 - 3)
anchor_plaintext = (
    b"\x01" + struct.pack(">Q", 3)
    + b"\x01" + struct.pack(">Q", 43) + b"\x01" + journal_head(43, checkpoint_head, OPS) + struct.pack(">Q", 5)
    + struct.pack(">Q", 1795000000)
)

vectors = {
    "about": "Written by scripts/format-vectors.py from FORMAT.md; checked by src/format_tests.rs.",
    "master": MASTER.hex(),
    "volume_id": VOLUME_ID.hex(),
    "object_id": OBJECT_ID.hex(),
    "subkeys": {name: key.hex() for name, key in sub.items()},
    "object_keys": {
        "data": object_key(sub["data"], OBJECT_ID).hex(),
        "metadata": object_key(sub["metadata"], OBJECT_ID).hex(),
        "audit": object_key(sub["audit"], OBJECT_ID).hex(),
    },
    "audit_chain_key": chain_key.hex(),
    "snapshot_name_id": hkdf(sub["metadata"], b"", b"s3vault v1 snapshot name" + b"before upgrade")[:16].hex(),
    "aad": {
        "chunk_offset131072_ino7_index3": chunk_aad(OBJECT_ID, CHUNK_OFFSET, 7, 3).hex(),
        "metadata_frame": frame_aad(b"s3vault v1 metadata frame", CHECKPOINT, OBJECT_ID, 0, True).hex(),
        "audit_frame": frame_aad(b"s3vault v1 audit frame", AUDIT_NAME, OBJECT_ID, 1, False).hex(),
        "local_audit_frame5": local_audit_aad(OBJECT_ID, 5).hex(),
    },
    "sealed": {
        "chunk_offset131072_ino7_index3": seal(object_key(sub["data"], OBJECT_ID), NONCE, chunk_aad(OBJECT_ID, CHUNK_OFFSET, 7, 3), CHUNK).hex(),
        "chunk_plaintext": CHUNK.hex(),
        "checkpoint": framed(b"S3VM", sub["metadata"], b"s3vault v1 metadata frame", CHECKPOINT, STATE).hex(),
        "checkpoint_name": CHECKPOINT,
        "checkpoint_plaintext": STATE.hex(),
        "audit_segment": framed(b"S3VA", sub["audit"], b"s3vault v1 audit frame", AUDIT_NAME, AUDIT).hex(),
        "audit_name": AUDIT_NAME,
        "audit_plaintext": AUDIT.hex(),
        "checkpoint_v2": framed(b"S3VM", sub["metadata"], b"s3vault v1 metadata frame", CHECKPOINT, checkpoint_v2_plaintext).hex(),
        "segment": framed(b"S3VM", sub["metadata"], b"s3vault v1 metadata frame", SEGMENT, segment_plaintext).hex(),
        "segment_name": SEGMENT,
        "anchor": framed(b"S3VM", sub["metadata"], b"s3vault v1 metadata frame", ANCHOR, anchor_plaintext).hex(),
        "anchor_name": ANCHOR,
    },
    "journal_chain": {
        "key": journal_chain_key.hex(),
        "genesis": genesis.hex(),
        "checkpoint_42_head": checkpoint_head.hex(),
        "segment_43_ops": OPS.hex(),
        "segment_43_head": journal_head(43, checkpoint_head, OPS).hex(),
    },
    "audit_chain": {
        "prev": prev.hex(),
        "record": record.decode(),
        "mac": hmac.new(chain_key, b"s3vault v1 audit record" + prev + record, hashlib.sha256).hexdigest(),
    },
    "database_rows": {
        "entry_parent": 1,
        "entry_ino": 7,
        "entry_name": ENTRY_NAME.decode(),
        "entry_name_mac": entry_mac.hex(),
        "entry_sealed_name": seal_row(row_aad(b"entry.name", 1, 0, entry_mac), struct.pack(">Q", 7) + ENTRY_NAME).hex(),
        "chunk_ino": 7,
        "chunk_index": 3,
        "chunk_pack": OBJECT_ID.hex(),
        "chunk_offset": CHUNK_OFFSET,
        "chunk_len": len(CHUNK),
        "chunk_sealed_place": seal_row(
            row_aad(b"chunk.place", 7, 3, b""), OBJECT_ID + struct.pack(">II", CHUNK_OFFSET, len(CHUNK))
        ).hex(),
    },
    "superblock": {
        "key_file_key": KEY_FILE_KEY.hex(),
        "bytes": superblock(3, 5).hex(),
        "format_4_bytes": superblock(4, 5).hex(),
        "format_4_location": LOCATION.decode(),
        "revision": 5,
        "format_2_bytes": superblock(2, 5).hex(),
        "chunk_size": 64 << 10,
        "created": 1_790_000_000,
    },
}
print(json.dumps(vectors, indent=2))
