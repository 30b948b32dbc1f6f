//! What an upstream provider's answer says about when to come back and how much
//! quota is left: `Retry-After`, OpenAI `x-ratelimit-*`, Anthropic
//! `anthropic-ratelimit-*` and Gemini's `RetryInfo` error body.
//!
//! A malformed value is dropped, never guessed at: the caller holds traffic
//! back on these numbers, so a wrong wait is worse than none. Every wait is
//! rounded up to whole milliseconds (coming back early only earns another 429)
//! and clamped to [`MAX_WAIT_MS`], so one bad header cannot park a route.

use serde::Deserialize;
use std::cmp::Reverse;

/// Longest wait any header may impose; larger values are clamped to it.
pub const MAX_WAIT_MS: u64 = 24 * 3600 * 1000;

/// Gemini error bodies are small; anything bigger is not one and is not parsed.
const GEMINI_BODY_MAX: usize = 64 * 1024;

const MS_PER_DAY: i64 = 86_400_000;

/// One quota dimension (requests or tokens).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub limit: Option<u64>,
    pub remaining: Option<u64>,
    /// Milliseconds from now until the dimension refills.
    pub reset_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signal {
    /// From `retry-after-ms` (preferred) or `Retry-After`.
    pub retry_after_ms: Option<u64>,
    pub requests: Quota,
    /// Tokens: the smallest `remaining` over the token dimensions present
    /// (OpenAI tokens; Anthropic tokens, input-tokens, output-tokens), with that
    /// dimension's limit and reset.
    pub tokens: Quota,
    /// The earliest reset among every dimension present (requests and each
    /// token family), exhausted or not: when capacity can first return.
    pub earliest_reset_ms: Option<u64>,
}

impl Signal {
    /// How long the provider asked us to stay away: `retry_after_ms` if present,
    /// else the longest reset among dimensions whose `remaining` is 0, else None.
    pub fn cooldown_ms(&self) -> Option<u64> {
        let exhausted = [self.requests, self.tokens]
            .into_iter()
            .filter(|q| q.remaining == Some(0));
        self.retry_after_ms
            .or_else(|| exhausted.filter_map(|q| q.reset_ms).max())
    }

    /// The wait a 429 implies, in milliseconds. A 429 is itself the statement
    /// that some limit is exhausted, so it always implies a wait:
    /// 1. the named wait (`retry-after-ms`, `Retry-After`), exactly;
    /// 2. else the longest reset among dimensions whose `remaining` is 0;
    /// 3. else the earliest reset given (nothing says which dimension is
    ///    exhausted; the earliest is when capacity can first return), never
    ///    less than `default_ms`;
    /// 4. else `default_ms` (the cluster's `default_cooldown_seconds`).
    ///
    /// A result of 0 (no wait named and no default) means no cool-down.
    pub fn rate_limited_wait_ms(&self, default_ms: u64) -> u64 {
        if let Some(ms) = self.cooldown_ms() {
            return ms;
        }
        match self.earliest_reset_ms {
            Some(ms) => ms.max(default_ms),
            None => default_ms,
        }
    }

    /// Nothing recognised.
    pub fn is_empty(&self) -> bool {
        *self == Signal::default()
    }
}

/// Which field a header fills, and how its value is written.
#[derive(Clone, Copy)]
enum Field {
    RetryAfterMs,
    RetryAfter,
    Limit,
    Remaining,
    GoReset,
    Rfc3339Reset,
}

/// Recognised headers and the quota dimension each fills: 0 is requests (and
/// unused for retry headers), then the token dimensions in the order used when
/// none reports `remaining`.
#[rustfmt::skip]
const HEADERS: [(&str, usize, Field); 20] = [
    ("retry-after-ms", 0, Field::RetryAfterMs),
    ("retry-after", 0, Field::RetryAfter),
    ("x-ratelimit-limit-requests", 0, Field::Limit),
    ("x-ratelimit-remaining-requests", 0, Field::Remaining),
    ("x-ratelimit-reset-requests", 0, Field::GoReset),
    ("anthropic-ratelimit-requests-limit", 0, Field::Limit),
    ("anthropic-ratelimit-requests-remaining", 0, Field::Remaining),
    ("anthropic-ratelimit-requests-reset", 0, Field::Rfc3339Reset),
    ("x-ratelimit-limit-tokens", 1, Field::Limit),
    ("x-ratelimit-remaining-tokens", 1, Field::Remaining),
    ("x-ratelimit-reset-tokens", 1, Field::GoReset),
    ("anthropic-ratelimit-tokens-limit", 2, Field::Limit),
    ("anthropic-ratelimit-tokens-remaining", 2, Field::Remaining),
    ("anthropic-ratelimit-tokens-reset", 2, Field::Rfc3339Reset),
    ("anthropic-ratelimit-input-tokens-limit", 3, Field::Limit),
    ("anthropic-ratelimit-input-tokens-remaining", 3, Field::Remaining),
    ("anthropic-ratelimit-input-tokens-reset", 3, Field::Rfc3339Reset),
    ("anthropic-ratelimit-output-tokens-limit", 4, Field::Limit),
    ("anthropic-ratelimit-output-tokens-remaining", 4, Field::Remaining),
    ("anthropic-ratelimit-output-tokens-reset", 4, Field::Rfc3339Reset),
];

