//! The socket load balancer's record of which frontend each host socket
//! dialled before its hook pointed it at a backend.

use std::net::{Ipv4Addr, SocketAddrV4};

use aya::maps::{HashMap, MapData};
use proxy_common::sock::{SockRevNatKey, SockRevNatValue, SOCK_REV_NAT_MAP};

use super::{maps::open_pinned, PinLayout};

pub struct SockRevNat(HashMap<MapData, SockRevNatKey, SockRevNatValue>);

impl SockRevNat {
    pub fn open(layout: &PinLayout) -> anyhow::Result<Self> {
        Ok(SockRevNat(
            open_pinned(&layout.maps(), SOCK_REV_NAT_MAP)?.try_into()?,
        ))
    }

    /// The frontend socket `cookie` dialled when the hook sent it to
    /// `backend`; `None` for a socket the hook did not translate.
    pub fn frontend(&self, cookie: u64, backend: SocketAddrV4) -> Option<SocketAddrV4> {
        let key = SockRevNatKey::new(cookie, u32::from_ne_bytes(backend.ip().octets()), backend.port().to_be());
        let value = self.0.get(&key, 0).ok()?;
        Some(SocketAddrV4::new(
            Ipv4Addr::from(value.frontend_addr.to_ne_bytes()),
            u16::from_be(value.frontend_port),
        ))
    }
}
