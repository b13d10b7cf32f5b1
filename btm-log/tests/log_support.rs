//! Shared fixtures for the log tests: a seeded RNG, an in-memory model tree that produces
//! `CutRecord`s, and a comparison of a replayed directory with the model.
//! Included by the other `log_*.rs` tests with `#[path = "log_support.rs"] mod support;`.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use btm_log::{CutRecord, Entry, ExtentBytes, ExtentData, NsOp};

#[allow(unused_imports)] // each test file uses some of them
pub use btm_testkit::{Rng, is_root, remove_tree, tree_digest};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MNode {
    Dir { mode: u32, uid: u32, gid: u32 },
    File(u64),
    Symlink { target: Vec<u8>, uid: u32, gid: u32 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MFile {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub data: Vec<u8>,
}

/// The tree as it should be, plus what the next record must say to get there.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub nodes: BTreeMap<Vec<u8>, MNode>,
    pub files: HashMap<u64, MFile>,
    pub next_id: u64,
    ops: Vec<NsOp>,
    writes: Vec<ExtentData>,
}

const NAMES: &[&[u8]] = &[
    b"a",
    b"b",
    b"data",
    b"with space",
    b"new\nline",
    b"\xff\xfe-not-utf8",
    b"caf\xc3\xa9",
    b"...",
    b"-dash",
    b"LOCK",
    b"000123.log",
    b"tab\there",
];

const FILE_MODES: &[u32] = &[0o644, 0o600, 0o755, 0o444, 0o4755, 0o640];
const DIR_MODES: &[u32] = &[0o755, 0o700, 0o750, 0o555];
const IDS: &[u32] = &[0, 1000, 65534];

impl Model {
    pub fn new() -> Model {
        Model {
            next_id: 1,
            ..Default::default()
        }
    }

    fn dirs(&self) -> Vec<Vec<u8>> {
        let mut v = vec![Vec::new()];
        v.extend(
            self.nodes
                .iter()
                .filter(|(_, n)| matches!(n, MNode::Dir { .. }))
                .map(|(p, _)| p.clone()),
        );
        v
    }

    fn live_ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.files.keys().copied().collect();
        v.sort();
        v
    }

    fn fresh_path(&self, rng: &mut Rng) -> Option<Vec<u8>> {
        let dirs = self.dirs();
        for _ in 0..8 {
            let d = rng.pick(&dirs).clone();
            let mut name = rng.pick(NAMES).to_vec();
            if rng.chance(40) {
                name.extend_from_slice(format!("{}", rng.below(100)).as_bytes());
            }
            let p = if d.is_empty() {
                name
            } else {
                [d.as_slice(), b"/", &name].concat()
            };
            if !self.nodes.contains_key(&p) {
                return Some(p);
            }
        }
        None
    }

    fn remove_node(&mut self, path: &[u8]) {
        let Some(n) = self.nodes.remove(path) else {
            return;
        };
        if let MNode::Dir { .. } = n {
            let mut lo = path.to_vec();
            lo.push(b'/');
            let mut hi = path.to_vec();
            hi.push(b'0');
            let under: Vec<Vec<u8>> = self.nodes.range(lo..hi).map(|(k, _)| k.clone()).collect();
            for k in under {
                self.nodes.remove(&k);
            }
        }
    }

    fn gc(&mut self) {
        let live: std::collections::HashSet<u64> = self
            .nodes
            .values()
            .filter_map(|n| {
                if let MNode::File(id) = n {
                    Some(*id)
                } else {
                    None
                }
            })
            .collect();
        self.files.retain(|id, _| live.contains(id));
    }

    fn put(&mut self, path: Vec<u8>, node: MNode) {
        let entry = match &node {
            MNode::Dir { mode, uid, gid } => Entry::Dir {
                mode: *mode,
                uid: *uid,
                gid: *gid,
            },
            MNode::File(id) => {
                let f = &self.files[id];
                Entry::File {
                    id: *id,
                    mode: f.mode,
                    uid: f.uid,
                    gid: f.gid,
                }
            }
            MNode::Symlink { target, uid, gid } => Entry::Symlink {
                target: target.clone(),
                uid: *uid,
                gid: *gid,
            },
        };
        match (self.nodes.get(&path), &node) {
            (Some(MNode::Dir { .. }), MNode::Dir { .. }) => {}
            (Some(a), b) if a == b => {}
            (Some(_), _) => self.remove_node(&path),
            _ => {}
        }
        self.nodes.insert(path.clone(), node);
        self.ops.push(NsOp::Put { path, entry });
    }

    pub fn remove(&mut self, path: &[u8]) {
        self.remove_node(path);
        self.ops.push(NsOp::Remove {
            path: path.to_vec(),
        });
    }

    pub fn set_size(&mut self, id: u64, size: u64) {
        self.files
            .get_mut(&id)
            .unwrap()
            .data
            .resize(size as usize, 0);
        self.ops.push(NsOp::SetSize { id, size });
    }

    /// Queues a write (applied after all ops, like the log does).
    pub fn write(&mut self, id: u64, offset: u64, bytes: ExtentBytes) {
        self.writes.push(ExtentData { id, offset, bytes });
    }

    pub fn new_file(&mut self, path: Vec<u8>, mode: u32, uid: u32, gid: u32) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.files.insert(
            id,
            MFile {
                mode,
                uid,
                gid,
                data: Vec::new(),
            },
        );
        self.put(path, MNode::File(id));
        id
    }

    /// Another path for file `id` (a hard link).
    pub fn put_file_link(&mut self, path: &[u8], id: u64) {
        self.put(path.to_vec(), MNode::File(id));
    }

    pub fn mkdir(&mut self, path: Vec<u8>, mode: u32) {
        self.put(
            path,
            MNode::Dir {
                mode,
                uid: 0,
                gid: 0,
            },
        );
    }

    /// Ends the record: applies queued writes, forgets unlinked files, returns the record.
    pub fn cut(&mut self, height: u64) -> CutRecord {
        // Files may have been unlinked after their writes were queued: the log ignores those.
        let writes = std::mem::take(&mut self.writes);
        for w in &writes {
            let Some(f) = self.files.get_mut(&w.id) else {
                continue;
            };
            let size = f.data.len() as u64;
            let end = (w.offset + w.bytes.len()).min(size);
            if w.offset >= end {
                continue;
            }
            let s = w.offset as usize;
            let e = end as usize;
            match &w.bytes {
                ExtentBytes::Data(d) => f.data[s..e].copy_from_slice(&d[..e - s]),
                ExtentBytes::Zero(_) => f.data[s..e].fill(0),
            }
        }
        self.gc();
        CutRecord {
            height,
            time_unix_ms: 1_700_000_000_000 + height,
            ops: std::mem::take(&mut self.ops),
            extents: writes,
        }
    }

    /// One random height of changes.
    pub fn random_changes(&mut self, rng: &mut Rng) {
        let n = 1 + rng.below(12);
        for _ in 0..n {
            self.random_change(rng);
        }
    }

    fn random_file_content(&mut self, rng: &mut Rng, id: u64) {
        let size = match rng.below(10) {
            0 => 0,
            1 => 3 << 20, // mostly hole
            2..=4 => rng.below(200_000),
            _ => rng.below(20_000),
        };
        self.set_size(id, size);
        if size == 0 {
            return;
        }
        let pieces = 1 + rng.below(4);
        for _ in 0..pieces {
            let off = rng.below(size);
            let len = (1 + rng.below(70_000)).min(size - off);
            let d = rng.data(len as usize);
            self.write(id, off, ExtentBytes::Data(d));
        }
    }

    fn random_change(&mut self, rng: &mut Rng) {
        let ids = self.live_ids();
        let paths: Vec<Vec<u8>> = self.nodes.keys().cloned().collect();
        match rng.below(20) {
            0..=2 => {
                if let Some(p) = self.fresh_path(rng) {
                    self.mkdir(p, *rng.pick(DIR_MODES));
                }
            }
            3..=6 => {
                if let Some(p) = self.fresh_path(rng) {
                    let id =
                        self.new_file(p, *rng.pick(FILE_MODES), *rng.pick(IDS), *rng.pick(IDS));
                    self.random_file_content(rng, id);
                }
            }
            7..=9 if !ids.is_empty() => {
                // Overwrite or append.
                let id = *rng.pick(&ids);
                let size = self.files[&id].data.len() as u64;
                let off = rng.below(size + 10_000);
                let len = 1 + rng.below(50_000);
                if off + len > size {
                    self.set_size(id, off + len);
                }
                let d = rng.data(len as usize);
                self.write(id, off, ExtentBytes::Data(d));
            }
            10 if !ids.is_empty() => {
                let id = *rng.pick(&ids);
                let size = self.files[&id].data.len() as u64;
                if size > 0 {
                    let off = rng.below(size);
                    let len = 1 + rng.below(size - off + 100);
                    self.write(id, off, ExtentBytes::Zero(len));
                }
            }
            11 if !ids.is_empty() => {
                let id = *rng.pick(&ids);
                let size = self.files[&id].data.len() as u64;
                let new = if rng.chance(50) {
                    rng.below(size + 1)
                } else {
                    size + rng.below(100_000)
                };
                self.set_size(id, new);
            }
            12 if !ids.is_empty() => {
                // Hard link.
                let id = *rng.pick(&ids);
                if let Some(p) = self.fresh_path(rng) {
                    self.put(p, MNode::File(id));
                }
            }
            13 if !paths.is_empty() => {
                // Rename (a directory moves with everything under it).
                let from = rng.pick(&paths).clone();
                if let Some(to) = self.fresh_path(rng)
                    && !to.starts_with(&[from.as_slice(), b"/"].concat())
                {
                    let mut lo = from.clone();
                    lo.push(b'/');
                    let mut hi = from.clone();
                    hi.push(b'0');
                    let mut moves = vec![(from.clone(), to.clone())];
                    for k in self.nodes.range(lo..hi).map(|(k, _)| k.clone()) {
                        let mut t = to.clone();
                        t.extend_from_slice(&k[from.len()..]);
                        moves.push((k, t));
                    }
                    for (f, t) in moves {
                        let n = self.nodes[&f].clone();
                        self.put(t, n);
                    }
                    self.remove(&from);
                }
            }
            14 => {
                if let Some(p) = self.fresh_path(rng) {
                    let target = rng
                        .pick(&[
                            &b"../../etc/passwd"[..],
                            b"/etc",
                            b"a/b",
                            b"\xff x",
                            b"dangling",
                        ])
                        .to_vec();
                    self.put(
                        p,
                        MNode::Symlink {
                            target,
                            uid: *rng.pick(IDS),
                            gid: *rng.pick(IDS),
                        },
                    );
                }
            }
            15 | 16 if !paths.is_empty() => {
                let p = rng.pick(&paths).clone();
                self.remove(&p);
            }
            17 if !paths.is_empty() => {
                // Replace with another type.
                let p = rng.pick(&paths).clone();
                match self.nodes[&p] {
                    MNode::Dir { .. } => {
                        let id = self.new_file(p, 0o644, 0, 0);
                        self.random_file_content(rng, id);
                    }
                    _ => self.mkdir(p, 0o755),
                }
            }
            18 if !paths.is_empty() => {
                // chmod / chown.
                let p = rng.pick(&paths).clone();
                match self.nodes[&p].clone() {
                    MNode::Dir { .. } => self.put(
                        p,
                        MNode::Dir {
                            mode: *rng.pick(DIR_MODES),
                            uid: *rng.pick(IDS),
                            gid: *rng.pick(IDS),
                        },
                    ),
                    MNode::File(id) => {
                        let f = self.files.get_mut(&id).unwrap();
                        f.mode = *rng.pick(FILE_MODES);
                        f.uid = *rng.pick(IDS);
                        // Force the op even though the node is unchanged.
                        let entry = Entry::File {
                            id,
                            mode: f.mode,
                            uid: f.uid,
                            gid: f.gid,
                        };
                        self.ops.push(NsOp::Put { path: p, entry });
                    }
                    MNode::Symlink { .. } => {}
                }
            }
            _ => {}
        }
    }
}

