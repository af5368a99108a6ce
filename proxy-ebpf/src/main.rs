//! Kernel side of the proxy: thin entry points over one module per concern.
#![no_std]
#![no_main]

mod conntrack;
mod lb;
mod maps;
mod nat;
mod packet;
mod sock;
mod tc;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier},
    programs::{SockAddrContext, TcContext},
};

/// tc ingress on pod-facing and node devices: translates service traffic and
/// its replies, leaves everything else alone.
#[classifier]
pub fn proxy_tc_ingress(ctx: TcContext) -> i32 {
    tc::ingress(&ctx)
}

// Socket-level load balancing for processes in the cgroup these attach to.

#[cgroup_sock_addr(connect4)]
pub fn proxy_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn proxy_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn proxy_sock_recvmsg4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn proxy_sock_getpeername4(ctx: SockAddrContext) -> i32 {
    sock::reverse(&ctx)
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
