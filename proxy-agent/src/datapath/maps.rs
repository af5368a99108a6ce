use std::path::Path;

use anyhow::Context;
use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Array, HashMap, IterableMap, Map, MapData, PerCpuArray};
use proxy_common::{
    config::CONFIG_MAP,
    maps::{BACKENDS_MAP, BACKEND_SLOTS_MAP, CONNTRACK_MAP, CONNTRACK_NEW_MAP, SERVICES_MAP, SOURCE_RANGES_MAP, VERDICTS_MAP},
    Backend, BackendSlotKey, CtKey, CtValue, DatapathConfig, ServiceKey, ServiceValue, SourceRange, Verdict,
};

use super::{batch, PinLayout};

/// Runs of ops shorter than this go one by one.
const BATCH_FROM: usize = 16;
use crate::diff::Op;
use crate::tables::Tables;

/// Handles on the pinned maps, opened from bpffs so the agent and the
/// inspection commands use the same code whether or not programs are loaded.
pub struct PinnedMaps {
    services: HashMap<MapData, ServiceKey, ServiceValue>,
    slots: HashMap<MapData, BackendSlotKey, u32>,
    backends: HashMap<MapData, u32, Backend>,
    conntrack: HashMap<MapData, CtKey, CtValue>,
    conntrack_new: HashMap<MapData, CtKey, CtValue>,
    verdicts: PerCpuArray<MapData, u64>,
    source_ranges: LpmTrie<MapData, SourceRange, u32>,
    config: Array<MapData, DatapathConfig>,
}

#[derive(Debug)]
pub struct ApplyFailure {
    pub op: Op,
    pub error: String,
}

pub(super) fn open_pinned(dir: &Path, name: &str) -> anyhow::Result<Map> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).with_context(|| format!("opening pinned map {}", path.display()))?;
    Ok(Map::from_map_data(data)?)
}

impl PinnedMaps {
    pub fn open(layout: &PinLayout) -> anyhow::Result<Self> {
        let dir = layout.maps();
        Ok(PinnedMaps {
            services: open_pinned(&dir, SERVICES_MAP)?.try_into()?,
            slots: open_pinned(&dir, BACKEND_SLOTS_MAP)?.try_into()?,
            backends: open_pinned(&dir, BACKENDS_MAP)?.try_into()?,
            conntrack: open_pinned(&dir, CONNTRACK_MAP)?.try_into()?,
            conntrack_new: open_pinned(&dir, CONNTRACK_NEW_MAP)?.try_into()?,
            verdicts: open_pinned(&dir, VERDICTS_MAP)?.try_into()?,
            source_ranges: open_pinned(&dir, SOURCE_RANGES_MAP)?.try_into()?,
            config: open_pinned(&dir, CONFIG_MAP)?.try_into()?,
        })
    }

    /// What the maps hold now; a restarted agent diffs against this.
    pub fn read_tables(&self) -> anyhow::Result<Tables> {
        let mut tables = Tables::default();
        for entry in self.services.iter() {
            let (k, v) = entry?;
            tables.services.insert(k, v);
        }
        for entry in self.slots.iter() {
            let (k, v) = entry?;
            tables.slots.insert(k, v);
        }
        for entry in self.backends.iter() {
            let (k, v) = entry?;
            tables.backends.insert(k, v);
        }
        for key in self.source_ranges.keys() {
            let key = key?;
            tables.source_ranges.insert((key.prefix_len(), key.data()), crate::tables::SOURCE_RANGE_ALLOWED);
        }
        Ok(tables)
    }

    /// Applies `ops` in order. A failed write is reported and the rest still
    /// go through: one bad entry must not hold every other Service hostage.
    /// Long runs of one kind of op go in batches; from where a batch
    /// stops, its ops go one by one, so a failure is reported per op.
    pub fn apply(&mut self, ops: &[Op]) -> Vec<ApplyFailure> {
        let mut failures = Vec::new();
        let mut rest = ops;
        while let Some(first) = rest.first() {
            let kind = std::mem::discriminant(first);
            let run = rest.iter().take_while(|op| std::mem::discriminant(*op) == kind).count();
            let (group, tail) = rest.split_at(run);
            let done = if run >= BATCH_FROM { self.apply_batch(group) } else { 0 };
            self.apply_each(&group[done..], &mut failures);
            rest = tail;
        }
        failures
    }

    /// Ops of one kind in one call; returns how many went in.
    fn apply_batch(&mut self, group: &[Op]) -> usize {
        let result = match &group[0] {
            Op::PutBackend(..) => put_batch(self.backends.map(), group, |op| match op {
                Op::PutBackend(id, backend) => Some((*id, *backend)),
                _ => None,
            }),
            Op::PutSlot(..) => put_batch(self.slots.map(), group, |op| match op {
                Op::PutSlot(key, id) => Some((*key, *id)),
                _ => None,
            }),
            Op::PutService(..) => put_batch(self.services.map(), group, |op| match op {
                Op::PutService(key, value) => Some((*key, *value)),
                _ => None,
            }),
            Op::DeleteService(..) => delete_batch(self.services.map(), group, |op| match op {
                Op::DeleteService(key) => Some(*key),
                _ => None,
            }),
            Op::DeleteSlot(..) => delete_batch(self.slots.map(), group, |op| match op {
                Op::DeleteSlot(key) => Some(*key),
                _ => None,
            }),
            Op::DeleteBackend(..) => delete_batch(self.backends.map(), group, |op| match op {
                Op::DeleteBackend(id) => Some(*id),
                _ => None,
            }),
            // Few, and LPM tries take no batches: one by one.
            Op::PutSourceRange(..) | Op::DeleteSourceRange(..) => return 0,
        };
        match result {
            Ok(()) => group.len(),
            Err(partial) => {
                tracing::debug!(done = partial.done, of = group.len(), error = %partial.error, "batch stopped; going on one by one");
                partial.done
            }
        }
    }

