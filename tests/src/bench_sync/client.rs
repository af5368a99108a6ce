//! A minimal HTTP/1.1 client for writes to the lab API server, on one
//! kept-alive connection, that reads back when the server committed each
//! write. Its socket is opened inside a lab namespace (the API server is
//! reachable only there) by a thread that enters it; the socket stays in
//! that namespace whichever thread uses it later.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsRawFd;

use anyhow::{bail, Context};

use crate::apiserver::http::COMMITTED_HEADER;
use crate::apiserver::monotonic_ns;

pub struct ApiClient {
    stream: BufReader<TcpStream>,
    host: String,
}

/// One answered write.
#[derive(Clone, Copy, Debug)]
pub struct Written {
    pub status: u16,
    /// When the API server committed the change (CLOCK_MONOTONIC ns).
    pub committed_ns: Option<u64>,
    /// When the request was sent and the answer read, on the same clock.
    pub sent_ns: u64,
    pub answered_ns: u64,
}

impl ApiClient {
    pub fn new(stream: TcpStream) -> anyhow::Result<Self> {
        stream.set_nodelay(true)?;
        let host = stream.peer_addr()?.to_string();
        Ok(ApiClient { stream: BufReader::new(stream), host })
    }

    /// Connects from inside network namespace `ns` (a name under /run/netns).
    pub fn connect_in(ns: &str, addr: SocketAddr) -> anyhow::Result<Self> {
        let path = format!("/run/netns/{ns}");
        let stream = std::thread::spawn(move || -> anyhow::Result<TcpStream> {
            let netns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
            // SAFETY: setns on this short-lived thread only; the fd is valid.
            if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns {path}: {}", std::io::Error::last_os_error());
            }
            Ok(TcpStream::connect(addr)?)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("connect thread panicked"))??;
        Self::new(stream)
    }

    /// A JSON merge patch of the object at `path`.
    pub fn merge_patch(&mut self, path: &str, body: &[u8]) -> anyhow::Result<Written> {
        let head = format!(
            "PATCH {path} HTTP/1.1\r\nHost: {}\r\nAccept: application/json\r\n\
             Content-Type: application/merge-patch+json\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let sent_ns = monotonic_ns();
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let (status, committed_ns, length) = self.read_head()?;
        let answered_ns = monotonic_ns();
        let mut discard = vec![0; length];
        self.stream.read_exact(&mut discard)?;
        Ok(Written { status, committed_ns, sent_ns, answered_ns })
    }

    /// Status, commit time and Content-Length of a response.
    fn read_head(&mut self) -> anyhow::Result<(u16, Option<u64>, usize)> {
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("no HTTP status line")?;
        let (mut committed, mut length) = (None, None);
        loop {
            line.clear();
            if self.stream.read_line(&mut line)? == 0 {
                bail!("connection closed in the headers");
            }
            let Some((name, value)) = line.trim_end().split_once(':') else { break };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = value.parse().ok(),
                n if n == COMMITTED_HEADER => committed = value.parse().ok(),
                _ => {}
            }
        }
        Ok((status, committed, length.context("answer without Content-Length")?))
    }
}
