//! The folded state of the tree: namespace plus, per file, which payload bytes cover which range.
//! Folding only needs metadata; payloads are read by replay.

use super::format::PayloadRef;
use super::pathmap::PathMap;
use super::pieces::PieceMap;
use super::record::{Entry, FileId, NsOp};

mod apply;
mod files;
mod focus;
mod undo;
pub use files::FileTable;
pub(crate) use focus::Focus;
pub(crate) use undo::{FileBefore, Undo};

/// What a path holds in the folded state. Files point at their inode-like [`FileState`].
/// A symlink's target is boxed (symlinks are rare): that makes every node 24 bytes, not 32
/// (one node per path, 10^6 and more on a node's data directory).
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::box_collection)] // The box is the point.
pub enum Node {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    File(FileId),
    Symlink {
        target: Box<Vec<u8>>,
        uid: u32,
        gid: u32,
    },
}

const _: () = assert!(std::mem::size_of::<Node>() == 24);

/// Bytes `[start, start + len)` of a file come from `payload`'s raw bytes at `skip..skip + len`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub len: u64,
    pub skip: u64,
    pub payload: PayloadRef,
}

impl Piece {
    /// True when the piece is the whole payload (so the payload's blake3 is the piece's blake3).
    pub fn is_whole(&self) -> bool {
        self.skip == 0 && self.len == self.payload.raw_len
    }
}

/// A file (inode): metadata, size and its data pieces. Ranges no piece covers are holes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileState {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Number of paths that name this file.
    pub nlink: u32,
    /// Start offset -> piece; pieces never overlap and all lie below `size`.
    pub pieces: PieceMap,
}

impl FileState {
    /// Bytes covered by data pieces (the rest of `size` is holes).
    pub fn data_bytes(&self) -> u64 {
        self.pieces.values().map(|p| p.len).sum()
    }

    /// Makes `[start, end)` a hole.
    fn punch(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some((&ps, p)) = self.pieces.range(..start).next_back() {
            let pe = ps + p.len;
            if pe > start {
                let p = p.clone();
                self.pieces.get_mut(&ps).expect("piece").len = start - ps;
                if pe > end {
                    let right = Piece {
                        len: pe - end,
                        skip: p.skip + (end - ps),
                        payload: p.payload,
                    };
                    self.pieces.insert(end, right);
                    return;
                }
            }
        }
        // Only the last piece inside can reach past `end` (pieces do not overlap).
        if let Some((k, p)) = self.pieces.take_range(start..end).pop() {
            let pe = k + p.len;
            if pe > end {
                let right = Piece {
                    len: pe - end,
                    skip: p.skip + (end - k),
                    payload: p.payload,
                };
                self.pieces.insert(end, right);
            }
        }
    }

    fn set_size(&mut self, size: u64) {
        if size < self.size {
            self.punch(size, u64::MAX);
        }
        self.size = size;
    }
}

/// The folded tree at a height.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeState {
    /// The height this state is at (`None` before the first record).
    pub height: Option<u64>,
    /// Every path, in byte order (a parent sorts before its children).
    pub nodes: PathMap<Node>,
    /// Every live file id.
    pub files: FileTable,
}

impl TreeState {
    /// The entry at `path` in the record vocabulary.
    pub fn entry(&self, path: &[u8]) -> Option<Entry> {
        Some(self.to_entry(self.nodes.get(path)?))
    }