    fn apply_each(&mut self, ops: &[Op], failures: &mut Vec<ApplyFailure>) {
        for op in ops {
            let result = match op {
                Op::PutBackend(id, b) => self.backends.insert(id, b, 0),
                Op::PutSlot(k, id) => self.slots.insert(k, id, 0),
                Op::PutSourceRange(len, data) => self.source_ranges.insert(&Key::new(*len, *data), 1, 0),
                Op::PutService(k, v) => self.services.insert(k, v, 0),
                Op::DeleteSourceRange(len, data) => self.source_ranges.remove(&Key::new(*len, *data)),
                Op::DeleteService(k) => self.services.remove(k),
                Op::DeleteSlot(k) => self.slots.remove(k),
                Op::DeleteBackend(id) => self.backends.remove(id),
            };
            if let Err(error) = result {
                failures.push(ApplyFailure {
                    op: op.clone(),
                    error: error.to_string(),
                });
            }
        }
    }

    pub fn config(&self) -> anyhow::Result<DatapathConfig> {
        Ok(self.config.get(&0, 0)?)
    }

    pub fn set_config(&mut self, config: &DatapathConfig) -> anyhow::Result<()> {
        Ok(self.config.set(0, config, 0)?)
    }

    /// Verdict counters summed over CPUs.
    pub fn verdicts(&self) -> anyhow::Result<Vec<(Verdict, u64)>> {
        let mut out = Vec::new();
        for verdict in Verdict::ALL {
            let per_cpu = self.verdicts.get(&verdict.index(), 0)?;
            out.push((verdict, per_cpu.iter().sum()));
        }
        Ok(out)
    }

    /// Every conntrack entry, established flows' first.
    pub fn conntrack_entries(&self) -> anyhow::Result<Vec<(CtKey, CtValue)>> {
        let mut out = Vec::new();
        for table in CtTable::ALL {
            for entry in self.ct(table).iter() {
                out.push(entry?);
            }
        }
        Ok(out)
    }

    fn ct(&self, table: CtTable) -> &HashMap<MapData, CtKey, CtValue> {
        match table {
            CtTable::Established => &self.conntrack,
            CtTable::New => &self.conntrack_new,
        }
    }

    /// Keys of `table` whose entry `over` says is done with, read a chunk
    /// at a time in batches.
    pub fn conntrack_keys_where(&self, table: CtTable, over: impl Fn(&CtKey, &CtValue) -> bool) -> anyhow::Result<(usize, Vec<CtKey>)> {
        let mut seen = 0;
        let mut keys = Vec::new();
        batch::for_each::<CtKey, CtValue>(self.ct(table).map(), 4096, |k, v| {
            seen += k.len();
            keys.extend(k.iter().zip(v).filter(|(k, v)| over(k, v)).map(|(k, _)| *k));
        })?;
        Ok((seen, keys))
    }

    /// Deletes entries of `table`; one gone already (evicted, or deleted
    /// by the datapath) is skipped. Returns how many were deleted.
    pub fn delete_conntrack(&mut self, table: CtTable, keys: &[CtKey]) -> usize {
        let mut deleted = 0;
        let mut rest = keys;
        while !rest.is_empty() {
            match batch::delete(self.ct(table).map(), rest) {
                Ok(()) => return deleted + rest.len(),
                Err(partial) => {
                    deleted += partial.done;
                    rest = &rest[(partial.done + 1).min(rest.len())..];
                }
            }
        }
        deleted
    }

    /// Keys of `table`, counted without reading values, stopping at
    /// `limit`. A key deleted under the walk restarts it from the first key,
    /// so on a busy LRU map only the limit bounds it.
    pub fn count_conntrack(&self, table: CtTable, limit: usize) -> anyhow::Result<usize> {
        let mut count = 0;
        for key in self.ct(table).keys() {
            key?;
            count += 1;
            if count >= limit {
                break;
            }
        }
        Ok(count)
    }
}

/// The datapath's two conntrack tables (see `proxy-ebpf`'s `conntrack`):
/// flows that have shown they are established, and new ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtTable {
    Established,
    New,
}

impl CtTable {
    pub const ALL: [CtTable; 2] = [CtTable::Established, CtTable::New];

    pub fn capacity(self) -> u32 {
        match self {
            CtTable::Established => proxy_common::maps::MAX_CONNTRACK,
            CtTable::New => proxy_common::maps::MAX_CONNTRACK_NEW,
        }
    }

    /// The metric label.
    pub fn name(self) -> &'static str {
        match self {
            CtTable::Established => "established",
            CtTable::New => "new",
        }
    }
}

fn put_batch<K: aya::Pod, V: aya::Pod>(
    map: &MapData,
    group: &[Op],
    entry: impl Fn(&Op) -> Option<(K, V)>,
) -> Result<(), batch::Partial> {
    let (keys, values): (Vec<K>, Vec<V>) = group.iter().filter_map(entry).unzip();
    batch::update(map, &keys, &values)
}

fn delete_batch<K: aya::Pod>(map: &MapData, group: &[Op], key: impl Fn(&Op) -> Option<K>) -> Result<(), batch::Partial> {
    let keys: Vec<K> = group.iter().filter_map(key).collect();
    batch::delete(map, &keys)
}
