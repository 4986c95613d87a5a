//! Node names, packed: every name in one string, with the end offsets in a
//! second allocation. A hub with 100,000 nodes thus holds two heap blocks
//! for its names instead of 100,000 small ones, which cost an allocator
//! header each and, scattered among the garbage the configuration parser
//! leaves, keep its pages from ever being returned to the system.

use crate::action::PeerId;

/// Names indexed by [`PeerId`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameTable {
    text: String,
    /// `ends[i]`: end of name i in `text` (its start is `ends[i - 1]`, or 0).
    ends: Vec<u32>,
}

impl NameTable {
    /// An empty table with room for `count` names of `bytes` bytes in all.
    pub fn with_capacity(count: usize, bytes: usize) -> Self {
        NameTable {
            text: String::with_capacity(bytes),
            ends: Vec::with_capacity(count),
        }
    }

    /// Packs `names` (their ids are their positions).
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a str> + Clone) -> Self {
        let (count, bytes) = names
            .clone()
            .into_iter()
            .fold((0, 0), |(c, b), n| (c + 1, b + n.len()));
        let mut t = NameTable::with_capacity(count, bytes);
        for n in names {
            t.push(n);
        }
        t
    }

    /// Appends a name; its id is the number of names before it.
    pub fn push(&mut self, name: &str) {
        self.text.push_str(name);
        // Configurations are bounded far below 4 GiB of names.
        self.ends
            .push(u32::try_from(self.text.len()).unwrap_or(u32::MAX));
    }

    /// Name of `id`, or "?" for an id the table does not have.
    pub fn get(&self, id: PeerId) -> &str {
        let i = id.0 as usize;
        let Some(&end) = self.ends.get(i) else {
            return "?";
        };
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        self.text.get(start as usize..end as usize).unwrap_or("?")
    }

    /// The id of the first node called `name` (a linear search: for
    /// commands, not for the packet path).
    pub fn find(&self, name: &str) -> Option<PeerId> {
        (0..self.ends.len())
            .map(|i| PeerId(i as u32))
            .find(|&id| self.get(id) == name)
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether the table has no names.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ids_are_marked() {
        let names = ["mn0", "", "a-much-longer-node-name", "ü-ñ"];
        let t = NameTable::from_names(names.iter().copied());
        assert_eq!(t.len(), 4);
        for (i, n) in names.iter().enumerate() {
            assert_eq!(t.get(PeerId(i as u32)), *n);
        }
        assert_eq!(t.get(PeerId(4)), "?");
        assert_eq!(t.find("ü-ñ"), Some(PeerId(3)));
        assert_eq!(t.find("mn"), None);
        assert!(NameTable::default().is_empty());
    }
}
