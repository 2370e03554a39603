//! Interned names: every type, field and static name is stored once.

use std::hash::Hasher;

use super::super::fxhash::{FxHashMap, FxHasher};

/// An interned name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NameId(pub(crate) u32);

#[derive(Default)]
pub(crate) struct Names {
    text: String,
    spans: Vec<(u32, u32)>,
    /// Hash of the bytes -> the latest id with that hash; `chain` links
    /// earlier ids with the same hash.
    heads: FxHashMap<u64, u32>,
    chain: Vec<u32>,
}

const NO_ID: u32 = u32::MAX;

fn hash(bytes: &[u8]) -> u64 {
    let mut h = FxHasher::default();
    h.write(bytes);
    h.write_usize(bytes.len());
    h.finish()
}

impl Names {
    pub(crate) fn intern(&mut self, s: &str) -> NameId {
        let h = hash(s.as_bytes());
        if let Some(id) = self.find_hashed(h, s) {
            return id;
        }
        let id = self.spans.len() as u32;
        self.spans.push((self.text.len() as u32, s.len() as u32));
        self.text.push_str(s);
        let prev = self.heads.insert(h, id).unwrap_or(NO_ID);
        self.chain.push(prev);
        NameId(id)
    }

    pub(crate) fn intern_bytes(&mut self, b: &[u8]) -> NameId {
        match std::str::from_utf8(b) {
            Ok(s) => self.intern(s),
            Err(_) => self.intern(&String::from_utf8_lossy(b)),
        }
    }

    pub(crate) fn lookup(&self, s: &str) -> Option<NameId> {
        self.find_hashed(hash(s.as_bytes()), s)
    }

    fn find_hashed(&self, h: u64, s: &str) -> Option<NameId> {
        let mut id = *self.heads.get(&h)?;
        while id != NO_ID {
            if self.get(NameId(id)) == s {
                return Some(NameId(id));
            }
            id = self.chain[id as usize];
        }
        None
    }

    pub(crate) fn get(&self, id: NameId) -> &str {
        match self.spans.get(id.0 as usize) {
            Some(&(start, len)) => &self.text[start as usize..(start + len) as usize],
            None => "",
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        self.text.capacity()
            + self.spans.capacity() * 8
            + self.chain.capacity() * 4
            + self.heads.capacity() * 16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_once_and_looks_up() {
        let mut n = Names::default();
        let a = n.intern("alloc::vec::Vec<u8>");
        let b = n.intern("u8");
        assert_ne!(a, b);
        assert_eq!(n.intern("alloc::vec::Vec<u8>"), a);
        assert_eq!(n.get(a), "alloc::vec::Vec<u8>");
        assert_eq!(n.lookup("u8"), Some(b));
        assert_eq!(n.lookup("u16"), None);
    }
}
