//! What every metadata store must do alike: the checks run against the
//! embedded SQLite store and against PostgreSQL (`postgres::tests`).

use super::{ChunkRef, FileKind, Found, Inode, Lookup, MetadataStore, in_transaction};

pub type Make<'a> = &'a dyn Fn() -> Box<dyn MetadataStore>;
type Check = fn(Make<'_>);

/// Every check, by name, so a failure says which.
pub const CHECKS: &[(&str, Check)] = &[
    (
        "entry offsets are stable",
        entry_offsets_are_stable_while_entries_come_and_go,
    ),
    ("export and import", export_import_reproduces_the_state),
    ("replacing a chunk", replacing_a_chunk_returns_the_old_one),
    ("holes and data", holes_and_data_are_found_from_any_index),
    ("garbage", a_pack_that_gets_a_chunk_again_is_no_longer_garbage),
    ("allocated bytes", allocated_bytes_follow_the_chunks_and_rollbacks),
    ("names", names_are_found_listed_and_removed),
    ("extended attributes", extended_attributes_live_and_die_with_their_inode),
    ("usage and orphans", usage_counts_inodes_and_bytes_and_orphans_are_found),
    ("inode numbers", inode_numbers_are_handed_out_once),
    ("lookup with the inodes", a_lookup_brings_the_directory_and_the_inode),
    ("ancestry", ancestry_names_every_directory_up_to_the_root),
];

/// Runs every check, each on fresh stores.
pub fn run_all(make: Make<'_>) {
    for (name, check) in CHECKS {
        eprintln!("conformance: {name}");
        check(make);
    }
}

/// An empty directory, as the root is made.
pub fn dir(ino: u64) -> Inode {
    Inode {
        ino,
        ..Inode::root(0, 0, 0)
    }
}

fn file(ino: u64) -> Inode {
    Inode {
        kind: FileKind::File,
        perm: 0o644,
        nlink: 1,
        size: 100,
        mtime: 1_700_000_000_123_456_789,
        ..dir(ino)
    }
}

fn chunk(pack: u8, offset: u32, len: u32) -> ChunkRef {
    ChunkRef {
        pack: [pack; 16],
        offset,
        len,
    }
}

fn entry_offsets_are_stable_while_entries_come_and_go(make: Make<'_>) {
    let mut db = make();
    db.put_inode(&dir(1)).unwrap();
    for (i, name) in [b"a", b"b", b"c"].iter().enumerate() {
        db.put_inode(&dir(10 + i as u64)).unwrap();
        db.insert_entry(1, *name, 10 + i as u64).unwrap();
    }
    let first = db.entries(1, 0, 2).unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].kind, FileKind::Dir);
    db.remove_entry(1, b"a").unwrap();
    db.put_inode(&file(20)).unwrap();
    db.insert_entry(1, b"d", 20).unwrap();
    let rest = db.entries(1, first[1].offset, 10).unwrap();
    let names: Vec<_> = rest.iter().map(|e| e.name.clone()).collect();
    assert_eq!(names, vec![b"c".to_vec(), b"d".to_vec()]);
    assert_eq!(rest[1].kind, FileKind::File);
    assert_eq!(rest[1].ino, 20);
}

fn export_import_reproduces_the_state(make: Make<'_>) {
    let mut db = make();
    db.put_inode(&dir(1)).unwrap();
    let ino = db.allocate_ino().unwrap();
    db.put_inode(&Inode {
        ino,
        kind: FileKind::Symlink,
        ..dir(ino)
    })
    .unwrap();
    db.set_symlink_target(ino, b"target").unwrap();
    db.insert_entry(1, b"link", ino).unwrap();
    db.set_xattr(1, b"user.a", b"value").unwrap();
    db.set_chunk(ino, 3, Some(chunk(1, 0, 7))).unwrap();
    let mut records = Vec::new();
    db.export(&mut |r| records.push(r)).unwrap();

    let mut copy = make();
    copy.import(&mut records.clone().into_iter()).unwrap();
    let mut again = Vec::new();
    copy.export(&mut |r| again.push(r)).unwrap();
    assert_eq!(records, again);
    assert_eq!(copy.symlink_target(ino).unwrap(), Some(b"target".to_vec()));
    assert_eq!(copy.xattr(1, b"user.a").unwrap(), Some(b"value".to_vec()));
    assert_eq!(copy.inode(ino).unwrap().unwrap().allocated, 7);
    // Past every number in use (a shared store hands them out in blocks,
    // so maybe not right after).
    assert!(copy.allocate_ino().unwrap() > ino);
}

