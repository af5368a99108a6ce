//! Pinned maps whose layout no longer matches the programs: an agent built
//! with bigger keys or values (or more counters) must not reuse them, or the
//! kernel would refuse to load the programs against them.

use std::mem::size_of;
use std::path::Path;

use aya::maps::MapData;
use proxy_common::{
    config::CONFIG_MAP,
    ratelimit::{RefusalBucket, MAX_REFUSAL_CLIENTS, REFUSALS_MAP},
    frag::{FragKey, FragPorts, FRAGMENTS_MAP, MAX_FRAGMENTED_DATAGRAMS},
    tail::{SLOTS, TAIL_CALLS_MAP},
    maps::{
        AffinityKey, AffinityValue, AFFINITY_MAP, BACKENDS_MAP, BACKEND_SLOTS_MAP, MAX_AFFINITY, CONNTRACK_MAP, CONNTRACK_NEW_MAP, MAX_BACKENDS, MAX_BACKEND_SLOTS, MAX_CONNTRACK, MAX_CONNTRACK_NEW, MAX_SERVICES,
        MAX_SOURCE_RANGES, SERVICES_MAP, SOURCE_RANGES_MAP, VERDICTS_MAP,
    },
    sock::{
        SockFlowKey, SockFlowValue, SockRevNatKey, SockRevNatValue, MAX_SOCK_FLOWS, MAX_SOCK_REV_NAT, SOCK_FLOWS_MAP,
        SOCK_REV_NAT_MAP,
    },
    Backend, BackendSlotKey, CtKey, CtValue, DatapathConfig, ServiceKey, ServiceValue, SourceRange, Verdict,
};

/// Key size, value size and capacity of one map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    pub key: u32,
    pub value: u32,
    pub max_entries: u32,
}

const fn shape<K, V>(max_entries: u32) -> Shape {
    Shape {
        key: size_of::<K>() as u32,
        value: size_of::<V>() as u32,
        max_entries,
    }
}

/// Every pinned map the programs declare, as this build lays it out.
pub const EXPECTED: [(&str, Shape); 14] = [
    (SERVICES_MAP, shape::<ServiceKey, ServiceValue>(MAX_SERVICES)),
    (BACKEND_SLOTS_MAP, shape::<BackendSlotKey, u32>(MAX_BACKEND_SLOTS)),
    (BACKENDS_MAP, shape::<u32, Backend>(MAX_BACKENDS)),
    (CONNTRACK_MAP, shape::<CtKey, CtValue>(MAX_CONNTRACK)),
    (CONNTRACK_NEW_MAP, shape::<CtKey, CtValue>(MAX_CONNTRACK_NEW)),
    (VERDICTS_MAP, shape::<u32, u64>(Verdict::COUNT)),
    (CONFIG_MAP, shape::<u32, DatapathConfig>(1)),
    // An LPM trie key is its prefix length followed by the data.
    (SOURCE_RANGES_MAP, shape::<(u32, SourceRange), u32>(MAX_SOURCE_RANGES)),
    (SOCK_REV_NAT_MAP, shape::<SockRevNatKey, SockRevNatValue>(MAX_SOCK_REV_NAT)),
    (SOCK_FLOWS_MAP, shape::<SockFlowKey, SockFlowValue>(MAX_SOCK_FLOWS)),
    (AFFINITY_MAP, shape::<AffinityKey, AffinityValue>(MAX_AFFINITY)),
    (REFUSALS_MAP, shape::<u32, RefusalBucket>(MAX_REFUSAL_CLIENTS)),
    (FRAGMENTS_MAP, shape::<FragKey, FragPorts>(MAX_FRAGMENTED_DATAGRAMS)),
    (TAIL_CALLS_MAP, shape::<u32, u32>(SLOTS)),
];

/// Unpins every map under `dir` whose layout differs from this build's, so
/// the loader creates it afresh. The programs attached now keep the old map
/// until they are replaced. Services are rewritten by the first sync; flows
/// tracked in a replaced conntrack map are forgotten, which is logged.
pub fn unpin_outdated(dir: &Path) -> anyhow::Result<Vec<String>> {
    let mut replaced = Vec::new();
    for (name, want) in EXPECTED {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let found = match MapData::from_pin(&path).and_then(|m| m.info()) {
            Ok(info) => Shape {
                key: info.key_size(),
                value: info.value_size(),
                max_entries: info.max_entries(),
            },
            Err(error) => {
                tracing::warn!(map = name, %error, "unreadable pinned map; replacing it");
                std::fs::remove_file(&path)?;
                replaced.push(name.to_string());
                continue;
            }
        };
        if found != want {
            tracing::warn!(map = name, ?found, ?want, "pinned map has another layout (an upgrade); replacing it");
            std::fs::remove_file(&path)?;
            replaced.push(name.to_string());
        }
    }
    Ok(replaced)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_match_the_shared_types() {
        let find = |n: &str| EXPECTED.iter().find(|(name, _)| *name == n).unwrap().1;
        assert_eq!(find(CONNTRACK_MAP), Shape { key: 16, value: 40, max_entries: MAX_CONNTRACK });
        assert_eq!(find(SOURCE_RANGES_MAP).key, 12);
        assert_eq!(find(VERDICTS_MAP).max_entries, Verdict::COUNT);
    }
}
