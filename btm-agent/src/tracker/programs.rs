//! Every program the tracker attaches, and where: (program, kind, target, required). A
//! program that is not required is skipped, with a debug line, where it cannot attach (the
//! page-fault tracepoints, system calls a kernel does not have).
use super::Kind;

pub(super) fn table(fs: &str) -> Vec<(&'static str, Kind, &'static str, bool)> {
    let mut v = vec![
        ("btm_dirty_folio", Kind::Btf, "writeback_dirty_folio", true),
        ("btm_fault_user", Kind::Btf, "page_fault_user", false),
        ("btm_fault_kernel", Kind::Btf, "page_fault_kernel", false),
        ("btm_enter_mmap", Kind::Tp, "syscalls/sys_enter_mmap", true),
        ("btm_fork", Kind::Btf, "sched_process_fork", true),
        // The fault probe's mapping cache is only as good as these (vmas.rs).
        ("btm_exec", Kind::Btf, "sched_process_exec", true),
        ("btm_munmap", Kind::Tp, "syscalls/sys_enter_munmap", true),
        ("btm_mremap", Kind::Tp, "syscalls/sys_enter_mremap", true),
        (
            "btm_remap_file_pages",
            Kind::Tp,
            "syscalls/sys_enter_remap_file_pages",
            true,
        ),
        ("btm_shmat", Kind::Tp, "syscalls/sys_enter_shmat", true),
        ("btm_exit_mmap", Kind::Tp, "syscalls/sys_exit_mmap", true),
        (
            "btm_exit_munmap",
            Kind::Tp,
            "syscalls/sys_exit_munmap",
            true,
        ),
        (
            "btm_exit_mremap",
            Kind::Tp,
            "syscalls/sys_exit_mremap",
            true,
        ),
        (
            "btm_exit_remap_file_pages",
            Kind::Tp,
            "syscalls/sys_exit_remap_file_pages",
            true,
        ),
        ("btm_exit_shmat", Kind::Tp, "syscalls/sys_exit_shmat", true),
        (
            "btm_exit_madvise",
            Kind::Tp,
            "syscalls/sys_exit_madvise",
            true,
        ),
        ("btm_iomap_iter", Kind::Btf, "iomap_iter", true),
        ("btm_uring_submit", Kind::Btf, "io_uring_submit_req", true),
        ("btm_uring_complete", Kind::Btf, "io_uring_complete", true),
        (
            "btm_fallocate",
            Kind::Tp,
            "syscalls/sys_enter_fallocate",
            true,
        ),
        (
            "btm_ftruncate",
            Kind::Tp,
            "syscalls/sys_enter_ftruncate",
            true,
        ),
        (
            "btm_truncate",
            Kind::Tp,
            "syscalls/sys_enter_truncate",
            true,
        ),
        (
            "btm_copy_file_range",
            Kind::Tp,
            "syscalls/sys_enter_copy_file_range",
            true,
        ),
        ("btm_ioctl", Kind::Tp, "syscalls/sys_enter_ioctl", true),
        (
            "btm_exit_fallocate",
            Kind::Tp,
            "syscalls/sys_exit_fallocate",
            true,
        ),
        (
            "btm_exit_ftruncate",
            Kind::Tp,
            "syscalls/sys_exit_ftruncate",
            true,
        ),
        (
            "btm_exit_copy_file_range",
            Kind::Tp,
            "syscalls/sys_exit_copy_file_range",
            true,
        ),
        ("btm_exit_ioctl", Kind::Tp, "syscalls/sys_exit_ioctl", true),
        ("btm_madvise", Kind::Tp, "syscalls/sys_enter_madvise", true),
        (
            "btm_process_vm_writev",
            Kind::Tp,
            "syscalls/sys_enter_process_vm_writev",
            true,
        ),
        ("btm_ptrace", Kind::Tp, "syscalls/sys_enter_ptrace", true),
        (
            "btm_enter_openat",
            Kind::Tp,
            "syscalls/sys_enter_openat",
            true,
        ),
        (
            "btm_exit_openat",
            Kind::Tp,
            "syscalls/sys_exit_openat",
            true,
        ),
        (
            "btm_enter_openat2",
            Kind::Tp,
            "syscalls/sys_enter_openat2",
            true,
        ),
        (
            "btm_exit_openat2",
            Kind::Tp,
            "syscalls/sys_exit_openat2",
            true,
        ),
        ("btm_enter_open", Kind::Tp, "syscalls/sys_enter_open", false),
        ("btm_exit_open", Kind::Tp, "syscalls/sys_exit_open", false),
        (
            "btm_enter_creat",
            Kind::Tp,
            "syscalls/sys_enter_creat",
            false,
        ),
        ("btm_exit_creat", Kind::Tp, "syscalls/sys_exit_creat", false),
    ];
    v.extend(
        FS_PROGRAMS
            .iter()
            .filter(|p| p.0 == fs)
            .map(|&(_, prog, kind, target)| (prog, kind, target, true)),
    );
    v
}

/// Programs on one filesystem's own tracepoints: (filesystem, program, kind, target). Only
/// the tracked volume's are attached, and they are required there. Elsewhere they would only
/// return at the device check, on every event of the host's other filesystems (the system
/// disk's writes, for one).
const FS_PROGRAMS: [(&str, &str, Kind, &str); 6] = [
    (
        "ext4",
        "btm_ext4_da_write_begin",
        Kind::Tp,
        "ext4/ext4_da_write_begin",
    ),
    (
        "ext4",
        "btm_ext4_write_begin",
        Kind::Tp,
        "ext4/ext4_write_begin",
    ),
    (
        "ext4",
        "btm_ext4_truncate",
        Kind::Btf,
        "ext4_truncate_enter",
    ),
    (
        "btrfs",
        "btm_btrfs_truncate_regular",
        Kind::Btf,
        "btrfs_truncate_show_fi_regular",
    ),
    (
        "btrfs",
        "btm_btrfs_truncate_inline",
        Kind::Btf,
        "btrfs_truncate_show_fi_inline",
    ),
    (
        "xfs",
        "btm_xfs_itruncate",
        Kind::Tp,
        "xfs/xfs_itruncate_extents_start",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_volume_filesystem_programs_are_attached() {
        for fs in ["ext4", "xfs", "btrfs"] {
            let t = table(fs);
            for &(owner, prog, _, _) in &FS_PROGRAMS {
                let entry = t.iter().find(|e| e.0 == prog);
                if owner == fs {
                    assert!(matches!(entry, Some(e) if e.3), "{prog} required on {fs}");
                } else {
                    assert!(entry.is_none(), "{prog} attached on {fs}");
                }
            }
            assert!(t.iter().any(|e| e.0 == "btm_iomap_iter" && e.3));
        }
    }
}
