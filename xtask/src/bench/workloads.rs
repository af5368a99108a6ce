//! Running `bench-client` in a lab namespace and reading its answer.

use std::collections::BTreeMap;
use std::time::Duration;


use super::lab_setup::BenchLab;

const TIMEOUT_MS: &str = "500";

/// What one workload measured; `None` when nothing got through (the
/// mode does not serve that path), so the table says n/a instead of 0.
#[derive(Clone, Copy, Debug, Default)]
pub struct Outcome {
    pub value: Option<f64>,
    pub second: Option<f64>,
}

fn fields(out: &str) -> BTreeMap<String, String> {
    out.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn number(f: &BTreeMap<String, String>, key: &str) -> f64 {
    f.get(key).and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// `bench-client` in namespace `ns`, in its pod's cgroup when it is a pod's
/// (so the agent's socket hooks see it, as they see every pod's sockets).
fn run(lab: &BenchLab, ns: &str, args: &[&str]) -> anyhow::Result<BTreeMap<String, String>> {
    let out = lab.lab.command_in(ns, &lab.client)?.args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "bench-client {} in {ns} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(fields(&String::from_utf8_lossy(&out.stdout)))
}

/// Requests per second of a closed loop (`connect` or `udp`).
pub fn rate(lab: &BenchLab, ns: &str, kind: &str, targets: &[String], duration: Duration) -> anyhow::Result<Outcome> {
    let f = run(lab, ns, &[kind, &targets.join(","), &duration.as_millis().to_string(), TIMEOUT_MS])?;
    let ok = number(&f, "ok");
    let elapsed = number(&f, "elapsed_us") / 1e6;
    let errors = number(&f, "err") as u64;
    if errors > 0 {
        println!("bench:   {kind} {}: {errors} errors, first: {}", targets.join(","), f.get("first_error").map(String::as_str).unwrap_or(""));
    }
    Ok(Outcome {
        value: (ok > 0.0 && elapsed > 0.0).then(|| ok / elapsed),
        second: None,
    })
}

/// p50 and p99 request latency (µs) on one kept-alive connection.
pub fn keepalive(lab: &BenchLab, ns: &str, target: &str, requests: u64) -> anyhow::Result<Outcome> {
    let f = match run(lab, ns, &["keepalive", target, &requests.to_string(), TIMEOUT_MS]) {
        Ok(f) => f,
        Err(e) => {
            println!("bench:   keepalive {target}: {e:#}");
            return Ok(Outcome::default());
        }
    };
    let ok = number(&f, "ok");
    Ok(Outcome {
        value: (ok > 0.0).then(|| number(&f, "p50_us")),
        second: (ok > 0.0).then(|| number(&f, "p99_us")),
    })
}