    /// Every (path, entry), parents before children.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8], Entry)> + Clone + '_ {
        self.nodes.iter().map(|(p, n)| (p, self.to_entry(n)))
    }

    pub(crate) fn to_entry(&self, n: &Node) -> Entry {
        match n {
            Node::Dir { mode, uid, gid } => Entry::Dir {
                mode: *mode,
                uid: *uid,
                gid: *gid,
            },
            Node::File(id) => {
                let f = &self.files[id];
                Entry::File {
                    id: *id,
                    mode: f.mode,
                    uid: f.uid,
                    gid: f.gid,
                }
            }
            Node::Symlink { target, uid, gid } => Entry::Symlink {
                target: target.to_vec(),
                uid: *uid,
                gid: *gid,
            },
        }
    }

    /// The file with this id.
    pub fn file(&self, id: FileId) -> Option<&FileState> {
        self.files.get(&id)
    }

    /// Sum of the sizes of all files (holes included), each inode once.
    pub fn total_size(&self) -> u64 {
        self.files.values().map(|f| f.size).sum()
    }

    /// Sum of the data bytes (holes excluded) of all files, each inode once.
    pub fn data_bytes(&self) -> u64 {
        self.files.values().map(|f| f.data_bytes()).sum()
    }

    /// A path naming file `id` (the first in byte order), for messages.
    pub fn path_of(&self, id: FileId) -> Option<&[u8]> {
        self.nodes
            .iter()
            .find(|(_, n)| **n == Node::File(id))
            .map(|(p, _)| p)
    }

    /// Removes whatever is at `path` (a directory with everything under it).
    fn remove_node(
        &mut self,
        path: &[u8],
        orphans: &mut Vec<FileId>,
        undo: &mut Option<&mut Undo>,
    ) -> bool {
        if let Some(u) = undo {
            u.node(path, self.nodes.get(path));
        }
        let Some(node) = self.nodes.remove(path) else {
            return false;
        };
        let mut unlink = |files: &mut FileTable, n: &Node, undo: &mut Option<&mut Undo>| {
            if let Node::File(id) = n {
                if let Some(u) = undo {
                    u.file(*id, files.get(id));
                }
                let f = files.get_mut(id).expect("file of a live path");
                f.nlink -= 1;
                if f.nlink == 0 {
                    orphans.push(*id);
                }
            }
        };
        unlink(&mut self.files, &node, undo);
        if matches!(node, Node::Dir { .. }) {
            for k in self.nodes.paths_under(path) {
                if let Some(u) = undo {
                    u.node(&k, self.nodes.get(&k));
                }
                let n = self.nodes.remove(&k).expect("node");
                unlink(&mut self.files, &n, undo);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::super::format::Codec;
    use super::*;
    use crate::LogError;

    fn payload(n: u8, len: u64) -> PayloadRef {
        PayloadRef {
            seg: 1,
            offset: n as u64 * 1000,
            stored_len: len,
            raw_len: len,
            codec: Codec::Raw,
            hash: [n; 32],
        }
    }

    #[test]
    fn pieces_overwrite_and_truncate() {
        let mut f = FileState {
            mode: 0,
            uid: 0,
            gid: 0,
            size: 100,
            nlink: 1,
            pieces: PieceMap::new(),
        };
        f.pieces.insert(
            0,
            Piece {
                len: 100,
                skip: 0,
                payload: payload(1, 100),
            },
        );
        f.punch(10, 20);
        f.pieces.insert(
            10,
            Piece {
                len: 10,
                skip: 0,
                payload: payload(2, 10),
            },
        );
        let v: Vec<(u64, u64, u64)> = f.pieces.iter().map(|(k, p)| (*k, p.len, p.skip)).collect();
        assert_eq!(v, vec![(0, 10, 0), (10, 10, 0), (20, 80, 20)]);
        f.punch(5, 25);
        let v: Vec<(u64, u64, u64)> = f.pieces.iter().map(|(k, p)| (*k, p.len, p.skip)).collect();
        assert_eq!(v, vec![(0, 5, 0), (25, 75, 25)]);
        f.set_size(50);
        let v: Vec<(u64, u64, u64)> = f.pieces.iter().map(|(k, p)| (*k, p.len, p.skip)).collect();
        assert_eq!(v, vec![(0, 5, 0), (25, 25, 25)]);
        assert_eq!(f.data_bytes(), 30);
    }

    #[test]
    fn subtree_removal_and_links() {
        let mut s = TreeState::default();
        let dir = |p: &[u8]| NsOp::Put {
            path: p.to_vec(),
            entry: Entry::Dir {
                mode: 0o755,
                uid: 0,
                gid: 0,
            },
        };
        let file = |p: &[u8], id| NsOp::Put {
            path: p.to_vec(),
            entry: Entry::File {
                id,
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        };
        s.apply(
            1,
            &[
                dir(b"a"),
                dir(b"a b"),
                file(b"a/x", 1),
                file(b"a b/y", 1),
                file(b"a-", 2),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.files[&1].nlink, 2);
        s.apply(
            2,
            &[NsOp::Remove {
                path: b"a".to_vec(),
            }],
            &[],
        )
        .unwrap();
        assert_eq!(s.nodes.len(), 3);
        assert_eq!(s.files[&1].nlink, 1);
        // Rename within one record keeps the content.
        s.apply(
            3,
            &[
                NsOp::SetSize { id: 2, size: 5 },
                NsOp::Remove {
                    path: b"a-".to_vec(),
                },
                file(b"z", 2),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(s.files[&2].size, 5);
        // Symlink parent is refused.
        let e = s
            .apply(
                4,
                &[
                    NsOp::Put {
                        path: b"l".to_vec(),
                        entry: Entry::Symlink {
                            target: b"/etc".to_vec(),
                            uid: 0,
                            gid: 0,
                        },
                    },
                    file(b"l/passwd", 9),
                ],
                &[],
            )
            .unwrap_err();
        assert!(matches!(e, LogError::UnsafePath { .. }), "{e}");
        assert!(e.to_string().contains("l/passwd"), "{e}");
    }
}
