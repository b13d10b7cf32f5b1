use crate::Log;
use crate::payload::PayloadSource;
use crate::record::{CutRecord, Entry, ExtentBytes, ExtentData, NsOp};
use crate::state::Node;
use crate::testing::file_op;

const FILES: u64 = 80_000;

fn bytes_of(id: u64) -> Vec<u8> {
    id.to_le_bytes().repeat(3)
}

/// Every file of the state at `height`: its path and the blake3 of its bytes, read from the
/// log's payloads (no replay: 80,000 files).
fn content(log: &Log, height: u64) -> Vec<(Vec<u8>, [u8; 32])> {
    let st = log.state_at(height).unwrap();
    let mut out = Vec::new();
    for (path, node) in st.nodes.iter() {
        if let Node::File(id) = node {
            let f = st.file(*id).unwrap();
            let mut bytes = vec![0u8; f.size as usize];
            for (&s, p) in f.pieces.iter() {
                let raw = log.load_payload(&p.payload).ok().unwrap();
                let (s, skip, len) = (s as usize, p.skip as usize, p.len as usize);
                bytes[s..s + len].copy_from_slice(&raw[skip..skip + len]);
            }
            out.push((path.to_vec(), *blake3::hash(&bytes).as_bytes()));
        }
    }
    out
}

/// A run over a baseline of more files than a metadata spill holds in memory: its diff's
/// operations and extent table go through spill files, and every kept height is as before.
#[test]
fn a_run_larger_than_the_metadata_buffer_compacts_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("log");
    let mut log = Log::open_append(&dir).unwrap();
    let mut ops = vec![NsOp::Put {
        path: b"d".to_vec(),
        entry: Entry::Dir {
            mode: 0o755,
            uid: 0,
            gid: 0,
        },
    }];
    let mut extents = Vec::new();
    for id in 1..=FILES {
        ops.push(file_op(format!("d/f{id}").as_bytes(), id));
        ops.push(NsOp::SetSize { id, size: 24 });
        extents.push(ExtentData {
            id,
            offset: 0,
            bytes: ExtentBytes::Data(bytes_of(id)),
        });
    }
    let cut = |height, ops, extents| CutRecord {
        height,
        time_unix_ms: height,
        ops,
        extents,
    };
    log.append(cut(1, ops, extents)).unwrap();
    for h in 2..=3 {
        let write = ExtentData {
            id: h,
            offset: 8,
            bytes: ExtentBytes::Data(b"changed!".to_vec()),
        };
        log.append(cut(h, Vec::new(), vec![write])).unwrap();
    }
    let want = content(&log, 3);
    assert_eq!(want.len(), FILES as usize);
    log.drop_heights(&[1, 2]).unwrap();
    let (log, rep) = log.compact().unwrap();
    assert_eq!((rep.dropped_records, rep.merged_records), (2, 1));
    // The merged record's metadata is larger than both spill buffers together: at least one
    // of its two parts went through a spill file.
    let merged = &log.records[0];
    assert_eq!(merged.header.height, 3);
    assert!(
        merged.header.meta_len > 2 * super::super::meta::SPILL_BUF as u64,
        "{} bytes of metadata",
        merged.header.meta_len
    );
    log.verify().unwrap();
    let got = content(&log, 3);
    assert_eq!(got.len(), want.len());
    let differ = got.iter().zip(&want).filter(|(g, w)| g != w).count();
    assert_eq!(differ, 0, "files that differ after the compaction");
    assert_eq!(want[0].1, *blake3::hash(&bytes_of(1)).as_bytes(), "d/f1");
}
