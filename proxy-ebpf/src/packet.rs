//! Reading the headers the datapath needs, from an skb (tc) or a frame
//! (XDP).

use core::mem::size_of;

use aya_ebpf::programs::{TcContext, XdpContext};
use proxy_common::{
    frag::{Fragment, IP_OFFSET_MASK},
    icmp::{is_error, Quote},
    IPPROTO_TCP, IPPROTO_UDP,
};

/// Fixed-size reads at an offset into the packet.
pub trait PacketLoad {
    fn load_at<T: Copy>(&self, off: usize) -> Result<T, ()>;
}

impl PacketLoad for TcContext {
    #[inline(always)]
    fn load_at<T: Copy>(&self, off: usize) -> Result<T, ()> {
        self.load::<T>(off).map_err(|_| ())
    }
}

impl PacketLoad for XdpContext {
    #[inline(always)]
    fn load_at<T: Copy>(&self, off: usize) -> Result<T, ()> {
        let ptr = xdp_ptr::<T>(self, off).ok_or(())?;
        Ok(unsafe { core::ptr::read_unaligned(ptr) })
    }
}

/// A pointer to a `T` at `off` in an XDP frame, if the frame holds it all.
#[inline(always)]
pub fn xdp_ptr<T>(ctx: &XdpContext, off: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + off + size_of::<T>() > end {
        return None;
    }
    Some((start + off) as *mut T)
}

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;

/// Offsets and fields of an IPv4 TCP or UDP packet. Addresses and ports are
/// in network byte order, as in the packet.
pub struct Flow {
    pub l3_off: usize,
    /// IPv4 header length in bytes (20 without options).
    pub ihl: usize,
    /// IPv4 total length, host byte order.
    pub tot_len: u16,
    pub l4_off: usize,
    pub proto: u8,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    /// TCP flags byte (0 for UDP, and for a later fragment).
    pub tcp_flags: u8,
    /// A later fragment has no L4 header: its ports come from the first
    /// one's (see `frag`), and only its addresses are rewritten.
    pub fragment: Fragment,
    /// The IP id, which ties a datagram's fragments together.
    pub ip_id: u16,
}

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

