//! Offsite retention of its own and pins (issue 18), with a real log, real compaction and a
//! `file://` store: heights the log's retention and compaction removed stay restorable offsite
//! (byte for byte, after a prune with no grace) while remote retention keeps them; pinned
//! heights survive every retention on both sides until unpinned; without remote options the
//! remote still mirrors the log; and a rollback over a pin is refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use btm_agent::cmd::exit::{Code, classify};
use btm_agent::cmd::offsite::RemoteRetentionArgs;
use btm_agent::cmd::pins::{PinArgs, pin, unpin};
use btm_agent::log::{Log, ReplayOptions, read_pins};
use btm_agent::remote::{self, PushOptions, Remote, RemoteKey, list_heights};
use btm_agent::retention::{Algo, Policy};
use btm_log::testing::{noise, record};

/// Height `h` rewrites file `f<h % 3 + 1>` with content only `h` has.
fn content(h: u64) -> Vec<u8> {
    noise(h, 20_000 + h as usize * 100)
}

/// The files of the volume at height `h`, as written: each file holds what the last height
/// at or below `h` that wrote it wrote.
fn files_at(h: u64) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for x in 1..=h {
        out.insert(format!("f{}", x % 3 + 1), content(x));
    }
    out
}

fn no_sync() -> ReplayOptions {
    ReplayOptions {
        progress: false,
        sync: false,
        ..Default::default()
    }
}

/// A log at `dir/log`, a `file://` store at `dir/store`, and the log's local retention (fair,
/// keep `cap`), applied as the agent applies it after each height.
struct Setup {
    dir: PathBuf,
    log: Option<Log>,
    local: Policy,
    remote: Remote,
}

impl Setup {
    fn new(tmp: &Path, local_cap: usize) -> Setup {
        let remote = Remote::open(&format!("file://{}", tmp.join("store").display())).unwrap();
        Setup::with_remote(tmp, local_cap, remote)
    }

    fn with_remote(tmp: &Path, local_cap: usize, remote: Remote) -> Setup {
        let dir = tmp.join("log");
        Setup {
            log: Some(Log::open_append(&dir).unwrap()),
            dir,
            local: Policy::new(1, local_cap, Algo::Fair).unwrap(),
            remote,
        }
    }

    /// Cuts height `h`, then applies local retention (pins set aside).
    fn cut(&mut self, h: u64) {
        let log = self.log.as_mut().unwrap();
        log.append(record(h, h % 3 + 1, content(h))).unwrap();
        let hs: Vec<u64> = log.heights().iter().map(|i| i.height).collect();
        let pins = read_pins(&self.dir).unwrap();
        log.drop_heights(&self.local.to_delete_unpinned(&hs, &pins))
            .unwrap();
    }

    /// Folds the dropped records away, as the agent's compaction does.
    fn compact(&mut self) {
        let (log, rep) = self.log.take().unwrap().compact().unwrap();
        assert!(rep.dropped_records > 0, "{rep:?}");
        self.log = Some(log);
    }

    fn push(&self, remote_cap: Option<usize>) -> remote::PushReport {
        self.try_push(remote_cap, false).unwrap()
    }

    fn try_push(
        &self,
        remote_cap: Option<usize>,
        allow_removals: bool,
    ) -> Result<remote::PushReport, remote::RemoteError> {
        let opts = PushOptions {
            allow_removals,
            name: "v".into(),
            remote_retention: RemoteRetentionArgs {
                remote_cap,
                ..Default::default()
            }
            .retention()
            .unwrap(),
            ..Default::default()
        };
        remote::push(&Log::open_read(&self.dir).unwrap(), &self.remote, &opts)
    }

    fn local_heights(&self) -> Vec<u64> {
        let log = self.log.as_ref().unwrap();
        log.heights().iter().map(|i| i.height).collect()
    }

    fn remote_heights(&self) -> Vec<u64> {
        (list_heights(&self.remote, "v", None).unwrap().iter())
            .map(|h| h.height)
            .collect()
    }

    /// Pointer objects of the volume (more than one per height would be a stale pointer).
    fn pointer_files(&self, tmp: &Path) -> usize {
        std::fs::read_dir(tmp.join("store/volumes/v/heights"))
            .unwrap()
            .count()
    }

