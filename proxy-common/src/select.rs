//! Backend slot selection.

/// Maps a 32-bit random number onto `0..count` with a multiply and a shift:
/// no division in the datapath, and the bias is below `count / 2^32`.
/// `None` when the frontend has no backend.
#[inline(always)]
pub const fn slot_for(random: u32, count: u32) -> Option<u32> {
    if count == 0 {
        return None;
    }
    Some(((random as u64 * count as u64) >> 32) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_backend_is_none() {
        assert_eq!(slot_for(12345, 0), None);
    }

    #[test]
    fn extremes_stay_in_range() {
        for count in [1u32, 2, 3, 7, 1000, 16_384, u32::MAX] {
            assert_eq!(slot_for(0, count), Some(0));
            assert_eq!(slot_for(u32::MAX, count), Some(count - 1));
        }
    }

    #[test]
    fn evenly_spread_over_uniform_input() {
        // Stepping through the whole u32 range with a stride visits every
        // slot in equal proportion to within one step.
        let count = 7u32;
        let mut hits = [0u32; 7];
        let steps = 70_000u64;
        for i in 0..steps {
            let r = (i * (u32::MAX as u64 + 1) / steps) as u32;
            hits[slot_for(r, count).unwrap() as usize] += 1;
        }
        for h in hits {
            assert!((9_999..=10_001).contains(&h), "uneven: {hits:?}");
        }
    }
}
