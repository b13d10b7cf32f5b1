//! `btm-agent track`: load the tracker and print what it sees at each drain.
use std::{
    collections::HashMap,
    io::BufRead,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Result;

use crate::{
    tracker::{DirtySet, Limits, Tracker},
    volume::Mount,
};

#[derive(clap::Args, Debug)]
pub struct TrackArgs {
    /// Mount point of the filesystem to track.
    #[arg(short = 'p', long)]
    pub volume: PathBuf,
    /// Print one JSON object per drain instead of text.
    #[arg(long)]
    pub json: bool,
    /// Drain every SECS seconds (default: on Enter or SIGUSR1).
    #[arg(long, value_name = "SECS")]
    pub every: Option<f64>,
    /// Stop after this many drains (0 = until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
}

pub fn run(args: TrackArgs) -> Result<()> {
    let mount = Mount::at(&args.volume)?;
    let mut tracker = Tracker::start(&mount, Limits::for_volume_bytes(mount.size_bytes()))?;
    eprintln!(
        "tracking {} ({} {}, dev {}:{}); drain with {}",
        mount.mount_point.display(),
        mount.fstype,
        mount.source,
        mount.major,
        mount.minor,
        match args.every {
            Some(s) => format!("every {s}s"),
            None => "Enter or SIGUSR1 (Ctrl-D or SIGINT/SIGTERM to stop)".into(),
        }
    );
    eprintln!("{}", tracker.mmap_policy());
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [libc::SIGINT, libc::SIGTERM] {
        signal_flag(sig, stop.clone(), tx.clone());
    }
    signal_flag(libc::SIGUSR1, Arc::new(AtomicBool::new(false)), tx.clone());
    match args.every {
        Some(secs) => {
            let tx = tx.clone();
            std::thread::spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs_f64(secs));
                    if tx.send(()).is_err() {
                        break;
                    }
                }
            });
        }
        None => {
            let tx = tx.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                for line in std::io::stdin().lock().lines() {
                    if line.is_err() || tx.send(()).is_err() {
                        break;
                    }
                }
                stop.store(true, Ordering::SeqCst);
                let _ = tx.send(());
            });
        }
    }
    let mut n = 0;
    while rx.recv().is_ok() {
        let set = tracker.take()?;
        print_set(&tracker, &set, args.json)?;
        n += 1;
        if stop.load(Ordering::SeqCst) || (args.count > 0 && n >= args.count) {
            break;
        }
    }
    Ok(())
}

fn signal_flag(sig: libc::c_int, flag: Arc<AtomicBool>, tx: std::sync::mpsc::Sender<()>) {
    // A tiny self-pipe via a thread per signal keeps this free of async-signal-unsafe work.
    let mut set = nix::sys::signal::SigSet::empty();
    let s = nix::sys::signal::Signal::try_from(sig).unwrap();
    set.add(s);
    let _ = set.thread_block();
    std::thread::spawn(move || {
        loop {
            if set.wait().is_ok() {
                flag.store(true, Ordering::SeqCst);
                if tx.send(()).is_err() {
                    break;
                }
            }
        }
    });
}

/// Inode -> path for the files under `root` (same filesystem only).
pub fn inode_paths(root: &Path) -> HashMap<u64, PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut map = HashMap::new();
    let mut stack = vec![root.to_path_buf()];
    let dev = std::fs::symlink_metadata(root)
        .map(|m| m.dev())
        .unwrap_or(0);
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.dev() != dev {
                continue;
            }
            if md.is_dir() {
                stack.push(e.path());
            } else {
                map.entry(md.ino())
                    .or_insert_with(|| e.path().strip_prefix(root).unwrap().to_path_buf());
            }
        }
    }
    map
}

fn print_set(tracker: &Tracker, set: &DirtySet, json: bool) -> Result<()> {
    let paths = inode_paths(&tracker.mount().mount_point);
    let stats = tracker.stats()?;
    if json {
        let files: Vec<_> = set
            .files
            .iter()
            .map(|(ino, f)| {
                serde_json::json!({
                    "ino": ino,
                    "path": paths.get(ino).map(|p| p.to_string_lossy().into_owned()),
                    "extents": f.extents(),
                    "tail_from": f.tail_from,
                    "why": f.why,
                })
            })
            .collect();
        println!("{}", serde_json::json!({ "files": files, "stats": stats }));
    } else {
        println!("-- drain: {} files", set.files.len());
        for (ino, f) in &set.files {
            let name = paths
                .get(ino)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "(deleted)".into());
            let ext: Vec<String> = f
                .extents()
                .iter()
                .map(|(o, l)| format!("{o}+{l}"))
                .collect();
            let tail = f
                .tail_from
                .map(|t| format!(" tail>={t}"))
                .unwrap_or_default();
            println!(
                "ino {ino} {name}: {} bytes{tail} [{}]",
                f.block_bytes(),
                ext.join(" ")
            );
        }
        println!("   counters: {}", serde_json::to_string(&stats)?);
    }
    Ok(())
}
