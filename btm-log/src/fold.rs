//! Folding records into a [`TreeState`]: a record's metadata is applied item by item, and a
//! large block as it is read.

use crate::meta::{Item, ReadError, StreamErr, for_each_item};
use crate::state::{Focus, TreeState, Undo};
use crate::{Log, LogError, RecordLoc, check, open};

/// Metadata blocks larger than this are applied as they are read, not decoded whole (tests: 1
/// MiB, so that their records take both ways).
const STREAM_META_ABOVE: u64 = if cfg!(test) { 1 << 20 } else { 16 << 20 };

impl Log {
    /// Applies record `r` to `st` (see [`TreeState::applying`]). A large metadata block is
    /// decoded as it is read, not held whole with its decoded form (410 MiB for a record of a
    /// baseline of 10^6 files); it is checked against its hash first, as the segment may have
    /// changed since it was opened.
    pub(crate) fn apply_record(
        &self,
        st: &mut TreeState,
        r: &RecordLoc,
        focus: Option<&Focus>,
        undo: Option<&mut Undo>,
    ) -> Result<(), LogError> {
        let h = r.header.height;
        if r.header.meta_len <= STREAM_META_ABOVE {
            let meta = self.read_meta(r)?;
            return st.apply_inner(h, &meta.ops, &meta.extents, focus, undo);
        }
        let mut a = st.applying(h, focus, undo);
        self.for_each_item_of(r, true, |item| match item {
            Item::Op(op) => a.op(&op),
            Item::Extent(e) => a.extent(&e),
        })?;
        a.finish();
        Ok(())
    }

    /// Hands each item of record `r`'s metadata block to `each`, decoded as it is read (a
    /// chunk at a time), with the checks of [`crate::format::Meta::decode`]; the block is
    /// checked against its hash first when `check_hash` (a separate pass).
    pub(crate) fn for_each_item_of(
        &self,
        r: &RecordLoc,
        check_hash: bool,
        mut each: impl FnMut(Item) -> Result<(), LogError>,
    ) -> Result<(), LogError> {
        let h = r.header.height;
        let seg = &self.segments[r.seg_idx];
        let damaged = self.damaged(r);
        let at = r.offset + r.header.meta_start();
        let io = |e| LogError::io(&seg.path, e);
        if check_hash {
            let (hash, _) = open::hash_meta(&seg.file, &r.header, at, None).map_err(io)?;
            if hash != r.header.meta_hash {
                let what = "metadata checksum mismatch (the segment changed after it was opened)";
                return Err(damaged(what.into()));
            }
        }
        for_each_item(&seg.file, at, r.header.meta_len, |item| {
            each(item).map_err(StreamErr::Item)
        })
        .map_err(|e| match e {
            StreamErr::Item(e) => e,
            StreamErr::Read(ReadError::Io(e)) => io(e),
            StreamErr::Read(ReadError::Meta(e)) => check::meta_error(h, e, &damaged),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::record::{CutRecord, Entry, ExtentBytes, ExtentData, NsOp};
    use crate::testing::file_op;

    /// A record whose block is streamed folds to the state its decoded `Meta` gives; a block
    /// changed on disk after the open is refused.
    #[test]
    fn a_streamed_record_folds_as_a_decoded_one() {
        let tmp = tempfile::tempdir().unwrap();
        let mut log = Log::open_append(tmp.path()).unwrap();
        let dir = Entry::Dir {
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        let mut ops = vec![NsOp::Put {
            path: b"d".to_vec(),
            entry: dir,
        }];
        let mut extents = Vec::new();
        for id in 1..=20_000u64 {
            ops.push(file_op(format!("d/f{id}").as_bytes(), id));
            ops.push(NsOp::SetSize { id, size: 100 });
            extents.push(ExtentData {
                id,
                offset: id % 50,
                bytes: ExtentBytes::Data(id.to_le_bytes().to_vec()),
            });
        }
        // Some removed again: orphans are forgotten at the end of the record.
        for id in (1..=20_000u64).step_by(7) {
            ops.push(NsOp::Remove {
                path: format!("d/f{id}").into_bytes(),
            });
        }
        let cut = CutRecord {
            height: 1,
            time_unix_ms: 1,
            ops,
            extents,
        };
        log.append(cut).unwrap();
        let r = log.records[0].clone();
        assert!(
            r.header.meta_len > STREAM_META_ABOVE,
            "the block is streamed"
        );
        let mut streamed = TreeState::default();
        log.apply_record(&mut streamed, &r, None, None).unwrap();
        let meta = log.read_meta(&r).unwrap();
        let mut decoded = TreeState::default();
        decoded.apply(1, &meta.ops, &meta.extents).unwrap();
        assert!(streamed == decoded, "the two folds differ");
        assert_eq!(streamed.files.len(), 20_000 - 20_000 / 7 - 1);
        // One byte of the block changed under the open log.
        let seg = &log.segments[r.seg_idx];
        let at = r.offset + r.header.meta_start() + r.header.meta_len / 2;
        let mut b = [0u8];
        seg.file.read_exact_at(&mut b, at).unwrap();
        seg.file.write_all_at(&[b[0] ^ 1], at).unwrap();
        let e = log
            .apply_record(&mut TreeState::default(), &r, None, None)
            .unwrap_err();
        assert!(e.to_string().contains("checksum mismatch"), "{e}");
    }
}
