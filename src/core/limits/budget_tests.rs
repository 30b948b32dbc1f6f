//! Tests of [`super`].

use super::*;
use crate::core::env::MemStore;
use std::cell::RefCell;
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

/// Session caps: none, TTL 10 min, 64 slots, then `f`.
fn sc(f: impl FnOnce(&mut SessionCaps)) -> SessionCaps {
    let mut c = SessionCaps {
        max_calls: None,
        max_tokens: None,
        max_spend: None,
        calls_per_minute: None,
        idle_ttl_ms: 600_000,
        slots: 64,
    };
    f(&mut c);
    c
}

fn tc(day: Option<u64>, month: Option<u64>, slots: u32) -> TenantCaps {
    let (spend_per_day, spend_per_month) = (day, month);
    TenantCaps {
        spend_per_day,
        spend_per_month,
        slots,
    }
}

/// A session call of `tok` tokens costing 10 pico each.
fn admit(s: &dyn SharedStore, id: &str, c: &SessionCaps, now: u64, tok: u64) -> Verdict {
    session_admit(s, "r", id, c, now, tok, tok * 10).unwrap()
}

fn ok(v: Verdict) -> (Charge, Remaining, bool) {
    match v {
        Verdict::Admitted {
            charge,
            remaining,
            evicted,
        } => (charge, remaining, evicted),
        v => panic!("refused: {v:?}"),
    }
}

fn refused(v: Verdict) -> (Cap, Remaining, Option<u64>) {
    match v {
        Verdict::Exceeded {
            cap,
            remaining,
            retry_after_ms,
        } => (cap, remaining, retry_after_ms),
        v => panic!("admitted: {v:?}"),
    }
}

fn stored<S: Slot>(s: &MemStore, key: &str) -> S {
    decode(&s.get(key).unwrap().unwrap().0).unwrap()
}

#[test]
fn calls_cap_is_exact_and_per_session() {
    let s = MemStore::default();
    let c = sc(|c| c.max_calls = Some(3));
    for i in 0..3u64 {
        let (ch, rem, ev) = ok(admit(&s, "a", &c, i, 5));
        assert_eq!((rem.calls, ev), (Some(2 - i), false));
        settle(&s, &ch, i, 5, 50, false).unwrap();
    }
    let (cap, rem, retry) = refused(admit(&s, "a", &c, 10, 5));
    assert_eq!((cap.as_str(), rem.calls, retry), ("calls", Some(0), None));
    assert_eq!(ok(admit(&s, "b", &c, 10, 5)).1.calls, Some(2));
    assert_eq!(refused(admit(&s, "a", &c, 20, 5)).0, Cap::Calls);
}

#[test]
fn tokens_cap_counts_reservations_and_settles_to_actual() {
    let s = MemStore::default();
    let c = sc(|c| c.max_tokens = Some(1000));
    let (first, rem, _) = ok(admit(&s, "a", &c, 0, 600));
    assert_eq!(rem.tokens, Some(400));
    // Concurrent: 600 reserved < 1000, so it starts, and crosses the cap.
    let (second, rem, _) = ok(admit(&s, "a", &c, 1, 600));
    assert_eq!(rem.tokens, Some(0));
    let (cap, rem, _) = refused(admit(&s, "a", &c, 2, 1));
    assert_eq!((cap, rem.tokens), (Cap::Tokens, Some(0)));
    // Both used little: the refund makes room again.
    settle(&s, &first, 3, 100, 0, false).unwrap();
    settle(&s, &second, 3, 200, 0, false).unwrap();
    let (third, rem, _) = ok(admit(&s, "a", &c, 4, 500));
    assert_eq!(rem.tokens, Some(200));
    // A long answer: used 900, past the cap; the next is refused.
    settle(&s, &third, 5, 900, 0, false).unwrap();
    let st: Session = stored(&s, &third.key);
    assert_eq!((st.tk, st.rt, st.f, st.c), (1200, 0, 0, 3));
    assert_eq!(refused(admit(&s, "a", &c, 6, 1)).0, Cap::Tokens);
}

