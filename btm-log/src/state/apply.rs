//! Applying a record to a [`TreeState`], item by item: its operations, then its extents, then
//! forgetting files no path names any more. Item by item so that a record too large to hold
//! decoded (a baseline of 10^6 files) is applied as its block is read.

use super::{Entry, FileState, Focus, Node, NsOp, Piece, PieceMap, TreeState, Undo};
use crate::error::LogError;
use crate::format::MetaExtent;
use crate::record::{FileId, check_path, check_symlink_target, display_path, parent_of};

impl TreeState {
    /// Applies one record: ops, then extents, then forgets files no path names any more.
    /// Checks everything a hostile or buggy record could get wrong; on error the state is
    /// partly applied and must be thrown away.
    pub fn apply(
        &mut self,
        height: u64,
        ops: &[NsOp],
        extents: &[MetaExtent],
    ) -> Result<(), LogError> {
        self.apply_inner(height, ops, extents, None, None)
    }

    /// [`TreeState::apply`], keeping in `undo` what the record replaced (the first time a run
    /// of records touches it): compaction diffs the state before a run from it.
    #[cfg(test)]
    pub(crate) fn apply_recording(
        &mut self,
        height: u64,
        ops: &[NsOp],
        extents: &[MetaExtent],
        undo: &mut Undo,
    ) -> Result<(), LogError> {
        self.apply_inner(height, ops, extents, None, Some(undo))
    }

    /// [`TreeState::apply`] keeping pieces only inside `focus`, cut to it (see [`Focus`]),
    /// and what the record replaced in `undo` when given.
    pub(crate) fn apply_focused(
        &mut self,
        height: u64,
        ops: &[NsOp],
        extents: &[MetaExtent],
        focus: &Focus,
        undo: Option<&mut Undo>,
    ) -> Result<(), LogError> {
        self.apply_inner(height, ops, extents, Some(focus), undo)
    }

    /// [`TreeState::apply`] keeping pieces only inside `focus` when given, and what the record
    /// replaces in `undo` when given.
    pub(crate) fn apply_inner(
        &mut self,
        height: u64,
        ops: &[NsOp],
        extents: &[MetaExtent],
        focus: Option<&Focus>,
        undo: Option<&mut Undo>,
    ) -> Result<(), LogError> {
        let mut a = self.applying(height, focus, undo);
        for op in ops {
            a.op(op)?;
        }
        for e in extents {
            a.extent(e)?;
        }
        a.finish();
        Ok(())
    }

    /// A record of `height` to apply item by item (operations first, then extents, as in its
    /// block), keeping pieces only inside `focus` when given and what it replaces in `undo`.
    pub(crate) fn applying<'a>(
        &'a mut self,
        height: u64,
        focus: Option<&'a Focus>,
        undo: Option<&'a mut Undo>,
    ) -> Applying<'a> {
        Applying {
            st: self,
            height,
            focus,
            undo,
            orphans: Vec::new(),
        }
    }
}

/// A record being applied. Checks everything a hostile or buggy record could get wrong; on
/// error the state is partly applied and must be thrown away.
pub(crate) struct Applying<'a> {
    st: &'a mut TreeState,
    height: u64,
    focus: Option<&'a Focus>,
    undo: Option<&'a mut Undo>,
    /// Files a removal may have left without a path.
    orphans: Vec<FileId>,
}

fn invalid(height: u64, reason: String) -> LogError {
    LogError::InvalidRecord { height, reason }
}

fn unsafe_path(height: u64, path: &[u8], reason: String) -> LogError {
    LogError::UnsafePath {
        height,
        path: display_path(path),
        reason,
    }
}