    fn pin_args(&self, height: u64) -> PinArgs {
        PinArgs {
            height,
            log: self.dir.clone(),
            json: false,
        }
    }
}

/// Restores height `h` from the remote and checks every file against what was written at `h`.
fn assert_restores(remote: &Remote, tmp: &Path, h: u64) {
    let into = tmp.join(format!("restored-{h}"));
    remote::replay(remote, "v", Some(h), true, &into, &no_sync()).unwrap();
    let mut got = BTreeMap::new();
    for e in std::fs::read_dir(&into).unwrap() {
        let e = e.unwrap();
        got.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read(e.path()).unwrap(),
        );
    }
    let want = files_at(h);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "files at height {h}"
    );
    for (name, bytes) in &want {
        assert!(got[name] == *bytes, "{name} restored at height {h} differs");
    }
}

#[test]
fn remote_retention_keeps_heights_the_log_dropped_and_they_restore_exactly_after_prune() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Setup::new(tmp.path(), 2);
    for h in 1..=10 {
        s.cut(h);
        if h % 3 == 1 && h > 1 {
            s.compact();
        }
        let rep = s.push(Some(6));
        assert_eq!(rep.newest_height, Some(h));
    }
    // The log kept its newest two; compaction folded the others away.
    assert_eq!(s.local_heights(), vec![9, 10]);
    // The remote kept its own newest six, four of which the log no longer has.
    assert_eq!(s.remote_heights(), (5..=10).collect::<Vec<_>>());
    assert_eq!(s.pointer_files(tmp.path()), 6, "one pointer per height");
    for h in 5..=8 {
        assert!(!s.local_heights().contains(&h), "height {h} is still local");
    }
    // A prune with no grace keeps exactly what the pointers reach: their old chains.
    let pr = remote::prune(&s.remote, Duration::ZERO, false).unwrap();
    assert!(
        pr.records_deleted > 0,
        "older heights' records went: {pr:?}"
    );
    for h in 5..=10 {
        assert_restores(&s.remote, tmp.path(), h);
    }
}

#[test]
fn a_compaction_that_changes_a_kept_height_record_replaces_its_remote_pointer() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Setup::new(tmp.path(), 2);
    for h in 1..=4 {
        s.cut(h);
        s.push(Some(10));
    }
    let before = list_heights(&s.remote, "v", None).unwrap();
    // Dropped 1 and 2 fold into 3, whose record (and so its remote name) changes.
    s.compact();
    let rep = s.push(Some(10));
    let after = list_heights(&s.remote, "v", None).unwrap();
    let record_of = |v: &[remote::RemoteHeight], h: u64| {
        v.iter().find(|x| x.height == h).unwrap().record.clone()
    };
    assert_ne!(record_of(&before, 3), record_of(&after, 3));
    assert_eq!(record_of(&before, 1), record_of(&after, 1));
    assert!(
        rep.pointers_written >= 1 && rep.pointers_removed >= 1,
        "{rep:?}"
    );
    assert_eq!(s.remote_heights(), vec![1, 2, 3, 4]);
    assert_eq!(
        s.pointer_files(tmp.path()),
        4,
        "the old pointer of 3 is gone"
    );
    remote::prune(&s.remote, Duration::ZERO, false).unwrap();
    for h in 1..=4 {
        assert_restores(&s.remote, tmp.path(), h);
    }
}