/// Reads every recognised header; names are compared case-insensitively;
/// unknown headers are ignored; a malformed value leaves its field None.
/// A repeated header: the last well-formed value wins.
pub fn parse<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    now_unix_ms: u64,
) -> Signal {
    let (mut after_ms, mut after) = (None, None);
    let mut dims = [Quota::default(); 5];
    for (name, value) in headers {
        let hit = HEADERS.iter().find(|h| h.0.eq_ignore_ascii_case(name));
        let Some((q, field)) = hit.and_then(|h| Some((dims.get_mut(h.1)?, h.2))) else {
            continue;
        };
        let (slot, parsed) = match field {
            Field::RetryAfterMs => (&mut after_ms, retry_after_ms(value)),
            Field::RetryAfter => (&mut after, retry_after(value, now_unix_ms)),
            Field::Limit => (&mut q.limit, digits(trim(value))),
            Field::Remaining => (&mut q.remaining, digits(trim(value))),
            Field::GoReset => (&mut q.reset_ms, go_duration_ms(value)),
            Field::Rfc3339Reset => (&mut q.reset_ms, rfc3339_wait_ms(value, now_unix_ms)),
        };
        if parsed.is_some() {
            *slot = parsed;
        }
    }
    let earliest_reset_ms = dims.iter().filter_map(|q| q.reset_ms).min();
    let [requests, tokens @ ..] = dims;
    Signal {
        retry_after_ms: after_ms.or(after),
        requests,
        tokens: tightest(&tokens),
        earliest_reset_ms,
    }
}

/// The token dimension with the smallest known `remaining` (on a tie the later
/// reset, so `cooldown_ms` sees the longest wait); else the first with any field.
fn tightest(dims: &[Quota]) -> Quota {
    let known = dims.iter().filter(|q| q.remaining.is_some());
    let best = known.min_by_key(|q| (q.remaining, Reverse(q.reset_ms)));
    let any = || dims.iter().find(|q| **q != Quota::default());
    best.or_else(any).copied().unwrap_or_default()
}

fn trim(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_ascii_whitespace())
}

/// A non-empty run of ASCII digits; None on anything else (`str::parse` would
/// also take a `+`) or u64 overflow.
fn digits(s: &str) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.bytes().try_fold(0u64, |acc, b| {
        let d = b.is_ascii_digit().then(|| u64::from(b - b'0'))?;
        acc.checked_mul(10)?.checked_add(d)
    })
}

fn split_digits(s: &str) -> (&str, &str) {
    let n = s.bytes().position(|b| !b.is_ascii_digit());
    // An ASCII position is a char boundary.
    s.split_at_checked(n.unwrap_or(s.len())).unwrap_or((s, ""))
}

/// Splits `int[.frac]` off the front of `s`: (int digits, frac digits, rest).
/// As in Go, either side of the dot may be empty but not both.
fn split_number(s: &str) -> Option<(&str, &str, &str)> {
    let (int, rest) = split_digits(s);
    let (frac, rest) = match rest.strip_prefix('.') {
        Some(after) => split_digits(after),
        None => ("", rest),
    };
    (!int.is_empty() || !frac.is_empty()).then_some((int, frac, rest))
}

