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
    fn manual_clock_can_go_backwards() {
        let c = ManualClock::at(1000);
        c.set(400);
        assert_eq!(c.now_ms(), 400);
    }
}