#[test]
fn a_pinned_height_survives_retention_on_both_sides_until_unpinned() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Setup::new(tmp.path(), 2);
    for h in 1..=3 {
        s.cut(h);
    }
    // 1 was dropped by local retention: it cannot be pinned, and the error says so.
    let e = pin(s.pin_args(1)).unwrap_err();
    assert_eq!(classify(&e), Code::HeightNotFound);
    assert!(format!("{e:#}").contains("removed from the log"), "{e:#}");
    pin(s.pin_args(3)).unwrap();
    for h in 4..=10 {
        s.cut(h);
        if h % 3 == 0 {
            s.compact();
        }
        s.push(Some(3));
    }
    // Locally: kept beside the newest two (a pin takes no slot).
    assert_eq!(s.local_heights(), vec![3, 9, 10]);
    // Offsite: kept beside the remote's newest three, shown as pinned, with its pin object.
    assert_eq!(s.remote_heights(), vec![3, 8, 9, 10]);
    let listed = list_heights(&s.remote, "v", None).unwrap();
    let pinned: Vec<u64> = listed
        .iter()
        .filter(|h| h.pinned)
        .map(|h| h.height)
        .collect();
    assert_eq!(pinned, vec![3]);
    assert!(
        tmp.path()
            .join("store/volumes/v/pins/00000000000000000003.json")
            .is_file()
    );
    remote::prune(&s.remote, Duration::ZERO, false).unwrap();
    assert_restores(&s.remote, tmp.path(), 3);

    // Unpinned: the next height's retention drops it here, the next push removes it offsite.
    unpin(s.pin_args(3)).unwrap();
    s.cut(11);
    assert_eq!(s.local_heights(), vec![10, 11]);
    let rep = s.push(Some(3));
    assert_eq!(rep.pins_removed, 1, "{rep:?}");
    assert_eq!(s.remote_heights(), vec![9, 10, 11]);
    assert!(
        !tmp.path()
            .join("store/volumes/v/pins")
            .join("00000000000000000003.json")
            .exists()
    );
}

#[test]
fn a_deleted_pins_file_does_not_unpin_offsite() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Setup::new(tmp.path(), 2);
    for h in 1..=3 {
        s.cut(h);
    }
    pin(s.pin_args(3)).unwrap();
    s.push(Some(2));
    // Unpinning the last pin keeps the file (empty), so a missing one means a lost list.
    pin(s.pin_args(2)).unwrap();
    unpin(s.pin_args(2)).unwrap();
    assert!(s.dir.join(btm_agent::log::PINS_FILE).is_file());
    std::fs::remove_file(s.dir.join(btm_agent::log::PINS_FILE)).unwrap();
    for h in 4..=6 {
        s.cut(h);
        let rep = s.push(Some(2));
        assert_eq!(rep.pins_removed, 0, "{rep:?}");
    }
    // Offsite, 3 is still pinned and its pointer kept beside the newest two.
    assert_eq!(s.remote_heights(), vec![3, 5, 6]);
    let pinned: Vec<u64> = list_heights(&s.remote, "v", None)
        .unwrap()
        .iter()
        .filter(|h| h.pinned)
        .map(|h| h.height)
        .collect();
    assert_eq!(pinned, vec![3]);
    // The file back, naming another height: the next push makes the remote's pins its list.
    pin(s.pin_args(6)).unwrap();
    s.cut(7);
    let rep = s.push(Some(2));
    assert_eq!((rep.pins_written, rep.pins_removed), (1, 1), "{rep:?}");
    // 3 went; 6 is pinned and takes no slot, so the newest two unpinned are 5 and 7.
    assert_eq!(s.remote_heights(), vec![5, 6, 7]);
}

#[test]
fn the_mass_removal_abort_covers_what_remote_retention_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Setup::new(tmp.path(), 2);
    for h in 1..=8 {
        s.cut(h);
        s.push(Some(8));
    }
    assert_eq!(s.remote_heights(), (1..=8).collect::<Vec<_>>());
    // A much smaller remote cap would remove 6 of 8 heights: refused, nothing changed.
    let e = s.try_push(Some(2), false).unwrap_err();
    assert!(matches!(e, remote::RemoteError::Refused(_)), "{e}");
    assert!(e.to_string().contains("--allow-removals"), "{e}");
    assert_eq!(s.remote_heights(), (1..=8).collect::<Vec<_>>());
    let rep = s.try_push(Some(2), true).unwrap();
    assert_eq!(rep.pointers_removed, 6, "{rep:?}");
    assert_eq!(s.remote_heights(), vec![7, 8]);
}

#[test]
fn remote_retention_drops_heights_a_local_rollback_abandoned() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Setup::new(tmp.path(), 10);
    for h in 1..=6 {
        s.cut(h);
        s.push(Some(10));
    }
    // Rolled back to 4: heights 5 and 6 belong to a history the log left.
    let log = s.log.take().unwrap().truncate_after(4).unwrap();
    s.log = Some(log);
    s.push(Some(10));
    assert_eq!(s.remote_heights(), vec![1, 2, 3, 4]);
    // The chain reaches 5 again with other content: its new pointer replaces nothing stale.
    let log = s.log.as_mut().unwrap();
    log.append(record(5, 9, noise(555, 1000))).unwrap();
    s.push(Some(10));
    assert_eq!(s.remote_heights(), vec![1, 2, 3, 4, 5]);
    assert_eq!(s.pointer_files(tmp.path()), 5);
    let into = tmp.path().join("new5");
    remote::replay(&s.remote, "v", Some(5), true, &into, &no_sync()).unwrap();
    assert_eq!(std::fs::read(into.join("f9")).unwrap(), noise(555, 1000));
}

