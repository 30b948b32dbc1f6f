//! Per-API-key token buckets, like the providers' requests-per-minute and
//! tokens-per-minute limits, plus the time formats their headers use.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Keys kept before idle (full) buckets are forgotten: bounds memory when a
/// test (or an attacker) sends many distinct keys.
const MAX_KEYS: usize = 10_000;

/// A bucket refilled continuously so that an empty bucket is full again after
/// one minute.
#[derive(Debug, Clone)]
pub struct Bucket {
    capacity: f64,
    level: f64,
    last: Instant,
}

impl Bucket {
    pub fn new(capacity: u64, now: Instant) -> Self {
        Bucket {
            capacity: capacity as f64,
            level: capacity as f64,
            last: now,
        }
    }

    fn per_sec(&self) -> f64 {
        self.capacity / 60.0
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.level = (self.level + dt * self.per_sec()).min(self.capacity);
        self.last = now;
    }

    pub fn capacity(&self) -> u64 {
        self.capacity as u64
    }

    /// Whole units available now (after refilling to `now`).
    pub fn remaining(&mut self, now: Instant) -> u64 {
        self.refill(now);
        self.level.max(0.0).floor() as u64
    }

    /// Time until the bucket is full again.
    pub fn until_full(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.wait_for(self.capacity)
    }

    /// Time until `need` units are available; `None` if they never will be
    /// because `need` exceeds the capacity.
    pub fn until_available(&mut self, need: f64, now: Instant) -> Option<Duration> {
        self.refill(now);
        if need > self.capacity {
            return None;
        }
        Some(self.wait_for(need))
    }

    fn wait_for(&self, target: f64) -> Duration {
        let missing = target - self.level;
        if missing <= 0.0 || self.per_sec() <= 0.0 {
            return Duration::ZERO;
        }
        // try_: never panic, even on absurd limits.
        Duration::try_from_secs_f64(missing / self.per_sec()).unwrap_or(Duration::MAX)
    }

    fn take(&mut self, n: f64) {
        self.level -= n;
    }

    /// Gives back `n` units (never beyond capacity).
    fn give(&mut self, n: f64, now: Instant) {
        self.refill(now);
        self.level = (self.level + n).min(self.capacity);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Requests,
    Tokens,
}

impl LimitKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        }
    }
}

/// The values the rate-limit headers report.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub limit_requests: u64,
    pub remaining_requests: u64,
    pub reset_requests: Duration,
    pub limit_tokens: u64,
    pub remaining_tokens: u64,
    pub reset_tokens: Duration,
}

#[derive(Debug, Clone)]
pub struct Rejection {
    pub kind: LimitKind,
    /// Time until the request would fit; `None` if it never can (larger than the limit).
    pub retry_after: Option<Duration>,
    pub snapshot: Snapshot,
}

#[derive(Debug)]
struct KeyBuckets {
    requests: Bucket,
    tokens: Bucket,
}

#[derive(Debug)]
pub struct Limiter {
    rpm: u64,
    tpm: u64,
    keys: HashMap<String, KeyBuckets>,
}

impl Limiter {
    pub fn new(rpm: u64, tpm: u64) -> Self {
        Limiter {
            rpm,
            tpm,
            keys: HashMap::new(),
        }
    }

    pub fn limits(&self) -> (u64, u64) {
        (self.rpm, self.tpm)
    }

    /// New limits; all buckets start full again.
    pub fn set_limits(&mut self, rpm: u64, tpm: u64) {
        self.rpm = rpm;
        self.tpm = tpm;
        self.keys.clear();
    }

    pub fn reset(&mut self) {
        self.keys.clear();
    }

    fn entry(&mut self, key: &str, now: Instant) -> &mut KeyBuckets {
        if !self.keys.contains_key(key) && self.keys.len() >= MAX_KEYS {
            self.keys.retain(|_, b| {
                b.requests.until_full(now).is_zero() && b.tokens.until_full(now).is_zero()
            });
            if self.keys.len() >= MAX_KEYS {
                self.keys.clear();
            }
        }
        let (rpm, tpm) = (self.rpm, self.tpm);
        self.keys
            .entry(key.to_string())
            .or_insert_with(|| KeyBuckets {
                requests: Bucket::new(rpm, now),
                tokens: Bucket::new(tpm, now),
            })
    }

