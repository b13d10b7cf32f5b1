//! A restore from a store does not create set-uid/set-gid files or root-owned entries unless
//! asked (`Remote::with_restore_privileged`, `replay --remote --restore-privileged`): what the
//! store says root owns goes to the target directory's owner. Needs root (to chown).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use btm_log::{CutRecord, Entry, ExtentBytes, ExtentData, Log, NsOp, ReplayOptions};
use btm_remote::{PushOptions, Remote, push, replay};

fn put(path: &str, entry: Entry) -> NsOp {
    NsOp::Put {
        path: path.as_bytes().to_vec(),
        entry,
    }
}

fn stat(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

#[test]
fn set_id_bits_and_root_ownership_only_when_asked() {
    if !nix::unistd::geteuid().is_root() {
        let why = "set_id_bits_and_root_ownership_only_when_asked: skipped, needs root to chown";
        assert!(
            std::env::var_os("BTM_REQUIRE_KERNEL").is_none(),
            "{why} (BTM_REQUIRE_KERNEL is set)"
        );
        eprintln!("{why}");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let logdir = tmp.path().join("log");
    let mut log = Log::open_append(&logdir).unwrap();
    let file = |id, mode, uid, gid| Entry::File { id, mode, uid, gid };
    log.append(CutRecord {
        height: 1,
        time_unix_ms: 1,
        ops: vec![
            put(
                "shared",
                Entry::Dir {
                    mode: 0o2775,
                    uid: 0,
                    gid: 0,
                },
            ),
            put("shared/suid", file(1, 0o4755, 0, 0)),
            put("sgid", file(2, 0o2755, 1000, 1000)),
            put("plain", file(3, 0o640, 1000, 0)),
            NsOp::SetSize { id: 1, size: 5 },
        ],
        extents: vec![ExtentData {
            id: 1,
            offset: 0,
            bytes: ExtentBytes::Data(b"#!/x\n".to_vec()),
        }],
    })
    .unwrap();
    drop(log);
    let log = Log::open_read(&logdir).unwrap();
    let store = tmp.path().join("store");
    let url = format!("file://{}", store.display());
    let remote = Remote::open(&url).unwrap();
    push(
        &log,
        &remote,
        &PushOptions {
            name: "v".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let opts = ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    };

    // By default: no set-id bit, and what root owned goes to the target's owner (4321:4322).
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    nix::unistd::chown(&out, Some(4321.into()), Some(4322.into())).unwrap();
    let r = replay(&remote, "v", None, false, &out, &opts).unwrap();
    assert_eq!(r.privileges_dropped, 4, "{r:?}");
    assert_eq!(stat(&out.join("shared")), (0o775, 4321, 4322));
    assert_eq!(stat(&out.join("shared/suid")), (0o755, 4321, 4322));
    assert_eq!(stat(&out.join("sgid")), (0o755, 1000, 1000));
    assert_eq!(stat(&out.join("plain")), (0o640, 1000, 4322));
    assert_eq!(std::fs::read(out.join("shared/suid")).unwrap(), b"#!/x\n");

    // Asked for: as recorded.
    let remote = Remote::open(&url).unwrap().with_restore_privileged(true);
    let all = tmp.path().join("all");
    std::fs::create_dir(&all).unwrap();
    nix::unistd::chown(&all, Some(4321.into()), Some(4322.into())).unwrap();
    let r = replay(&remote, "v", None, false, &all, &opts).unwrap();
    assert_eq!(r.privileges_dropped, 0);
    assert_eq!(stat(&all.join("shared")), (0o2775, 0, 0));
    assert_eq!(stat(&all.join("shared/suid")), (0o4755, 0, 0));
    assert_eq!(stat(&all.join("sgid")), (0o2755, 1000, 1000));
    assert_eq!(stat(&all.join("plain")), (0o640, 1000, 0));
    // And the local replay of the log is unchanged (the log is the node's own).
    let local = tmp.path().join("local");
    log.replay(1, &local, &opts).unwrap();
    assert_eq!(stat(&local.join("shared/suid")), (0o4755, 0, 0));
}
