//! Which SAs and policies are rotor's.
//!
//! rotor marks everything it installs with a request id (reqid) from one range:
//! SAs carry it in `xfrm_usersa_info.reqid`, policies in their template. The
//! range is the only ownership mark: "remove all of ours" deletes exactly the
//! SAs whose reqid, and the policies any of whose templates' reqid, lies in the
//! range, and nothing else. Other IPsec software (strongSwan's charon allocates
//! reqids upwards from 1) never reaches this range by accident.
//!
//! An XFRM mark was considered and rejected: a mark changes which packets an SA
//! or policy matches (`(skb->mark & mask) == value`), so it cannot be a pure label.

/// A contiguous reqid range that rotor owns on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ownership {
    base: u32,
    len: u32,
}

/// The default range: `0x5254_0000 ..= 0x5257_ffff` ("RT" + 18 bits), room for
/// 262,144 peers.
pub const DEFAULT_REQID_BASE: u32 = 0x5254_0000;
/// Size of the default range.
pub const DEFAULT_REQID_LEN: u32 = 0x0004_0000;

/// A bijection of the `bits`-bit integers that scatters consecutive inputs:
/// `x ^= x >> s` and multiplying by an odd constant modulo 2^bits are each
/// invertible, so their composition is too (the murmur3 finaliser, narrowed).
fn scatter(index: u32, bits: u32) -> u32 {
    let mask = if bits >= 32 {
        u32::MAX
    } else {
        (1u32 << bits) - 1
    };
    let s = (bits / 2).max(1);
    let mut x = index & mask;
    x ^= x >> s;
    x = x.wrapping_mul(0x9E37_79B1) & mask;
    x ^= x >> s;
    x = x.wrapping_mul(0x85EB_CA6B) & mask;
    x ^= x >> s;
    x
}

impl Default for Ownership {
    fn default() -> Self {
        Ownership {
            base: DEFAULT_REQID_BASE,
            len: DEFAULT_REQID_LEN,
        }
    }
}

impl Ownership {
    /// A range of `len` reqids starting at `base`. Returns `None` when the range
    /// is empty, contains reqid 0 (the kernel's "any"), or wraps past `u32::MAX`.
    pub fn new(base: u32, len: u32) -> Option<Self> {
        (len > 0 && base > 0 && base.checked_add(len - 1).is_some())
            .then_some(Ownership { base, len })
    }

    /// Whether `reqid` is rotor's.
    pub fn owns(&self, reqid: u32) -> bool {
        reqid.wrapping_sub(self.base) < self.len
    }

    /// The reqid for peer number `index` (0-based), or `None` past the range.
    /// Distinct indexes get distinct reqids. When the range's length is a
    /// power of two (the default's is) the index is scattered over the range
    /// by a bijective xorshift-multiply mix: the kernel hashes an SA by
    /// `reqid ^ (daddr + saddr)`, so reqids that grow with the index, given
    /// peers whose addresses also grow with it (the usual config), cancel out
    /// and put every SA in a handful of buckets, turning each SA add into a
    /// walk over all SAs (measured: 10,000 nodes, 20,000 SAs in 13 buckets, a
    /// rotation of every node 130x slower than the batched floor).
    pub fn reqid_for(&self, index: u32) -> Option<u32> {
        if index >= self.len {
            return None;
        }
        let offset = if self.len.is_power_of_two() {
            scatter(index, self.len.trailing_zeros())
        } else {
            index
        };
        Some(self.base + offset)
    }

    /// First reqid of the range.
    pub fn base(&self) -> u32 {
        self.base
    }

    /// Number of reqids in the range.
    pub fn len(&self) -> u32 {
        self.len
    }

    /// Always false: an `Ownership` is never empty.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_edges() {
        let o = Ownership::new(100, 10).unwrap();
        assert!(!o.owns(99));
        assert!(o.owns(100));
        assert!(o.owns(109));
        assert!(!o.owns(110));
        assert!(!o.owns(0));
        assert_eq!(o.reqid_for(0), Some(100));
        assert_eq!(o.reqid_for(9), Some(109));
        assert_eq!(o.reqid_for(10), None);
    }

    #[test]
    fn default_range_scatters_indexes_bijectively_and_stays_owned() {
        let o = Ownership::default();
        let mut seen = vec![false; DEFAULT_REQID_LEN as usize];
        for i in 0..DEFAULT_REQID_LEN {
            let r = o.reqid_for(i).unwrap();
            assert!(o.owns(r));
            let k = (r - DEFAULT_REQID_BASE) as usize;
            assert!(!seen[k], "reqid {r:#x} given twice");
            seen[k] = true;
        }
        assert_eq!(o.reqid_for(DEFAULT_REQID_LEN), None);
        assert_eq!(o.reqid_for(0), Some(DEFAULT_REQID_BASE));
        // Consecutive peers are far apart, so reqid and address no longer
        // move together.
        let d = o.reqid_for(2).unwrap().abs_diff(o.reqid_for(1).unwrap());
        assert!(d > 1000, "{d}");
    }

    /// The kernel's IPv4 SA hash (`__xfrm_dst_hash` in net/xfrm/xfrm_hash.h)
    /// over 10,000 hub SAs to consecutive node addresses: spread over many
    /// buckets, not a handful.
    #[test]
    fn kernel_sa_hash_spreads_sequential_peers() {
        fn bucket(reqid: u32, saddr: u32, daddr: u32, hmask: u32) -> u32 {
            let h = 2 ^ reqid ^ daddr.wrapping_add(saddr).swap_bytes();
            (h ^ (h >> 16)) & hmask
        }
        let o = Ownership::default();
        let hub = u32::from_be_bytes([10, 9, 0, 1]).swap_bytes();
        let hmask = (1 << 14) - 1;
        let mut used = std::collections::HashSet::new();
        let mut used_plain = std::collections::HashSet::new();
        for i in 0..10_000u32 {
            let node = u32::from_be_bytes([10, 10, 0, 0])
                .wrapping_add(i)
                .swap_bytes();
            used.insert(bucket(o.reqid_for(i).unwrap(), hub, node, hmask));
            used_plain.insert(bucket(DEFAULT_REQID_BASE + i, hub, node, hmask));
        }
        assert!(
            used_plain.len() < 100,
            "the old mapping: {}",
            used_plain.len()
        );
        // 10,000 random keys would fill ~7,500 of 16,384 buckets.
        assert!(used.len() > 7_000, "{} buckets", used.len());
    }

    #[test]
    fn small_power_of_two_ranges_are_bijective_too() {
        for bits in 0..=12 {
            let o = Ownership::new(1000, 1 << bits).unwrap();
            let mut got: Vec<u32> = (0..1u32 << bits).map(|i| o.reqid_for(i).unwrap()).collect();
            got.sort_unstable();
            let want: Vec<u32> = (1000..1000 + (1u32 << bits)).collect();
            assert_eq!(got, want, "bits {bits}");
        }
    }

    #[test]
    fn rejects_bad_ranges() {
        assert!(Ownership::new(0, 10).is_none());
        assert!(Ownership::new(5, 0).is_none());
        assert!(Ownership::new(u32::MAX, 2).is_none());
        assert!(Ownership::new(u32::MAX, 1).is_some());
    }

    #[test]
    fn default_does_not_own_low_reqids() {
        let o = Ownership::default();
        for r in 0..1000 {
            assert!(!o.owns(r));
        }
        assert!(o.owns(DEFAULT_REQID_BASE));
    }
}
