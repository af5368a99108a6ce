//! Host UDP sockets stuck on a backend that left their Service.
//!
//! kube-proxy deletes the conntrack entries of a removed UDP endpoint, so
//! the next datagram of a flow (a resolver's, say) is sent to a live one.
//! A host socket connected through the connect4 hook has no such entry: the
//! kernel sends straight to the backend it was given. So after a sync the
//! agent aborts each connected UDP socket whose backend no longer serves
//! the frontend the socket dialled; the application sees ECONNABORTED and
//! opens a new socket, which the hook sends to a live backend. TCP is left
//! alone, as kube-proxy leaves established TCP connections alone.

use std::net::SocketAddrV4;

use proxy_common::{maps::scope, BackendSlotKey, ServiceKey, IPPROTO_UDP};

use crate::datapath::{udp_sockets, SockRevNat};
use crate::tables::Tables;

/// Whether a UDP datagram dialled to `frontend` could be sent to `backend`
/// now: the frontend exists (first matching scope, as the hooks look it
/// up) and one of its usable slots names the backend.
pub fn still_served(tables: &Tables, frontend: SocketAddrV4, backend: SocketAddrV4) -> bool {
    let addr = u32::from_ne_bytes(frontend.ip().octets());
    let port = frontend.port().to_be();
    let Some(svc) = scope::SOCKET_LOOKUP_ORDER.iter().find_map(|&scope| {
        tables.services.get(&ServiceKey {
            addr,
            port,
            proto: IPPROTO_UDP,
            scope,
        })
    }) else {
        return false;
    };
    let backend_addr = u32::from_ne_bytes(backend.ip().octets());
    let backend_port = backend.port().to_be();
    (0..svc.count).any(|slot| {
        tables
            .slots
            .get(&BackendSlotKey {
                service_id: svc.service_id,
                slot,
            })
            .and_then(|id| tables.backends.get(id))
            .is_some_and(|b| {
                b.addr == backend_addr && b.port == backend_port && b.proto == IPPROTO_UDP
            })
    })
}

/// Aborts the node's stale connected UDP sockets; returns how many.
pub fn abort_stale(rev_nat: &SockRevNat, tables: &Tables) -> usize {
    let sockets = match udp_sockets::connected() {
        Ok(sockets) => sockets,
        Err(error) => {
            tracing::warn!(%error, "listing UDP sockets failed; stale host flows stay where they are");
            return 0;
        }
    };
    let mut aborted = 0;
    for socket in &sockets {
        let Some(frontend) = rev_nat.frontend(socket.cookie, socket.remote) else {
            continue;
        };
        if still_served(tables, frontend, socket.remote) {
            continue;
        }
        match udp_sockets::abort(socket) {
            Ok(()) => {
                aborted += 1;
                tracing::info!(local = %socket.local, %frontend, backend = %socket.remote, "aborted a UDP socket whose backend left the Service");
            }
            Err(error) => {
                tracing::warn!(local = %socket.local, backend = %socket.remote, %error, "aborting a stale UDP socket failed")
            }
        }
    }
    aborted
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use proxy_common::{Backend, ServiceValue, IPPROTO_TCP};

    use super::*;

    fn be(ip: [u8; 4]) -> u32 {
        u32::from_ne_bytes(ip)
    }

    fn at(ip: [u8; 4], port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::from(ip), port)
    }

    /// 10.96.0.53:53/UDP (ClusterIP) on slots 0..count of backends 1 and 2
    /// (10.244.1.10:53 and 10.244.2.10:53), and backend 3, the first one's
    /// address and port on TCP.
    fn dns(count: u32, scope: u8) -> Tables {
        let mut t = Tables::default();
        let key = ServiceKey {
            addr: be([10, 96, 0, 53]),
            port: 53u16.to_be(),
            proto: IPPROTO_UDP,
            scope,
        };
        t.services.insert(
            key,
            ServiceValue {
                service_id: 7,
                count,
                rev_nat_index: 7,
                flags: 0,
                affinity_timeout_s: 0,
            },
        );
        for (id, ip, proto) in [
            (1, [10, 244, 1, 10], IPPROTO_UDP),
            (2, [10, 244, 2, 10], IPPROTO_UDP),
            (3, [10, 244, 1, 10], IPPROTO_TCP),
        ] {
            t.backends.insert(
                id,
                Backend {
                    addr: be(ip),
                    port: 53u16.to_be(),
                    proto,
                    flags: 0,
                },
            );
        }
        t.slots.insert(
            BackendSlotKey {
                service_id: 7,
                slot: 0,
            },
            1,
        );
        t.slots.insert(
            BackendSlotKey {
                service_id: 7,
                slot: 1,
            },
            2,
        );
        t
    }

    #[test]
    fn a_backend_in_the_frontends_slots_still_serves() {
        let t = dns(2, scope::CLUSTER_IP);
        assert!(still_served(
            &t,
            at([10, 96, 0, 53], 53),
            at([10, 244, 1, 10], 53)
        ));
        assert!(still_served(
            &t,
            at([10, 96, 0, 53], 53),
            at([10, 244, 2, 10], 53)
        ));
        assert!(still_served(
            &dns(2, scope::NODE_PORT),
            at([10, 96, 0, 53], 53),
            at([10, 244, 2, 10], 53)
        ));
    }

    #[test]
    fn a_removed_backend_a_gone_frontend_or_no_endpoints_do_not() {
        let frontend = at([10, 96, 0, 53], 53);
        assert!(
            !still_served(
                &dns(2, scope::CLUSTER_IP),
                frontend,
                at([10, 244, 3, 10], 53)
            ),
            "never a backend"
        );
        assert!(
            !still_served(
                &dns(2, scope::CLUSTER_IP),
                frontend,
                at([10, 244, 1, 10], 5353)
            ),
            "another port"
        );
        assert!(
            !still_served(
                &dns(1, scope::CLUSTER_IP),
                frontend,
                at([10, 244, 2, 10], 53)
            ),
            "slot beyond count"
        );
        assert!(
            !still_served(
                &dns(0, scope::CLUSTER_IP),
                frontend,
                at([10, 244, 1, 10], 53)
            ),
            "no usable endpoint"
        );
        assert!(
            !still_served(&Tables::default(), frontend, at([10, 244, 1, 10], 53)),
            "Service deleted"
        );
        assert!(!still_served(
            &dns(2, scope::CLUSTER_IP),
            at([10, 96, 0, 54], 53),
            at([10, 244, 1, 10], 53)
        ));
    }

    #[test]
    fn only_udp_backends_count() {
        let mut t = dns(2, scope::CLUSTER_IP);
        t.slots.insert(
            BackendSlotKey {
                service_id: 7,
                slot: 0,
            },
            3,
        );
        t.slots.remove(&BackendSlotKey {
            service_id: 7,
            slot: 1,
        });
        assert!(!still_served(
            &t,
            at([10, 96, 0, 53], 53),
            at([10, 244, 1, 10], 53)
        ));
    }
}
