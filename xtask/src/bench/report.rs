//! The markdown the benchmark writes: the machine, then per size a table of
//! medians [min–max] and the ratios of this project to each baseline.

use std::fmt::Write;
use std::time::Duration;

use super::modes::Mode;
use super::stats::{Metric, Samples, Spread};

pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
    pub os: String,
    pub iptables: String,
    pub nft: String,
}

impl Machine {
    pub fn describe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| "unknown CPU".into());
        let memory_kib: f64 = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
            .unwrap_or_default();
        let version = |cmd: &str, arg: &str| {
            std::process::Command::new(cmd)
                .arg(arg)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
                .unwrap_or_default()
        };
        Machine {
            cpu,
            cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            memory_gib: memory_kib / 1024.0 / 1024.0,
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            os,
            iptables: version("iptables", "--version"),
            nft: version("nft", "--version"),
        }
    }
}

const BASELINES: [Mode; 3] = [Mode::Iptables, Mode::Nftables, Mode::Direct];
const COLUMNS: [Mode; 4] = [Mode::Direct, Mode::Iptables, Mode::Nftables, Mode::Agent];

pub fn markdown(samples: &Samples, sizes: &[usize], m: &Machine, took: Duration, quick: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## Benchmark results{}\n", if quick { " (quick run)" } else { "" });
    let _ = writeln!(
        out,
        "Machine: {} cores ({}), {:.0} GiB, Linux {}, {}; {}, {}. Measured in {:.0} s.\n",
        m.cores,
        m.cpu,
        m.memory_gib,
        m.kernel,
        m.os,
        m.iptables,
        m.nft,
        took.as_secs_f64()
    );
    out.push_str(
        "Each cell: median [min–max] (number of runs); modes interleaved within every run. \
         Ratios are this project's median divided by the baseline's: above 1 is better for rates \
         (connections/s, requests/s), below 1 is better for latencies and programming times. \
         n/a: the mode does not serve that path (or has no control plane, for direct).\n\n",
    );
    for &n in sizes {
        let _ = writeln!(out, "### N = {} Services\n", thousands(n as f64));
        out.push_str("| metric | direct | iptables | nftables | this project | ÷ iptables | ÷ nftables | ÷ direct |\n");
        out.push_str("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
        for metric in Metric::ALL {
            let _ = write!(out, "| {} |", metric.label());
            for mode in COLUMNS {
                let _ = write!(out, " {} |", cell(samples.spread(n, mode, metric)));
            }
            let ours = samples.spread(n, Mode::Agent, metric);
            for base in BASELINES {
                let _ = write!(out, " {} |", ratio(ours, samples.spread(n, base, metric)));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out
}

fn cell(s: Option<Spread>) -> String {
    match s {
        None => "n/a".into(),
        Some(s) => format!("{} [{}–{}] ({})", short(s.median), short(s.min), short(s.max), s.count),
    }
}

fn ratio(ours: Option<Spread>, base: Option<Spread>) -> String {
    match (ours, base) {
        (Some(o), Some(b)) if b.median > 0.0 => two_digits(o.median / b.median),
        _ => "n/a".into(),
    }
}

/// A ratio with two significant digits (0.0021, 0.23, 1.5, 24).
fn two_digits(r: f64) -> String {
    if r >= 10.0 {
        format!("{r:.0}")
    } else {
        let decimals = (1 - r.log10().floor() as i32).max(1) as usize;
        format!("{r:.decimals$}")
    }
}

/// Three significant digits, thousands separated.
fn short(v: f64) -> String {
    if v >= 1000.0 {
        thousands(v.round())
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `YYYYMMDD-HHMMSS` in UTC, for the results folder's name.
pub fn utc_stamp(unix_secs: u64) -> String {
    let rfc3339 = proxy_lab::apiserver::meta::timestamp(std::time::UNIX_EPOCH + Duration::from_secs(unix_secs));
    let digits: String = rfc3339.chars().filter(char::is_ascii_digit).collect();
    format!("{}-{}", &digits[..8], &digits[8..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_utc_dates() {
        assert_eq!(utc_stamp(0), "19700101-000000");
        assert_eq!(utc_stamp(1_709_210_096), "20240229-123456");
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(short(12345.4), "12,345");
        assert_eq!(short(123.4), "123");
        assert_eq!(short(1.234), "1.23");
        assert_eq!(two_digits(0.00213), "0.0021");
        assert_eq!(two_digits(0.234), "0.23");
        assert_eq!(two_digits(1.5), "1.5");
        assert_eq!(two_digits(29.99), "30");
    }

    #[test]
    fn table_has_ratios_and_na() {
        let mut s = Samples::default();
        for (mode, rate) in [(Mode::Agent, 300.0), (Mode::Iptables, 100.0), (Mode::Direct, 600.0)] {
            s.add(1000, mode, Metric::ConnectLast, Some(rate));
        }
        let m = Machine {
            cpu: "cpu".into(),
            cores: 2,
            memory_gib: 24.0,
            kernel: "6.18".into(),
            os: "Debian".into(),
            iptables: "iptables v1.8.9".into(),
            nft: "nftables v1.0.6".into(),
        };
        s.add(1000, Mode::Agent, Metric::ConnectLast, Some(500.0));
        let md = markdown(&s, &[1000], &m, Duration::from_secs(3), false);
        assert!(md.contains("### N = 1,000 Services"), "{md}");
        assert!(md.contains("| new connections/s, target last | 600 [600–600] (1) | 100 [100–100] (1) | n/a | 400 [300–500] (2) | 4.0 | n/a | 0.67 |"), "{md}");
    }
}
