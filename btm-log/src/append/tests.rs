//! A draft's metadata encoded as it comes: rows past the spill buffer, and files that vanish
//! after their rows were encoded.

use std::fs;

use crate::record::{ExtentBytes, ExtentData, NsOp};
use crate::testing::{file_op, noise};
use crate::{Log, LogOptions, ReplayOptions};

/// 70,000 one-extent files: the rows pass the spill buffer (the test asserts they went to the
/// spill file) and one file in seven vanishes before the commit, some of them in rows already
/// spilled, some in the batch. The record leaves them out; a replay gives every other file's
/// bytes, and the figures the commit reports are those the log's open counts.
#[test]
fn spilled_rows_leave_out_files_that_vanished() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = LogOptions {
        batch_bytes: 1 << 20,
        ..Default::default()
    };
    let mut log = Log::open_append_with(tmp.path(), opts).unwrap();
    let n = 70_000u64;
    let kept = |id: u64| !id.is_multiple_of(7);
    let mut d = log.begin(1).unwrap();
    for id in 1..=n {
        let bytes = ExtentBytes::Data(noise(id, 16));
        d.extent(ExtentData {
            id,
            offset: 0,
            bytes,
        })
        .unwrap();
    }
    assert!(d.ext.extents_spilled(), "the rows went to the spill file");
    assert!(!d.rows.is_empty(), "some rows are still in the batch");
    let mut ops = d.ops();
    for id in (1..=n).filter(|&id| kept(id)) {
        ops.push(&file_op(format!("f{id}").as_bytes(), id)).unwrap();
        ops.push(&NsOp::SetSize { id, size: 16 }).unwrap();
    }
    d.retain_files(|_, id| kept(id)).unwrap();
    let info = d.commit_ops(1, ops).unwrap();
    let files = n - n / 7;
    assert_eq!((info.files_changed, info.data_bytes), (files, files * 16));
    drop(log);
    let log = Log::open_read(tmp.path()).unwrap();
    assert_eq!(
        log.heights()[0],
        info,
        "open counts what the commit reported"
    );
    let into = tmp.path().join("r");
    let no_sync = ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    };
    log.replay(1, &into, &no_sync).unwrap();
    for id in 1..=n {
        let got = fs::read(into.join(format!("f{id}"))).ok();
        assert_eq!(got, kept(id).then(|| noise(id, 16)), "file {id}");
    }
}
