//! The host capabilities the core needs, as traits of our own.
//!
//! The proxy-wasm adapter implements them with host calls; tests use the fakes
//! below. Keeping the core off the SDK's traits keeps it free of the SDK's
//! panicking accessors and makes every decision testable without Envoy.

/// Wall-clock milliseconds. Envoy's host clock is `SystemTime`: it can step
/// backwards, so users of this trait must use saturating arithmetic.
pub trait Clock {
    fn now_ms(&self) -> u64;
}

/// Randomness for jitter. Not cryptographic; must never block or fail.
pub trait Random {
    fn next_u64(&mut self) -> u64;

    /// Uniform in `[0, bound)`; 0 when `bound` is 0.
    fn below(&mut self, bound: u64) -> u64 {
        if bound == 0 {
            0
        } else {
            self.next_u64() % bound
        }
    }
}

/// A deterministic generator (SplitMix64) used to stretch one host seed.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl Random for SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// FNV-1a: a hash that is the same in every VM and build, which the fixed slot
/// tables in shared data rely on (std's hashers are seeded or unspecified).
pub fn stable_hash(s: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in s.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Why a shared-data operation did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreError {
    /// Someone else wrote the key since it was read: re-read and retry.
    CasMismatch,
    /// Any other host status (carried for logs).
    Host(u32),
}

/// Envoy shared data as the core sees it: process-wide, shared by all workers.
///
/// Host semantics the implementations keep: `set` with `cas` 0 is unconditional;
/// with a non-zero `cas` it fails with `CasMismatch` if the key changed since it
/// was read; creating an absent key always succeeds, whatever the `cas` (so racing
/// creators both "win": create keys deterministically). There is no delete.
pub trait SharedStore {
    /// The value and its CAS token, or `None` if the key was never written.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError>;
}

/// An in-memory store with the host's semantics, for tests and native tools.
#[derive(Debug, Default)]
pub struct MemStore {
    map: std::cell::RefCell<std::collections::HashMap<String, (Vec<u8>, u32)>>,
    next_cas: std::cell::Cell<u32>,
}

impl MemStore {
    pub fn keys(&self) -> usize {
        self.map.borrow().len()
    }

    /// Every key and value, sorted by key (for tests comparing what was written).
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut v: Vec<_> = self
            .map
            .borrow()
            .iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect();
        v.sort();
        v
    }
}

impl SharedStore for MemStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.map.borrow().get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        let mut map = self.map.borrow_mut();
        if let Some((_, current)) = map.get(key) {
            if cas != 0 && cas != *current {
                return Err(StoreError::CasMismatch);
            }
        }
        let next = self.next_cas.get().wrapping_add(1).max(1);
        self.next_cas.set(next);
        map.insert(key.to_string(), (value.to_vec(), next));
        Ok(())
    }
}

/// A clock tests set by hand.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(pub std::cell::Cell<u64>);

impl ManualClock {
    pub fn at(ms: u64) -> Self {
        ManualClock(std::cell::Cell::new(ms))
    }
    pub fn set(&self, ms: u64) {
        self.0.set(ms)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn splitmix_is_deterministic_and_bounded() {
        let mut a = SplitMix64(7);
        let mut b = SplitMix64(7);
        let xs: Vec<u64> = (0..8).map(|_| a.below(10)).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.below(10)).collect();
        assert_eq!(xs, ys);
        assert!(xs.iter().all(|&x| x < 10));
        assert!(xs.iter().any(|&x| x != xs[0]), "not constant: {xs:?}");
        assert_eq!(a.below(0), 0);
    }

    #[test]
    fn mem_store_keeps_host_cas_semantics() {
        let s = MemStore::default();
        assert_eq!(s.get("k").unwrap(), None);
        // Creation ignores the CAS token, as the host does.
        s.set("k", b"a", 12345).unwrap();
        let (v, cas) = s.get("k").unwrap().unwrap();
        assert_eq!(v, b"a");
        s.set("k", b"b", cas).unwrap();
        assert_eq!(s.set("k", b"c", cas), Err(StoreError::CasMismatch));
        s.set("k", b"d", 0).unwrap();
        assert_eq!(s.get("k").unwrap().unwrap().0, b"d");
        assert_eq!(s.keys(), 1);
    }
}
