//! Pins: heights an operator wants kept whatever retention says (`btm-agent pin H`).
//!
//! They live beside the log in `LOGDIR/pins`, one decimal height per line, so that every
//! process that drops heights (the agent's retention, `compact --cap`, `-K`, rollbacks) and
//! `push` (which publishes them offsite) reads the same list without going through the
//! appender lock. The file is replaced atomically (temporary file, fsync, rename, fsync of the
//! directory) and readable by root only (mode 0600), like the log itself.

use std::collections::BTreeSet;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{LogError, fsync_dir};

/// `LOGDIR/pins`.
pub const PINS_FILE: &str = "pins";
/// Its temporary name while it is being replaced.
pub const PINS_TMP: &str = "pins.tmp";

/// The pinned heights of the log at `dir` (none when there is no pins file). A line that is
/// not a height is an error, not an empty list: a damaged file must not unpin anything.
pub fn read_pins(dir: &Path) -> Result<BTreeSet<u64>, LogError> {
    Ok(read_pins_file(dir)?.unwrap_or_default())
}

/// [`read_pins`], telling a missing file (`None`) from an empty list. Once a log has had a
/// pin its file stays (empty when everything is unpinned), so a missing file where the remote
/// holds pins means the list was lost, not emptied: `push` keeps those pins.
pub fn read_pins_file(dir: &Path) -> Result<Option<BTreeSet<u64>>, LogError> {
    let path = dir.join(PINS_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(LogError::io(&path, e)),
    };
    let mut out = BTreeSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let h = line.parse().map_err(|_| {
            let msg = format!(
                "line {} is {line:?}, not a height: fix or remove the file (`btm-agent pin` \
                 rewrites it)",
                i + 1
            );
            LogError::io(
                &path,
                std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
            )
        })?;
        out.insert(h);
    }
    Ok(Some(out))
}

/// Replaces the pins of the log at `dir` with `pins`. With none the file stays, holding only
/// its header line: see [`read_pins_file`].
pub fn write_pins(dir: &Path, pins: &BTreeSet<u64>) -> Result<(), LogError> {
    let path = dir.join(PINS_FILE);
    let tmp = dir.join(PINS_TMP);
    let mut text = String::from("# heights kept whatever retention says (btm-agent pin/unpin)\n");
    text.extend(pins.iter().map(|h| format!("{h}\n")));
    let _ = fs::remove_file(&tmp);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
        .map_err(|e| LogError::io(&tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| LogError::io(&path, e))?;
    fsync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pins_round_trip_private_and_kept_when_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_pins(dir.path()).unwrap().is_empty());
        assert_eq!(read_pins_file(dir.path()).unwrap(), None);
        let pins: BTreeSet<u64> = [30, 7].into();
        write_pins(dir.path(), &pins).unwrap();
        assert_eq!(read_pins(dir.path()).unwrap(), pins);
        let mode = fs::metadata(dir.path().join(PINS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(!dir.path().join(PINS_TMP).exists());
        write_pins(dir.path(), &BTreeSet::new()).unwrap();
        assert_eq!(read_pins_file(dir.path()).unwrap(), Some(BTreeSet::new()));
    }

    #[test]
    fn a_damaged_pins_file_is_an_error_not_an_empty_list() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(PINS_FILE), "12\nabc\n").unwrap();
        let e = read_pins(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a height"), "{e}");
    }
}
