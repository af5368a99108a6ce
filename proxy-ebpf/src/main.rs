//! Kernel side of the proxy: thin entry points over one module per concern.
#![no_std]
#![no_main]

mod conntrack;
mod decide;
mod fib;
mod frag;
mod icmp_nat;
mod lb;
mod maps;
mod nat;
mod nat_xdp;
mod node_flows;
mod node_sockets;
mod packet;
mod reject;
mod sock;
mod tc;
mod xdp;

use aya_ebpf::{
    macros::{cgroup_sock_addr, classifier, xdp},
    programs::{SockAddrContext, TcContext, XdpContext},
};
use lb::Role;

/// tc ingress on pod-facing devices: ClusterIP (and NodePort and external
/// address) traffic from pods, and replies from local backends.
#[classifier]
pub fn proxy_tc_pod(ctx: TcContext) -> i32 {
    tc::ingress(&ctx, Role::Pod)
}

/// tc egress on pod-facing devices: replies on their way into a pod that no
/// earlier hook restored, because NAT the CNI applied after ours (a
/// masquerade towards an endpoint outside the pod network) hid them until
/// the stack undid it.
#[classifier]
pub fn proxy_tc_pod_egress(ctx: TcContext) -> i32 {
    tc::pod_egress(&ctx)
}

/// ICMP errors handed on by the tc programs on ingress (a tail call).
#[classifier]
pub fn proxy_tc_icmp(ctx: TcContext) -> i32 {
    tc::icmp(&ctx, true)
}

/// ICMP errors handed on by `proxy_tc_pod_egress` (a tail call).
#[classifier]
pub fn proxy_tc_icmp_egress(ctx: TcContext) -> i32 {
    tc::icmp(&ctx, false)
}

/// A packet the entry points decided to refuse (a tail call).
#[classifier]
pub fn proxy_tc_refuse(ctx: TcContext) -> i32 {
    tc::refuse(&ctx)
}

/// tc ingress on the node's external devices: NodePort, LoadBalancer and
/// external IP traffic from outside, and replies from remote backends.
#[classifier]
pub fn proxy_tc_external(ctx: TcContext) -> i32 {
    tc::ingress(&ctx, Role::External)
}

/// tc egress on the node's external devices: the node's own flows, moved
/// off a source port a SNATed flow holds towards the same backend.
#[classifier]
pub fn proxy_tc_node_egress(ctx: TcContext) -> i32 {
    tc::external_egress(&ctx)
}

/// XDP on the node's external devices (with `--xdp`): the NodePort,
/// LoadBalancer and external IP fast path, before an skb exists.
#[xdp]
pub fn proxy_xdp_external(ctx: XdpContext) -> u32 {
    xdp::ingress(&ctx)
}

// Socket-level load balancing for processes in the cgroup these attach to.

#[cgroup_sock_addr(connect4)]
pub fn proxy_sock_connect4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx, sock::Call::Connect)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn proxy_sock_sendmsg4(ctx: SockAddrContext) -> i32 {
    sock::translate(&ctx, sock::Call::SendTo)
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
