//! The benchmark's traffic: closed-loop, one request in flight, bounded in
//! time. Prints one line of `key=value` results.
//!
//! ```text
//! bench-client connect TARGET[,TARGET...] DURATION_MS TIMEOUT_MS
//!     new TCP connection per request (connect, one line, close), round robin
//!     over the targets: ok, err, elapsed_us
//! bench-client keepalive TARGET COUNT TIMEOUT_MS
//!     COUNT requests on one connection: ok, err, p50_us, p99_us
//! bench-client udp TARGET[,TARGET...] DURATION_MS TIMEOUT_MS
//!     a new socket (a new flow, as a DNS resolver's query) per request:
//!     ok, err, elapsed_us
//! ```

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Upper bound on requests per run, whatever the duration says.
const MAX_REQUESTS: u64 = 1_000_000;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, targets, amount, timeout_ms] = args.as_slice() else {
        bail!("usage: bench-client connect|keepalive|udp TARGET[,TARGET...] DURATION_MS|COUNT TIMEOUT_MS");
    };
    let targets: Vec<SocketAddr> = targets.split(',').map(str::parse).collect::<Result<_, _>>().context("targets")?;
    let amount: u64 = amount.parse()?;
    let timeout = Duration::from_millis(timeout_ms.parse()?);
    let line = match mode.as_str() {
        "connect" => closed_loop(&targets, Duration::from_millis(amount), |t| tcp_once(t, timeout)),
        "udp" => closed_loop(&targets, Duration::from_millis(amount), |t| udp_once(t, timeout)),
        "keepalive" => keepalive(targets[0], amount.min(MAX_REQUESTS), timeout)?,
        other => bail!("unknown mode {other}"),
    };
    println!("{line}");
    Ok(())
}

fn closed_loop(targets: &[SocketAddr], duration: Duration, mut once: impl FnMut(SocketAddr) -> anyhow::Result<()>) -> String {
    let started = Instant::now();
    let (mut ok, mut err) = (0u64, 0u64);
    let mut first_error = String::new();
    let mut i = 0;
    while started.elapsed() < duration && ok + err < MAX_REQUESTS {
        match once(targets[i % targets.len()]) {
            Ok(()) => ok += 1,
            Err(e) => {
                if first_error.is_empty() {
                    first_error = e.to_string().replace(' ', "_");
                }
                err += 1;
            }
        }
        i += 1;
    }
    let elapsed = started.elapsed().as_micros();
    format!("ok={ok} err={err} elapsed_us={elapsed} first_error={first_error}")
}

fn tcp_once(target: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    stream.write_all(b"bench\n")?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer)?;
    anyhow::ensure!(!answer.is_empty(), "closed without an answer");
    Ok(())
}

fn udp_once(target: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(timeout))?;
    socket.connect(target)?;
    socket.send(b"bench\n")?;
    let mut buf = [0u8; 1500];
    let n = socket.recv(&mut buf)?;
    anyhow::ensure!(n > 0, "empty answer");
    Ok(())
}

fn keepalive(target: SocketAddr, count: u64, timeout: Duration) -> anyhow::Result<String> {
    let stream = TcpStream::connect_timeout(&target, timeout).with_context(|| format!("connecting to {target}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut micros = Vec::with_capacity(count as usize);
    let mut err = 0u64;
    let mut answer = String::new();
    for _ in 0..count {
        let started = Instant::now();
        answer.clear();
        let result = writer.write_all(b"bench\n").and_then(|_| reader.read_line(&mut answer));
        match result {
            Ok(n) if n > 0 => micros.push(started.elapsed().as_micros() as u64),
            _ => {
                err += 1;
                break;
            }
        }
    }
    micros.sort_unstable();
    let pick = |q: f64| micros.get(((micros.len() as f64 * q) as usize).min(micros.len().saturating_sub(1))).copied().unwrap_or(0);
    Ok(format!("ok={} err={err} p50_us={} p99_us={}", micros.len(), pick(0.50), pick(0.99)))
}
