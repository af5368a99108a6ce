//! A lab backend: answers every TCP line and every UDP datagram with
//! `<pod name> <address:port it saw the request come from>`, so a test can
//! tell which backend answered and whether the client's address survived.
//! A datagram starting `big N` gets the answer padded to N bytes.
//! For bulk transfers, a TCP connection whose first line is `download N`
//! gets that answer followed by N bytes; one whose first line is `upload N`
//! sends N bytes and gets the answer once they have all arrived.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, UdpSocket};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args.next().ok_or_else(|| anyhow::anyhow!("usage: lab-backend NAME PORT"))?;
    let port: u16 = args.next().ok_or_else(|| anyhow::anyhow!("usage: lab-backend NAME PORT"))?.parse()?;

    let udp = UdpSocket::bind(("0.0.0.0", port))?;
    let udp_name = name.clone();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, peer)) = udp.recv_from(&mut buf) {
            let mut answer = format!("{udp_name} {peer}\n").into_bytes();
            // `big N`: the answer padded to N bytes (a datagram that must be
            // fragmented on the way back).
            if let Some(size) = std::str::from_utf8(&buf[..n.min(32)])
                .ok()
                .and_then(|t| t.strip_prefix("big "))
                .and_then(|t| t.split_whitespace().next())
                .and_then(|t| t.parse::<usize>().ok())
            {
                answer.resize(size.clamp(answer.len(), 60_000), b'z');
            }
            let _ = udp.send_to(&answer, peer);
        }
    });

    let tcp = TcpListener::bind(("0.0.0.0", port))?;
    eprintln!("{name} listening on tcp+udp {port}");
    for stream in tcp.incoming() {
        let Ok(mut stream) = stream else { continue };
        let name = name.clone();
        std::thread::spawn(move || {
            let Ok(peer) = stream.peer_addr() else { return };
            let Ok(read_half) = stream.try_clone() else { return };
            let mut reader = BufReader::new(read_half);
            let answer = format!("{name} {peer}\n");
            let mut line = String::new();
            while matches!(reader.read_line(&mut line), Ok(n) if n > 0) {
                let result = match line.trim().split_once(' ') {
                    Some(("download", n)) => download(&mut stream, &answer, n),
                    Some(("upload", n)) => upload(&mut reader, &mut stream, &answer, n),
                    _ => stream.write_all(answer.as_bytes()),
                };
                if result.is_err() {
                    break;
                }
                line.clear();
            }
        });
    }
    Ok(())
}

const CHUNK: usize = 64 * 1024;

fn download(stream: &mut std::net::TcpStream, answer: &str, size: &str) -> std::io::Result<()> {
    let mut left: usize = size.parse().map_err(|_| std::io::ErrorKind::InvalidInput)?;
    stream.write_all(answer.as_bytes())?;
    let chunk = vec![b'x'; CHUNK];
    while left > 0 {
        let n = left.min(CHUNK);
        stream.write_all(&chunk[..n])?;
        left -= n;
    }
    Ok(())
}

fn upload(reader: &mut impl std::io::Read, stream: &mut std::net::TcpStream, answer: &str, size: &str) -> std::io::Result<()> {
    let size: u64 = size.parse().map_err(|_| std::io::ErrorKind::InvalidInput)?;
    let got = std::io::copy(&mut reader.by_ref().take(size), &mut std::io::sink())?;
    if got != size {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    stream.write_all(answer.as_bytes())
}