    fn snapshot_of(b: &mut KeyBuckets, now: Instant) -> Snapshot {
        Snapshot {
            limit_requests: b.requests.capacity(),
            remaining_requests: b.requests.remaining(now),
            reset_requests: b.requests.until_full(now),
            limit_tokens: b.tokens.capacity(),
            remaining_tokens: b.tokens.remaining(now),
            reset_tokens: b.tokens.until_full(now),
        }
    }

    /// Charges one request and `tokens` tokens if both fit; otherwise charges
    /// nothing and says which limit was hit and when the request would fit.
    pub fn admit(&mut self, key: &str, tokens: u64, now: Instant) -> Result<Snapshot, Rejection> {
        let b = self.entry(key, now);
        let need = tokens as f64;
        let req_wait = b.requests.until_available(1.0, now);
        let tok_wait = b.tokens.until_available(need, now);
        let reject = match (req_wait, tok_wait) {
            (Some(r), _) if !r.is_zero() => Some((LimitKind::Requests, req_wait)),
            (None, _) => Some((LimitKind::Requests, None)),
            (_, Some(t)) if !t.is_zero() => Some((LimitKind::Tokens, tok_wait)),
            (_, None) => Some((LimitKind::Tokens, None)),
            _ => None,
        };
        if let Some((kind, retry_after)) = reject {
            return Err(Rejection {
                kind,
                retry_after,
                snapshot: Self::snapshot_of(b, now),
            });
        }
        b.requests.take(1.0);
        b.tokens.take(need);
        Ok(Self::snapshot_of(b, now))
    }

    /// Gives back tokens charged at admission but not used.
    pub fn refund(&mut self, key: &str, tokens: u64, now: Instant) {
        if tokens == 0 {
            return;
        }
        if let Some(b) = self.keys.get_mut(key) {
            b.tokens.give(tokens as f64, now);
        }
    }
}

/// Formats a duration like Go's `time.Duration.String()` at millisecond
/// resolution (rounded up), the format of OpenAI's `x-ratelimit-reset-*`
/// headers: `0s`, `120ms`, `1s`, `1m30.5s`, `6m0s`, `1h0m0s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_nanos().div_ceil(1_000_000);
    if ms == 0 {
        return "0s".to_string();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let s_ms = ms % 60_000;
    let (secs, frac) = (s_ms / 1000, s_ms % 1000);
    let s = if frac == 0 {
        format!("{secs}")
    } else {
        let f = format!("{frac:03}");
        format!("{secs}.{}", f.trim_end_matches('0'))
    };
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

/// Seconds for a `retry-after` header: rounded up, at least 1.
pub fn retry_after_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// Milliseconds for a `retry-after-ms` header: rounded up.
pub fn retry_after_ms(d: Duration) -> u64 {
    d.as_nanos().div_ceil(1_000_000) as u64
}

/// RFC 3339 UTC timestamp with whole seconds, e.g. `2026-11-22T13:05:07Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}Z",
        sod / 3600,
        (sod / 60) % 60,
        sod % 60
    )
}

/// RFC 3339 time at which a wait of `d` from now ends, rounded up to the second.
pub fn rfc3339_after(d: Duration) -> String {
    let now = SystemTime::now();
    let up = Duration::from_secs(d.as_millis().div_ceil(1000) as u64);
    // Round "now" up to the next whole second so the stamp is never early.
    let base = now
        .duration_since(UNIX_EPOCH)
        .map(|x| Duration::from_secs(x.as_nanos().div_ceil(1_000_000_000) as u64))
        .unwrap_or_default();
    // Saturating/checked: absurd waits must not panic.
    let at = UNIX_EPOCH
        .checked_add(base.saturating_add(up))
        .unwrap_or(UNIX_EPOCH + base);
    rfc3339(at)
}

