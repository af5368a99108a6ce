//! Kernel side of the proxy: thin entry points over one module per concern.
#![no_std]
#![no_main]

mod conntrack;
mod lb;
mod maps;
mod nat;
mod packet;
mod tc;

use aya_ebpf::{macros::classifier, programs::TcContext};

/// tc ingress on pod-facing and node devices: translates service traffic and
/// its replies, leaves everything else alone.
#[classifier]
pub fn proxy_tc_ingress(ctx: TcContext) -> i32 {
    tc::ingress(&ctx)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program with a reachable panic; this is never
    // called at run time.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
