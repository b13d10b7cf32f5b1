//! Totals from metadata alone: what each record takes, dropped ones included (a rollback's
//! dry run and `stats` read them; neither reads a payload).
use super::{HeightInfo, Log};

impl Log {
    /// Every record of the chain in order, with whether retention removed its height.
    /// [`Log::heights`] leaves the removed ones out; their records still take space until
    /// compaction, and a rollback below them deletes them too.
    pub fn records_info(&self) -> Vec<(HeightInfo, bool)> {
        self.records
            .iter()
            .map(|r| (r.info.clone(), self.dropped.contains(&r.header.height)))
            .collect()
    }
}
