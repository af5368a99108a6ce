//! Privileged tests run as root. In CI they must never skip; elsewhere, without
//! root, they say loudly that they did not run.

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// `true` when the test may go on. Panics in CI without root.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if in_ci() {
        panic!("{test}: privileged test needs root, and CI must not skip it");
    }
    eprintln!("\n!!!!! SKIPPED {test}: needs root (run `cargo xtask test` as root) !!!!!\n");
    false
}
