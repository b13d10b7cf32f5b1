//! What the agent hands to the log at each height, and the rules every path must obey.

/// Paths are relative, as raw bytes (any bytes allowed except NUL; '/' separates components).
pub type RelPath = Vec<u8>;

/// Chosen by the agent; stable while a file (inode) lives; never reused.
pub type FileId = u64;

/// What lives at a path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    /// Hard links: several paths, same id. Mode and ownership belong to the file (inode): the
    /// latest `Put` of an id sets them for every path of that id.
    File {
        id: FileId,
        mode: u32,
        uid: u32,
        gid: u32,
    },
    Symlink {
        target: Vec<u8>,
        uid: u32,
        gid: u32,
    },
}

/// A namespace operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NsOp {
    /// Create or replace whatever is at `path` (parents exist already, or appear earlier in ops).
    /// A File with an id never seen before starts empty (size 0).
    Put { path: RelPath, entry: Entry },
    /// Remove the entry at `path`; a directory is removed with everything under it.
    Remove { path: RelPath },
    /// Set the size of file `id` (shrink drops data beyond; grow reads as zeros).
    SetSize { id: FileId, size: u64 },
}

/// The bytes of an extent: real data, or a run of zeros (a hole).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtentBytes {
    Data(Vec<u8>),
    Zero(u64),
}

impl ExtentBytes {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            ExtentBytes::Data(d) => d.len() as u64,
            ExtentBytes::Zero(n) => *n,
        }
    }

    /// True for a zero-length extent.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Bytes of file `id` starting at `offset`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtentData {
    pub id: FileId,
    pub offset: u64,
    pub bytes: ExtentBytes,
}

/// Everything that changed at one height.
#[derive(Clone, Debug, Default)]
pub struct CutRecord {
    pub height: u64,
    pub time_unix_ms: u64,
    /// Applied first, in order.
    pub ops: Vec<NsOp>,
    /// Applied after ops, in order (later wins). Bytes beyond the file's size at that point are
    /// dropped: set the size with [`NsOp::SetSize`] first.
    pub extents: Vec<ExtentData>,
}

/// Why a path is refused, or `Ok` when it is a safe relative path: non-empty, not absolute, no
/// empty, "." or ".." components, no NUL byte.
pub fn check_path(path: &[u8]) -> Result<(), &'static str> {
    if path.is_empty() {
        return Err("the path is empty");
    }
    if path[0] == b'/' {
        return Err("the path is absolute");
    }
    if path.contains(&0) {
        return Err("the path contains a NUL byte");
    }
    for comp in path.split(|&b| b == b'/') {
        match comp {
            b"" => return Err("the path has an empty component (\"//\" or a trailing '/')"),
            b"." => return Err("the path has a \".\" component"),
            b".." => return Err("the path has a \"..\" component"),
            _ => {}
        }
    }
    Ok(())
}

/// Why a symlink target is refused: it must be non-empty and NUL-free. (Targets may be absolute or
/// contain ".."; replay never follows symlinks, so a target cannot make it write anywhere.)
pub fn check_symlink_target(target: &[u8]) -> Result<(), &'static str> {
    if target.is_empty() {
        return Err("the symlink target is empty");
    }
    if target.contains(&0) {
        return Err("the symlink target contains a NUL byte");
    }
    Ok(())
}

/// A path for messages: UTF-8 shown with control characters escaped, other bytes as `\xNN`.
pub fn display_path(path: &[u8]) -> String {
    match std::str::from_utf8(path) {
        Ok(s) => s.escape_debug().to_string(),
        Err(_) => path.escape_ascii().to_string(),
    }
}

/// The parent of a relative path ("a/b/c" -> "a/b"), `None` at the top.
pub(crate) fn parent_of(path: &[u8]) -> Option<&[u8]> {
    path.iter().rposition(|&b| b == b'/').map(|i| &path[..i])
}

/// The last component of a relative path.
pub(crate) fn file_name_of(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Orders paths component by component (a directory, then everything under it, then its next
/// sibling), which is a depth-first walk. Paths never hold NUL, so mapping '/' to 0 does it.
pub fn cmp_components(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    let key = |c: &u8| if *c == b'/' { 0 } else { *c };
    a.iter().map(key).cmp(b.iter().map(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in [
            &b"a"[..],
            b"a/b",
            b"a b/c\nd",
            b"\xff\xfe",
            b"...",
            b".a/..b",
        ] {
            assert!(check_path(ok).is_ok(), "{:?}", display_path(ok));
        }
        for bad in [
            &b""[..],
            b"/abs",
            b"../x",
            b"a/../../b",
            b"a//b",
            b"a/",
            b".",
            b"a/./b",
            b"a\0b",
        ] {
            assert!(check_path(bad).is_err(), "{:?}", display_path(bad));
        }
    }

    #[test]
    fn component_order() {
        let mut v: Vec<&[u8]> = vec![b"a b", b"a/c", b"a", b"a/b", b"a-", b"a/b/c"];
        v.sort_by(|a, b| cmp_components(a, b));
        assert_eq!(v, vec![&b"a"[..], b"a/b", b"a/b/c", b"a/c", b"a b", b"a-"]);
        assert_eq!(parent_of(b"a/b/c"), Some(&b"a/b"[..]));
        assert_eq!(parent_of(b"a"), None);
        assert_eq!(file_name_of(b"a/b/c"), b"c");
    }
}
