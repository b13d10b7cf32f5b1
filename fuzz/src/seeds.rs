//! Writes the seed corpus (`fuzz/seeds/<target>/`) from real data: segments and records of a
//! log written by today's appender (plus the committed version-1 fixture), payloads, remote
//! objects, protocol lines and configuration files. Run by `cargo xtask fuzz --seed`; the seeds
//! are committed so every run starts from the same place.
use std::fs;
use std::path::Path;

use btm_log::testing::{Forged, forged_segment, noise, record, split_segment};
use btm_log::{Entry, Log, MetaExtent, NsOp};
use btm_remote::layout::{self, RecordObj};

fn put(corpus: &Path, target: &str, name: &str, bytes: &[u8]) {
    let dir = corpus.join(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

fn main() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let tmp = tempfile::tempdir().unwrap();
    let mut log = Log::open_append(tmp.path()).unwrap();
    for h in 1..=4u64 {
        let mut r = record(h, h % 2 + 1, noise(h, 6000 + 3000 * h as usize));
        if h == 3 {
            r.ops.push(NsOp::Put {
                path: b"d".to_vec(),
                entry: Entry::Dir {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                },
            });
            r.ops.push(NsOp::Put {
                path: b"d/l".to_vec(),
                entry: Entry::Symlink {
                    target: b"../f1".to_vec(),
                    uid: 0,
                    gid: 0,
                },
            });
        }
        if h == 4 {
            r.ops.push(NsOp::Remove {
                path: b"f1".to_vec(),
            });
        }
        log.append(r).unwrap();
    }
    drop(log);
    let seg = fs::read(tmp.path().join("seg-00000001.btm")).unwrap();
    let records = split_segment(&seg);
    assert_eq!(records.len(), 4);
    put(&corpus, "log_segment", "today", &seg);
    put(
        &corpus,
        "log_segment",
        "first-record",
        &forged_segment(&records[..1]),
    );
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../btm-log/tests/fixtures/log-v1");
    put(
        &corpus,
        "log_segment",
        "v1",
        &fs::read(golden.join("seg-00000001.btm")).unwrap(),
    );
    put(
        &corpus,
        "log_forged",
        "today",
        &btm_fuzz::encode_forged(&records),
    );
    put(
        &corpus,
        "log_forged",
        "one",
        &btm_fuzz::encode_forged(&records[..1]),
    );
    put(
        &corpus,
        "log_forged",
        "empty-record",
        &btm_fuzz::encode_forged(&[Forged {
            height: 1,
            ..Default::default()
        }]),
    );
    put(&corpus, "log_headers", "segment", &seg[..32]);
    put(&corpus, "log_headers", "record", &seg[32..32 + 128]);
    let end = 32 + 128 + records[0].payloads.len() + records[0].meta.len();
    put(&corpus, "log_headers", "trailer", &seg[end..end + 48]);
    for (i, r) in records.iter().enumerate() {
        put(&corpus, "log_meta", &format!("h{}", r.height), &r.meta);
        let meta = btm_log::Meta::decode(&r.meta).unwrap();
        let mut pack = btm_remote::pack::PACK_MAGIC.to_vec();
        let mut idx = btm_remote::pack::PackIndex {
            packs: vec![[3; 32]],
            entries: vec![],
        };
        for (j, e) in meta.extents.iter().enumerate() {
            let MetaExtent::Data { payload: p, .. } = e else {
                continue;
            };
            // Stored bytes of a payload this record holds, as the odd (any bytes) mode reads them.
            let start = p.offset as usize;
            let Some(stored) = seg.get(start..start + p.stored_len as usize) else {
                continue;
            };
            let mut any = vec![1 | ((p.codec as u8) << 1)];
            any.extend((p.raw_len as u32).to_le_bytes());
            any.extend(p.hash);
            any.extend_from_slice(stored);
            put(&corpus, "log_payload", &format!("stored-{i}-{j}"), &any);
            let mut object = (stored.len() as u64 + layout::OBJ_HEADER_LEN)
                .to_le_bytes()
                .to_vec();
            object.extend(layout::object_header(p));
            object.extend_from_slice(stored);
            let entry = &object[8..];
            idx.entries
                .push((p.hash, 0, pack.len() as u64, entry.len() as u32));
            pack.extend_from_slice(entry);
            let mut obj = vec![0u8];
            obj.extend(object);
            put(&corpus, "remote_objects", &format!("payload-{i}-{j}"), &obj);
        }
        let ro = RecordObj {
            height: r.height,
            time_unix_ms: r.height,
            prev: [7; 32],
            source_hash: [9; 32],
            meta: r.meta.clone(),
            index: None,
            compressed: false,
        };
        let mut obj = vec![1u8];
        obj.extend(ro.encode());
        put(&corpus, "remote_objects", &format!("record-{i}"), &obj);
        // Layout 3: the same record with a pack index, and a pack of its payloads.
        let packed = RecordObj {
            index: Some(idx.clone()),
            ..ro
        };
        let mut obj = vec![1u8];
        obj.extend(packed.encode());
        put(&corpus, "remote_objects", &format!("record-packed-{i}"), &obj);
        // Layout 4: metadata and index compressed.
        let zstd = RecordObj {
            compressed: true,
            ..packed
        };
        let mut obj = vec![1u8];
        obj.extend(zstd.encode());
        put(&corpus, "remote_objects", &format!("record-zstd-{i}"), &obj);
        let index = idx.encode();
        let mut obj = vec![4u8];
        obj.extend((index.len() as u32).to_le_bytes());
        obj.extend(index);
        obj.extend(pack);
        put(&corpus, "remote_objects", &format!("pack-{i}"), &obj);
    }
    put(
        &corpus,
        "log_payload",
        "valid-raw",
        b"\x00\x05\x00\x00\x00hello, payload",
    );
    put(
        &corpus,
        "log_payload",
        "valid-zstd",
        &[&[2u8, 0, 1, 0, 0][..], &noise(3, 5000)].concat(),
    );
    let pointer = br#"{"format":1,"height":12,"record":"00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff","time_unix_ms":5,"tag":"t","meta":{"k":[1,2]},"pushed_unix_ms":6}"#;
    put(
        &corpus,
        "remote_objects",
        "pointer",
        &[&[2u8][..], pointer].concat(),
    );
    let owner = br#"{"log_id":"abc","host":"h","created_unix_ms":1}"#;
    put(
        &corpus,
        "remote_objects",
        "owner",
        &[&[2u8][..], owner].concat(),
    );
    let name = "00000000000000000012-00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff.json";
    put(
        &corpus,
        "remote_objects",
        "pointer-name",
        &[&[3u8][..], name.as_bytes()].concat(),
    );
    for (n, line) in [
        ("snapshot", &br#"{"cmd":"snapshot","height":42}"#[..]),
        ("rollback", br#"{"cmd":"rollback","height":7,"exact":true}"#),
        (
            "rollback-lower",
            br#"{"cmd":"rollback","height":null,"exact":false}"#,
        ),
        ("status", br#"{"cmd":"status"}"#),
        (
            "response",
            br#"{"ok":false,"error":"no","detail":{"height":3}}"#,
        ),
    ] {
        put(&corpus, "protocol", n, line);
    }
    let config = "volume = \"/chain\"\nlog = \"/backup/btm\"\nitv = 10\ncap = 100\nalgo = \"fade\"\nmode = \"auto\"\nsocket_mode = \"660\"\nmetrics_addr = \"127.0.0.1:9101\"\n";
    put(&corpus, "config_file", "typical", config.as_bytes());
    put(
        &corpus,
        "config_file",
        "unknown-key",
        b"volume = \"/chain\"\nbogus = 1\n",
    );
    put(&corpus, "config_file", "bad-value", b"itv = \"ten\"\n");
    println!("seeds written under {}", corpus.display());
}