#[test]
fn spend_is_exact_to_the_pico() {
    let p = Price::from_usd_per_mtok(2.5, 10.0, 1.25).unwrap();
    let (input, output, cached_input) = (2_500_000, 10_000_000, 1_250_000);
    assert_eq!(
        p,
        Price {
            input,
            output,
            cached_input
        }
    );
    // 800 fresh input, 200 cached, 500 output: $0.00725.
    assert_eq!(p.cost(1000, 500, 200), 7_250_000_000);
    assert_eq!(p.cost(100, 0, 500), 100 * 1_250_000); // cached clamped to input
    assert_eq!(p.cost(u64::MAX, u64::MAX, 0), u64::MAX);
    let cheap = Price::from_usd_per_mtok(0.075, 0.3, 0.01875).unwrap();
    let cheap = (cheap.input, cheap.output, cheap.cached_input);
    assert_eq!(cheap, (75_000, 300_000, 18_750));

    // A cap of one cent: four calls of a quarter cent, then refused.
    let c = sc(|c| c.max_spend = Some(PICO_PER_USD / 100));
    let quarter = PICO_PER_USD / 400;
    for last in [quarter, quarter - 1] {
        let s = MemStore::default();
        for i in 0..4u64 {
            let (ch, rem, _) = ok(session_admit(&s, "r", "a", &c, i, 0, quarter).unwrap());
            assert_eq!(rem.spend, Some(PICO_PER_USD / 100 - (i + 1) * quarter));
            settle(&s, &ch, i, 0, if i == 3 { last } else { quarter }, false).unwrap();
        }
        let v = session_admit(&s, "r", "a", &c, 9, 0, 0).unwrap();
        if last == quarter {
            assert_eq!(refused(v).0, Cap::Spend);
        } else {
            assert_eq!(ok(v).1.spend, Some(1)); // one pico left: admitted
        }
    }
}

#[test]
fn calls_per_minute_window_and_retry_after() {
    let s = MemStore::default();
    let c = sc(|c| c.calls_per_minute = Some(2));
    ok(admit(&s, "a", &c, 1_000, 1));
    ok(admit(&s, "a", &c, 2_000, 1));
    let (cap, _, retry) = refused(admit(&s, "a", &c, 30_000, 1));
    assert_eq!((cap, retry), (Cap::CallsPerMinute, Some(31_000)));
    assert_eq!(refused(admit(&s, "a", &c, 60_999, 1)).2, Some(1));
    // The window from 1 000 ends at 61 000; a new one starts there.
    ok(admit(&s, "a", &c, 61_000, 1));
    ok(admit(&s, "a", &c, 100_000, 1));
    assert_eq!(refused(admit(&s, "a", &c, 100_001, 1)).2, Some(20_999));
}

#[test]
fn unsent_calls_are_given_back() {
    let s = MemStore::default();
    let c = sc(|c| (c.max_calls, c.calls_per_minute) = (Some(1), Some(1)));
    let (ch, ..) = ok(admit(&s, "a", &c, 0, 100));
    assert_eq!(refused(admit(&s, "a", &c, 1, 1)).0, Cap::Calls);
    settle(&s, &ch, 2, 100, 1000, true).unwrap();
    let st: Session = stored(&s, &ch.key);
    assert_eq!(
        (st.c, st.wc, st.tk, st.rt, st.sp, st.rs),
        (0, 0, 0, 0, 0, 0)
    );
    let (ch, ..) = ok(admit(&s, "a", &c, 3, 10));
    settle(&s, &ch, 4, 10, 100, false).unwrap();
    assert_eq!(refused(admit(&s, "a", &c, 5, 1)).0, Cap::Calls);
}

#[test]
fn colliding_sessions_never_merge() {
    let s = MemStore::default();
    let c = sc(|c| (c.max_calls, c.slots) = (Some(1), 1));
    let (a1, ..) = ok(admit(&s, "a", &c, 0, 7));
    assert_eq!(refused(admit(&s, "a", &c, 1, 7)).0, Cap::Calls);
    // "b" takes the only slot over, fresh although "a" was at its cap.
    let (b1, rem, evicted) = ok(admit(&s, "b", &c, 2, 3));
    assert_eq!((&a1.key, rem.calls, evicted), (&b1.key, Some(0), true));
    // a's late settle does not touch b.
    let before: Session = stored(&s, &b1.key);
    settle(&s, &a1, 3, 1000, 1000, true).unwrap();
    assert_eq!(stored::<Session>(&s, &b1.key), before);
    assert_eq!((before.o.as_str(), before.c, before.rt), ("b", 1, 3));

    // Seven sessions through two slots: a session's counts are only its own.
    let c = sc(|c| (c.max_calls, c.slots) = (Some(1000), 2));
    let s = MemStore::default();
    let mut calls = [0u64; 7];
    for i in 0..300u64 {
        let n = (i * i % 7) as usize;
        let (ch, rem, evicted) = ok(admit(&s, &format!("s{n}"), &c, i, 1));
        let st: Session = stored(&s, &ch.key);
        calls[n] = if evicted { 1 } else { calls[n] + 1 };
        assert_eq!(
            (st.o, st.c, rem.calls),
            (ch.owner, calls[n], Some(1000 - calls[n]))
        );
    }
    assert!(s.keys() <= 2);
}