impl Applying<'_> {
    pub(crate) fn op(&mut self, op: &NsOp) -> Result<(), LogError> {
        let h = self.height;
        match op {
            NsOp::Put { path, entry } => {
                check_path(path).map_err(|why| unsafe_path(h, path, why.to_string()))?;
                if let Some(parent) = parent_of(path) {
                    match self.st.nodes.get(parent) {
                        Some(Node::Dir { .. }) => {}
                        Some(Node::Symlink { .. }) => {
                            return Err(unsafe_path(
                                h,
                                path,
                                format!(
                                    "its parent \"{}\" is a symlink, not a directory",
                                    display_path(parent)
                                ),
                            ));
                        }
                        Some(Node::File(_)) => {
                            return Err(unsafe_path(
                                h,
                                path,
                                format!(
                                    "its parent \"{}\" is a file, not a directory",
                                    display_path(parent)
                                ),
                            ));
                        }
                        None => {
                            return Err(invalid(
                                h,
                                format!(
                                    "put \"{}\": its parent directory does not exist (put the parent first)",
                                    display_path(path)
                                ),
                            ));
                        }
                    }
                }
                if let Entry::Symlink { target, .. } = entry {
                    check_symlink_target(target)
                        .map_err(|why| unsafe_path(h, path, why.to_string()))?;
                }
                let existing = self.st.nodes.get(path);
                match (existing, entry) {
                    (Some(Node::Dir { .. }), Entry::Dir { mode, uid, gid }) => {
                        // Same directory, new metadata: children stay.
                        if let Some(u) = self.undo.as_mut() {
                            u.node(path, existing);
                        }
                        self.st.nodes.insert(
                            path.clone(),
                            Node::Dir {
                                mode: *mode,
                                uid: *uid,
                                gid: *gid,
                            },
                        );
                    }
                    (Some(Node::File(old)), Entry::File { id, mode, uid, gid }) if old == id => {
                        if let Some(u) = self.undo.as_mut() {
                            u.file(*id, self.st.files.get(id));
                        }
                        let f = self.st.files.get_mut(id).expect("file of a live path");
                        (f.mode, f.uid, f.gid) = (*mode, *uid, *gid);
                    }
                    (existing, _) => {
                        if existing.is_some() {
                            self.st.remove_node(path, &mut self.orphans, &mut self.undo);
                        }
                        if let Some(u) = self.undo.as_mut() {
                            u.node(path, self.st.nodes.get(path));
                        }
                        let node = match entry {
                            Entry::Dir { mode, uid, gid } => Node::Dir {
                                mode: *mode,
                                uid: *uid,
                                gid: *gid,
                            },
                            Entry::File { id, mode, uid, gid } => {
                                if let Some(u) = self.undo.as_mut() {
                                    u.file(*id, self.st.files.get(id));
                                }
                                let f = self.st.files.get_or_insert_with(*id, || FileState {
                                    mode: 0,
                                    uid: 0,
                                    gid: 0,
                                    size: 0,
                                    nlink: 0,
                                    pieces: PieceMap::new(),
                                });
                                f.nlink += 1;
                                (f.mode, f.uid, f.gid) = (*mode, *uid, *gid);
                                Node::File(*id)
                            }
                            Entry::Symlink { target, uid, gid } => Node::Symlink {
                                target: Box::new(target.clone()),
                                uid: *uid,
                                gid: *gid,
                            },
                        };
                        self.st.nodes.insert(path.clone(), node);
                    }
                }
            }
            NsOp::Remove { path } => {
                check_path(path).map_err(|why| unsafe_path(h, path, why.to_string()))?;
                if !self.st.remove_node(path, &mut self.orphans, &mut self.undo) {
                    return Err(invalid(
                        h,
                        format!("remove \"{}\": nothing is there", display_path(path)),
                    ));
                }
            }
            NsOp::SetSize { id, size } => {
                let f = self.st.files.get_mut(id).ok_or_else(|| {
                    invalid(
                        h,
                        format!("set size of file id {id}: no such file (put it first)"),
                    )
                })?;
                if let Some(u) = self.undo.as_mut() {
                    // A shrink drops the pieces beyond the new size.
                    u.pieces(*id, f, (*size).min(f.size), u64::MAX);
                }
                f.set_size(*size);
            }
        }
        Ok(())
    }

    pub(crate) fn extent(&mut self, e: &MetaExtent) -> Result<(), LogError> {
        let h = self.height;
        let id = e.id();
        let f = self.st.files.get_mut(&id).ok_or_else(|| {
            invalid(
                h,
                format!("extent for file id {id}: no such file (put it first)"),
            )
        })?;
        let start = e.offset();
        let end = start
            .checked_add(e.len())
            .ok_or_else(|| invalid(h, format!("extent of file id {id} overflows")))?;
        // Bytes at or beyond the size are dropped (the size is set by SetSize only).
        let end = end.min(f.size);
        if start >= end {
            return Ok(());
        }
        if let Some(u) = self.undo.as_mut() {
            u.pieces(id, f, start, end);
        }
        f.punch(start, end);
        if let MetaExtent::Data { payload, .. } = e {
            let mut put = |a: u64, b: u64| {
                let piece = Piece {
                    len: b - a,
                    skip: a - start,
                    payload: *payload,
                };
                f.pieces.insert(a, piece);
            };
            match self.focus {
                None => put(start, end),
                Some(focus) => {
                    for (a, b) in focus.within(id, start, end) {
                        put(a, b);
                    }
                }
            }
        }
        Ok(())
    }

    /// Forgets the files no path names any more, and sets the state's height.
    pub(crate) fn finish(mut self) {
        for id in std::mem::take(&mut self.orphans) {
            if let Some(f) = self.st.files.get(&id).filter(|f| f.nlink == 0) {
                if let Some(u) = self.undo.as_mut() {
                    // Gone with all its bytes: a later put of the same id starts empty.
                    u.pieces(id, f, 0, u64::MAX);
                }
                self.st.files.remove(&id);
            }
        }
        self.st.height = Some(self.height);
    }
}
