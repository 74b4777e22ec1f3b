//! A map for a few dozen entries at most: the worker's sandboxes, the jobs it knows, a sandbox's
//! requests in flight.
//!
//! A `Vec` of pairs, scanned in order. At these sizes a scan is as quick as hashing, and the code
//! is a fraction of a hash map's: `HashMap` compiles its insert, lookup, removal and rehash anew
//! for every key and value type, ≈ 2 KB of the core's wasm each. Maps that grow with the number
//! of leases held (hundreds to thousands: the running slices, the lease book) stay `HashMap`s.

use std::borrow::Borrow;

/// Entries in no particular order (a removal moves the last entry into the gap).
#[derive(Clone, Debug)]
pub struct SmallMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        SmallMap(Vec::new())
    }
}

impl<K: PartialEq, V> SmallMap<K, V> {
    pub fn new() -> Self {
        SmallMap::default()
    }

    fn position<Q: PartialEq + ?Sized>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
    {
        self.0.iter().position(|(k, _)| k.borrow() == key)
    }

    pub fn get<Q: PartialEq + ?Sized>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.position(key).map(|at| &self.0[at].1)
    }

    pub fn get_mut<Q: PartialEq + ?Sized>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        self.position(key).map(|at| &mut self.0[at].1)
    }

    pub fn contains_key<Q: PartialEq + ?Sized>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.position(key).is_some()
    }

    /// Sets `key`'s value; the value it had, if any.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.position(&key) {
            Some(at) => Some(std::mem::replace(&mut self.0[at].1, value)),
            None => {
                self.0.push((key, value));
                None
            }
        }
    }

    pub fn remove<Q: PartialEq + ?Sized>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.position(key).map(|at| self.0.swap_remove(at).1)
    }

    /// `key`'s value, made by `make` when it has none.
    pub fn get_or_insert_with(&mut self, key: K, make: impl FnOnce() -> V) -> &mut V {
        let at = match self.position(&key) {
            Some(at) => at,
            None => {
                self.0.push((key, make()));
                self.0.len() - 1
            }
        };
        &mut self.0[at].1
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    /// Every entry, taken out.
    pub fn drain(&mut self) -> impl Iterator<Item = (K, V)> + '_ {
        self.0.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_map() {
        let mut map: SmallMap<String, u32> = SmallMap::new();
        assert!(map.is_empty());
        assert_eq!(map.insert("a".into(), 1), None);
        assert_eq!(map.insert("b".into(), 2), None);
        assert_eq!(map.insert("a".into(), 3), Some(1), "a key holds one value");
        assert_eq!((map.len(), map.get("a"), map.get("c")), (2, Some(&3), None));
        *map.get_mut("b").unwrap() += 10;
        *map.get_or_insert_with("c".into(), || 100) += 1;
        *map.get_or_insert_with("c".into(), || 100) += 1;
        assert_eq!(map.get("c"), Some(&102));
        assert_eq!(map.remove("a"), Some(3));
        assert_eq!(map.remove("a"), None);
        assert!(!map.contains_key("a") && map.contains_key("b"));
        let mut entries: Vec<(String, u32)> = map.iter().map(|(k, v)| (k.clone(), *v)).collect();
        entries.sort();
        assert_eq!(entries, [("b".to_string(), 12), ("c".to_string(), 102)]);
        let mut keys: Vec<&String> = map.keys().collect();
        keys.sort();
        assert_eq!(keys, ["b", "c"]);
        assert_eq!(map.drain().count(), 2);
        assert!(map.is_empty());
    }
}
