//! Reads what one frontend's backends are straight from the agent's pinned
//! maps, as the datapath would find them. Pinned maps are reached through
//! bpffs, so this works from any network namespace.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Context;
use aya::maps::{HashMap, Map, MapData};
use proxy_common::maps::{scope, BACKENDS_MAP, BACKEND_SLOTS_MAP, SERVICES_MAP};
use proxy_common::{Backend, BackendSlotKey, ServiceKey, ServiceValue, IPPROTO_TCP};

pub struct Probe {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    slots: HashMap<MapData, BackendSlotKey, u32>,
    backends: HashMap<MapData, u32, Backend>,
}

/// The agent's pin directory for maps under a node's bpffs.
pub fn maps_dir(bpffs: &Path) -> std::path::PathBuf {
    bpffs.join("ebpf-proxy").join("maps")
}

fn open(dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

impl Probe {
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        Ok(Probe {
            services: open(dir, SERVICES_MAP)?.try_into()?,
            slots: open(dir, BACKEND_SLOTS_MAP)?.try_into()?,
            backends: open(dir, BACKENDS_MAP)?.try_into()?,
        })
    }

    /// The backend addresses of a TCP ClusterIP frontend, slot by slot;
    /// empty when it is not in the map. A read racing a sync may see a mix
    /// of old and new slots; the caller looks for the address it waits for.
    pub fn backends_of(&self, vip: Ipv4Addr, port: u16) -> Vec<Ipv4Addr> {
        let key = ServiceKey { addr: u32::from_ne_bytes(vip.octets()), port: port.to_be(), proto: IPPROTO_TCP, scope: scope::CLUSTER_IP };
        let Ok(service) = self.services.get(&key, 0) else { return Vec::new() };
        (0..service.count)
            .filter_map(|slot| self.slots.get(&BackendSlotKey { service_id: service.service_id, slot }, 0).ok())
            .filter_map(|id| self.backends.get(&id, 0).ok())
            .map(|b| Ipv4Addr::from(b.addr.to_ne_bytes()))
            .collect()
    }

    /// Entries in the service, slot and backend maps.
    pub fn counts(&self) -> (usize, usize, usize) {
        (self.services.keys().count(), self.slots.keys().count(), self.backends.keys().count())
    }
}
