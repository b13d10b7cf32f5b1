//! The physical limit of a cut on this machine: the changed bytes through zstd -1 and blake3
//! on one core (measured here, on data shaped like the data set's), plus the syncfs and the
//! freeze that no cut can skip (the cut's own, from its `phases_ms`). And the limit of a
//! replay: the disk's own sequential write rate into the same directory.
use std::io::Write;
use std::path::Path;
use std::time::Instant;

/// Bytes of sample data; large enough to leave the caches, small enough to take well under
/// a second.
const SAMPLE: usize = 64 << 20;
/// The log compresses and hashes in payloads of up to 1 MiB.
const PIECE: usize = 1 << 20;

/// zstd level 1 plus blake3 over data shaped like a height's changes (half state pages, half
/// random and half zeros each, half incompressible block and table bytes), in bytes per
/// second on one core: the best of three passes.
pub fn codec_rate() -> f64 {
    let mut data = vec![0u8; SAMPLE];
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for (i, page) in data.chunks_mut(4096).enumerate() {
        // Every other page is a state page: its second half stays zero.
        let random = if i % 2 == 0 { 2048 } else { 4096 };
        for w in page[..random].chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes()[..w.len()]);
        }
    }
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut out = 0usize;
        for piece in data.chunks(PIECE) {
            out += zstd::bulk::compress(piece, 1).map_or(0, |c| c.len());
            std::hint::black_box(blake3::hash(piece));
        }
        std::hint::black_box(out);
        best = best.min(t.elapsed().as_secs_f64());
    }
    SAMPLE as f64 / best
}

/// The limit for a height that changed `changed` bytes and whose cut spent `sync_ms` in its
/// syncfs (with the drain) and `freeze_ms` frozen, in seconds; `None` without a rate.
pub fn limit_secs(changed: f64, rate: f64, sync_ms: f64, freeze_ms: f64) -> Option<f64> {
    (rate > 0.0).then(|| changed / rate + (sync_ms + freeze_ms) / 1000.0)
}

/// The disk's sequential write rate into `dir`, in bytes per second: `bytes` (rounded up to
/// whole MiB) of non-zero data written in 1 MiB writes to a new file, then an fsync (a replay
/// ends with a syncfs). The writes go past the page cache (`O_DIRECT`), as replay's long runs
/// do, so this is the disk's rate rather than the cache's; through the cache where the
/// filesystem refuses. The file is removed.
pub fn disk_write_rate(dir: &Path, bytes: u64) -> std::io::Result<f64> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("btm-bench-disk-limit");
    // One block more, to start at a 4 KiB-aligned address as O_DIRECT wants.
    let mut v = vec![0u8; PIECE + 4096];
    let off = (4096 - v.as_ptr() as usize % 4096) % 4096;
    let buf = &mut v[off..off + PIECE];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i % 251) as u8 | 1;
    }
    let t = Instant::now();
    let result = (|| -> std::io::Result<f64> {
        let open = |flags| {
            std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(flags)
                .open(&path)
        };
        let mut f = open(libc::O_DIRECT).or_else(|_| open(0))?;
        for _ in 0..bytes.div_ceil(PIECE as u64) {
            f.write_all(buf)?;
        }
        f.sync_all()?;
        Ok(t.elapsed().as_secs_f64())
    })();
    let _ = std::fs::remove_file(&path);
    let secs = result?;
    Ok(bytes.div_ceil(PIECE as u64) as f64 * PIECE as f64 / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codec_runs_and_the_limit_adds_up() {
        let r = codec_rate();
        assert!(r > 1e6, "{r}");
        assert_eq!(limit_secs(100e6, 500e6, 50.0, 10.0), Some(0.26));
        assert_eq!(limit_secs(1.0, 0.0, 0.0, 0.0), None);
        let dir = std::env::temp_dir().join(format!("btm-limit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rate = disk_write_rate(&dir, 4 << 20).unwrap();
        let left = std::fs::read_dir(&dir).unwrap().count();
        std::fs::remove_dir(&dir).unwrap();
        assert!(rate > 1e6, "{rate}");
        assert_eq!(left, 0, "the file is removed");
    }
}
