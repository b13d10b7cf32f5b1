//! What a restore from an offsite copy does not take from the store unless asked: set-uid and
//! set-gid bits, and ownership by uid or gid 0. A store is written by whoever holds bucket
//! credentials (every node sharing the URL; anyone, for a plaintext store), and a restore
//! usually runs as root: a set-uid root file planted in the store would otherwise become one
//! on the restoring machine. Chain data needs neither; `replay --remote --restore-privileged`
//! restores them as recorded.

use btm_log::{Node, TreeState};

const SET_ID: u32 = 0o6000;

/// Clears set-uid/set-gid bits and gives what uid/gid 0 owns to `owner` (the target
/// directory's owner and group) in `state`; how many entries it changed.
pub(crate) fn strip(state: &mut TreeState, owner: (u32, u32)) -> u64 {
    let mut changed = 0;
    let fix = |mode: Option<&mut u32>, uid: &mut u32, gid: &mut u32| {
        let before = (mode.as_deref().copied(), *uid, *gid);
        if let Some(m) = mode {
            *m &= !SET_ID;
        }
        if *uid == 0 {
            *uid = owner.0;
        }
        if *gid == 0 {
            *gid = owner.1;
        }
        (before.0.map(|m| m & SET_ID != 0).unwrap_or(false)
            || (before.1 == 0 && owner.0 != 0)
            || (before.2 == 0 && owner.1 != 0)) as u64
    };
    for node in state.nodes.values_mut() {
        changed += match node {
            Node::Dir { mode, uid, gid } => fix(Some(mode), uid, gid),
            Node::Symlink { uid, gid, .. } => fix(None, uid, gid),
            Node::File(_) => 0,
        };
    }
    for f in state.files.values_mut() {
        changed += fix(Some(&mut f.mode), &mut f.uid, &mut f.gid);
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use btm_log::FileState;

    #[test]
    fn set_id_bits_and_root_ownership_are_dropped() {
        let mut st = TreeState::default();
        st.nodes.insert(
            b"d".to_vec(),
            Node::Dir {
                mode: 0o2775,
                uid: 0,
                gid: 0,
            },
        );
        st.nodes.insert(
            b"l".to_vec(),
            Node::Symlink {
                target: Box::new(b"x".to_vec()),
                uid: 7,
                gid: 8,
            },
        );
        let file = |mode, uid, gid| FileState {
            mode,
            uid,
            gid,
            size: 0,
            nlink: 1,
            pieces: Default::default(),
        };
        st.files.insert(1, file(0o4755, 0, 0));
        st.files.insert(2, file(0o644, 1000, 1000));
        assert_eq!(strip(&mut st, (1234, 99)), 2);
        assert_eq!(
            st.nodes[&b"d"[..]],
            Node::Dir {
                mode: 0o775,
                uid: 1234,
                gid: 99
            }
        );
        assert_eq!(
            (st.files[&1].mode, st.files[&1].uid, st.files[&1].gid),
            (0o755, 1234, 99)
        );
        assert_eq!(st.files[&2], file(0o644, 1000, 1000));
    }
}
