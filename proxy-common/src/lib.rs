//! Types shared by the kernel programs (`proxy-ebpf`) and the agent.
//!
//! Every map key and value is `#[repr(C)]` with explicit padding fields, so the
//! layout is the same on both sides and no uninitialised padding bytes reach a
//! hash map key. Sizes are asserted at compile time. Addresses and ports are
//! stored in network byte order, exactly as they sit in the packet, so the
//! datapath never swaps bytes.
#![no_std]

pub mod config;
pub mod conntrack;
pub mod csum;
pub mod frag;
pub mod icmp;
pub mod maps;
pub mod ratelimit;
pub mod reject;
pub mod select;
pub mod sock;
pub mod tail;
pub mod verdict;

pub use conntrack::{CtDirection, CtKey, CtValue};
pub use config::{Cidr4, DatapathConfig};
pub use maps::{Backend, BackendSlotKey, ServiceKey, ServiceValue, SourceRange};
pub use verdict::Verdict;

/// IP protocol numbers the datapath translates.
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type below is repr(C), made only of integers, with all
    // padding spelled out as fields, so any bit pattern is a valid value.
    unsafe impl aya::Pod for crate::ServiceKey {}
    unsafe impl aya::Pod for crate::ServiceValue {}
    unsafe impl aya::Pod for crate::BackendSlotKey {}
    unsafe impl aya::Pod for crate::Backend {}
    unsafe impl aya::Pod for crate::CtKey {}
    unsafe impl aya::Pod for crate::CtValue {}
    unsafe impl aya::Pod for crate::DatapathConfig {}
    unsafe impl aya::Pod for crate::SourceRange {}
    unsafe impl aya::Pod for crate::maps::AffinityKey {}
    unsafe impl aya::Pod for crate::maps::AffinityValue {}
    unsafe impl aya::Pod for crate::ratelimit::RefusalBucket {}
    unsafe impl aya::Pod for crate::frag::FragKey {}
    unsafe impl aya::Pod for crate::frag::FragPorts {}
}
