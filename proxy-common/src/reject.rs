//! The answers the datapath sends for a frontend that has no usable endpoint:
//! a TCP reset for TCP, ICMP port unreachable for UDP, so a client fails at
//! once instead of waiting for its timeout (kube-proxy's REJECT).
//!
//! Pure functions over header bytes, so they are tested on the host; the
//! program copies the offending packet's headers in, writes the result over
//! the packet and sends it back out of the device it came from.

use crate::csum::{checksum, sum_words};
use crate::IPPROTO_TCP;

pub const IPV4_HLEN: usize = 20;
pub const TCP_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const ICMP_HLEN: usize = 8;
/// IPv4 header and TCP header of a reset, no options.
pub const TCP_RESET_LEN: usize = IPV4_HLEN + TCP_HLEN;
/// The quoted part of an ICMP error: the offending IPv4 header (without
/// options) and the first 8 bytes of its payload, as RFC 792 asks.
pub const ICMP_QUOTE_LEN: usize = IPV4_HLEN + UDP_HLEN;
/// IPv4 header, ICMP header and the quote.
pub const ICMP_UNREACH_LEN: usize = IPV4_HLEN + ICMP_HLEN + ICMP_QUOTE_LEN;

const TTL: u8 = 64;
const IPPROTO_ICMP: u8 = 1;
const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_PORT_UNREACH: u8 = 3;

/// An IPv4 header with no options from `src` to `dst` (the bytes as in a
/// packet), checksum filled in.
#[inline(always)]
fn ipv4_header(out: &mut [u8], src: [u8; 4], dst: [u8; 4], proto: u8, total_len: u16) {
    out[0] = 0x45;
    out[1] = 0;
    out[2..4].copy_from_slice(&total_len.to_be_bytes());
    out[4..8].copy_from_slice(&[0, 0, 0x40, 0]); // id 0, don't fragment
    out[8] = TTL;
    out[9] = proto;
    out[10] = 0;
    out[11] = 0;
    out[12..16].copy_from_slice(&src);
    out[16..20].copy_from_slice(&dst);
    let csum = checksum(sum_words(&out[..IPV4_HLEN], 0));
    out[10..12].copy_from_slice(&csum.to_be_bytes());
}

fn addr(ip: &[u8], off: usize) -> [u8; 4] {
    [ip[off], ip[off + 1], ip[off + 2], ip[off + 3]]
}

/// The reset answering a TCP segment, per RFC 793's reset generation: if the
/// segment carried an ACK the reset takes its sequence number from it,
/// otherwise it acknowledges everything the segment occupied. `None` for a
/// segment that is itself a reset (never answer one) or whose IPv4 header
/// has options (`ip` must be the whole header the packet carries).
///
/// `payload_len` is the TCP payload length of the offending segment.
#[inline(always)]
pub fn tcp_reset(ip: &[u8; IPV4_HLEN], tcp: &[u8; TCP_HLEN], payload_len: u32) -> Option<[u8; TCP_RESET_LEN]> {
    if ip[0] != 0x45 || ip[9] != IPPROTO_TCP {
        return None;
    }
    let flags = tcp[13];
    if flags & TCP_RST != 0 {
        return None;
    }
    let mut out = [0u8; TCP_RESET_LEN];
    let src = addr(ip, 16);
    let dst = addr(ip, 12);
    ipv4_header(&mut out[..IPV4_HLEN], src, dst, IPPROTO_TCP, TCP_RESET_LEN as u16);

    let t = IPV4_HLEN;
    out[t..t + 2].copy_from_slice(&tcp[2..4]); // their destination port is our source
    out[t + 2..t + 4].copy_from_slice(&tcp[0..2]);
    if flags & TCP_ACK != 0 {
        out[t + 4..t + 8].copy_from_slice(&tcp[8..12]);
        out[t + 13] = TCP_RST;
    } else {
        let seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
        let occupied = payload_len + u32::from(flags & TCP_SYN != 0) + u32::from(flags & TCP_FIN != 0);
        out[t + 8..t + 12].copy_from_slice(&seq.wrapping_add(occupied).to_be_bytes());
        out[t + 13] = TCP_RST | TCP_ACK;
    }
    out[t + 12] = (TCP_HLEN as u8 / 4) << 4;
    // Window, checksum and urgent pointer stay zero until the checksum below.
    let pseudo = sum_words(&src, 0) + sum_words(&dst, 0) + u32::from(IPPROTO_TCP) + TCP_HLEN as u32;
    let csum = checksum(sum_words(&out[t..], pseudo));
    out[t + 16..t + 18].copy_from_slice(&csum.to_be_bytes());
    Some(out)
}