impl Flow {
    /// A TCP SYN without ACK: the first packet of a new connection (or a
    /// retransmission of it).
    #[inline(always)]
    pub fn is_tcp_open(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// A TCP FIN or RST: the connection is ending.
    #[inline(always)]
    pub fn is_tcp_close(&self) -> bool {
        self.proto == IPPROTO_TCP && self.tcp_flags & (TCP_FIN | TCP_RST) != 0
    }

    /// Offset of the L4 checksum field.
    #[inline(always)]
    pub fn l4_csum_off(&self) -> usize {
        if self.proto == IPPROTO_TCP {
            self.l4_off + 16
        } else {
            self.l4_off + 6
        }
    }
}

pub const IPPROTO_ICMP: u8 = 1;

/// Where an ICMP message's headers are.
#[derive(Clone, Copy)]
pub struct IcmpAt {
    pub l3_off: usize,
    pub icmp_off: usize,
    pub saddr: u32,
    pub daddr: u32,
}

/// An ICMP error (destination unreachable, time exceeded) quoting a TCP or
/// UDP packet. Offsets from the start of the frame.
pub struct IcmpError {
    pub l3_off: usize,
    pub icmp_off: usize,
    pub saddr: u32,
    pub daddr: u32,
    /// The quoted packet's IPv4 header and its TCP or UDP header.
    pub inner_l3_off: usize,
    pub inner_l4_off: usize,
    pub quote: Quote,
}

impl IcmpError {
    /// Offset of the quoted packet's L4 checksum.
    #[inline(always)]
    pub fn inner_l4_csum_off(&self) -> usize {
        if self.quote.proto == IPPROTO_TCP {
            self.inner_l4_off + 16
        } else {
            self.inner_l4_off + 6
        }
    }
}

pub enum Parsed {
    Flow(Flow),
    /// An ICMP message, not a later fragment; `parse_icmp_error` reads it.
    Icmp(IcmpAt),
    /// Not IPv4 TCP/UDP or an ICMP error about them, or a non-first
    /// fragment: nothing to translate.
    Other,
}

#[inline(always)]
pub fn parse<P: PacketLoad>(ctx: &P) -> Result<Parsed, ()> {
    let ethertype = u16::from_be(ctx.load_at::<u16>(12)?);
    if ethertype != ETH_P_IP {
        return Ok(Parsed::Other);
    }
    let l3_off = ETH_HLEN;
    let ver_ihl = ctx.load_at::<u8>(l3_off)?;
    if ver_ihl >> 4 != 4 {
        return Ok(Parsed::Other);
    }
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ihl < 20 {
        return Err(());
    }
    let proto = ctx.load_at::<u8>(l3_off + 9)?;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP && proto != IPPROTO_ICMP {
        return Ok(Parsed::Other);
    }
    let fragment = Fragment::of(u16::from_be(ctx.load_at::<u16>(l3_off + 6)?));
    let tot_len = u16::from_be(ctx.load_at::<u16>(l3_off + 2)?);
    let saddr = ctx.load_at::<u32>(l3_off + 12)?;
    let daddr = ctx.load_at::<u32>(l3_off + 16)?;
    let l4_off = l3_off + ihl;
    if proto == IPPROTO_ICMP {
        if fragment == Fragment::Later {
            return Ok(Parsed::Other);
        }
        return Ok(Parsed::Icmp(IcmpAt {
            l3_off,
            icmp_off: l4_off,
            saddr,
            daddr,
        }));
    }
    let ip_id = ctx.load_at::<u16>(l3_off + 4)?;
    let (sport, dport, tcp_flags) = match fragment {
        // Filled in from the first fragment (see `frag`).
        Fragment::Later => (0, 0, 0),
        _ => (
            ctx.load_at::<u16>(l4_off)?,
            ctx.load_at::<u16>(l4_off + 2)?,
            if proto == IPPROTO_TCP { ctx.load_at::<u8>(l4_off + 13)? } else { 0 },
        ),
    };
    Ok(Parsed::Flow(Flow {
        l3_off,
        ihl,
        tot_len,
        l4_off,
        proto,
        saddr,
        daddr,
        sport,
        dport,
        tcp_flags,
        fragment,
        ip_id,
    }))
}

/// An ICMP error whose quoted packet is the first (or only) fragment of a
/// TCP or UDP packet; `None` for any other ICMP message.
#[inline(always)]
pub fn parse_icmp_error<P: PacketLoad>(ctx: &P, at: &IcmpAt) -> Result<Option<IcmpError>, ()> {
    let IcmpAt { l3_off, icmp_off, saddr, daddr } = *at;
    if !is_error(ctx.load_at::<u8>(icmp_off)?) {
        return Ok(None);
    }
    // The ICMP header (8 bytes), then the quoted IPv4 header.
    let inner_l3_off = icmp_off + 8;
    let ver_ihl = ctx.load_at::<u8>(inner_l3_off)?;
    let ihl = ((ver_ihl & 0x0f) as usize) * 4;
    if ver_ihl >> 4 != 4 || ihl < 20 {
        return Ok(None);
    }
    let proto = ctx.load_at::<u8>(inner_l3_off + 9)?;
    let frag = u16::from_be(ctx.load_at::<u16>(inner_l3_off + 6)?);
    if (proto != IPPROTO_TCP && proto != IPPROTO_UDP) || frag & IP_OFFSET_MASK != 0 {
        return Ok(None);
    }
    let inner_l4_off = inner_l3_off + ihl;
    Ok(Some(IcmpError {
        l3_off,
        icmp_off,
        saddr,
        daddr,
        inner_l3_off,
        inner_l4_off,
        quote: Quote {
            saddr: ctx.load_at::<u32>(inner_l3_off + 12)?,
            daddr: ctx.load_at::<u32>(inner_l3_off + 16)?,
            sport: ctx.load_at::<u16>(inner_l4_off)?,
            dport: ctx.load_at::<u16>(inner_l4_off + 2)?,
            proto,
        },
    }))
}
