//! Builds the eBPF programs with nightly for bpfel-unknown-none and leaves the
//! object in OUT_DIR, where `src/datapath` embeds it.
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = Path::new(&manifest_dir).join("../proxy-ebpf");
    let root = root.canonicalize()?;
    let root = root.to_str().expect("workspace path is UTF-8");
    println!("cargo:rerun-if-changed={root}/src");
    println!("cargo:rerun-if-changed={root}/../proxy-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "proxy-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
