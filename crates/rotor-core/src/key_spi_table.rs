//! The hub's key-SPI table index: SPI -> which node and which of its keys, in
//! O(1) for any number of nodes, and the SPI allocator.
//!
//! Every control message names its key by SPI (I5); this index is how the hub
//! finds the key that opens it and, from the node's slots, what to do. Init
//! SPIs are derived from the nodes' PSKs, so two nodes may collide: such an
//! init SPI maps to a short list of candidates, and the AEAD decides.
//!
//! Built for a hub with 100,000 nodes: an entry is 12 bytes (the generation
//! number is not stored: the node's own slots say which generation an SPI
//! is), and the hash is one multiplication.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use rand::RngCore;

use crate::action::PeerId;

/// Whose key an SPI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpiOwner {
    /// The init key of this node (no other node's PSK maps to the same SPI).
    Init(PeerId),
    /// The init key of several nodes: [`KeySpiTable::init_candidates`] lists them.
    SharedInit,
    /// A generation of this node: one of its live generations, or one
    /// replaced and awaiting deletion (the node's state tells which).
    Generation(PeerId),
}

/// Hashes SPIs with one multiplication (Fibonacci hashing), instead of the
/// standard library's SipHash. SipHash defends a table against keys chosen
/// to collide; this table's keys are never chosen by a peer: generation SPIs
/// come from the hub's CSPRNG, init SPIs from HKDF of configured PSKs. Peers
/// only look SPIs up, which no hash choice makes slower than a miss.
#[derive(Default, Clone, Copy)]
pub struct SpiHasher(u64);

impl Hasher for SpiHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, v: u32) {
        // The odd constant spreads the SPI over the high bits (hashbrown's
        // tag) and keeps the low bits (its bucket index) as random as the SPI.
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type SpiMap<V> = HashMap<u32, V, BuildHasherDefault<SpiHasher>>;

/// SPI -> owner, for every live SPI of the hub.
#[derive(Debug, Default, Clone)]
pub struct KeySpiTable {
    map: SpiMap<SpiOwner>,
    /// Candidates of the init SPIs that several nodes share (rare).
    shared: SpiMap<Vec<PeerId>>,
}

impl KeySpiTable {
    /// An empty table sized for `nodes` nodes (about four live SPIs each:
    /// init, latest, previous, and one awaiting deletion).
    pub fn with_capacity(nodes: usize) -> Self {
        KeySpiTable {
            map: SpiMap::with_capacity_and_hasher(nodes.saturating_mul(4), Default::default()),
            shared: SpiMap::default(),
        }
    }

    /// Who owns `spi`.
    pub fn lookup(&self, spi: u32) -> Option<SpiOwner> {
        self.map.get(&spi).copied()
    }

