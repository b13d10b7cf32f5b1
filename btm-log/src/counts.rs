//! What a record's metadata adds up to: the figures its [`super::HeightInfo`] reports, and
//! the largest file id it names. Counted item by item, as the open path decodes a record's
//! block without holding it whole; the appender counts the record it wrote the same way.

use super::format::MetaExtent;
use super::record::{Entry, FileId, NsOp};

/// The figures of one record. Sorted vectors, not hash sets: a baseline of 10^6 files counted
/// them in 80 MiB of sets.
#[derive(Default)]
pub(crate) struct Tally {
    /// The paths the record names, by a 128-bit blake3 of each (not the paths: a streamed block
    /// is not held).
    paths: Vec<[u8; 16]>,
    /// Ids a put names, and ids any op or extent names.
    put_ids: Vec<FileId>,
    ids: Vec<FileId>,
    pub data_bytes: u64,
    pub max_id: Option<FileId>,
}

impl Tally {
    fn named(&mut self, id: FileId) {
        self.max_id = Some(self.max_id.map_or(id, |m| m.max(id)));
    }

    pub fn op(&mut self, op: &NsOp) {
        let path = match op {
            NsOp::Put { path, entry } => {
                if let Entry::File { id, .. } = entry {
                    self.put_ids.push(*id);
                    self.named(*id);
                }
                path
            }
            NsOp::Remove { path } => path,
            NsOp::SetSize { id, .. } => {
                self.ids.push(*id);
                self.named(*id);
                return;
            }
        };
        let h = blake3::hash(path);
        self.paths
            .push(h.as_bytes()[..16].try_into().expect("16 bytes"));
    }

    pub fn extent(&mut self, e: &MetaExtent) {
        self.ids.push(e.id());
        self.named(e.id());
        if let MetaExtent::Data { payload, .. } = e {
            self.data_bytes += payload.raw_len;
        }
    }

    /// Paths the record names plus files it changes under no path it names.
    pub fn files_changed(mut self) -> u64 {
        for v in [&mut self.ids, &mut self.put_ids] {
            v.sort_unstable();
            v.dedup();
        }
        self.paths.sort_unstable();
        self.paths.dedup();
        let put_ids = &self.put_ids;
        let unnamed = self
            .ids
            .iter()
            .filter(|id| put_ids.binary_search(id).is_err());
        (self.paths.len() + unnamed.count()) as u64
    }
}