fn replacing_a_chunk_returns_the_old_one(make: Make<'_>) {
    let mut db = make();
    let (a, b) = (chunk(1, 100, 10), chunk(2, 0, 20));
    assert_eq!(db.set_chunk(5, 0, Some(a)).unwrap(), None);
    assert_eq!(db.set_chunk(5, 0, Some(b)).unwrap(), Some(a));
    db.set_chunk(5, 7, Some(a)).unwrap();
    assert_eq!(db.chunks(5, 0, u64::MAX).unwrap().len(), 2);
    assert_eq!(db.chunks(5, 1, 7).unwrap(), vec![(7, a)]);
    assert_eq!(db.chunks_in(&[1; 16]).unwrap(), vec![(5, 7, a)]);
    let mut usage = db.pack_usage().unwrap();
    usage.sort();
    assert_eq!(usage, vec![([1; 16], 10 + 28), ([2; 16], 20 + 28)]);
    assert_eq!(db.remove_chunks_from(5, 1).unwrap(), vec![a]);
    assert!(!db.references(&[1; 16]).unwrap());
    assert!(db.references(&[2; 16]).unwrap());
    assert_eq!(db.chunks(5, 0, u64::MAX).unwrap(), vec![(0, b)]);
    assert_eq!(db.set_chunk(5, 0, None).unwrap(), Some(b));
    assert_eq!(db.set_chunk(5, 0, None).unwrap(), None);
    db.set_chunk(6, 0, Some(chunk(3, 500, 1))).unwrap();
    db.set_chunk(6, 1, Some(chunk(3, 100, 1))).unwrap();
    db.set_chunk(6, 2, Some(chunk(3, 300, 1))).unwrap();
    let in_order: Vec<u32> = db.chunks_in(&[3; 16]).unwrap().iter().map(|c| c.2.offset).collect();
    assert_eq!(in_order, vec![100, 300, 500]);
    let range: Vec<u64> = db
        .chunks_in_range(&[3; 16], 100, 500)
        .unwrap()
        .iter()
        .map(|c| c.1)
        .collect();
    assert_eq!(range, vec![1, 2]);
}

fn holes_and_data_are_found_from_any_index(make: Make<'_>) {
    let mut db = make();
    let c = chunk(1, 0, 1);
    for index in [2, 3, 4, 9] {
        db.set_chunk(5, index, Some(c)).unwrap();
    }
    db.set_chunk(6, 0, Some(c)).unwrap();
    assert_eq!(db.next_chunk(5, 0).unwrap(), Some(2));
    assert_eq!(db.next_chunk(5, 5).unwrap(), Some(9));
    assert_eq!(db.next_chunk(5, 10).unwrap(), None);
    assert_eq!(db.next_gap(5, 0).unwrap(), 0);
    assert_eq!(db.next_gap(5, 2).unwrap(), 5);
    assert_eq!(db.next_gap(5, 4).unwrap(), 5);
    assert_eq!(db.next_gap(5, 9).unwrap(), 10);
}

fn a_pack_that_gets_a_chunk_again_is_no_longer_garbage(make: Make<'_>) {
    let mut db = make();
    db.add_garbage(&[3; 16]).unwrap();
    db.add_garbage(&[4; 16]).unwrap();
    db.add_garbage(&[4; 16]).unwrap();
    db.set_chunk(9, 0, Some(chunk(3, 0, 1))).unwrap();
    assert_eq!(db.garbage().unwrap(), vec![[4; 16]]);
    db.add_garbage(&[5; 16]).unwrap();
    db.remove_garbage(&[[4; 16]]).unwrap();
    assert_eq!(db.garbage().unwrap(), vec![[5; 16]]);
}

