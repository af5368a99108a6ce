//! Connected UDP sockets of this network namespace, listed and aborted
//! through sock_diag (netlink), as `ss -K` does. A host socket that the
//! connect4 hook pointed at a backend stays on it; when the backend leaves
//! its Service, aborting the socket makes the application open a new one,
//! which the hook sends to a live backend.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// Linux gives a connected UDP socket TCP's ESTABLISHED state.
const TCP_ESTABLISHED: u32 = 1;

/// `struct inet_diag_sockid`: the kernel's name of one socket, sent back
/// verbatim to destroy it (its cookie guards against a reused tuple).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct SockId {
    sport: [u8; 2],
    dport: [u8; 2],
    src: [[u8; 4]; 4],
    dst: [[u8; 4]; 4],
    ifindex: u32,
    cookie: [u32; 2],
}

/// `struct inet_diag_req_v2`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Request {
    family: u8,
    protocol: u8,
    ext: u8,
    pad: u8,
    states: u32,
    id: SockId,
}

/// `struct inet_diag_msg`, the part read here.
#[repr(C)]
#[derive(Clone, Copy)]
struct Message {
    family: u8,
    state: u8,
    timer: u8,
    retrans: u8,
    id: SockId,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct NlHeader {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
}

#[repr(C)]
struct NlRequest {
    header: NlHeader,
    body: Request,
}

const _: () = assert!(size_of::<SockId>() == 48);
const _: () = assert!(size_of::<Request>() == 56);
const _: () = assert!(size_of::<NlHeader>() == 16);

/// One connected IPv4 UDP socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectedUdp {
    /// The socket's cookie, as `bpf_get_socket_cookie` gives it.
    pub cookie: u64,
    pub local: SocketAddrV4,
    pub remote: SocketAddrV4,
    id: SockId,
}

fn addr(bytes: [u8; 4], port: [u8; 2]) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(bytes), u16::from_be_bytes(port))
}

/// A request about IPv4 UDP sockets in `states` (a bit per state).
fn udp4_request(states: u32, id: SockId) -> Request {
    Request {
        family: libc::AF_INET as u8,
        protocol: libc::IPPROTO_UDP as u8,
        states,
        id,
        ..Request::default()
    }
}

/// Every connected IPv4 UDP socket of the caller's network namespace.
pub fn connected() -> io::Result<Vec<ConnectedUdp>> {
    let nl = open()?;
    let request = udp4_request(1 << TCP_ESTABLISHED, SockId::default());
    send(&nl, SOCK_DIAG_BY_FAMILY, (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16, request)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(&nl, &mut buf)?;
        for (kind, body) in messages(&buf[..n])? {
            match kind as i32 {
                libc::NLMSG_DONE => return Ok(out),
                libc::NLMSG_ERROR => return Err(netlink_error(body)),
                _ if kind == SOCK_DIAG_BY_FAMILY && body.len() >= size_of::<Message>() => {
                    let msg: Message = read(body);
                    if msg.family == libc::AF_INET as u8 {
                        out.push(ConnectedUdp {
                            cookie: u64::from(msg.id.cookie[0]) | u64::from(msg.id.cookie[1]) << 32,
                            local: addr(msg.id.src[0], msg.id.sport),
                            remote: addr(msg.id.dst[0], msg.id.dport),
                            id: msg.id,
                        });
                    }
                }
                _ => {}
            }
        }
    }
}

/// Aborts `socket`: its owner's next receive fails with ECONNABORTED and
/// the socket is no longer connected. Gone already is not an error.
pub fn abort(socket: &ConnectedUdp) -> io::Result<()> {
    let nl = open()?;
    send(&nl, SOCK_DESTROY, (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16, udp4_request(u32::MAX, socket.id))?;
    let mut buf = vec![0u8; 4096];
    let n = recv(&nl, &mut buf)?;
    match messages(&buf[..n])?.first() {
        Some((kind, body)) if *kind as i32 == libc::NLMSG_ERROR => match netlink_error(body) {
            e if matches!(e.raw_os_error(), Some(0) | Some(libc::ENOENT)) => Ok(()),
            e => Err(e),
        },
        _ => Err(invalid("unexpected netlink reply")),
    }
}

/// The (type, body) of each netlink message in one datagram.
fn messages(buf: &[u8]) -> io::Result<Vec<(u16, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + size_of::<NlHeader>() <= buf.len() {
        let header: NlHeader = read(&buf[at..]);
        let len = header.len as usize;
        if len < size_of::<NlHeader>() || at + len > buf.len() {
            return Err(invalid("truncated netlink message"));
        }
        out.push((header.kind, &buf[at + size_of::<NlHeader>()..at + len]));
        at += (len + 3) & !3;
    }
    Ok(out)
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(socket: &OwnedFd, kind: u16, flags: u16, body: Request) -> io::Result<()> {
    let message = NlRequest {
        header: NlHeader {
            len: size_of::<NlRequest>() as u32,
            kind,
            flags,
            seq: 1,
            pid: 0,
        },
        body,
    };
    // SAFETY: sends the bytes of a repr(C) value without padding.
    let n = unsafe {
        libc::send(
            socket.as_raw_fd(),
            (&message as *const NlRequest).cast(),
            size_of::<NlRequest>(),
            0,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv(socket: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: receives into a buffer of the given length.
    let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// An `nlmsgerr`'s code as an error (code 0, an acknowledgement, included).
fn netlink_error(body: &[u8]) -> io::Error {
    match body.get(..4) {
        Some(code) => io::Error::from_raw_os_error(-i32::from_ne_bytes(code.try_into().unwrap())),
        None => invalid("short netlink error"),
    }
}

/// A repr(C) plain-data value from the start of `bytes` (checked long enough).
fn read<T: Copy>(bytes: &[u8]) -> T {
    assert!(bytes.len() >= size_of::<T>());
    // SAFETY: length checked; T is plain data; unaligned read.
    unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) }
}
