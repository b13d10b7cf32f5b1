//! Step 7: replay of the last height into a fresh directory, measured twice: with the log
//! evicted from the page cache (a restore after a reboot, or on another host) and with it
//! cached (replay's own work: decode, check, write). Beside them, the disk's rates in the same
//! run: reading the log, and writing the replay's bytes. A replay whose log was left partly
//! cached by the steps before was neither, and its time moved with what those steps did.
use std::{fs::File, io::Read, os::fd::AsRawFd, path::Path, time::Instant};

use super::{Results, gib, limit, tools};

/// Replays `height` of `log` cold, then warm, and measures the disk's rates (into `r`).
pub fn measure(r: &mut Results, bin: &Path, log: &Path, dir: &Path, height: u64) {
    r.replay_height = height;
    let into = dir.join("replay");
    let once = |what: &str| -> Option<(f64, u64)> {
        let _ = std::fs::remove_dir_all(&into);
        let run = tools::timed(
            tools::command(bin)
                .args(["replay", "--log"])
                .arg(log)
                .arg("--to")
                .arg(height.to_string())
                .arg("--into")
                .arg(&into)
                .env("BTM_LOG", "warn"),
        );
        let got = match run {
            Ok((secs, out)) => {
                let bytes = out
                    .split("bytes_written: ")
                    .nth(1)
                    .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
                    .unwrap_or_else(|| tools::tree_bytes(&into));
                println!(
                    "bench: replay of height {height} ({what}): {} in {secs:.2} s",
                    gib(bytes)
                );
                Some((secs, bytes))
            }
            Err(e) => {
                println!("bench: replay ({what}) FAILED: {e:#}");
                None
            }
        };
        let _ = std::fs::remove_dir_all(&into);
        got
    };
    evict(log);
    match once("log not cached") {
        Some((secs, bytes)) => (r.replay_secs, r.replay_bytes) = (secs, bytes),
        None => r
            .errors
            .push(format!("replay --to {height}: see FAILED above")),
    }
    evict(log);
    match read_rate(log) {
        Ok((bytes, rate)) => {
            (r.replay_log_bytes, r.log_read_rate) = (bytes, rate);
            println!("bench: the disk reads the log at {:.0} MB/s", rate / 1e6);
        }
        Err(e) => println!("bench: log read rate not measured: {e}"),
    }
    // The log is cached now (it was just read).
    if let Some((secs, _)) = once("log cached") {
        r.replay_warm_secs = secs;
    }
    if r.replay_bytes > 0 {
        match limit::disk_write_rate(dir, r.replay_bytes) {
            Ok(rate) => {
                r.disk_write_rate = rate;
                println!(
                    "bench: the disk writes {:.0} MB/s sequentially there",
                    rate / 1e6
                );
            }
            Err(e) => println!("bench: disk write rate not measured: {e}"),
        }
    }
}

/// Drops the log's pages from the page cache (they are clean: btm fsyncs what it writes).
fn evict(log: &Path) {
    for (p, _) in tools::tree_files(log) {
        if let Ok(f) = File::open(&p) {
            let _ = f.sync_data();
            // SAFETY: an open fd; no memory is passed.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        }
    }
}

/// Reads every file of the (evicted) log in 1 MiB reads: its bytes, and bytes per second.
fn read_rate(log: &Path) -> std::io::Result<(u64, f64)> {
    let mut buf = vec![0u8; 1 << 20];
    let (t, mut total) = (Instant::now(), 0u64);
    for (p, _) in tools::tree_files(log) {
        let mut f = File::open(&p)?;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok((total, total as f64 / t.elapsed().as_secs_f64().max(1e-9)))
}

/// Seconds a replay of `out` bytes from a log of `log` bytes takes at the disk's rates at
/// best, when it must read the log (one disk: the reads and the writes add up); `None`
/// unless both rates were measured.
pub fn cold_limit_secs(r: &Results) -> Option<f64> {
    (r.log_read_rate > 0.0 && r.disk_write_rate > 0.0).then(|| {
        r.replay_log_bytes as f64 / r.log_read_rate + r.replay_bytes as f64 / r.disk_write_rate
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_read_whole_and_the_cold_limit_adds_both_sides() {
        let dir = std::env::temp_dir().join(format!("btm-replay-rate-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("a"), vec![1u8; 3 << 20]).unwrap();
        std::fs::write(dir.join("sub/b"), vec![2u8; 1000]).unwrap();
        evict(&dir);
        let (bytes, rate) = read_rate(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(bytes, (3 << 20) + 1000);
        assert!(rate > 0.0);
        let r = Results {
            replay_bytes: 2_000_000_000,
            replay_log_bytes: 1_000_000_000,
            log_read_rate: 500e6,
            disk_write_rate: 1000e6,
            ..Default::default()
        };
        assert_eq!(cold_limit_secs(&r), Some(4.0));
        assert_eq!(cold_limit_secs(&Results::default()), None);
    }
}
