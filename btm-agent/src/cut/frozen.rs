//! The frozen phase of a cut: flip, bring the namespace up to date, read what changed since
//! phase 1 (see the module documentation of [`super`]).
use std::collections::BTreeSet;

use super::*;

impl Cutter {
    /// The frozen phase: flip, bring the namespace up to date, and read into the record what
    /// changed since phase 1. Only entries named by namespace events are stat'ed again and only
    /// files with something to read are opened (the whole tree is walked only when events
    /// were lost or are unavailable).
    #[allow(clippy::type_complexity)]
    pub(super) fn phase2(
        &mut self,
        root: &Path,
        (scan1, d1, files1, missed1): (Scan, &DirtySet, &Files, &HashSet<Identity>),
        (draft, ids): (&mut Draft, &mut CutIds),
        full: bool,
        (losses1, widened1): (Losses, bool),
    ) -> Result<(Scan, CaptureStats, Losses, (bool, u64, u64, usize))> {
        // Counted before the flip: all of it belongs to the epochs drained here.
        let t0 = Instant::now();
        let losses2 = Losses::of(&self.tracker.stats()?);
        let idx = self.tracker.flip()?;
        let t_flip = t0.elapsed();
        let mut d2 = self.tracker.drain(idx)?;
        let t_drain = t0.elapsed();
        if losses2.force_widen(&self.seen) {
            tracing::debug!("unresolved write faults: marking partially-marked folios whole");
            // d1's partial folios were read unwidened in phase 1, or before the last rise:
            // read them whole here, frozen.
            if !widened1 || losses2.rose(&losses1) {
                d2.partial.extend_from_slice(&d1.partial);
            }
            d2.widen_to_folios();
        }
        let changes = self.ns.as_ref().map(NsWatch::drain);
        let missed = match (self.check.take(), &changes) {
            (Some(differ), Some(c)) if !c.lost => unexplained(&differ, &c.entries),
            _ => 0,
        };
        let (scan2, walked, work, candidates) = match changes {
            Some(c) if !c.lost => {
                let mut scan2 = scan1;
                let (work, reread) = scan2
                    .patch(&c.entries)
                    .context("re-reading changed entries of the frozen volume")?;
                let c = candidates(&mut self.phantoms, &scan2, files1, &d2, &reread);
                (scan2, false, work, c)
            }
            _ => {
                let scan2 = Scan::walk(root).context("scanning the frozen volume")?;
                let n = scan2.entries.len() as u64;
                let c = scan2.owned_files();
                (scan2, true, n, c)
            }
        };
        let t_ns = t0.elapsed();
        let mut st = CaptureStats::default();
        let mut both: Option<DirtySet> = None;
        let mut opens = 0;
        for (ident, (path, size2)) in candidates {
            let id = self.id_for(&ident, &path, full, ids, draft.tip());
            let want = if files1.contains_key(&ident) && !missed1.contains(&ident) {
                let size1 = files1.get(&ident).map_or(0, |f| f.1);
                let mut r = ranges_of(&d2, ident.0, size2);
                if size2 > size1 {
                    r.push((size1, size2 - size1));
                }
                Want::ranges(r)
            } else {
                let both = both.get_or_insert_with(|| {
                    let mut b = d1.clone();
                    b.merge(d2.clone());
                    b
                });
                // Not read in phase 1: the same rules, with both flips' marks.
                let stat = self.stat_for_resume(&scan2, &path, size2);
                self.ranges_for(&ident, id, stat, both, full, draft.tip())
            };
            if matches!(&want, Want::Ranges(r) if r.is_empty()) {
                continue;
            }
            opens += 1;
            let mut sink = |e: ExtentData| Ok(draft.extent(e)?);
            if !read_identity(root, &scan2, &path, &ident, id, &want, &mut st, &mut sink)? {
                bail!(
                    "{} changed while the volume was frozen",
                    String::from_utf8_lossy(&path)
                );
            }
        }
        // Where a long freeze goes (the scale benchmark reads these).
        tracing::debug!(
            flip_us = t_flip.as_micros() as u64,
            drain_us = (t_drain - t_flip).as_micros() as u64,
            namespace_us = (t_ns - t_drain).as_micros() as u64,
            read_us = (t0.elapsed() - t_ns).as_micros() as u64,
            "frozen phase"
        );
        Ok((scan2, st, losses2, (walked, work, opens, missed)))
    }
}

