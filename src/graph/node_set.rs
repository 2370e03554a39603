//! A fixed-size set of node ids: one bit per node.

#[derive(Clone, Debug, Default)]
pub(crate) struct NodeSet {
    words: Vec<u64>,
}

impl NodeSet {
    pub(crate) fn new(len: usize) -> NodeSet {
        NodeSet {
            words: vec![0; len.div_ceil(64)],
        }
    }

    pub(crate) fn contains(&self, i: u32) -> bool {
        self.words[(i / 64) as usize] & (1 << (i % 64)) != 0
    }

    /// Adds `i`; true if it was not in the set.
    pub(crate) fn insert(&mut self, i: u32) -> bool {
        let word = &mut self.words[(i / 64) as usize];
        let bit = 1 << (i % 64);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.words.capacity() * 8
    }
}
