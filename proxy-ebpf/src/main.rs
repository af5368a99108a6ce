//! Kernel side of the proxy: thin entry points over one module per concern.
#![no_std]
#![no_main]

mod conntrack;
mod fib;
mod lb;
mod maps;
mod nat;
mod packet;
mod reject;
mod tc;

use aya_ebpf::{macros::classifier, programs::TcContext};
use lb::Role;

/// tc ingress on pod-facing devices: ClusterIP (and NodePort and external
/// address) traffic from pods, and replies from local backends.
#[classifier]
pub fn proxy_tc_pod(ctx: TcContext) -> i32 {
    tc::ingress(&ctx, Role::Pod)
}

/// tc ingress on the node's external devices: NodePort, LoadBalancer and
/// external IP traffic from outside, and replies from remote backends.
#[classifier]
pub fn proxy_tc_external(ctx: TcContext) -> i32 {
    tc::ingress(&ctx, Role::External)
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
