//! Kernel struct layouts read from `/sys/kernel/btf/vmlinux` at start-up.
//!
//! Rust eBPF programs have no CO-RE relocations, so the agent resolves every member offset the
//! programs use here and hands them over in `Config` (or `Typed`, for typed loads). Member
//! names that changed across kernels are tried in order.
use std::path::Path;

use btf_rs::{Btf, Type};
use btm_common::config::{Config, Typed};

use super::TrackerError;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self, TrackerError> {
        if !Path::new(VMLINUX).exists() {
            return Err(TrackerError::NoBtf);
        }
        let btf =
            Btf::from_file(VMLINUX).map_err(|e| TrackerError::Btf(format!("{VMLINUX}: {e}")))?;
        Ok(Self { btf })
    }

    fn strukt(&self, name: &str) -> Result<btf_rs::Struct, TrackerError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|e| TrackerError::Btf(format!("struct {name}: {e}")))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if s.size() > 0 => Some(s),
                _ => None,
            })
            .ok_or_else(|| TrackerError::Btf(format!("struct {name} not found in kernel BTF")))
    }

    /// Byte offset of `member` in `st`, looking through anonymous structs and unions.
    fn find(&self, st: &btf_rs::Struct, member: &str) -> Option<u32> {
        for m in &st.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if name == member {
                return Some(m.bit_offset() / 8);
            }
            if name.is_empty() {
                let inner = match self.btf.resolve_chained_type(m).ok()? {
                    Type::Struct(s) | Type::Union(s) => s,
                    _ => continue,
                };
                if let Some(off) = self.find(&inner, member) {
                    return Some(m.bit_offset() / 8 + off);
                }
            }
        }
        None
    }

    /// Offset of the first of `names` present in struct `st_name`.
    pub fn offset(&self, st_name: &str, names: &[&str]) -> Result<u32, TrackerError> {
        let st = self.strukt(st_name)?;
        names.iter().find_map(|n| self.find(&st, n)).ok_or_else(|| {
            TrackerError::Btf(format!(
                "struct {st_name} has none of the members {names:?}"
            ))
        })
    }

    /// Value of an enumerator, e.g. `PG_head` of `enum pageflags`.
    pub fn enum_value(&self, enumerator: &str) -> Result<u32, TrackerError> {
        for t in self
            .btf
            .resolve_types_by_name("pageflags")
            .unwrap_or_default()
        {
            if let Type::Enum(e) = t {
                for m in &e.members {
                    if self.btf.resolve_name(m).ok().as_deref() == Some(enumerator) {
                        return Ok(m.val());
                    }
                }
            }
        }
        Err(TrackerError::Btf(format!(
            "enumerator {enumerator} not found in kernel BTF"
        )))
    }

    /// The offsets the programs read with typed loads (`BTM_TYPED`, set before load).
    pub fn typed(&self) -> Result<Typed, TrackerError> {
        Ok(Typed {
            folio_flags: self.offset("folio", &["flags"])?,
            folio_index: self.offset("folio", &["index"])?,
            folio_flags1: self.offset("folio", &["_flags_1"])?,
            mapping_host: self.offset("address_space", &["host"])?,
            inode_ino: self.offset("inode", &["i_ino"])?,
            inode_sb: self.offset("inode", &["i_sb"])?,
            sb_dev: self.offset("super_block", &["s_dev"])?,
            iomap_iter_inode: self.offset("iomap_iter", &["inode"])?,
            iomap_iter_pos: self.offset("iomap_iter", &["pos"])?,
            iomap_iter_len: self.offset("iomap_iter", &["len"])?,
            iomap_iter_flags: self.offset("iomap_iter", &["flags"])?,
            task_nvcsw: self.offset("task_struct", &["nvcsw"])?,
            task_nivcsw: self.offset("task_struct", &["nivcsw"])?,
            task_mm: self.offset("task_struct", &["mm"])?,
            mm_flags: self.offset("mm_struct", &["flags"])?,
        })
    }

    /// Fills every struct offset of `cfg` (those of typed loads are in [`KernelBtf::typed`]).
    pub fn fill(&self, cfg: &mut Config) -> Result<(), TrackerError> {
        cfg.pg_head_bit = self.enum_value("PG_head")?;
        cfg.inode_ino = self.offset("inode", &["i_ino"])?;
        cfg.inode_sb = self.offset("inode", &["i_sb"])?;
        cfg.inode_size = self.offset("inode", &["i_size"])?;
        cfg.sb_dev = self.offset("super_block", &["s_dev"])?;
        cfg.task_files = self.offset("task_struct", &["files"])?;
        cfg.files_fdt = self.offset("files_struct", &["fdt"])?;
        cfg.fdt_max_fds = self.offset("fdtable", &["max_fds"])?;
        cfg.fdt_fd = self.offset("fdtable", &["fd"])?;
        cfg.file_inode = self.offset("file", &["f_inode"])?;
        cfg.file_pos = self.offset("file", &["f_pos"])?;
        cfg.kiocb_opcode = self.offset("io_kiocb", &["opcode"])?;
        cfg.kiocb_file = self.offset("io_kiocb", &["file"])?;
        cfg.vma_start = self.offset("vm_area_struct", &["vm_start"])?;
        cfg.vma_flags = self.offset("vm_area_struct", &["vm_flags", "__vm_flags"])?;
        cfg.vma_pgoff = self.offset("vm_area_struct", &["vm_pgoff"])?;
        cfg.vma_file = self.offset("vm_area_struct", &["vm_file"])?;
        cfg.btrfs_vfs_inode = self
            .offset("btrfs_inode", &["vfs_inode"])
            .unwrap_or(u32::MAX);
        cfg.task_tgid = self.offset("task_struct", &["tgid"])?;
        // Optional: without them PMD mappings are assumed possible on every write fault.
        let opt = |st: &str, m: &str| self.offset(st, &[m]).unwrap_or(u32::MAX);
        cfg.task_mm = opt("task_struct", "mm");
        cfg.vma_end = opt("vm_area_struct", "vm_end");
        cfg.mm_flags = opt("mm_struct", "flags");
        cfg.file_mode = opt("file", "f_mode");
        cfg.thp_off_bit = u32::MAX;
        Ok(())
    }
}
