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
    pub fn reqid_for(&self, index: u32) -> Option<u32> {
        (index < self.len).then(|| self.base + index)
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
