//! Removing what the height does not have, except what `preserve` covers.

use super::*;

impl Replayer<'_> {
    /// Whether `preserve` covers `path` (noted for the report).
    pub(super) fn preserved(&mut self, path: &[u8]) -> bool {
        let yes = self.preserve.matches(path);
        if yes {
            self.kept.insert(display_path(path));
        }
        yes
    }

    /// Removes an entry that stands where the height has another one.
    pub(super) fn remove(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        is_dir: bool,
        path: &[u8],
    ) -> Result<(), LogError> {
        if self.remove_tree(dir, name, is_dir, path)? {
            return Ok(());
        }
        Err(self.err(
            path,
            "the height has another kind of entry here, but preserved paths lie under this \
             directory (--preserve): move them or narrow the glob",
        ))
    }

    /// Removes an entry and what is under it, except preserved paths (and the directories
    /// holding them); true when it is gone.
    pub(super) fn remove_tree(
        &mut self,
        dir: &OwnedFd,
        name: &[u8],
        is_dir: bool,
        path: &[u8],
    ) -> Result<bool, LogError> {
        if is_dir {
            let sub = openat(dir, name, DIR_FLAGS, Mode::empty())
                .map_err(|e| self.err(path, format!("open directory: {e}")))?;
            if !self.is_root {
                let _ = fchmod(&sub, Mode::from_bits_truncate(0o700));
            }
            let mut all = true;
            for child in
                dirfd::list(&sub).map_err(|e| self.err(path, format!("read directory: {e}")))?
            {
                let cpath = join(path, &child);
                let st = match fstatat(&sub, child.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(s) => s,
                    Err(Errno::ENOENT) => continue,
                    Err(e) => return Err(self.err(&cpath, format!("stat: {e}"))),
                };
                if st.st_dev != self.root_dev {
                    return Err(self.err(
                        &cpath,
                        "another filesystem is mounted here, inside a directory the height does \
                         not have: unmount it first (nothing in it was touched)",
                    ));
                }
                if self.preserved(&cpath) {
                    all = false;
                    continue;
                }
                all &= self.remove_tree(&sub, &child, kind(&st) == SFlag::S_IFDIR, &cpath)?;
            }
            if !all {
                return Ok(false);
            }
            unlinkat(dir, name, UnlinkatFlags::RemoveDir)
                .map_err(|e| self.err(path, format!("rmdir: {e}")))?;
        } else {
            unlinkat(dir, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| self.err(path, format!("unlink: {e}")))?;
        }
        Ok(true)
    }
}
