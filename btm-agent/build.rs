//! Builds the eBPF object (btm-ebpf) with the pinned nightly and bpf-linker, and embeds it.
use aya_build::{Package, Toolchain};

/// Nightly whose LLVM major (22) matches bpf-linker's. Keep in step with xtask's setup.
const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";

fn main() -> anyhow::Result<()> {
    let toolchain = std::env::var("BTM_EBPF_TOOLCHAIN").unwrap_or_else(|_| EBPF_TOOLCHAIN.into());
    println!("cargo:rerun-if-env-changed=BTM_EBPF_TOOLCHAIN");
    let pkg = Package {
        name: "btm-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../btm-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], Toolchain::Custom(&toolchain))
}