/// Days since 1970-01-01 to (year, month, day); Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_duration_format() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_micros(10)), "1ms");
        assert_eq!(go_duration(ms(120)), "120ms");
        assert_eq!(go_duration(ms(999)), "999ms");
        assert_eq!(go_duration(ms(1000)), "1s");
        assert_eq!(go_duration(ms(1500)), "1.5s");
        assert_eq!(go_duration(ms(1230)), "1.23s");
        assert_eq!(go_duration(ms(1001)), "1.001s");
        assert_eq!(go_duration(ms(59_999)), "59.999s");
        assert_eq!(go_duration(ms(60_000)), "1m0s");
        assert_eq!(go_duration(ms(90_500)), "1m30.5s");
        assert_eq!(go_duration(ms(360_000)), "6m0s");
        assert_eq!(go_duration(ms(3_600_000)), "1h0m0s");
        assert_eq!(go_duration(ms(3_723_400)), "1h2m3.4s");
    }

    #[test]
    fn retry_after_rounding() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(7)), 7);
        assert_eq!(retry_after_ms(Duration::from_micros(1500)), 2);
        assert_eq!(retry_after_ms(Duration::from_millis(6000)), 6000);
    }

    #[test]
    fn rfc3339_format() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_352_707)),
            "2026-11-22T13:05:07Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(4_102_444_799)),
            "2099-12-31T23:59:59Z"
        );
        let s = rfc3339_after(Duration::from_secs(5));
        assert_eq!(s.len(), 20);
        assert!(s.ends_with('Z'));
    }

    #[test]
    fn bucket_refills_over_a_minute() {
        let t0 = Instant::now();
        let mut b = Bucket::new(60, t0);
        b.take(60.0);
        assert_eq!(b.remaining(t0), 0);
        assert_eq!(b.until_full(t0), Duration::from_secs(60));
        assert_eq!(b.until_available(1.0, t0), Some(Duration::from_secs(1)));
        assert_eq!(b.remaining(t0 + Duration::from_secs(30)), 30);
        assert_eq!(
            b.remaining(t0 + Duration::from_secs(600)),
            60,
            "capped at capacity"
        );
        assert_eq!(b.until_available(61.0, t0), None);
    }

    #[test]
    fn limiter_admits_rejects_and_refunds() {
        let t0 = Instant::now();
        let mut l = Limiter::new(2, 1000);
        let s = l.admit("k", 400, t0).expect("first fits");
        assert_eq!((s.limit_requests, s.remaining_requests), (2, 1));
        assert_eq!((s.limit_tokens, s.remaining_tokens), (1000, 600));
        assert_eq!(s.reset_requests, Duration::from_secs(30));
        assert_eq!(s.reset_tokens, Duration::from_secs(24));
        // Token limit: 700 > 600 available; wait for 100 tokens at 1000/60 per s = 6 s.
        let r = l.admit("k", 700, t0).expect_err("tokens exceeded");
        assert_eq!(r.kind, LimitKind::Tokens);
        assert_eq!(r.retry_after, Some(Duration::from_secs(6)));
        l.refund("k", 300, t0);
        let s = l.admit("k", 700, t0).expect("fits after refund");
        assert_eq!(s.remaining_tokens, 200);
        let r = l.admit("k", 1, t0).expect_err("requests exceeded");
        assert_eq!(r.kind, LimitKind::Requests);
        assert_eq!(r.retry_after, Some(Duration::from_secs(30)));
        // Other keys have their own buckets.
        assert!(l.admit("other", 1, t0).is_ok());
        // A request larger than the limit never fits.
        let r = l.admit("big", 5000, t0).expect_err("too large");
        assert_eq!((r.kind, r.retry_after), (LimitKind::Tokens, None));
        l.set_limits(10, 10);
        assert_eq!(
            l.admit("k", 10, t0).map(|s| s.remaining_requests).ok(),
            Some(9)
        );
    }
}
