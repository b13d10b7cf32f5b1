//! The physical limit of a cut on this machine: the changed bytes through zstd -1 and blake3
//! on one core (measured here, on data shaped like the data set's), plus the syncfs and the
//! freeze that no cut can skip (the cut's own, from its `phases_ms`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_codec_runs_and_the_limit_adds_up() {
        let r = codec_rate();
        assert!(r > 1e6, "{r}");
        assert_eq!(limit_secs(100e6, 500e6, 50.0, 10.0), Some(0.26));
        assert_eq!(limit_secs(1.0, 0.0, 0.0, 0.0), None);
    }
}
