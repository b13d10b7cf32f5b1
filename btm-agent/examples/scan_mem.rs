//! What the cutter's view of the volume costs in memory (issue 14): walks DIR as a cut does
//! (`Scan::walk`) and reports the process's resident memory before and after, and at its
//! peak. `cargo run --release -p btm-agent --example scan_mem -- DIR`.

use std::path::Path;
use std::time::Instant;

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: scan_mem DIR");
        std::process::exit(2);
    };
    let before = btm_testkit::self_status_kib("VmRSS:");
    let t = Instant::now();
    let scan = btm_agent::cut::scan::Scan::walk(Path::new(&dir)).expect("walk");
    let n = scan.entries.len() as u64;
    let after = btm_testkit::self_status_kib("VmRSS:");
    println!(
        "{n} entries walked in {:?}: VmRSS +{} MiB ({} B per entry), VmHWM {} MiB",
        t.elapsed(),
        (after - before) / 1024,
        (after - before) * 1024 / n.max(1),
        btm_testkit::self_status_kib("VmHWM:") / 1024,
    );
    // What the agent does after a walk.
    btm_agent::heap::give_back();
    println!(
        "after malloc_trim: VmRSS +{} MiB",
        (btm_testkit::self_status_kib("VmRSS:") - before) / 1024
    );
    // Every file found again by inode number (as the frozen phase finds a file the tracker
    // marked), then the whole base rebuilt (as settling the changes of many heights does).
    let inos: Vec<u64> = scan.files_with(|_| true).map(|(i, _, _)| i.0).collect();
    let t = Instant::now();
    let found = inos
        .iter()
        .filter(|i| scan.file_by_ino(**i).is_some())
        .count();
    println!(
        "{found} of {} files found by inode number in {:?}",
        inos.len(),
        t.elapsed()
    );
    // The cutter's ids of those files (`Cutter::ids`): a hash map before, an `IdMap` now.
    let idents: Vec<(u64, i64)> = scan.files_with(|_| true).map(|(i, _, _)| i).collect();
    let rss = || btm_testkit::self_status_kib("VmRSS:");
    let r0 = rss();
    let map: std::collections::HashMap<(u64, i64), u64, rustc_hash::FxBuildHasher> =
        idents.iter().zip(1..).map(|(i, id)| (*i, id)).collect();
    let r1 = rss();
    let ids: btm_agent::cut::IdMap = idents.iter().zip(1..).map(|(i, id)| (*i, id)).collect();
    let r2 = rss();
    println!(
        "ids of {} files: hash map +{} MiB, IdMap +{} MiB",
        ids.len(),
        (r1 - r0) / 1024,
        (r2 - r1) / 1024
    );
    drop((map, ids, idents));
    let mut scan = scan;
    let t = Instant::now();
    scan.entries.settle_now();
    println!(
        "base rebuilt in {:?}, VmHWM {} MiB",
        t.elapsed(),
        btm_testkit::self_status_kib("VmHWM:") / 1024
    );
    drop(scan);
}