/// ICMP port unreachable answering a UDP datagram, from the address the
/// client sent it to. `quote` is the datagram's IPv4 header (no options) and
/// UDP header. `None` when the header has options.
#[inline(always)]
pub fn icmp_port_unreachable(quote: &[u8; ICMP_QUOTE_LEN]) -> Option<[u8; ICMP_UNREACH_LEN]> {
    if quote[0] != 0x45 {
        return None;
    }
    let mut out = [0u8; ICMP_UNREACH_LEN];
    ipv4_header(&mut out[..IPV4_HLEN], addr(quote, 16), addr(quote, 12), IPPROTO_ICMP, ICMP_UNREACH_LEN as u16);
    let i = IPV4_HLEN;
    out[i] = ICMP_DEST_UNREACH;
    out[i + 1] = ICMP_PORT_UNREACH;
    out[i + ICMP_HLEN..].copy_from_slice(quote);
    let csum = checksum(sum_words(&out[i..], 0));
    out[i + 2..i + 4].copy_from_slice(&csum.to_be_bytes());
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip_header(proto: u8, src: [u8; 4], dst: [u8; 4], total: u16) -> [u8; 20] {
        let mut h = [0u8; 20];
        ipv4_header(&mut h, src, dst, proto, total);
        h[8] = 63; // a hop further: must not leak into the answer
        h
    }

    fn tcp_header(sport: u16, dport: u16, seq: u32, ack: u32, flags: u8) -> [u8; 20] {
        let mut t = [0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&ack.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = flags;
        t
    }

    const CLIENT: [u8; 4] = [10, 244, 1, 10];
    const VIP: [u8; 4] = [10, 96, 0, 10];

    fn checksum_ok(bytes: &[u8], pseudo: u32) -> bool {
        checksum(sum_words(bytes, pseudo)) == 0
    }

    #[test]
    fn reset_for_a_syn_acknowledges_it_from_the_frontend() {
        let ip = ip_header(IPPROTO_TCP, CLIENT, VIP, 60);
        let tcp = tcp_header(40000, 80, 1000, 0, TCP_SYN);
        let rst = tcp_reset(&ip, &tcp, 0).unwrap();
        assert_eq!(addr(&rst, 12), VIP);
        assert_eq!(addr(&rst, 16), CLIENT);
        assert_eq!(rst[9], IPPROTO_TCP);
        assert_eq!(u16::from_be_bytes([rst[2], rst[3]]), 40);
        assert!(checksum_ok(&rst[..20], 0), "IPv4 header checksum");
        let t = &rst[20..];
        assert_eq!(u16::from_be_bytes([t[0], t[1]]), 80);
        assert_eq!(u16::from_be_bytes([t[2], t[3]]), 40000);
        assert_eq!(u32::from_be_bytes([t[4], t[5], t[6], t[7]]), 0);
        assert_eq!(u32::from_be_bytes([t[8], t[9], t[10], t[11]]), 1001);
        assert_eq!(t[13], TCP_RST | TCP_ACK);
        let pseudo = sum_words(&VIP, 0) + sum_words(&CLIENT, 0) + 6 + 20;
        assert!(checksum_ok(t, pseudo), "TCP checksum");
    }

    #[test]
    fn reset_for_an_acked_segment_takes_its_sequence_from_the_ack() {
        let ip = ip_header(IPPROTO_TCP, CLIENT, VIP, 45);
        let tcp = tcp_header(40000, 80, 5000, 777, TCP_ACK);
        let rst = tcp_reset(&ip, &tcp, 5).unwrap();
        let t = &rst[20..];
        assert_eq!(u32::from_be_bytes([t[4], t[5], t[6], t[7]]), 777);
        assert_eq!(t[13], TCP_RST);
    }

    #[test]
    fn data_and_fin_count_in_the_acknowledgement() {
        let ip = ip_header(IPPROTO_TCP, CLIENT, VIP, 50);
        let tcp = tcp_header(1, 2, u32::MAX - 1, 0, TCP_FIN);
        let rst = tcp_reset(&ip, &tcp, 10).unwrap();
        let t = &rst[20..];
        assert_eq!(u32::from_be_bytes([t[8], t[9], t[10], t[11]]), 9, "wraps around");
    }

    #[test]
    fn never_answers_a_reset_or_a_header_with_options() {
        let ip = ip_header(IPPROTO_TCP, CLIENT, VIP, 40);
        assert!(tcp_reset(&ip, &tcp_header(1, 2, 3, 4, TCP_RST | TCP_ACK), 0).is_none());
        let mut with_options = ip;
        with_options[0] = 0x46;
        assert!(tcp_reset(&with_options, &tcp_header(1, 2, 3, 4, TCP_SYN), 0).is_none());
    }

    #[test]
    fn port_unreachable_quotes_the_datagram() {
        let mut quote = [0u8; ICMP_QUOTE_LEN];
        quote[..20].copy_from_slice(&ip_header(17, CLIENT, VIP, 33));
        quote[20..22].copy_from_slice(&53000u16.to_be_bytes());
        quote[22..24].copy_from_slice(&53u16.to_be_bytes());
        let icmp = icmp_port_unreachable(&quote).unwrap();
        assert_eq!(addr(&icmp, 12), VIP);
        assert_eq!(addr(&icmp, 16), CLIENT);
        assert_eq!(icmp[9], IPPROTO_ICMP);
        assert_eq!(u16::from_be_bytes([icmp[2], icmp[3]]) as usize, ICMP_UNREACH_LEN);
        assert!(checksum_ok(&icmp[..20], 0));
        assert_eq!((icmp[20], icmp[21]), (3, 3));
        assert!(checksum_ok(&icmp[20..], 0), "ICMP checksum");
        assert_eq!(&icmp[28..], &quote[..], "the original header, untranslated");
    }
}