/// `int.frac` times `unit`, rounded up. None when `int` overflows u64; past 24
/// fraction digits the excess only rounds up.
fn scaled(int: &str, frac: &str, unit: u128) -> Option<u128> {
    let whole = if int.is_empty() { 0 } else { digits(int)? };
    let (mut num, mut den) = (0u128, 1u128);
    for (i, b) in frac.bytes().enumerate() {
        let d = u128::from(b.checked_sub(b'0')?);
        if i < 24 {
            (num, den) = (num * 10 + d, den * 10);
        } else if d != 0 {
            num += 1;
            break;
        }
    }
    // whole < 2^64 and num < 10^24, so nothing here nears 2^128.
    Some(u128::from(whole) * unit + (num * unit).div_ceil(den))
}

/// `int[.frac]` followed exactly by `suffix`, in `unit`s, rounded up and clamped.
fn decimal(value: &str, suffix: &str, unit: u128) -> Option<u64> {
    let (int, frac, rest) = split_number(trim(value))?;
    if rest != suffix {
        return None;
    }
    scaled(int, frac, unit).map(clamp)
}

fn clamp(ms: u128) -> u64 {
    u64::try_from(ms).unwrap_or(u64::MAX).min(MAX_WAIT_MS)
}

/// Milliseconds from now until `target_ms` (unix): 0 if past, clamped.
fn wait_until(target_ms: i64, now_unix_ms: u64) -> u64 {
    let now = i64::try_from(now_unix_ms).unwrap_or(i64::MAX);
    let wait = u64::try_from(target_ms.saturating_sub(now)).unwrap_or(0);
    wait.min(MAX_WAIT_MS)
}

/// `Retry-After`: delay-seconds (non-negative integer; also accept a decimal like
/// "1.5" as providers send it) or an HTTP-date (IMF-fixdate, RFC 850, asctime).
/// A date in the past gives 0. Clamped to MAX_WAIT_MS.
pub fn retry_after(value: &str, now_unix_ms: u64) -> Option<u64> {
    let s = trim(value);
    if s.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        return decimal(s, "", 1000);
    }
    http_date_ms(s, now_unix_ms).map(|t| wait_until(t, now_unix_ms))
}

/// `retry-after-ms` (OpenAI SDK convention): non-negative integer or decimal milliseconds.
pub fn retry_after_ms(value: &str) -> Option<u64> {
    decimal(value, "", 1)
}

/// OpenAI `x-ratelimit-reset-*`: a Go duration ("6m0s", "1.5s", "120ms", "2µs"
/// rounds up to 1ms); a bare number is seconds. Rejects empty, negative, garbage,
/// and totals beyond u64 nanoseconds.
pub fn go_duration_ms(value: &str) -> Option<u64> {
    let mut s = trim(value);
    if let Some(ms) = decimal(s, "", 1000) {
        return Some(ms);
    }
    let mut total_ns: u128 = 0;
    loop {
        let (int, frac, rest) = split_number(s)?;
        let n = rest.find(|c: char| c.is_ascii_digit() || c == '.');
        let (unit, rest) = rest.split_at_checked(n.unwrap_or(rest.len()))?;
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        total_ns = total_ns.checked_add(scaled(int, frac, unit_ns)?)?;
        if total_ns > u128::from(u64::MAX) {
            return None;
        }
        s = rest;
        if s.is_empty() {
            return Some(clamp(total_ns.div_ceil(1_000_000)));
        }
    }
}

/// Anthropic `anthropic-ratelimit-*-reset`: an RFC 3339 timestamp. Returns ms
/// from now (0 if past), clamped.
pub fn rfc3339_wait_ms(value: &str, now_unix_ms: u64) -> Option<u64> {
    rfc3339_unix_ms(trim(value)).map(|t| wait_until(t, now_unix_ms))
}

/// `YYYY-MM-DD(T|t| )HH:MM:SS[.frac](Z|z|±HH:MM)` to unix ms, fraction rounded up.
fn rfc3339_unix_ms(s: &str) -> Option<i64> {
    let (date, rest) = s.split_at_checked(10)?;
    let (sep, rest) = rest.split_at_checked(1)?;
    let (time, rest) = rest.split_at_checked(8)?;
    let mut d = date.split('-');
    let (y, mo, da) = (d.next()?, d.next()?, d.next()?);
    if !matches!(sep, "T" | "t" | " ") || y.len() != 4 || d.next().is_some() {
        return None;
    }
    let (frac, zone) = match rest.strip_prefix('.') {
        Some(after) => Some(split_digits(after)).filter(|(f, _)| !f.is_empty())?,
        None => ("", rest),
    };
    let offset_min = match zone.split_at_checked(1)? {
        ("Z" | "z", "") => 0,
        ("+", hm) => utc_offset_min(hm)?,
        ("-", hm) => -utc_offset_min(hm)?,
        _ => return None,
    };
    let local = civil_unix_ms(digits(y)?, two_digits(mo)?, two_digits(da)?, clock(time)?)?;
    let frac_ms = scaled("", frac, 1000)? as i64; // at most 1000
    Some(local + frac_ms - offset_min * 60_000)
}

