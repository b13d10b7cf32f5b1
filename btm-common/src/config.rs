//! Start-up configuration the agent hands to the programs through the `CONFIG` array map.
//!
//! Rust eBPF has no CO-RE relocations, so every kernel struct member offset the programs need is
//! resolved by the agent from `/sys/kernel/btf/vmlinux`, and every tracepoint record field offset
//! from tracefs `format` files. Nothing here is baked in for one kernel.

/// Field offsets inside one tracepoint record (bytes from the start of the record).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RangeTp {
    pub dev: u32,
    pub ino: u32,
    pub pos: u32,
    pub len: u32,
    /// Offset of a flags/mode field, or `u32::MAX` when the record has none.
    pub flags: u32,
    /// Size in bytes of the `len` field (4 or 8).
    pub len_size: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Kernel `dev_t` of the tracked filesystem's superblock (`sb->s_dev`).
    pub target_dev: u32,
    /// Non-zero once the agent has filled this in; programs do nothing before.
    pub ready: u32,
    /// Non-zero when folio events may be suppressed by precise write ranges: only sound when
    /// the write-fault probes are attached (they mark partial folios whole), so the agent
    /// clears it on kernels without them.
    pub suppress: u32,
    /// Test hook (`BTM_TEST_DEFER_FAULTS=1`): the fault probe defers every write fault its
    /// cache cannot answer, as if the VMA lookup were busy, so tests can reach that path.
    pub defer_all: u32,

    // struct folio (its other members are in `Typed`)
    /// Bit number of `PG_head` in `folio->flags`.
    pub pg_head_bit: u32,
    // struct inode / super_block
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub inode_size: u32,
    pub sb_dev: u32,
    // task -> files -> fdtable -> file -> inode (resolving an fd)
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    // struct io_kiocb (io_uring's fallocate and ftruncate requests)
    pub kiocb_opcode: u32,
    pub kiocb_file: u32,
    pub file_pos: u32,
    // struct vm_area_struct (write faults on shared file mappings)
    pub vma_start: u32,
    pub vma_flags: u32,
    pub vma_pgoff: u32,
    pub vma_file: u32,
    /// Offset of `vfs_inode` in `struct btrfs_inode` (`u32::MAX` without btrfs).
    pub btrfs_vfs_inode: u32,
    /// `task_struct.tgid` (fork inheritance of mapping processes).
    pub task_tgid: u32,
    /// `task_struct.mm`, `vm_area_struct.vm_end` and `mm_struct.flags` (its first word):
    /// what decides whether a write fault may map a whole 2 MiB folio by PMD.
    pub task_mm: u32,
    pub vma_end: u32,
    pub mm_flags: u32,
    /// The bit of `mm_struct.flags` that `PR_SET_THP_DISABLE` sets, measured at start-up;
    /// `u32::MAX` when it could not be measured (PMD mappings are then assumed possible).
    pub thp_off_bit: u32,
    /// `struct file.f_mode` (`u32::MAX` when unknown: every shared mapping then counts).
    pub file_mode: u32,

    /// The iomap flag values on this kernel (from the `iomap:iomap_iter` print format).
    pub iomap_flag_write: u32,
    pub iomap_flag_zero: u32,
    pub iomap_flag_fault: u32,
    pub iomap_flag_direct: u32,
    /// `ext4:ext4_write_begin` / `ext4:ext4_da_write_begin` (same layout).
    pub ext4_write_begin: RangeTp,
    /// `xfs:xfs_itruncate_extents_start`: `pos` holds the `new_size` offset.
    pub xfs_itruncate: RangeTp,
}

/// Member offsets the `tp_btf` programs read through BTF-typed pointers: their arguments, and
/// pointers loaded from those. The agent sets them as read-only data before it loads the
/// object (the `BTM_TYPED` global). The verifier then knows each one as a constant and checks
/// every load against the kernel's BTF, so these reads are plain loads instead of
/// `bpf_probe_read_kernel` calls (a helper call and a fault-safe copy each: most of the time
/// of the programs that run on every write).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Typed {
    pub folio_flags: u32,
    pub folio_index: u32,
    /// `_flags_1` (second page's flags): the folio order is in its low byte when large.
    pub folio_flags1: u32,
    pub mapping_host: u32,
    /// The same members as `Config`'s, for the typed reads.
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    /// `struct iomap_iter` members. The tracepoint record's `length` is `iomap_length()` of
    /// the previous mapping, not the operation's: it is 0 on every iteration of an operation
    /// at file offset 0 (and on all but the first of any operation), so the program reads the
    /// iterator's own `pos` and remaining `len`.
    pub iomap_iter_inode: u32,
    pub iomap_iter_pos: u32,
    pub iomap_iter_len: u32,
    pub iomap_iter_flags: u32,
    /// `task_struct.nvcsw` and `nivcsw`: a precise range counts only while its task has not
    /// been switched out (`PreciseRange`).
    pub task_nvcsw: u32,
    pub task_nivcsw: u32,
    /// `task_struct.mm` and `mm_struct.flags`: whether the faulting process has THP off
    /// (`pmd_possible`, on every write-protect fault of a mapping process).
    pub task_mm: u32,
    pub mm_flags: u32,
}

impl Typed {
    /// All zero: the object's value before the agent sets it.
    pub const UNSET: Typed = Typed {
        folio_flags: 0,
        folio_index: 0,
        folio_flags1: 0,
        mapping_host: 0,
        inode_ino: 0,
        inode_sb: 0,
        sb_dev: 0,
        iomap_iter_inode: 0,
        iomap_iter_pos: 0,
        iomap_iter_len: 0,
        iomap_iter_flags: 0,
        task_nvcsw: 0,
        task_nivcsw: 0,
        task_mm: 0,
        mm_flags: 0,
    };
}