#[test]
fn idle_sessions_are_forgotten_and_their_slots_reused() {
    let s = MemStore::default();
    let c = sc(|c| (c.max_calls, c.idle_ttl_ms, c.slots) = (Some(1), 1_000, 1));
    let (a, ..) = ok(admit(&s, "a", &c, 0, 1));
    // Still in flight: not idle, so "b" has to evict.
    let (b, _, evicted) = ok(admit(&s, "b", &c, 5_000, 1));
    assert!(evicted);
    settle(&s, &a, 5_001, 1, 1, false).unwrap(); // dropped: not a's slot any more
    settle(&s, &b, 5_002, 1, 1, false).unwrap();
    // Idle for 999 ms: "c" evicts.
    let (cc, _, evicted) = ok(admit(&s, "c", &c, 6_001, 1));
    assert!(evicted);
    // "c" is refused (cap 1) but keeps calling: it is seen, so not forgotten.
    settle(&s, &cc, 6_002, 1, 1, false).unwrap();
    assert_eq!(refused(admit(&s, "c", &c, 6_900, 1)).0, Cap::Calls);
    assert_eq!(refused(admit(&s, "c", &c, 7_800, 1)).0, Cap::Calls);
    // Idle 1 000 ms with nothing in flight: "d" reuses the slot, no eviction.
    let (d, _, evicted) = ok(admit(&s, "d", &c, 8_800, 1));
    assert!(!evicted);
    settle(&s, &d, 8_800, 1, 1, false).unwrap();
    // And "d" itself, back after its TTL, starts fresh.
    assert_eq!(refused(admit(&s, "d", &c, 9_000, 1)).0, Cap::Calls);
    assert_eq!(ok(admit(&s, "d", &c, 10_000, 1)).1.calls, Some(0));
}

#[test]
fn session_table_stays_bounded() {
    let s = MemStore::default();
    let c = sc(|c| c.max_calls = Some(1));
    for i in 0..100_000u64 {
        let (_, rem, _) = ok(admit(&s, &format!("session-{i}"), &c, i, 1));
        assert_eq!(rem.calls, Some(0));
    }
    assert!(s.keys() <= 64, "{}", s.keys());
}

#[test]
fn calendar_conversions() {
    assert_eq!(civil_from_days(0), (1970, 1, 1));
    assert_eq!(civil_from_days(1_709_164_800 / 86_400), (2024, 2, 29));
    assert_eq!(days_from_civil(2026, 1, 1), 20_454);
    assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    for day in (0..200_000u64).step_by(13) {
        let (y, m, d) = civil_from_days(day);
        assert_eq!(days_from_civil(y, m, d), day);
    }
    assert_eq!(month_index(20_454), 2026 * 12);
}