fn allocated_bytes_follow_the_chunks_and_rollbacks(make: Make<'_>) {
    let mut db = make();
    db.put_inode(&file(7)).unwrap();
    db.set_chunk(7, 0, Some(chunk(1, 0, 1000))).unwrap();
    assert_eq!(db.inode(7).unwrap().unwrap().allocated, 1000);
    in_transaction(db.as_mut(), |db| {
        db.set_chunk(7, 1, Some(chunk(1, 2000, 500)))?;
        db.set_chunk(7, 0, Some(chunk(2, 0, 10)))?;
        assert_eq!(db.inode(7)?.unwrap().allocated, 510);
        // Writing the inode does not touch what its chunks add up to.
        db.put_inode(&Inode { size: 9, ..file(7) })?;
        Ok::<_, super::MetaError>(())
    })
    .unwrap();
    assert_eq!(db.inode(7).unwrap().unwrap().allocated, 510);
    assert_eq!(db.inode(7).unwrap().unwrap().size, 9);
    db.begin().unwrap();
    db.remove_chunks_from(7, 0).unwrap();
    assert_eq!(db.inode(7).unwrap().unwrap().allocated, 0);
    db.rollback();
    assert_eq!(db.inode(7).unwrap().unwrap().allocated, 510);
    assert_eq!(db.chunks(7, 0, 10).unwrap().len(), 2);
    assert_eq!(db.usage().unwrap(), (1, 510));
}

fn names_are_found_listed_and_removed(make: Make<'_>) {
    let mut db = make();
    db.put_inode(&dir(1)).unwrap();
    db.put_inode(&dir(2)).unwrap();
    db.put_inode(&file(3)).unwrap();
    db.insert_entry(1, b"sub", 2).unwrap();
    db.insert_entry(2, b"f", 3).unwrap();
    db.insert_entry(1, b"hard link", 3).unwrap();
    assert!(db.insert_entry(1, b"sub", 3).is_err());
    assert_eq!(db.lookup(1, b"sub").unwrap(), Some(2));
    assert_eq!(db.lookup(2, b"sub").unwrap(), None);
    assert_eq!(db.lookup(1, b"f").unwrap(), None);
    assert_eq!(db.parent_of(2).unwrap(), Some(1));
    assert_eq!(db.name_of(3).unwrap(), Some((2, b"f".to_vec())));
    assert!(db.has_entries(2).unwrap());
    db.remove_entry(2, b"f").unwrap();
    assert!(!db.has_entries(2).unwrap());
    assert_eq!(db.name_of(3).unwrap(), Some((1, b"hard link".to_vec())));
    assert_eq!(db.name_of(99).unwrap(), None);
    db.begin().unwrap();
    db.remove_entry(1, b"sub").unwrap();
    db.insert_entry(1, b"moved", 2).unwrap();
    db.rollback();
    assert_eq!(db.lookup(1, b"sub").unwrap(), Some(2));
    assert_eq!(db.lookup(1, b"moved").unwrap(), None);
}

fn extended_attributes_live_and_die_with_their_inode(make: Make<'_>) {
    let mut db = make();
    db.put_inode(&Inode {
        kind: FileKind::Symlink,
        ..file(4)
    })
    .unwrap();
    assert!(db.set_symlink_target(5, b"nowhere").is_err());
    db.set_symlink_target(4, b"../target").unwrap();
    db.set_xattr(4, b"user.b", b"2").unwrap();
    db.set_xattr(4, b"user.a", b"1").unwrap();
    db.set_xattr(4, b"user.a", b"one").unwrap();
    db.set_xattr(4, b"user.empty", b"").unwrap();
    assert_eq!(db.xattr(4, b"user.a").unwrap(), Some(b"one".to_vec()));
    assert_eq!(db.xattr(4, b"user.empty").unwrap(), Some(Vec::new()));
    assert_eq!(db.xattr(4, b"user.c").unwrap(), None);
    assert_eq!(
        db.xattr_names(4).unwrap(),
        vec![b"user.a".to_vec(), b"user.b".to_vec(), b"user.empty".to_vec()]
    );
    assert!(db.remove_xattr(4, b"user.b").unwrap());
    assert!(!db.remove_xattr(4, b"user.b").unwrap());
    db.delete_inode(4).unwrap();
    assert_eq!(db.inode(4).unwrap(), None);
    assert_eq!(db.symlink_target(4).unwrap(), None);
    assert!(db.xattr_names(4).unwrap().is_empty());
}

