//! What a record's metadata adds up to: the figures its [`super::HeightInfo`] reports, and
//! the file ids it names.

use super::format::{Meta, MetaExtent};
use super::record::{Entry, FileId, NsOp};

/// Paths the record names plus files it changes under no path it names. Sorted vectors, not
/// hash sets: a baseline of 10^6 files counted them in 80 MiB of sets.
pub(crate) fn files_changed(meta: &Meta) -> u64 {
    let mut paths: Vec<&[u8]> = Vec::new();
    let mut put_ids = Vec::new();
    let mut ids = Vec::new();
    for op in &meta.ops {
        match op {
            NsOp::Put { path, entry } => {
                paths.push(path);
                if let Entry::File { id, .. } = entry {
                    put_ids.push(*id);
                }
            }
            NsOp::Remove { path } => paths.push(path),
            NsOp::SetSize { id, .. } => ids.push(*id),
        }
    }
    ids.extend(meta.extents.iter().map(|e| e.id()));
    for v in [&mut ids, &mut put_ids] {
        v.sort_unstable();
        v.dedup();
    }
    paths.sort_unstable();
    paths.dedup();
    let unnamed = ids.iter().filter(|id| put_ids.binary_search(id).is_err());
    (paths.len() + unnamed.count()) as u64
}

pub(crate) fn meta_ids(meta: &Meta) -> impl Iterator<Item = FileId> + '_ {
    meta.ops
        .iter()
        .filter_map(|op| match op {
            NsOp::Put {
                entry: Entry::File { id, .. },
                ..
            }
            | NsOp::SetSize { id, .. } => Some(*id),
            _ => None,
        })
        .chain(meta.extents.iter().map(|e| e.id()))
}

pub(crate) fn data_bytes(meta: &Meta) -> u64 {
    meta.extents
        .iter()
        .map(|e| match e {
            MetaExtent::Data { payload, .. } => payload.raw_len,
            MetaExtent::Zero { .. } => 0,
        })
        .sum()
}