#[test]
fn tenant_day_and_month_roll_over() {
    const NOV28: u64 = 1_795_860_000_000; // 2026-11-28T10:00Z
    const NOV30_NOON: u64 = 1_796_040_000_000;
    const NOV30_2359: u64 = 1_796_083_140_000;
    const DEC1: u64 = 1_796_083_200_000;
    let s = MemStore::default();
    let c = tc(Some(200), Some(250), 16);
    let spend = |now: u64, amount: u64| {
        let (ch, rem, _) = ok(tenant_admit(&s, "r", "t", &c, now, amount).unwrap());
        settle(&s, &ch, now, 0, amount, false).unwrap();
        (rem.spend_day, rem.spend_month)
    };
    assert_eq!(spend(NOV28, 100), (Some(100), Some(150)));
    spend(NOV28 + DAY_MS, 100);
    // 200 this month: under 250, so this one starts, and crosses it.
    assert_eq!(spend(NOV30_NOON, 100), (Some(100), Some(0)));
    let (cap, rem, retry) = refused(tenant_admit(&s, "r", "t", &c, NOV30_2359, 1).unwrap());
    assert_eq!((cap.as_str(), retry), ("spend_per_month", Some(60_000)));
    assert_eq!((rem.spend_day, rem.spend_month), (Some(100), Some(0)));
    // December: everything fresh.
    let (ch, rem, _) = ok(tenant_admit(&s, "r", "t", &c, DEC1, 200).unwrap());
    assert_eq!((rem.spend_day, rem.spend_month), (Some(0), Some(50)));
    // In flight: the day cap is reserved; refused until the next midnight.
    let (cap, _, retry) = refused(tenant_admit(&s, "r", "t", &c, DEC1 + 1, 1).unwrap());
    assert_eq!((cap, retry), (Cap::SpendPerDay, Some(DAY_MS - 1)));
    // Settled after midnight: counted in the new day, the old reservation dropped.
    settle(&s, &ch, DEC1 + DAY_MS, 0, 30, false).unwrap();
    let st: Tenant = stored(&s, &ch.key);
    assert_eq!((st.ds, st.dr, st.ms, st.mr), (30, 0, 30, 0));

    // Retry-after to the first of next month, across a year end; day first.
    let c = tc(None, Some(0), 16);
    let r = |c: &TenantCaps, now| refused(tenant_admit(&s, "r", "u", c, now, 1).unwrap());
    assert_eq!(r(&c, NOV30_NOON).2, Some(12 * 3_600_000));
    assert_eq!(r(&c, 1_798_761_599_999).2, Some(1)); // 2026-12-31T23:59:59.999Z
    assert_eq!(r(&c, DEC1).2, Some(31 * DAY_MS));
    let c = tc(Some(0), Some(0), 16);
    assert_eq!(r(&c, NOV30_2359).0, Cap::SpendPerDay);
    assert_eq!(r(&c, NOV30_2359).2, Some(60_000));
}

#[test]
fn tenant_slots_are_reused_only_after_a_month_idle() {
    let s = MemStore::default();
    let c = tc(Some(10), None, 1);
    let admit = |t: &str, now| tenant_admit(&s, "r", t, &c, now, 9).unwrap();
    let (a, ..) = ok(admit("a", 0));
    assert_eq!(a.key, "llmcap/bud/r/0");
    settle(&s, &a, 0, 0, 10, false).unwrap();
    assert!(ok(admit("b", 31 * DAY_MS)).2);
    assert!(!ok(admit("c", 62 * DAY_MS + 1)).2);
    // 9 reserved < 10: admitted; then refused; an unsent call gives its share back.
    let (c2, ..) = ok(admit("c", 62 * DAY_MS + 2));
    assert_eq!(refused(admit("c", 62 * DAY_MS + 3)).0, Cap::SpendPerDay);
    settle(&s, &c2, 62 * DAY_MS + 4, 0, 9, true).unwrap();
    let st: Tenant = stored(&s, &c2.key);
    assert_eq!(
        (st.o.as_str(), st.ds, st.dr, st.ms, st.mr),
        ("c", 0, 9, 0, 9)
    );
}

#[test]
fn prices_lookup() {
    let p = |input: u64| Price {
        input,
        ..Price::default()
    };
    let prices = Prices::new(vec![
        ("gpt-4o*".into(), p(1)),
        ("gpt-4o-mini*".into(), p(2)),
        ("gpt-4o".into(), p(3)),
        ("*".into(), p(4)),
        ("claude*".into(), p(5)),
        ("claude*".into(), p(6)),
    ]);
    assert!(!prices.is_empty());
    assert_eq!(prices.lookup("gpt-4o"), Some(p(3)));
    assert_eq!(prices.lookup("gpt-4o-2024-08-06"), Some(p(1)));
    assert_eq!(prices.lookup("gpt-4o-mini-2024"), Some(p(2)));
    assert_eq!(prices.lookup("claude-3"), Some(p(6)));
    assert_eq!(prices.lookup("llama"), Some(p(4)));
    assert_eq!(
        Prices::new(vec![("gpt*".into(), p(1))]).lookup("llama"),
        None
    );
    assert!(Prices::new(vec![]).is_empty());
}