/// `HH:MM` of a UTC offset, in minutes.
fn utc_offset_min(hm: &str) -> Option<i64> {
    let (h, m) = hm.split_once(':')?;
    let (h, m) = (two_digits(h)?, two_digits(m)?);
    (h < 24 && m < 60).then_some((h * 60 + m) as i64)
}

fn two_digits(s: &str) -> Option<u64> {
    digits(s).filter(|_| s.len() == 2)
}

/// `HH:MM:SS`, each exactly two digits.
fn clock(s: &str) -> Option<(u64, u64, u64)> {
    let mut p = s.split(':').map(two_digits);
    let t = (p.next()??, p.next()??, p.next()??);
    p.next().is_none().then_some(t)
}

fn month(name: &str) -> Option<u64> {
    const NAMES: [&str; 12] = [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ];
    let i = NAMES.iter().position(|m| m.eq_ignore_ascii_case(name))?;
    Some(i as u64 + 1)
}

/// An HTTP-date (RFC 9110 section 5.6.7) to unix ms. Splitting on `-` too lets one
/// branch read IMF-fixdate and RFC 850. The weekday is not checked against the
/// date: senders get it wrong and it adds nothing.
fn http_date_ms(s: &str, now_unix_ms: u64) -> Option<i64> {
    let mut it = s
        .split(|c: char| c.is_ascii_whitespace() || c == '-')
        .filter(|t| !t.is_empty());
    let wkday = it.next()?;
    let (day, mon, year, time) = match wkday.strip_suffix(',') {
        // "Sun, 06 Nov 1994 08:49:37 GMT" or "Sunday, 06-Nov-94 08:49:37 GMT".
        Some(_) => {
            let t = (it.next()?, it.next()?, it.next()?, it.next()?);
            if !it.next()?.eq_ignore_ascii_case("GMT") {
                return None;
            }
            t
        }
        // asctime: "Sun Nov  6 08:49:37 1994".
        None => {
            let (mon, day, time, year) = (it.next()?, it.next()?, it.next()?, it.next()?);
            (day, mon, year, time)
        }
    };
    let name = wkday.trim_end_matches(',');
    if it.next().is_some() || name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphabetic()) {
        return None;
    }
    let year = match year.len() {
        4 => digits(year)?,
        2 => two_digit_year(digits(year)?, now_unix_ms),
        _ => return None,
    };
    let day = digits(day).filter(|_| day.len() <= 2)?;
    civil_unix_ms(year, month(mon)?, day, clock(time)?)
}

/// RFC 9110: a two-digit year more than 50 years in the future means the most
/// recent past year with those last two digits.
fn two_digit_year(yy: u64, now_unix_ms: u64) -> u64 {
    // Approximate civil year; a day's error does not matter for a 50-year window.
    let now_year = 1970 + now_unix_ms / 86_400_000 * 400 / 146_097;
    let year = now_year / 100 * 100 + yy;
    if year > now_year + 50 {
        year - 100
    } else {
        year
    }
}

/// A validated civil date and time (UTC) to unix ms; second 60 (leap) is allowed.
fn civil_unix_ms(y: u64, m: u64, d: u64, (h, mi, s): (u64, u64, u64)) -> Option<i64> {
    let leap = y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
    let month_days = match m {
        2 => 28 + u64::from(leap),
        4 | 6 | 9 | 11 => 30,
        1..=12 => 31,
        _ => return None,
    };
    if !(1..=9999).contains(&y) || !(1..=month_days).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // All bounded above, so the casts are exact.
    let days = days_from_civil(y as i64, m as i64, d as i64);
    Some(days * MS_PER_DAY + ((h * 60 + mi) * 60 + s) as i64 * 1000)
}

/// Howard Hinnant's days_from_civil: days since 1970-01-01, proleptic Gregorian.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

// Typed, so unknown members are skipped without building a tree; owned strings
// because `@type` may arrive with `\/` escapes, which a borrowed `&str` rejects.
#[derive(Deserialize)]
struct GeminiEnvelope {
    error: Option<GeminiError>,
}

