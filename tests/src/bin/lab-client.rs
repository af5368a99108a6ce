//! A lab client: sends COUNT requests to TARGET. With `tcp` and `udp` each
//! request is a new flow (a new connection or socket); with `tcp-keep` and
//! `udp-keep` all of them share one connection or socket, one flow; `udp`
//! sends with `sendto` on an unconnected socket, `udp-connected` connects the
//! socket first (as most resolvers do) and checks `getpeername` against the
//! reply's source; `udp-connected-keep` keeps one connected socket. A kept
//! flow that fails is reported once and replaced by a new one, as an
//! application would reconnect. `LAB_CLIENT_SOURCE_PORT` binds UDP sockets
//! and `tcp-keep` connections to that source port. Prints one
//! line per request: `ok BACKEND SEEN_SOURCE REPLY_FROM MICROS AT_MS` or
//! `err REASON MICROS AT_MS` (AT_MS: when the request started, Unix time in
//! milliseconds). Bounded in count and time: every request has a timeout.
//! `udp-flood` sends COUNT one-datagram flows without waiting for replies
//! and prints `flooded SENT MICROS`.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (proto, target, count, timeout_ms, interval_ms) = match args.as_slice() {
        [p, t, c, to] => (p, t, c, to, "0"),
        [p, t, c, to, i] => (p, t, c, to, i.as_str()),
        _ => anyhow::bail!("usage: lab-client tcp|udp|udp-connected|tcp-keep|udp-keep|udp-connected-keep TARGET COUNT TIMEOUT_MS [INTERVAL_MS]"),
    };
    let interval = Duration::from_millis(interval_ms.parse()?);
    let target: SocketAddr = target.parse()?;
    let count: u32 = count.parse()?;
    let timeout = Duration::from_millis(timeout_ms.parse()?);
    let mut out = std::io::stdout().lock();
    if proto == "udp-flood" {
        let started = Instant::now();
        let sent = flood(target, count)?;
        writeln!(out, "flooded {sent} {}", started.elapsed().as_micros())?;
        return Ok(());
    }
    let mut flow: Option<Flow> = None;
    for _ in 0..count.min(100_000) {
        let started = Instant::now();
        let at_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
        let result = match proto.as_str() {
            "tcp" => tcp_request(target, timeout),
            "udp" => udp_request(target, timeout),
            "udp-connected" => udp_connected_request(target, timeout),
            "tcp-keep" | "udp-keep" | "udp-connected-keep" => keep_request(&mut flow, proto, target, timeout),
            other => match other.split_once('=') {
                // A bulk transfer of BYTES on a new connection, each read
                // or write bounded by the timeout.
                Some(("tcp-download", bytes)) => bulk(target, timeout, true, bytes.parse()?),
                Some(("tcp-upload", bytes)) => bulk(target, timeout, false, bytes.parse()?),
                // A datagram of BYTES (fragmented on the way), answered by one
                // as big; on a connected socket, or with sendto.
                Some(("udp-connected-big", bytes)) => udp_big(target, timeout, true, bytes.parse()?),
                Some(("udp-big", bytes)) => udp_big(target, timeout, false, bytes.parse()?),
                _ => anyhow::bail!("unknown protocol {other}"),
            },
        };
        let micros = started.elapsed().as_micros();
        match result {
            Ok((answer, from)) => writeln!(out, "ok {} {from} {micros} {at_ms}", answer.trim())?,
            Err(e) => writeln!(out, "err {} {micros} {at_ms}", e.to_string().replace(' ', "_"))?,
        }
        out.flush()?;
        std::thread::sleep(interval);
    }
    Ok(())
}