#[test]
fn price_from_config_rejects_nonsense() {
    assert!(Price::from_usd_per_mtok(-1.0, 1.0, 1.0).is_none());
    assert!(Price::from_usd_per_mtok(1.0, f64::NAN, 1.0).is_none());
    assert!(Price::from_usd_per_mtok(1.0, 1.0, f64::INFINITY).is_none());
    assert!(Price::from_usd_per_mtok(1e6 + 1.0, 1.0, 1.0).is_none());
    let max = Price::from_usd_per_mtok(1e6, 0.0, 0.0);
    assert_eq!(max.map(|p| p.input), Some(PICO_PER_USD));
}

/// A store where another worker commits a whole admission between this
/// worker's reads and its first write.
type Other<'a> = RefCell<Option<Box<dyn FnOnce(&MemStore) + 'a>>>;
struct Racing<'a>(&'a MemStore, Other<'a>);

impl SharedStore for Racing<'_> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.0.get(key)
    }
    fn set(&self, key: &str, value: &[u8], cas: u32) -> Result<(), StoreError> {
        if let Some(f) = self.1.borrow_mut().take() {
            f(self.0);
        }
        self.0.set(key, value, cas)
    }
}

#[test]
fn racing_workers_never_share_a_free_slot() {
    let c = sc(|c| (c.max_calls, c.slots) = (Some(2), 2));
    // Two sessions that start probing at the same slot.
    let start = |id: &str| stable_hash(id) % 2;
    let b_id = (0..)
        .map(|i| format!("b{i}"))
        .find(|b| start(b) == start("a"));
    let b_id = b_id.unwrap_or_default();
    let mem = MemStore::default();
    let b: RefCell<Option<Charge>> = RefCell::new(None);
    let other: Other = RefCell::new(Some(Box::new(|m: &MemStore| {
        *b.borrow_mut() = Some(ok(admit(m, &b_id, &c, 0, 1)).0);
    })));
    let (a, rem, evicted) = ok(admit(&Racing(&mem, other), "a", &c, 0, 1));
    let b = b.take().unwrap();
    assert_ne!(a.key, b.key);
    assert_eq!((rem.calls, evicted), (Some(1), false));
    for ch in [&a, &b] {
        let st: Session = stored(&mem, &ch.key);
        assert_eq!((&st.o, st.c), (&ch.owner, 1));
    }

    // Two calls of one session racing on its own slot both count.
    let other: Other = RefCell::new(Some(Box::new(|m: &MemStore| {
        ok(admit(m, "a", &c, 1, 1));
    })));
    assert_eq!(
        refused(admit(&Racing(&mem, other), "a", &c, 1, 1)).0,
        Cap::Calls
    );
    assert_eq!(stored::<Session>(&mem, &a.key).c, 2);

    // With one slot, the loser of the race evicts the winner, knowingly.
    let mem = MemStore::default();
    let one = SessionCaps { slots: 1, ..c };
    let other: Other = RefCell::new(Some(Box::new(|m: &MemStore| {
        ok(admit(m, "b", &one, 0, 1));
    })));
    let (a, _, evicted) = ok(admit(&Racing(&mem, other), "a", &one, 0, 1));
    assert!(evicted);
    assert_eq!(
        (stored::<Session>(&mem, &a.key).o, mem.keys()),
        ("a".into(), 1)
    );
}

#[test]
fn unreadable_values_are_free_slots() {
    let s = MemStore::default();
    s.set("llmcap/ses/r/0", b"\xc1garbage", 0).unwrap();
    let (ch, _, evicted) = ok(admit(&s, "a", &sc(|c| c.slots = 1), 0, 1));
    assert_eq!((ch.key.as_str(), evicted), ("llmcap/ses/r/0", false));
    assert_eq!(session_key_prefix("r"), "llmcap/ses/r/");
    assert_eq!(tenant_key_prefix("r"), "llmcap/bud/r/");
    // A settle on a missing key does nothing.
    let gone = Charge {
        key: "llmcap/ses/r/9".into(),
        ..ch
    };
    settle(&s, &gone, 1, 1, 1, false).unwrap();
    assert_eq!(s.keys(), 1);
}