/// The files the frozen phase may have to read, by identity, with their path and size in
/// `scan2`: those the tracker marked since phase 1, and those at paths re-read by the patch
/// (new, renamed, resized). Every other file is as phase 1 read it. `files1` are the files
/// phase 1 looked at (all of them after a walk).
fn candidates(
    phantoms: &mut HashSet<u64>,
    scan2: &Scan,
    files1: &Files,
    d2: &DirtySet,
    reread: &[RelPath],
) -> Files {
    let mut out = BTreeMap::new();
    let file_at = |p: &RelPath| match scan2.entries.get(p).map(|e| &e.kind) {
        Some(Kind::File { ident, size }) => Some((*ident, *size)),
        _ => None,
    };
    let mut missing = Vec::new();
    let mut unknown = Vec::new();
    for ino in d2.files.keys() {
        let mut known = false;
        for (ident, (path, _)) in files1.of_ino(*ino) {
            known = true;
            match file_at(path) {
                Some((i, size)) if i == *ident => {
                    out.insert(i, (path.clone(), size));
                }
                // Moved: found below among the re-read paths. Removed: gone, unless it has
                // another link (then found by its identity over the whole scan).
                _ if scan2.has_several_links(ident) => missing.push(*ident),
                _ => {}
            }
        }
        if known {
            continue;
        }
        match scan2.file_by_ino(*ino) {
            // Unchanged at phase 1 (not looked at then), or created since.
            Some((i, path, size)) => {
                out.insert(i, (path.to_vec(), size));
            }
            // Created since phase 1 and among the re-read paths, or no file's.
            None => unknown.push(*ino),
        }
    }
    for path in reread {
        if let Some((i, size)) = file_at(path) {
            out.insert(i, (path.clone(), size));
        }
    }
    missing.retain(|i| !out.contains_key(i));
    unknown.retain(|ino| {
        out.range((*ino, i64::MIN)..=(*ino, i64::MAX))
            .next()
            .is_none()
            && !scan2.was_dir_ino(*ino)
            && !scan2.gone.contains(ino)
            && !phantoms.contains(ino)
    });
    if !missing.is_empty() || !unknown.is_empty() {
        // A file marked dirty that no event accounts for (created and removed since phase 1,
        // or reached by another link): look for it by identity over the whole scan, in
        // memory only (no system call).
        for (i, p, size) in scan2.files_with(|ino| d2.files.contains_key(&ino)) {
            out.entry(i).or_insert_with(|| (p.to_vec(), size));
        }
        // Marked inodes no path leads to (a filesystem's own, like btrfs's btree inode) are
        // remembered so later freezes do not look again; a file that takes such a number
        // later is created after a walk, so it is among the re-read paths.
        phantoms.extend(unknown.into_iter().filter(|ino| {
            out.range((*ino, i64::MIN)..=(*ino, i64::MAX))
                .next()
                .is_none()
        }));
    }
    out.into()
}

/// How many of the paths where the namespace kept from events differed from the unfrozen
/// walk no event since the patch explains (an event names the path or a directory above it).
pub(super) fn unexplained(differ: &[RelPath], named: &BTreeSet<(RelPath, Vec<u8>)>) -> usize {
    let named: HashSet<RelPath> = named.iter().map(|(d, n)| scan::join(d, n)).collect();
    differ
        .iter()
        .filter(|p| !named.contains(*p) && !ancestors(p).any(|a| named.contains(a)))
        .count()
}