fn tcp_request(target: SocketAddr, timeout: Duration) -> anyhow::Result<(String, SocketAddr)> {
    let mut stream = TcpStream::connect_timeout(&target, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(b"hello\n")?;
    let from = stream.peer_addr()?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    anyhow::ensure!(!line.is_empty(), "connection closed without an answer");
    Ok((line, from))
}

/// `download=N`: the backend's answer line, then N bytes from it;
/// `upload=N`: N bytes to it, then its answer. The whole transfer must end
/// within the timeout: a stalled one (a trickle of retransmissions) fails
/// instead of crawling on.
fn bulk(target: SocketAddr, timeout: Duration, download: bool, bytes: u64) -> anyhow::Result<(String, SocketAddr)> {
    let deadline = Instant::now() + timeout;
    let left_time = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let stream = TcpStream::connect_timeout(&target, timeout)?;
    let from = stream.peer_addr()?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    let mut chunk = vec![b'y'; 64 * 1024];
    let mut left = bytes;
    if download {
        writer.write_all(format!("download {bytes}\n").as_bytes())?;
        reader.get_ref().set_read_timeout(Some(left_time()))?;
        reader.read_line(&mut line)?;
        while left > 0 {
            reader.get_ref().set_read_timeout(Some(left_time()))?;
            let want = left.min(chunk.len() as u64) as usize;
            let n = reader.read(&mut chunk[..want])?;
            anyhow::ensure!(n > 0, "downloaded {} of {bytes} bytes", bytes - left);
            left -= n as u64;
            anyhow::ensure!(Instant::now() < deadline, "stalled: {} of {bytes} bytes in {timeout:?}", bytes - left);
        }
    } else {
        writer.write_all(format!("upload {bytes}\n").as_bytes())?;
        while left > 0 {
            writer.set_write_timeout(Some(left_time()))?;
            let n = left.min(chunk.len() as u64) as usize;
            writer.write_all(&chunk[..n])?;
            left -= n as u64;
            anyhow::ensure!(Instant::now() < deadline, "stalled: {} of {bytes} bytes in {timeout:?}", bytes - left);
        }
        reader.get_ref().set_read_timeout(Some(left_time()))?;
        reader.read_line(&mut line)?;
    }
    anyhow::ensure!(!line.is_empty(), "connection closed without an answer");
    Ok((line, from))
}

fn udp_big(target: SocketAddr, timeout: Duration, connected: bool, bytes: usize) -> anyhow::Result<(String, SocketAddr)> {
    let socket = UdpSocket::bind(("0.0.0.0", source_port()))?;
    socket.set_read_timeout(Some(timeout))?;
    let mut request = format!("big {bytes}\n").into_bytes();
    request.resize(bytes.max(request.len()), b'y');
    if connected {
        socket.connect(target)?;
        socket.send(&request)?;
    } else {
        socket.send_to(&request, target)?;
    }
    let mut buf = vec![0u8; 65536];
    let (n, from) = socket.recv_from(&mut buf)?;
    anyhow::ensure!(n == bytes, "answer of {n} bytes, not {bytes}");
    let line = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_string();
    Ok((line, from))
}

/// COUNT new UDP flows as fast as they go, replies unread: one datagram
/// each, written whole on a raw socket from the next (address, port) of the
/// addresses in `LAB_CLIENT_SOURCES` (comma-separated) and ports
/// 10000-29999, so no two flows share a tuple within 20,000 per address.
fn flood(target: SocketAddr, count: u32) -> anyhow::Result<u32> {
    let sources: Vec<std::net::Ipv4Addr> = std::env::var("LAB_CLIENT_SOURCES")?.split(',').map(str::parse).collect::<Result<_, _>>()?;
    let std::net::IpAddr::V4(daddr) = target.ip() else {
        anyhow::bail!("IPv4 targets only");
    };
    // IPPROTO_RAW: the datagram carries its own IP header.
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::RAW, Some(socket2::Protocol::from(255)))?;
    let payload = b"flood\n";
    let mut packet = [0u8; 20 + 8 + 6];
    let len = packet.len() as u16;
    packet[0] = 0x45;
    packet[2..4].copy_from_slice(&len.to_be_bytes());
    packet[8] = 64;
    packet[9] = 17;
    packet[16..20].copy_from_slice(&daddr.octets());
    packet[22..24].copy_from_slice(&target.port().to_be_bytes());
    packet[24..26].copy_from_slice(&(len - 20).to_be_bytes());
    // UDP checksum 0: none (the kernel fills the IP header's).
    packet[28..].copy_from_slice(payload);
    const PORTS: u32 = 20_000;
    let mut sent = 0;
    for i in 0..count.min(1_000_000) {
        let source = sources[i as usize % sources.len()];
        let port = 10_000 + (i / sources.len() as u32) % PORTS;
        packet[4..6].copy_from_slice(&(i as u16).to_be_bytes());
        packet[12..16].copy_from_slice(&source.octets());
        packet[20..22].copy_from_slice(&(port as u16).to_be_bytes());
        if socket.send_to(&packet, &target.into()).is_ok() {
            sent += 1;
        }
    }
    Ok(sent)
}