/// Asserts that `dir` holds exactly the model's tree.
pub fn assert_tree(dir: &Path, m: &Model, what: &str) {
    let mut found: BTreeMap<Vec<u8>, std::fs::Metadata> = BTreeMap::new();
    fn walk(dir: &Path, prefix: &[u8], out: &mut BTreeMap<Vec<u8>, std::fs::Metadata>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            let rel = if prefix.is_empty() {
                name.as_bytes().to_vec()
            } else {
                [prefix, b"/", name.as_bytes()].concat()
            };
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                walk(&e.path(), &rel, out);
            }
            out.insert(rel, md);
        }
    }
    walk(dir, b"", &mut found);
    let want: Vec<&Vec<u8>> = m.nodes.keys().collect();
    let got: Vec<&Vec<u8>> = found.keys().collect();
    assert_eq!(
        got.iter()
            .map(|p| p.escape_ascii().to_string())
            .collect::<Vec<_>>(),
        want.iter()
            .map(|p| p.escape_ascii().to_string())
            .collect::<Vec<_>>(),
        "{what}: paths differ"
    );
    let mut inodes: HashMap<u64, u64> = HashMap::new(); // ino -> id
    let mut id_ino: HashMap<u64, u64> = HashMap::new();
    for (p, n) in &m.nodes {
        let md = &found[p];
        let full = dir.join(OsStr::from_bytes(p));
        let shown = p.escape_ascii().to_string();
        match n {
            MNode::Dir { mode, uid, gid } => {
                assert!(md.is_dir(), "{what}: {shown} not a dir");
                assert_eq!(md.mode() & 0o7777, *mode, "{what}: {shown} dir mode");
                if is_root() {
                    assert_eq!(
                        (md.uid(), md.gid()),
                        (*uid, *gid),
                        "{what}: {shown} dir owner"
                    );
                }
            }
            MNode::Symlink { target, uid, gid } => {
                assert!(md.file_type().is_symlink(), "{what}: {shown} not a symlink");
                let t = std::fs::read_link(&full).unwrap();
                assert_eq!(
                    t.as_os_str().as_bytes(),
                    target.as_slice(),
                    "{what}: {shown} target"
                );
                if is_root() {
                    assert_eq!(
                        (md.uid(), md.gid()),
                        (*uid, *gid),
                        "{what}: {shown} symlink owner"
                    );
                }
            }
            MNode::File(id) => {
                let f = &m.files[id];
                assert!(md.is_file(), "{what}: {shown} not a file");
                assert_eq!(md.len(), f.data.len() as u64, "{what}: {shown} size");
                assert_eq!(md.mode() & 0o7777, f.mode, "{what}: {shown} mode");
                if is_root() {
                    assert_eq!(
                        (md.uid(), md.gid()),
                        (f.uid, f.gid),
                        "{what}: {shown} owner"
                    );
                }
                let data = std::fs::read(&full).unwrap();
                assert!(data == f.data, "{what}: {shown} content differs");
                if let Some(other) = inodes.insert(md.ino(), *id) {
                    assert_eq!(
                        other, *id,
                        "{what}: {shown} shares an inode with another file"
                    );
                }
                if let Some(ino) = id_ino.insert(*id, md.ino()) {
                    assert_eq!(
                        ino,
                        md.ino(),
                        "{what}: {shown} is not hard-linked to its other paths"
                    );
                }
            }
        }
    }
}

/// Tests that need root skip with a printed reason (btm-testkit's one rule).
/// Replay options for tests: no progress bar, no final syncfs.
pub fn quiet() -> btm_log::ReplayOptions {
    btm_log::ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    }
}

pub fn skip(reason: &str) {
    btm_testkit::skip("log test", reason);
}