#[test]
fn without_remote_options_push_mirrors_local_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Setup::new(tmp.path(), 2);
    for h in 1..=8 {
        s.cut(h);
        if h == 5 {
            s.compact();
        }
        s.push(None);
        assert_eq!(s.remote_heights(), s.local_heights(), "after height {h}");
    }
    assert_eq!(s.remote_heights(), vec![7, 8]);
    assert_eq!(s.pointer_files(tmp.path()), 2);
    remote::prune(&s.remote, Duration::ZERO, false).unwrap();
    for h in [7, 8] {
        assert_restores(&s.remote, tmp.path(), h);
    }
}

#[test]
fn a_rollback_over_a_pinned_height_is_refused_and_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mut s = Setup::new(tmp.path(), 10);
    for h in 1..=5 {
        s.cut(h);
    }
    pin(s.pin_args(4)).unwrap();
    drop(s.log.take());
    let volume = tmp.path().join("volume");
    std::fs::create_dir(&volume).unwrap();
    let args = |dry_run| btm_agent::cmd::logs::RollbackArgs {
        volume: volume.clone(),
        log: Some(s.dir.clone()),
        to: Some(2),
        exact: false,
        mode: btm_agent::cmd::run::Mode::Auto,
        socket: tmp.path().join("no-agent.sock"),
        json: false,
        dry_run,
        preserve: Default::default(),
    };
    for dry_run in [true, false] {
        let e = btm_agent::cmd::logs::rollback(args(dry_run)).unwrap_err();
        let msg = format!("{e:#}");
        assert!(msg.contains("pinned height 4"), "{msg}");
        assert!(msg.contains("btm-agent unpin 4"), "{msg}");
        assert_eq!(classify(&e), Code::Failure);
    }
    let log = Log::open_read(&s.dir).unwrap();
    assert_eq!(log.heights().len(), 5, "nothing was removed");
    // -C too.
    let e = btm_agent::cmd::clean::clean_log(&s.dir, true).unwrap_err();
    assert!(format!("{e:#}").contains("btm-agent unpin 4"), "{e:#}");
}

#[test]
fn pins_offsite_are_sealed_in_a_keyed_store() {
    let tmp = tempfile::tempdir().unwrap();
    let key = RemoteKey::generate(&tmp.path().join("key")).unwrap();
    let remote = Remote::open(&format!("file://{}", tmp.path().join("store").display()))
        .unwrap()
        .with_key(Some(key));
    let mut s = Setup::with_remote(tmp.path(), 10, remote);
    for h in 1..=3 {
        s.cut(h);
    }
    pin(s.pin_args(2)).unwrap();
    s.push(None);
    let pin_obj = tmp
        .path()
        .join("store/volumes/v/pins/00000000000000000002.json");
    let stored = std::fs::read(&pin_obj).unwrap();
    assert!(
        !String::from_utf8_lossy(&stored).contains("height"),
        "the pin is sealed"
    );
    assert_eq!(
        btm_agent::remote::remote_pins(&s.remote, "v").unwrap(),
        [2].into()
    );
    assert!(
        remote::verify(&s.remote, Some("v"), None)
            .unwrap()
            .problems
            .is_empty()
    );
    // A pin written without the key is damage to verify, and stops neither list nor restore.
    std::fs::write(
        pin_obj.with_file_name("00000000000000000001.json"),
        br#"{"format":1,"height":1,"pushed_unix_ms":0}"#,
    )
    .unwrap();
    assert!(btm_agent::remote::remote_pins(&s.remote, "v").is_err());
    let rep = remote::verify(&s.remote, Some("v"), None).unwrap();
    assert!(
        rep.problems
            .iter()
            .any(|p| p.contains("pins/00000000000000000001.json")),
        "{rep:?}"
    );
    assert_eq!(s.remote_heights(), vec![1, 2, 3]);
    assert_restores(&s.remote, tmp.path(), 2);
}