/// A TCP connection, from `LAB_CLIENT_SOURCE_PORT` if set.
fn tcp_connect(target: SocketAddr, timeout: Duration) -> anyhow::Result<TcpStream> {
    let port = source_port();
    if port == 0 {
        return Ok(TcpStream::connect_timeout(&target, timeout)?);
    }
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    socket.connect_timeout(&target.into(), timeout)?;
    Ok(socket.into())
}

/// The source port to bind (UDP sockets, `tcp-keep` connections):
/// `LAB_CLIENT_SOURCE_PORT`, else any.
fn source_port() -> u16 {
    std::env::var("LAB_CLIENT_SOURCE_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(0)
}

fn udp_request(target: SocketAddr, timeout: Duration) -> anyhow::Result<(String, SocketAddr)> {
    // Unconnected, so a reply from any address is received and its source
    // can be checked against the address dialled.
    let socket = UdpSocket::bind(("0.0.0.0", source_port()))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(b"hello\n", target)?;
    let mut buf = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

fn udp_connected_request(target: SocketAddr, timeout: Duration) -> anyhow::Result<(String, SocketAddr)> {
    let socket = UdpSocket::bind(("0.0.0.0", source_port()))?;
    socket.set_read_timeout(Some(timeout))?;
    socket.connect(target)?;
    connected_exchange(&socket)
}

/// One request on a connected socket; the reply must come from the peer
/// `getpeername` names.
fn connected_exchange(socket: &UdpSocket) -> anyhow::Result<(String, SocketAddr)> {
    socket.send(b"hello\n")?;
    let mut buf = [0u8; 1500];
    let (n, from) = socket.recv_from(&mut buf)?;
    let peer = socket.peer_addr()?;
    anyhow::ensure!(peer == from, "peer_addr {peer} but reply from {from}");
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// One long-lived flow: a TCP connection or a UDP socket.
enum Flow {
    Tcp(BufReader<TcpStream>),
    Udp(UdpSocket),
    UdpConnected(UdpSocket),
}

fn keep_request(flow: &mut Option<Flow>, proto: &str, target: SocketAddr, timeout: Duration) -> anyhow::Result<(String, SocketAddr)> {
    if flow.is_none() {
        *flow = Some(if proto == "tcp-keep" {
            let stream = tcp_connect(target, timeout)?;
            stream.set_read_timeout(Some(timeout))?;
            Flow::Tcp(BufReader::new(stream))
        } else {
            let socket = UdpSocket::bind(("0.0.0.0", source_port()))?;
            socket.set_read_timeout(Some(timeout))?;
            if proto == "udp-connected-keep" {
                socket.connect(target)?;
                Flow::UdpConnected(socket)
            } else {
                Flow::Udp(socket)
            }
        });
    }
    let result = match flow.as_mut().unwrap() {
        Flow::Tcp(reader) => (|| {
            reader.get_mut().write_all(b"hello\n")?;
            let from = reader.get_ref().peer_addr()?;
            let mut line = String::new();
            reader.read_line(&mut line)?;
            anyhow::ensure!(!line.is_empty(), "connection closed");
            Ok((line, from))
        })(),
        Flow::Udp(socket) => (|| {
            socket.send_to(b"hello\n", target)?;
            let mut buf = [0u8; 1500];
            let (n, from) = socket.recv_from(&mut buf)?;
            Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
        })(),
        Flow::UdpConnected(socket) => connected_exchange(socket),
    };
    // A broken connection is reported once; the next request opens a new one.
    if result.is_err() {
        *flow = None;
    }
    result
}