    /// The nodes whose init key `spi` may be (empty if it is no init SPI).
    pub fn init_candidates(&self, spi: u32) -> Vec<PeerId> {
        match self.map.get(&spi) {
            Some(SpiOwner::Init(id)) => vec![*id],
            Some(SpiOwner::SharedInit) => self.shared.get(&spi).cloned().unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Registers a node's init SPI (shared with any node whose PSK maps to the same SPI).
    pub fn add_init(&mut self, spi: u32, node: PeerId) {
        match self.map.get(&spi).copied() {
            None => {
                self.map.insert(spi, SpiOwner::Init(node));
            }
            Some(SpiOwner::Init(first)) => {
                self.map.insert(spi, SpiOwner::SharedInit);
                self.shared.insert(spi, vec![first, node]);
            }
            Some(SpiOwner::SharedInit) => self.shared.entry(spi).or_default().push(node),
            Some(SpiOwner::Generation(_)) => {
                // allocate() never hands out an init SPI, and init SPIs are
                // registered before any generation exists.
            }
        }
    }

    /// Allocates a fresh SPI for a generation of `node`: random, never
    /// 0-255, never equal to any live SPI (init SPIs included).
    pub fn allocate(&mut self, rng: &mut impl RngCore, node: PeerId) -> u32 {
        loop {
            let spi = rng.next_u32();
            if spi > 0xff && !self.map.contains_key(&spi) {
                self.map.insert(spi, SpiOwner::Generation(node));
                return spi;
            }
        }
    }

    /// Registers a known generation SPI of `node` (restoring persisted
    /// state). Refused (`false`) for a reserved SPI (0-255) or one already
    /// live, init SPIs included.
    pub fn claim(&mut self, spi: u32, node: PeerId) -> bool {
        if spi <= 0xff || self.map.contains_key(&spi) {
            return false;
        }
        self.map.insert(spi, SpiOwner::Generation(node));
        true
    }

    /// Forgets a generation SPI (when its SAs are deleted). Init SPIs stay.
    pub fn release(&mut self, spi: u32) {
        if matches!(self.map.get(&spi), Some(SpiOwner::Generation(_))) {
            self.map.remove(&spi);
        }
    }

    /// Number of live SPIs.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Bytes the table holds on the heap (buckets and control bytes, as
    /// hashbrown sizes them), for the memory bound in this module's tests.
    pub fn heap_bytes(&self) -> usize {
        // hashbrown keeps its buckets at most 7/8 full, in a power of two.
        let buckets = (self.map.capacity() * 8 / 7).next_power_of_two();
        let entry = std::mem::size_of::<(u32, SpiOwner)>() + 1;
        buckets * entry
            + self
                .shared
                .values()
                .map(|v| v.capacity() * std::mem::size_of::<PeerId>() + 32)
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn allocation_avoids_reserved_and_live_spis() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut t = KeySpiTable::default();
        t.add_init(0x1234, PeerId(0));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let s = t.allocate(&mut rng, PeerId(1));
            assert!(s > 0xff && s != 0x1234);
            assert!(seen.insert(s), "duplicate live SPI");
            assert_eq!(t.lookup(s), Some(SpiOwner::Generation(PeerId(1))));
        }
        assert_eq!(t.len(), 10_001);
        assert_eq!(t.lookup(0x1234), Some(SpiOwner::Init(PeerId(0))));
    }

    #[test]
    fn colliding_init_spis_keep_every_candidate_and_release_keeps_init() {
        let mut t = KeySpiTable::default();
        t.add_init(0x500, PeerId(1));
        assert_eq!(t.init_candidates(0x500), vec![PeerId(1)]);
        t.add_init(0x500, PeerId(2));
        t.add_init(0x500, PeerId(3));
        assert_eq!(t.lookup(0x500), Some(SpiOwner::SharedInit));
        assert_eq!(
            t.init_candidates(0x500),
            vec![PeerId(1), PeerId(2), PeerId(3)]
        );
        t.release(0x500);
        assert_eq!(t.init_candidates(0x500).len(), 3);
        assert!(t.init_candidates(0x501).is_empty());
    }

    #[test]
    fn released_generation_spis_are_gone() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        let mut t = KeySpiTable::with_capacity(10);
        let s = t.allocate(&mut rng, PeerId(4));
        t.release(s);
        assert_eq!(t.lookup(s), None);
        assert!(t.is_empty());
    }

    /// The table at 10,000 nodes with four SPIs each stays far below the
    /// 1 KiB per node the hub may spend in all (it was 269 B per node with
    /// an owner enum of 32 bytes and SipHash).
    #[test]
    fn table_costs_under_100_bytes_per_node() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let n = 10_000;
        let mut t = KeySpiTable::with_capacity(n);
        for i in 0..n as u32 {
            t.add_init(0x100 + i, PeerId(i));
            for _ in 0..3 {
                t.allocate(&mut rng, PeerId(i));
            }
        }
        let per_node = t.heap_bytes() / n;
        assert!(per_node < 100, "{per_node} B per node");
    }
}
