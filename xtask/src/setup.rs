//! Idempotent machine setup: every step checks first and only installs what is missing.
use std::{path::Path, process::Command};

use anyhow::{Context, Result, bail};

/// Nightly used for the eBPF crate; its LLVM major (22) must match bpf-linker's.
/// Keep in step with btm-agent/build.rs.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-05-20";
pub const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Debian packages: LLVM 22 for bpf-linker, filesystems and tools the tests use for real.
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "xfsprogs",
    "btrfs-progs",
    "e2fsprogs",
    "util-linux",
    "zfs-fuse",
    "litecoind",
    "fio",
    "restic",
    "rsync",
    "zstd",
    // promtool, for .ci/validate-monitoring (deploy/monitoring's alert rules); its server is
    // kept from starting (see `packages`).
    "prometheus",
];

/// Packages whose service must not start on install: Prometheus would listen on 9090 (and the
/// tests pick ports there). Only their tools are wanted.
const NO_SERVICE: &[&str] = &["prometheus"];

/// Where Debian's maintainer scripts ask whether a service may start (exit 101: no).
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc_geteuid() == 0 }
}

unsafe extern "C" {
    #[link_name = "geteuid"]
    fn libc_geteuid() -> u32;
}

pub fn all() -> Result<()> {
    packages()?;
    object_servers()?;
    nightly()?;
    bpf_linker()?;
    if is_root() {
        mounts()?;
    }
    Ok(())
}

fn sudo(cmd: &str) -> Command {
    if is_root() {
        Command::new(cmd)
    } else {
        let mut c = Command::new("sudo");
        c.arg(cmd);
        c
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let st = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn packages() -> Result<()> {
    let missing: Vec<&str> = PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("setup: installing {}", missing.join(" "));
    run(sudo("apt-get").args(["update", "-qq"]))?;
    // invoke-rc.d and deb-systemd-invoke start no service while policy-rc.d exits 101; one we
    // put there for the install is removed after it (a container's own is left alone).
    let no_start =
        missing.iter().any(|p| NO_SERVICE.contains(p)) && !Path::new(POLICY_RC_D).exists();
    if no_start {
        run(sudo("sh").args([
            "-c",
            &format!("printf '#!/bin/sh\\nexit 101\\n' >{POLICY_RC_D} && chmod 755 {POLICY_RC_D}"),
        ]))?;
    }
    let installed = run(sudo("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing));
    if no_start {
        run(sudo("rm").args(["-f", POLICY_RC_D]))?;
    }
    installed?;
    // Not at the next boot either (where systemd runs; errors mean it does not).
    for unit in NO_SERVICE.iter().filter(|p| missing.contains(p)) {
        let _ = sudo("systemctl")
            .args(["disable", "--now", "--quiet", unit])
            .stderr(std::process::Stdio::null())
            .status();
    }
    Ok(())
}

/// The S3-compatible server the offsite tests run against on loopback (PyPI `moto[server]`).
pub const MOTO: &str = "moto[server]>=5.1,<6";

/// The Azure blob emulator for the az:// tests (npm), and the Python client that creates their
/// container (object_store cannot).
pub const AZURITE: &str = "azurite@3.35.0";
pub const AZURE_BLOB: &str = "azure-storage-blob>=12,<13";

/// The storage engines the semantic oracle tests open restored data with (PyPI wheels that
/// bundle their C/C++ libraries): LMDB, MDBX, LevelDB, RocksDB.
pub const ENGINES: [&str; 4] = [
    "lmdb>=1.4,<4",
    "libmdbx>=0.3,<0.4",
    "plyvel>=1.5,<2",
    "rocksdict>=0.3,<0.4",
];

/// Object-store servers for the offsite tests: moto (S3) and Azurite (Azure blobs); the
/// storage engines for tests/engines.rs.
fn object_servers() -> Result<()> {
    let have = Command::new("python3")
        .args([
            "-c",
            "import moto, moto.server, flask, boto3, azure.storage.blob, lmdb, mdbx, plyvel, \
             rocksdict",
        ])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("setup: installing {MOTO} {AZURE_BLOB} {ENGINES:?} (pip)");
        run(Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--root-user-action=ignore",
                MOTO,
                AZURE_BLOB,
            ])
            .args(ENGINES))?;
    }
    let azurite = Command::new("azurite-blob")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !azurite {
        eprintln!("setup: installing {AZURITE} (npm)");
        run(sudo("npm").args(["install", "--global", "--no-fund", "--no-audit", AZURITE]))?;
    }
    Ok(())
}

pub fn nightly() -> Result<()> {
    let have = Command::new("rustup")
        .args(["run", EBPF_TOOLCHAIN, "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    let src_ok = have.as_ref().is_some_and(|s| {
        Path::new(s)
            .join("lib/rustlib/src/rust/library/core")
            .exists()
    });
    if src_ok {
        return Ok(());
    }
    eprintln!("setup: installing {EBPF_TOOLCHAIN} with rust-src");
    run(Command::new("rustup").args([
        "toolchain",
        "install",
        EBPF_TOOLCHAIN,
        "--profile",
        "minimal",
        "--component",
        "rust-src",
    ]))
}

fn bpf_linker() -> Result<()> {
    let version = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
    if version
        .as_deref()
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    eprintln!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (a few minutes)");
    run(Command::new("cargo").env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))
}

/// bpffs and tracefs are not mounted at boot on every machine.
fn mounts() -> Result<()> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for (path, fstype) in [("/sys/kernel/tracing", "tracefs"), ("/sys/fs/bpf", "bpf")] {
        let present = mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&path) && f.get(2) == Some(&fstype)
        });
        if !present {
            eprintln!("setup: mounting {fstype} at {path}");
            run(Command::new("mount").args(["-t", fstype, fstype, path]))?;
        }
    }
    Ok(())
}
