//! Installs, when missing, everything the build, the demo and the tests need.
//! Safe to run any number of times; when all is present it only checks.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

/// Commands the lab needs, and the Debian package that has each.
const DEBIAN: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("ss", "iproute2"),
    ("ethtool", "ethtool"),
    ("nsenter", "util-linux"),
    ("curl", "curl"),
    // The upgrade test makes a map in an older layout with it.
    ("bpftool", "bpftool"),
    // The benchmark's kube-proxy baselines and its chart's font.
    ("iptables-restore", "iptables"),
    ("nft", "nftables"),
    ("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "fonts-dejavu-core"),
];

pub fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    let mut installed = Vec::new();
    let mut present = Vec::new();

    if has_rust_src()? {
        present.push("rust-src".to_string());
    } else {
        println!("setup: installing rust-src for the nightly toolchain (needed for -Z build-std=core)");
        check(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
        installed.push("rust-src".to_string());
    }

    match bpf_linker_version() {
        Some(v) => present.push(v),
        None => {
            install_bpf_linker()?;
            installed.push(bpf_linker_version().context("bpf-linker still missing after install")?);
        }
    }

    let (missing, found): (BTreeSet<&str>, BTreeSet<&str>) = DEBIAN.iter().fold(Default::default(), |(mut missing, mut found), (cmd, pkg)| {
        if which(cmd).is_none() {
            missing.insert(*pkg);
        } else {
            found.insert(*pkg);
        }
        (missing, found)
    });
    // A package with one command missing is installed, whatever else of it is there.
    present.extend(found.difference(&missing).map(|s| s.to_string()));
    if !missing.is_empty() {
        let missing: Vec<&str> = missing.into_iter().collect();
        install_debian(&missing)?;
        installed.extend(missing.iter().map(|s| s.to_string()));
    }

    match crate::manifests::ensure_validator()? {
        Some(v) => installed.push(v),
        None => present.push(crate::manifests::present_label()),
    }

    // kubectl comes with the machine image (no registry here has it); the
    // control-plane tests drive the lab's API server with it.
    if which("kubectl").is_none() {
        println!("setup: WARNING: kubectl not found; the control-plane lab tests will fail");
    }

    let secs = started.elapsed().as_secs_f64();
    if installed.is_empty() {
        println!("setup: all present ({}) in {secs:.1} s", present.join(", "));
    } else {
        println!("setup: installed {} in {secs:.1} s; already present: {}", installed.join(", "), present.join(", "));
    }
    Ok(())
}

fn has_rust_src() -> anyhow::Result<bool> {
    let out = Command::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running rustup; the nightly toolchain is required")?;
    if !out.status.success() {
        bail!("rustup cannot list nightly's components: is the nightly toolchain installed?");
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")))
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from(".cargo"))
        .join("bin")
}

/// PATH with cargo's bin directory in it, where `cargo install` puts bpf-linker.
pub fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut paths: Vec<PathBuf> = vec![cargo_bin()];
    if let Some(p) = std::env::var_os("PATH") {
        paths.extend(std::env::split_paths(&p));
    }
    std::env::join_paths(paths).expect("PATH entries are valid")
}

fn which(cmd: &str) -> Option<PathBuf> {
    if cmd.starts_with('/') {
        return Some(PathBuf::from(cmd)).filter(|p| p.is_file());
    }
    std::env::split_paths(&path_with_cargo_bin())
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
}

/// Run through rustup, as rustc runs it, so the nightly's libLLVM it links
/// to dynamically is on the library path.
fn bpf_linker_version() -> Option<String> {
    which("bpf-linker")?;
    let out = Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .env("PATH", path_with_cargo_bin())
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// bpf-linker built against the nightly toolchain's own libLLVM, so its LLVM
/// is the one rustc emits bitcode for and no system LLVM is needed.
fn install_bpf_linker() -> anyhow::Result<()> {
    let verbose = Command::new("rustc").args(["+nightly", "-vV"]).output()?;
    let verbose = String::from_utf8_lossy(&verbose.stdout).into_owned();
    let llvm_major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("nightly rustc does not say its LLVM version")?
        .to_string();
    let sysroot = Command::new("rustc").args(["+nightly", "--print", "sysroot"]).output()?;
    let sysroot = PathBuf::from(String::from_utf8_lossy(&sysroot.stdout).trim());
    let libllvm = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("libLLVM.so.{llvm_major}")) || n.starts_with(&format!("libLLVM-{llvm_major}")))
        })
        .with_context(|| format!("no libLLVM {llvm_major} in {}", sysroot.display()))?;

    let prefix = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
        .join(".cache/ebpf-proxy")
        .join(format!("llvm{llvm_major}"));
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;

    println!("setup: building bpf-linker against nightly's LLVM {llvm_major} ({}) — about a minute", libllvm.display());
    check(
        Command::new("cargo")
            .args(["install", "bpf-linker", "--no-default-features", "--features"])
            .arg(format!("llvm-{llvm_major}"))
            .env("LLVM_PREFIX", &prefix)
            .env("PATH", path_with_cargo_bin()),
    )
}

fn install_debian(packages: &[&str]) -> anyhow::Result<()> {
    if !proxy_lab::privilege::is_root() {
        bail!("missing Debian packages {packages:?}; run as root so setup can install them");
    }
    println!("setup: installing Debian packages {}", packages.join(" "));
    let quiet = |cmd: &mut Command| {
        cmd.env("DEBIAN_FRONTEND", "noninteractive").stdout(Stdio::null());
    };
    let mut update = Command::new("apt-get");
    update.args(["-q", "update"]);
    quiet(&mut update);
    check(&mut update)?;
    let mut install = Command::new("apt-get");
    install.args(["-q", "install", "-y", "--no-install-recommends"]).args(packages);
    quiet(&mut install);
    check(&mut install)
}

fn check(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
