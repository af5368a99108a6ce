//! The Internet checksum: computed over bytes (for the packets the datapath
//! builds itself) and updated incrementally (RFC 1624, eqn. 3) for the XDP
//! path, which has no kernel helper to do it.
//!
//! Values are taken exactly as they sit in memory (network byte order read
//! as native integers): the one's complement sum is byte-order independent
//! as long as the checksum and the fields are read the same way (RFC 1071).

/// Folds a 32-bit one's complement sum to 16 bits.
#[inline(always)]
const fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// One's complement sum of big-endian 16-bit words, not yet folded.
#[inline(always)]
pub fn sum_words(bytes: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    if i < bytes.len() {
        sum += u32::from(bytes[i]) << 8;
    }
    sum
}

/// The checksum field's value (host order) for a sum from [`sum_words`].
#[inline(always)]
pub const fn checksum(sum: u32) -> u16 {
    !fold(sum)
}

/// The checksum after a 16-bit field changed from `old` to `new`.
#[inline(always)]
pub const fn replace2(csum: u16, old: u16, new: u16) -> u16 {
    !fold(!csum as u32 + !old as u32 + new as u32)
}

/// The checksum after a 32-bit field changed from `old` to `new`.
#[inline(always)]
pub const fn replace4(csum: u16, old: u32, new: u32) -> u16 {
    let sum = !csum as u32 + (!old & 0xffff) + (!old >> 16) + (new & 0xffff) + (new >> 16);
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;


    /// A TCP header plus pseudo-header, checksummed from scratch.
    fn full(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> u16 {
        let mut seg = [0u8; 20];
        seg[0..2].copy_from_slice(&sport.to_be_bytes());
        seg[2..4].copy_from_slice(&dport.to_be_bytes());
        seg[4..8].copy_from_slice(&0xdeadbeefu32.to_be_bytes());
        seg[12] = 0x50;
        seg[13] = 0x12;
        let pseudo = sum_words(&src, 0) + sum_words(&dst, 0) + 6 + 20;
        checksum(sum_words(&seg, pseudo))
    }

    fn mem4(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn mem2(p: u16) -> u16 {
        u16::from_ne_bytes(p.to_be_bytes())
    }

    /// The checksum as it sits in memory.
    fn in_mem(csum: u16) -> u16 {
        u16::from_ne_bytes(csum.to_be_bytes())
    }

    #[test]
    fn incremental_matches_a_full_recompute() {
        let (client, vip, backend, node) = ([10, 244, 1, 10], [10, 96, 0, 10], [10, 244, 2, 11], [10, 100, 0, 11]);
        let before = in_mem(full(client, vip, 40000, 80));
        // DNAT: destination address and port.
        let mut c = replace4(before, mem4(vip), mem4(backend));
        c = replace2(c, mem2(80), mem2(8080));
        assert_eq!(c, in_mem(full(client, backend, 40000, 8080)));
        // SNAT on top: source address and port.
        c = replace4(c, mem4(client), mem4(node));
        c = replace2(c, mem2(40000), mem2(61234));
        assert_eq!(c, in_mem(full(node, backend, 61234, 8080)));
    }

    #[test]
    fn many_random_rewrites_stay_exact() {
        let mut x: u32 = 0x1234_5678;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        for _ in 0..2000 {
            let (a, b, c) = (next().to_be_bytes(), next().to_be_bytes(), next().to_be_bytes());
            let (p, q) = (next() as u16, next() as u16);
            let before = in_mem(full(a, b, p, 80));
            let after = replace2(replace4(before, mem4(b), mem4(c)), mem2(p), mem2(q));
            let want = in_mem(full(a, c, q, 80));
            // 0x0000 and 0xffff are the same value in one's complement.
            assert!(after == want || (after ^ want) == 0xffff && (after == 0 || want == 0), "{after:x} vs {want:x}");
        }
    }
}
