use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use super::{ALIGN, MIN_DIRECT, RUN_BYTES, Runs, reopen_direct};

/// A file being written and its path.
type Open = (Arc<File>, Arc<Path>);

/// Two fresh files in a scratch directory on a real disk, or `None` (printed) where the
/// filesystem takes no `O_DIRECT`.
fn files(what: &str) -> Option<(tempfile::TempDir, [Open; 2])> {
    let dir = tempfile::tempdir_in(btm_testkit::scratch()).expect("scratch dir");
    let open = |name: &str| {
        let path: Arc<Path> = dir.path().join(name).into();
        let f = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .expect("create");
        (Arc::new(f), path)
    };
    let fs = [open("a"), open("b")];
    if reopen_direct(&fs[0].0).is_none() {
        btm_testkit::skip(what, "the scratch filesystem refuses O_DIRECT");
        return None;
    }
    Some((dir, fs))
}

fn bytes_of(f: &File) -> Vec<u8> {
    let len = f.metadata().expect("fstat").len() as usize;
    let mut v = vec![0; len];
    f.read_exact_at(&mut v, 0).expect("read back");
    v
}

fn put(model: &mut Vec<u8>, at: u64, data: &[u8]) {
    let end = at as usize + data.len();
    if model.len() < end {
        model.resize(end, 0);
    }
    model[at as usize..end].copy_from_slice(data);
}

#[test]
fn whole_blocks_of_long_runs_go_direct_and_every_byte_lands() {
    let Some((_dir, [(a, pa), (b, pb)])) = files("direct runs") else {
        return;
    };
    let mut rng = btm_testkit::Rng(7);
    let mut runs = Runs::new(true);
    let (mut ma, mut mb) = (Vec::new(), Vec::new());
    let mut want_direct = 0;
    // A run from an unaligned offset, in pieces of odd sizes, over two full buffers: its
    // head goes through the cache, its whole blocks direct, its last 150 bytes the cache.
    let (start, len) = (100u64, 2 * RUN_BYTES + (1 << 20) + 50);
    let mut at = start;
    while at < start + len as u64 {
        let n = (rng.below(300_000) as usize + 1).min((start + len as u64 - at) as usize);
        let data = rng.bytes(n);
        runs.write(&a, &pa, &data, at).expect("write");
        put(&mut ma, at, &data);
        at += n as u64;
    }
    let head = ALIGN as u64 - start;
    want_direct += (len as u64 - head) / ALIGN as u64 * ALIGN as u64;
    // Scattered 4 KiB pieces: runs too short to go direct.
    for i in 0..3 {
        let (at, data) = ((12 << 20) + i * 3 * ALIGN as u64, rng.bytes(ALIGN));
        runs.write(&a, &pa, &data, at).expect("write");
        put(&mut ma, at, &data);
    }
    // Another file, then back to the first: each switch ends the run.
    let data = rng.bytes(MIN_DIRECT * 2);
    runs.write(&b, &pb, &data, 0).expect("write");
    put(&mut mb, 0, &data);
    want_direct += data.len() as u64;
    let data = rng.bytes(200 << 10);
    runs.write(&a, &pa, &data, 14 << 20).expect("write");
    put(&mut ma, 14 << 20, &data);
    want_direct += data.len() as u64;
    runs.finish().expect("finish");
    assert_eq!(
        runs.direct_bytes, want_direct,
        "bytes written with O_DIRECT"
    );
    assert!(bytes_of(&a) == ma, "file a differs from what was written");
    assert!(bytes_of(&b) == mb, "file b differs from what was written");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Any sequence of writes to two files, mostly going on from the last one, leaves each
    /// file holding exactly the bytes written last at every offset.
    #[test]
    fn every_sequence_of_writes_lands(
        ops in prop::collection::vec((0..2usize, any::<bool>(), 0u64..(3 << 20), 1usize..(600 << 10)), 1..40),
        seed in any::<u64>(),
    ) {
        let Some((_dir, fs)) = files("direct write sequences") else { return Ok(()); };
        let mut rng = btm_testkit::Rng(seed);
        let mut runs = Runs::new(false);
        let mut models = [Vec::new(), Vec::new()];
        let mut next = [0u64; 2];
        for (which, goes_on, jump, len) in ops {
            let at = if goes_on { next[which] } else { jump };
            let data = rng.bytes(len);
            runs.write(&fs[which].0, &fs[which].1, &data, at).expect("write");
            put(&mut models[which], at, &data);
            next[which] = at + len as u64;
        }
        runs.finish().expect("finish");
        for (i, (f, _)) in fs.iter().enumerate() {
            prop_assert!(bytes_of(f) == models[i], "file {} differs", i);
        }
    }
}