fn usage_counts_inodes_and_bytes_and_orphans_are_found(make: Make<'_>) {
    let mut db = make();
    assert_eq!(db.usage().unwrap(), (0, 0));
    db.put_inode(&dir(1)).unwrap();
    db.put_inode(&file(2)).unwrap();
    db.put_inode(&file(2)).unwrap();
    db.put_inode(&Inode { nlink: 0, ..file(3) }).unwrap();
    db.set_chunk(2, 0, Some(chunk(1, 0, 300))).unwrap();
    db.set_chunk(3, 0, Some(chunk(1, 400, 50))).unwrap();
    assert_eq!(db.usage().unwrap(), (3, 350));
    assert_eq!(db.orphans().unwrap(), vec![3]);
    db.put_inode(&file(3)).unwrap();
    assert!(db.orphans().unwrap().is_empty());
    db.delete_inode(2).unwrap();
    db.remove_chunks_from(2, 0).unwrap();
    assert_eq!(db.usage().unwrap(), (2, 50));
    assert_eq!(db.generation().unwrap(), 0);
    db.set_generation(12).unwrap();
    assert_eq!(db.generation().unwrap(), 12);
    assert_eq!(db.head().unwrap(), None);
    db.set_head(Some([9; 32])).unwrap();
    assert_eq!(db.head().unwrap(), Some([9; 32]));
}

fn inode_numbers_are_handed_out_once(make: Make<'_>) {
    let mut db = make();
    let a = db.allocate_ino().unwrap();
    let b = db.allocate_ino().unwrap();
    assert_eq!(a, 2);
    assert_eq!(b, 3);
    db.set_next_ino(100).unwrap();
    assert_eq!(db.allocate_ino().unwrap(), 100);
    assert_eq!(db.allocate_ino().unwrap(), 101);
}

fn a_lookup_brings_the_directory_and_the_inode(make: Make<'_>) {
    let mut m = make();
    m.put_inode(&dir(1)).unwrap();
    m.put_inode(&file(2)).unwrap();
    m.insert_entry(1, b"here", 2).unwrap();
    m.set_chunk(2, 0, Some(chunk(1, 0, 1000))).unwrap();
    let found = m.lookup_in(1, b"here").unwrap().unwrap();
    assert_eq!(found.dir, dir(1));
    assert_eq!(found.found, Found::Entry(2, m.inode(2).unwrap()));
    assert_eq!(m.inode(2).unwrap().unwrap().allocated, 1000);
    assert_eq!(
        m.lookup_in(1, b"absent").unwrap(),
        Some(Lookup {
            dir: dir(1),
            found: Found::Nothing
        })
    );
    assert_eq!(m.lookup_in(9, b"here").unwrap(), None);
    // An entry whose inode went missing: corruption the caller reports.
    m.insert_entry(1, b"dangling", 7).unwrap();
    assert_eq!(
        m.lookup_in(1, b"dangling").unwrap().unwrap().found,
        Found::Entry(7, None)
    );
}

fn ancestry_names_every_directory_up_to_the_root(make: Make<'_>) {
    let mut m = make();
    m.put_inode(&dir(1)).unwrap();
    for (ino, parent, name) in [(2, 1, b"a"), (3, 2, b"b"), (4, 3, b"c")] {
        m.put_inode(&dir(ino)).unwrap();
        m.insert_entry(parent, name, ino).unwrap();
    }
    m.put_inode(&file(5)).unwrap();
    m.insert_entry(4, b"f", 5).unwrap();
    m.insert_entry(2, b"second link", 5).unwrap();
    assert_eq!(
        m.ancestry(5, 10).unwrap(),
        Some(vec![
            (4, b"f".to_vec()),
            (3, b"c".to_vec()),
            (2, b"b".to_vec()),
            (1, b"a".to_vec())
        ])
    );
    assert_eq!(m.ancestry(1, 10).unwrap(), Some(Vec::new()));
    assert_eq!(m.ancestry(5, 3).unwrap(), None, "deeper than the limit");
    assert_eq!(m.ancestry(5, 4).unwrap().map(|c| c.len()), Some(4));
    m.remove_entry(2, b"b").unwrap();
    assert_eq!(m.ancestry(5, 10).unwrap(), None, "a directory on the way was unlinked");
    assert_eq!(m.ancestry(9, 10).unwrap(), None);
}
