//! One line of /proc/PID/maps (`start-end perms offset major:minor inode path`), read the
//! same way by the start-up seed of mapping processes, the prefault and the resolution of
//! deferred write faults.

/// What btm asks of one mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct MapsLine {
    pub start: u64,
    pub end: u64,
    /// File offset mapped at `start`.
    pub offset: u64,
    /// `MAP_SHARED` (perms end in `s`).
    pub shared: bool,
    pub major: u32,
    pub minor: u32,
    /// 0 for anonymous mappings.
    pub ino: u64,
}

impl MapsLine {
    /// None for a line that is not a mapping in that format.
    pub fn parse(line: &str) -> Option<MapsLine> {
        let mut f = line.split_ascii_whitespace();
        let (range, perms, off, dev, ino) = (f.next()?, f.next()?, f.next()?, f.next()?, f.next()?);
        let (s, e) = range.split_once('-')?;
        let (maj, min) = dev.split_once(':')?;
        let hex = |v: &str| u64::from_str_radix(v, 16).ok();
        Some(MapsLine {
            start: hex(s)?,
            end: hex(e)?,
            offset: hex(off)?,
            shared: perms.as_bytes().get(3) == Some(&b's'),
            major: u32::from_str_radix(maj, 16).ok()?,
            minor: u32::from_str_radix(min, 16).ok()?,
            ino: ino.parse().ok()?,
        })
    }

    /// Is the mapped object on the device `major:minor`?
    pub fn on_device(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) == (major, minor)
    }

    /// A shared mapping of a file on the device `major:minor`: stores through it reach the
    /// volume.
    pub fn shares_file_on(&self, major: u32, minor: u32) -> bool {
        self.shared && self.ino != 0 && self.on_device(major, minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_a_line() {
        let l = MapsLine::parse("7f0000000000-7f0000400000 rw-s 00200000 fd:01 12 /vol/state.mdb")
            .unwrap();
        assert_eq!(
            l,
            MapsLine {
                start: 0x7f00_0000_0000,
                end: 0x7f00_0040_0000,
                offset: 0x20_0000,
                shared: true,
                major: 0xfd,
                minor: 1,
                ino: 12,
            }
        );
        assert!(l.shares_file_on(0xfd, 1) && !l.shares_file_on(0xfd, 2));
        let anon = MapsLine::parse("7f0000400000-7f0000600000 rw-p 00000000 00:00 0").unwrap();
        assert!(!anon.shared && !anon.shares_file_on(0, 0));
        assert_eq!(MapsLine::parse("garbage"), None);
    }
}
