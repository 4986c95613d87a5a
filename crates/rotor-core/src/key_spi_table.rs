//! The hub's key-SPI table index: SPI -> which node and which of its keys, in
//! O(1) for any number of nodes, and the SPI allocator.
//!
//! Every control message names its key by SPI (I5); this index is how the hub
//! finds the key that opens it and, from the node's slots, what to do. Init
//! SPIs are derived from the nodes' PSKs, so two nodes may collide: an init
//! SPI maps to a short list of candidates, and the AEAD decides.

use std::collections::HashMap;

use rand::RngCore;

use crate::action::PeerId;

/// Whose key an SPI names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpiOwner {
    /// The init key of these nodes (usually one).
    Init(Vec<PeerId>),
    /// Generation `generation` of `node`.
    Generation {
        /// The node.
        node: PeerId,
        /// The generation number.
        generation: u64,
    },
}

/// SPI -> owner, for every live SPI of the hub.
#[derive(Debug, Default, Clone)]
pub struct KeySpiTable {
    map: HashMap<u32, SpiOwner>,
}

impl KeySpiTable {
    /// An empty table sized for `nodes` nodes (about four live SPIs each).
    pub fn with_capacity(nodes: usize) -> Self {
        KeySpiTable {
            map: HashMap::with_capacity(nodes * 4),
        }
    }

    /// Who owns `spi`.
    pub fn lookup(&self, spi: u32) -> Option<&SpiOwner> {
        self.map.get(&spi)
    }

    /// Registers a node's init SPI (shared with any node whose PSK maps to the same SPI).
    pub fn add_init(&mut self, spi: u32, node: PeerId) {
        match self
            .map
            .entry(spi)
            .or_insert_with(|| SpiOwner::Init(Vec::new()))
        {
            SpiOwner::Init(v) => v.push(node),
            SpiOwner::Generation { .. } => {
                // allocate() never hands out an init SPI, and init SPIs are
                // registered before any generation exists.
            }
        }
    }

    /// Allocates a fresh SPI for `node`'s generation `generation`: random,
    /// never 0-255, never equal to any live SPI (init SPIs included).
    pub fn allocate(&mut self, rng: &mut impl RngCore, node: PeerId, generation: u64) -> u32 {
        loop {
            let spi = rng.next_u32();
            if spi > 0xff && !self.map.contains_key(&spi) {
                self.map
                    .insert(spi, SpiOwner::Generation { node, generation });
                return spi;
            }
        }
    }

    /// Forgets a generation SPI (when its SAs are deleted). Init SPIs stay.
    pub fn release(&mut self, spi: u32) {
        if matches!(self.map.get(&spi), Some(SpiOwner::Generation { .. })) {
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
        for g in 0..10_000 {
            let s = t.allocate(&mut rng, PeerId(1), g);
            assert!(s > 0xff && s != 0x1234);
            assert!(seen.insert(s), "duplicate live SPI");
        }
        assert_eq!(t.len(), 10_001);
    }

    #[test]
    fn colliding_init_spis_keep_both_candidates_and_release_keeps_init() {
        let mut t = KeySpiTable::default();
        t.add_init(0x500, PeerId(1));
        t.add_init(0x500, PeerId(2));
        assert_eq!(
            t.lookup(0x500),
            Some(&SpiOwner::Init(vec![PeerId(1), PeerId(2)]))
        );
        t.release(0x500);
        assert!(t.lookup(0x500).is_some());
    }
}
