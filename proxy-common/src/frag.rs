//! IP fragments of translated flows. Only a datagram's first fragment
//! carries its TCP or UDP header, so the datapath keeps the ports it saw
//! there, by the datagram's addresses, protocol and IP id, and gives them to
//! the later fragments (as Cilium's fragment map does): each fragment is
//! then translated as its datagram's flow is. A later fragment that arrives
//! before its first one (the map knows nothing of it) goes on untranslated.

use core::mem::size_of;

pub const FRAGMENTS_MAP: &str = "FRAGMENTS";
/// Datagrams in flight at once (LRU: an old datagram's entry gives way).
pub const MAX_FRAGMENTED_DATAGRAMS: u32 = 8_192;

/// IPv4 flags and fragment offset (host byte order of the 16-bit field).
pub const IP_MORE_FRAGMENTS: u16 = 0x2000;
pub const IP_OFFSET_MASK: u16 = 0x1fff;

/// Which part of a datagram a packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not fragmented.
    Whole,
    /// The first fragment: it has the TCP or UDP header.
    First,
    /// A later fragment: no TCP or UDP header.
    Later,
}

impl Fragment {
    /// From the IPv4 header's flags and fragment offset field.
    #[inline(always)]
    pub const fn of(frag_field: u16) -> Self {
        if frag_field & IP_OFFSET_MASK != 0 {
            Fragment::Later
        } else if frag_field & IP_MORE_FRAGMENTS != 0 {
            Fragment::First
        } else {
            Fragment::Whole
        }
    }
}

/// A datagram, as its fragments' IP headers name it (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub saddr: u32,
    pub daddr: u32,
    pub id: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// The ports of its first fragment (network byte order).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragPorts {
    pub sport: u16,
    pub dport: u16,
}

const _: () = assert!(size_of::<FragKey>() == 12);
const _: () = assert!(size_of::<FragPorts>() == 4);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_kinds() {
        assert_eq!(Fragment::of(0), Fragment::Whole);
        assert_eq!(Fragment::of(0x4000), Fragment::Whole, "don't fragment alone");
        assert_eq!(Fragment::of(IP_MORE_FRAGMENTS), Fragment::First);
        assert_eq!(Fragment::of(IP_MORE_FRAGMENTS | 185), Fragment::Later);
        assert_eq!(Fragment::of(370), Fragment::Later, "the last fragment");
    }
}
