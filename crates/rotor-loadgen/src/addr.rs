//! Which address node `i` uses.
//!
//! `sequential`: `first + i`. `scattered`: `first + (i * K mod 2^22)` with an
//! odd `K`, a bijection on 2^22 addresses (so `first` should start a /10).
//!
//! Why both: the hub gives node `i` the reqid `base + i`, and the kernel's SA
//! hash by destination (`__xfrm_dst_hash`) XORs the reqid with the sum of the
//! two addresses. With sequential addresses the two cancel out and every SA
//! of every node lands in a dozen buckets whatever the table size, so each SA
//! add walks a chain of all SAs (quadratic: 14 ms per rotation at 10,000
//! nodes in UML). Scattered addresses measure the hub without that
//! pathology; sequential ones show it (see docs/performance.md).

use std::net::Ipv4Addr;

/// Odd multiplier of the scattered map (2^32 / golden ratio).
const K: u32 = 0x9E37_79B1;
/// The scattered map covers 2^22 addresses.
pub const SCATTER_BITS: u32 = 22;
const MASK: u32 = (1 << SCATTER_BITS) - 1;

/// How node indexes map to addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AddrMap {
    /// `first + i`.
    Sequential,
    /// `first + (i * K mod 2^22)`.
    Scattered,
}

/// Multiplicative inverse of an odd `k` modulo 2^32 (Newton's iteration).
const fn inverse(k: u32) -> u32 {
    let mut x = k; // correct to 3 bits for odd k
    let mut n = 0;
    while n < 5 {
        x = x.wrapping_mul(2u32.wrapping_sub(k.wrapping_mul(x)));
        n += 1;
    }
    x
}
const K_INV: u32 = inverse(K);

impl AddrMap {
    /// Address of node `i`.
    pub fn addr(self, first: Ipv4Addr, i: u32) -> Ipv4Addr {
        let off = match self {
            AddrMap::Sequential => i,
            AddrMap::Scattered => i.wrapping_mul(K) & MASK,
        };
        Ipv4Addr::from(u32::from(first).wrapping_add(off))
    }

    /// Index of the node at `a`, if one of `count` nodes has it.
    pub fn index(self, first: Ipv4Addr, a: Ipv4Addr, count: usize) -> Option<usize> {
        let off = u32::from(a).wrapping_sub(u32::from(first));
        let i = match self {
            AddrMap::Sequential => off,
            AddrMap::Scattered => {
                if off > MASK {
                    return None;
                }
                off.wrapping_mul(K_INV) & MASK
            }
        } as usize;
        (i < count).then_some(i)
    }

    /// Largest number of nodes the map can address.
    pub fn capacity(self) -> usize {
        match self {
            AddrMap::Sequential => u32::MAX as usize,
            AddrMap::Scattered => 1 << SCATTER_BITS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_is_a_bijection_with_its_inverse() {
        let first: Ipv4Addr = "10.64.0.0".parse().unwrap();
        let mut seen = std::collections::HashSet::new();
        for i in 0..100_000u32 {
            let a = AddrMap::Scattered.addr(first, i);
            assert!(seen.insert(a));
            assert_eq!(
                AddrMap::Scattered.index(first, a, 100_000),
                Some(i as usize)
            );
        }
        assert_eq!(K.wrapping_mul(K_INV), 1);
        let a = AddrMap::Sequential.addr(first, 7);
        assert_eq!(AddrMap::Sequential.index(first, a, 8), Some(7));
        assert_eq!(AddrMap::Sequential.index(first, a, 7), None);
    }
}