#[derive(Deserialize)]
struct GeminiError {
    #[serde(default)]
    details: Vec<GeminiDetail>,
}

#[derive(Deserialize)]
struct GeminiDetail {
    #[serde(rename = "@type")]
    kind: Option<String>,
    #[serde(rename = "retryDelay")]
    retry_delay: Option<String>,
}

/// Gemini: the `google.rpc.RetryInfo` `retryDelay` (a protobuf Duration string
/// like "30s" or "0.250s") in a 429 error body, either `{"error":{...}}` or the
/// streaming form `[{"error":{...}}]`. Bodies over 64 KiB are not parsed.
pub fn gemini_retry_delay_ms(body: &[u8]) -> Option<u64> {
    if body.len() > GEMINI_BODY_MAX {
        return None;
    }
    let envelopes: Vec<GeminiEnvelope> = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(body).ok()?,
        _ => vec![serde_json::from_slice(body).ok()?],
    };
    let is_retry_info = |k: &str| k.ends_with("google.rpc.RetryInfo");
    let errors = envelopes.iter().filter_map(|e| e.error.as_ref());
    let mut details = errors.flat_map(|e| e.details.iter());
    let info = details.find(|d| d.kind.as_deref().is_some_and(is_retry_info))?;
    decimal(info.retry_delay.as_deref()?, "s", 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// 1994-11-06T08:49:37Z, the RFC 9110 example date.
    const EXAMPLE: u64 = 784_111_777_000;
    const MAX: Option<u64> = Some(MAX_WAIT_MS);

    #[test]
    #[rustfmt::skip]
    fn civil_dates() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(civil_unix_ms(1994, 11, 6, (8, 49, 37)), Some(EXAMPLE as i64));
        assert_eq!(civil_unix_ms(2024, 2, 29, (0, 0, 0)), Some(1_709_164_800_000));
        assert!(civil_unix_ms(2016, 12, 31, (23, 59, 60)).is_some()); // leap second
        let midnight = (0, 0, 0);
        for (y, m, d, t) in [(2023, 2, 29, midnight), (2024, 2, 30, midnight), (2024, 4, 31, midnight),
            (2024, 13, 1, midnight), (2024, 0, 1, midnight), (2024, 1, 0, midnight), (0, 1, 1, midnight),
            (2024, 1, 1, (24, 0, 0)), (2024, 1, 1, (0, 60, 0)), (2024, 1, 1, (0, 0, 61))]
        {
            assert_eq!(civil_unix_ms(y, m, d, t), None, "{y}-{m}-{d} {t:?}");
        }
        let y2026 = civil_unix_ms(2026, 6, 1, midnight).unwrap() as u64;
        for (yy, year) in [(94, 1994), (30, 2030), (76, 2076), (77, 1977)] {
            assert_eq!(two_digit_year(yy, y2026), year);
        }
    }

    #[test]
    #[rustfmt::skip]
    fn numbers_and_durations() {
        let retry = [("120", Some(120_000)), (" 0 ", Some(0)), ("1.5", Some(1_500)), ("0.0001", Some(1)),
            ("86401", MAX), ("18446744073709551615", MAX), ("", None), ("-1", None), ("+1", None),
            ("abc", None), ("1e3", None), ("1.5.2", None), ("10s", None), (".", None),
            ("99999999999999999999", None)];
        for (v, want) in retry {
            assert_eq!(retry_after(v, 0), want, "{v:?}");
        }
        let ms = [("250", Some(250)), ("1.2", Some(2)), ("999999999999", MAX), ("", None),
            ("-5", None), ("abc", None), ("1e3", None), ("5ms", None), ("99999999999999999999", None)];
        for (v, want) in ms {
            assert_eq!(retry_after_ms(v), want, "{v:?}");
        }
        let go = [("6m0s", Some(360_000)), ("6m", Some(360_000)), ("1.5s", Some(1_500)),
            ("120ms", Some(120)), ("1h2m3.5s", Some(3_723_500)), ("0s", Some(0)), ("0", Some(0)),
            ("20ms", Some(20)), ("59.999s", Some(59_999)), ("2us", Some(1)), ("2\u{b5}s", Some(1)),
            ("2\u{3bc}s", Some(1)), ("1500000ns", Some(2)), ("7", Some(7_000)), ("0.5", Some(500)),
            (".5s", Some(500)), ("1m30s", Some(90_000)), (" 1s ", Some(1_000)), ("25h", MAX),
            ("", None), ("-1s", None), ("+1s", None), ("abc", None), ("1e3", None), ("1h-2m", None),
            ("1x", None), ("s", None), ("1S", None), ("1 s", None), ("1s.", None), ("1.5.5s", None),
            ("99999999999999999999s", None), ("5124095576h", None)];
        for (v, want) in go {
            assert_eq!(go_duration_ms(v), want, "{v:?}");
        }
    }

    #[test]
    #[rustfmt::skip]
    fn dates() {
        let now = EXAMPLE - 30_000;
        let http = [("Sun, 06 Nov 1994 08:49:37 GMT", Some(30_000)),
            ("sun, 06 nov 1994 08:49:37 gmt", Some(30_000)),
            ("Sunday, 06-Nov-94 08:49:37 GMT", Some(30_000)),
            ("Sun Nov  6 08:49:37 1994", Some(30_000)),
            ("Sun, 06 Nov 1994 08:49:00 GMT", Some(0)), ("Fri, 01 Jan 2100 00:00:00 GMT", MAX),
            ("Sun, 06 Nov 1994 08:49:37", None), ("Sun, 06 Nov 1994 08:49:37 PST", None),
            ("Sun, 06 Foo 1994 08:49:37 GMT", None), ("Sun, 31 Feb 1994 08:49:37 GMT", None),
            ("Sun, 06 Nov 1994 8:49:37 GMT", None), ("Sun, 06 Nov 1994 08:49:37 GMT x", None),
            ("Sun, 06 Nov 199 08:49:37 GMT", None), (", 06 Nov 1994 08:49:37 GMT", None),
            ("Sun Nov  6 08:49:37", None), ("Sun, 06 Nov 1994 08:\u{e9}9:37 GMT", None)];
        for (v, want) in http {
            assert_eq!(retry_after(v, now), want, "{v:?}");
        }
        let rfc = [("1994-11-06T08:49:47Z", Some(40_000)), ("1994-11-06t08:49:47z", Some(40_000)),
            ("1994-11-06T08:49:37.5Z", Some(30_500)), ("1994-11-06T08:49:37.1234Z", Some(30_124)),
            ("1994-11-06T10:49:37+02:00", Some(30_000)), ("1994-11-06T03:19:37-05:30", Some(30_000)),
            ("1994-11-06T08:49:00Z", Some(0)), ("2026-11-22T15:30:00Z", MAX),
            ("", None), ("abc", None), ("1994-11-06T08:49:37", None), ("1994-11-06T08:49:37.Z", None),
            ("1994-11-06T08:49:37+0200", None), ("1994-11-06T08:49:37+24:00", None),
            ("1994-11-06X08:49:37Z", None), ("1994-13-06T08:49:37Z", None),
            ("1994-02-30T08:49:37Z", None), ("94-11-06T08:49:37Z", None), ("1994-11-06T08:49Z", None),
            ("1994-11-06T08:49:37ZZ", None), ("1994-11-0\u{e9}T08:49:37Z", None)];
        for (v, want) in rfc {
            assert_eq!(rfc3339_wait_ms(v, now), want, "{v:?}");
        }
    }

    fn quota(limit: u64, remaining: u64, reset: u64) -> Quota {
        let (limit, remaining, reset_ms) = (Some(limit), Some(remaining), Some(reset));
        Quota {
            limit,
            remaining,
            reset_ms,
        }
    }

    fn at(now: u64, headers: &[(&'static str, &'static str)]) -> Signal {
        parse(headers.iter().copied(), now)
    }

    #[test]
    #[rustfmt::skip]
    fn parse_openai_and_anthropic() {
        let s = at(0, &[("X-RateLimit-Limit-Requests", "60"), ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1s"), ("x-ratelimit-limit-tokens", "150000"),
            ("x-ratelimit-remaining-tokens", "149984"), ("X-RATELIMIT-RESET-TOKENS", "6m0s"),
            ("content-type", "application/json")]);
        assert_eq!((s.retry_after_ms, s.requests), (None, quota(60, 0, 1_000)));
        assert_eq!(s.tokens, quota(150_000, 149_984, 360_000));
        assert_eq!(s.cooldown_ms(), Some(1_000));
        // Anthropic: the token dimension with the least remaining wins.
        let s = at(EXAMPLE, &[("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "1994-11-06T08:49:38Z"),
            ("anthropic-ratelimit-tokens-limit", "100000"),
            ("anthropic-ratelimit-tokens-remaining", "5000"),
            ("anthropic-ratelimit-tokens-reset", "1994-11-06T08:49:40Z"),
            ("anthropic-ratelimit-input-tokens-limit", "80000"),
            ("anthropic-ratelimit-input-tokens-remaining", "4000"),
            ("anthropic-ratelimit-input-tokens-reset", "1994-11-06T08:49:39Z"),
            ("anthropic-ratelimit-output-tokens-limit", "20000"),
            ("anthropic-ratelimit-output-tokens-remaining", "19000"),
            ("anthropic-ratelimit-output-tokens-reset", "1994-11-06T08:49:47Z"),
            ("anthropic-ratelimit-bogus-tokens-remaining", "0")]);
        assert_eq!(s.requests, quota(50, 49, 1_000));
        assert_eq!(s.tokens, quota(80_000, 4_000, 2_000));
        assert_eq!(s.cooldown_ms(), None);
        // No `remaining` anywhere: the first dimension with any field.
        assert_eq!(at(0, &[("anthropic-ratelimit-output-tokens-limit", "7")]).tokens.limit, Some(7));
        // Exhausted dimensions tie: the longer reset is kept, for the cooldown.
        let s = at(0, &[("anthropic-ratelimit-input-tokens-remaining", "0"),
            ("anthropic-ratelimit-input-tokens-reset", "1970-01-01T00:00:03Z"),
            ("anthropic-ratelimit-output-tokens-remaining", "0"),
            ("anthropic-ratelimit-output-tokens-reset", "1970-01-01T00:00:09Z")]);
        assert_eq!(s.cooldown_ms(), Some(9_000));
    }

    #[test]
    #[rustfmt::skip]
    fn retry_after_precedence_and_cooldown() {
        let s = at(0, &[("Retry-After", "7"), ("RETRY-AFTER-MS", "1500")]);
        assert_eq!(s.retry_after_ms, Some(1_500));
        assert_eq!(at(0, &[("retry-after-ms", "x"), ("retry-after", "7")]).cooldown_ms(), Some(7_000));
        // The longest reset among exhausted dimensions, unless Retry-After says otherwise.
        let mut h = vec![("x-ratelimit-remaining-requests", "0"), ("x-ratelimit-reset-requests", "20ms"),
            ("x-ratelimit-remaining-tokens", "0"), ("x-ratelimit-reset-tokens", "3s")];
        assert_eq!(at(0, &h).cooldown_ms(), Some(3_000));
        h.push(("retry-after", "2"));
        assert_eq!(at(0, &h).cooldown_ms(), Some(2_000));
        // Nothing exhausted, or exhausted without a reset: no cooldown.
        let h = [("x-ratelimit-remaining-requests", "1"), ("x-ratelimit-reset-requests", "2s")];
        assert_eq!(at(0, &h).cooldown_ms(), None);
        assert_eq!(at(0, &[("x-ratelimit-remaining-tokens", "0")]).cooldown_ms(), None);
    }

    /// Issue 16: the wait a 429 implies, for every combination of headers.
    #[test]
    #[rustfmt::skip]
    fn rate_limited_wait_for_every_combination() {
        const D: u64 = 2_000; // default_cooldown_seconds: 2
        // None at all: the default; with no default, no wait.
        assert_eq!(at(0, &[]).rate_limited_wait_ms(D), 2_000);
        assert_eq!(at(0, &[("content-type", "application/json")]).rate_limited_wait_ms(0), 0);
        // A named wait is taken as given, shorter than the default or not.
        assert_eq!(at(0, &[("retry-after-ms", "250")]).rate_limited_wait_ms(D), 250);
        assert_eq!(at(0, &[("retry-after", "7")]).rate_limited_wait_ms(D), 7_000);
        // Resets only (OpenAI form): the earliest, at least the default.
        let h = [("x-ratelimit-reset-requests", "3s"), ("x-ratelimit-reset-tokens", "6m0s")];
        assert_eq!(at(0, &h).rate_limited_wait_ms(D), 3_000);
        assert_eq!(at(0, &[("x-ratelimit-reset-requests", "120ms")]).rate_limited_wait_ms(D), 2_000);
        // Resets only (Anthropic form, RFC 3339): the earliest of several families.
        let h = [("anthropic-ratelimit-requests-reset", "1994-11-06T08:49:40Z"),
            ("anthropic-ratelimit-tokens-reset", "1994-11-06T08:49:45Z"),
            ("anthropic-ratelimit-output-tokens-reset", "1994-11-06T08:49:42Z")];
        assert_eq!(at(EXAMPLE, &h).rate_limited_wait_ms(D), 3_000);
        assert_eq!(at(EXAMPLE, &h[..1]).rate_limited_wait_ms(0), 3_000);
        // Resets with remaining: an exhausted dimension's reset wins over an earlier one.
        let h = [("x-ratelimit-remaining-requests", "5"), ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-remaining-tokens", "0"), ("x-ratelimit-reset-tokens", "9s")];
        assert_eq!(at(0, &h).rate_limited_wait_ms(D), 9_000);
        // Exhausted and named: the named wait.
        let h = [("x-ratelimit-remaining-tokens", "0"), ("x-ratelimit-reset-tokens", "9s"),
            ("retry-after", "4")];
        assert_eq!(at(0, &h).rate_limited_wait_ms(D), 4_000);
        // Remaining but nothing exhausted and the resets say later: the earliest reset.
        let h = [("anthropic-ratelimit-requests-remaining", "3"),
            ("anthropic-ratelimit-requests-reset", "1994-11-06T08:49:41Z")];
        assert_eq!(at(EXAMPLE, &h).rate_limited_wait_ms(D), 4_000);
        // A reset in the past is a zero wait: the default still holds.
        let h = [("anthropic-ratelimit-requests-reset", "1994-11-06T08:49:30Z")];
        assert_eq!(at(EXAMPLE, &h).rate_limited_wait_ms(D), 2_000);
    }

    #[test]
    #[rustfmt::skip]
    fn malformed_and_unknown_headers_leave_fields_empty() {
        let s = at(0, &[("x-ratelimit-limit-requests", "-1"), ("x-ratelimit-remaining-requests", "abc"),
            ("x-ratelimit-reset-requests", "1h-2m"), ("x-ratelimit-limit-tokens", "99999999999999999999"),
            ("x-ratelimit-remaining-tokens", "1e3"), ("x-ratelimit-reset-tokens", ""),
            ("anthropic-ratelimit-tokens-reset", "2026-11-22T15:30:00"), ("retry-after", "soon"),
            ("x-ratelimit-remaining", "5"), ("", "5")]);
        assert!(s.is_empty(), "{s:?}");
        // Whitespace is trimmed; a later malformed duplicate keeps the good value.
        let s = at(0, &[("x-ratelimit-limit-requests", " 60 "), ("x-ratelimit-limit-requests", "x")]);
        assert_eq!(s.requests.limit, Some(60));
        assert!(!s.is_empty());
    }

    const RETRY_INFO: &str = r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.QuotaFailure","violations":[{"quotaMetric":"m"}]},{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"30s"}]}}"#;

    #[test]
    #[rustfmt::skip]
    fn gemini_bodies() {
        assert_eq!(gemini_retry_delay_ms(RETRY_INFO.as_bytes()), Some(30_000));
        assert_eq!(gemini_retry_delay_ms(format!(" [{RETRY_INFO}]").as_bytes()), Some(30_000));
        let delay = |d: &str| gemini_retry_delay_ms(format!(r#"{{"error":{{"details":[{{"@type":
            "type.googleapis.com\/google.rpc.RetryInfo","retryDelay":{d}}}]}}}}"#).as_bytes());
        assert_eq!((delay(r#""1.5s""#), delay(r#""0.250s""#), delay(r#""90000s""#)), (Some(1_500), Some(250), MAX));
        for bad in [r#""30""#, r#""-1s""#, r#""30m""#, "30", "null"] {
            assert_eq!(delay(bad), None, "{bad}");
        }
        for bad in [r#"{"error":{"code":429,"message":"x"}}"#, r#"{"error":"rate limited"}"#,
            r#"{"error":{"details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","retryDelay":"3s"}]}}"#,
            r#"{"error":{"details":{"retryDelay":"3s"}}}"#, "[]", "", "not json", "{\"error\":"]
        {
            assert_eq!(gemini_retry_delay_ms(bad.as_bytes()), None, "{bad:?}");
        }
        let mut big = RETRY_INFO.as_bytes().to_vec();
        big.resize(GEMINI_BODY_MAX, b' ');
        assert_eq!(gemini_retry_delay_ms(&big), Some(30_000));
        big.push(b' ');
        assert_eq!(gemini_retry_delay_ms(&big), None);
    }
}
