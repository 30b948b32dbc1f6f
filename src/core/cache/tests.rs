use super::canon::*;
use super::store::*;
use crate::core::env::{MemStore, SharedStore};
use serde_json::{json, Value};
#[cfg(target_arch = "wasm32")]
use wasm_bindgen_test::wasm_bindgen_test as test;

fn v(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn canon(s: &str) -> String {
    let mut out = Vec::new();
    assert!(canonical_json(&v(s), &mut out));
    String::from_utf8(out).unwrap()
}

#[test]
fn canonical_form_ignores_key_order_whitespace_and_number_spelling() {
    assert_eq!(
        canon(r#"{ "b": 1, "a": {"y": [1, 2.0, -0.0], "x": "é\n"} }"#),
        r#"{"a":{"x":"é\n","y":[1,2,0]},"b":1}"#
    );
    assert_eq!(canon(r#"{"t":0.0}"#), canon(r#"{"t":0}"#));
    assert_eq!(canon(r#"{"t":0.7}"#), r#"{"t":0.7}"#);
    assert_ne!(canon(r#"{"t":0.7}"#), canon(r#"{"t":0.70001}"#));
    // Escapes are serde_json's, whatever the input spelled.
    assert_eq!(canon(r#"{"s":"\u0041"}"#), r#"{"s":"A"}"#);
}

#[test]
fn request_digest_changes_with_every_field_and_the_api_and_path() {
    let base =
        v(r#"{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#);
    let d = request_digest("openai_chat", "/v1/chat/completions", &base).unwrap();
    let same = v(r#"{"messages":[{"content":"hi","role":"user"}],
        "temperature": 0.0, "model":"gpt-4o"}"#);
    assert_eq!(
        request_digest("openai_chat", "/v1/chat/completions", &same),
        Some(d)
    );
    for other in [
        r#"{"model":"gpt-4o-mini","temperature":0,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"gpt-4o","temperature":0,"messages":[{"role":"user","content":"hi!"}]}"#,
        r#"{"model":"gpt-4o","temperature":0,"seed":1,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"gpt-4o","temperature":0,"stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"gpt-4o","temperature":0,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        r#"{"model":"gpt-4o","temperature":0,"tools":[],"messages":[{"role":"user","content":"hi"}]}"#,
    ] {
        assert_ne!(
            request_digest("openai_chat", "/v1/chat/completions", &v(other)),
            Some(d),
            "{other}"
        );
    }
    assert_ne!(
        request_digest("openai_responses", "/v1/chat/completions", &base),
        Some(d)
    );
    assert_ne!(request_digest("openai_chat", "/v1/other", &base), Some(d));
    assert_eq!(request_digest("openai_chat", "/", &json!([1])), None);
}

#[test]
fn too_deep_bodies_are_not_keyed() {
    let deep = format!("{}1{}", "[".repeat(100), "]".repeat(100));
    let body = v(&format!(r#"{{"a":{deep}}}"#));
    assert_eq!(request_digest("openai_chat", "/", &body), None);
}

#[test]
fn scope_separates_credentials_and_tenants_and_holds_no_secret() {
    let a = scope(&[("authorization", "Bearer sk-a")], None, None);
    assert_ne!(a, scope(&[("authorization", "Bearer sk-b")], None, None));
    assert_ne!(a, scope(&[("x-api-key", "Bearer sk-a")], None, None));
    assert_ne!(
        a,
        scope(&[("authorization", "Bearer sk-a")], Some("t1"), None)
    );
    assert_ne!(
        scope(&[("authorization", "Bearer sk-a")], Some("t1"), None),
        scope(&[("authorization", "Bearer sk-a")], None, Some("t1"))
    );
    assert_eq!(a, scope(&[("authorization", "Bearer sk-a")], None, None));
    // Length-prefixed parts: moving a byte between parts changes the digest.
    assert_ne!(digest(&[b"ab", b"c"]), digest(&[b"a", b"bc"]));
}

#[test]
fn determinism_per_api() {
    assert!(deterministic("openai_chat", &v(r#"{"temperature":0}"#)));
    assert!(deterministic(
        "openai_chat",
        &v(r#"{"temperature":0.7,"seed":3}"#)
    ));
    assert!(!deterministic("openai_chat", &v(r#"{"temperature":0.7}"#)));
    assert!(!deterministic("openai_chat", &v(r#"{}"#)));
    assert!(!deterministic("openai_chat", &v(r#"{"seed":null}"#)));
    assert!(deterministic(
        "anthropic_messages",
        &v(r#"{"temperature":0}"#)
    ));
    assert!(!deterministic("anthropic_messages", &v(r#"{"seed":1}"#)));
    assert!(deterministic(
        "gemini",
        &v(r#"{"generationConfig":{"seed":1}}"#)
    ));
    assert!(!deterministic("gemini", &v(r#"{"temperature":0}"#)));
    assert!(deterministic("openai_embeddings", &v(r#"{}"#)));
}

#[test]
fn cache_control_directives() {
    assert_eq!(directives(None), Directives::default());
    let d = directives(Some("No-Cache, max-age=0"));
    assert!(d.no_cache && !d.no_store);
    let d = directives(Some("no-store"));
    assert!(!d.no_cache && d.no_store);
    assert_eq!(directives(Some("no-cachex")), Directives::default());
}

#[test]
fn idempotency_keys() {
    assert_eq!(idempotency_key("abc-123"), Ok("abc-123"));
    assert_eq!(idempotency_key(" \"8e03978e-40d5\" "), Ok("8e03978e-40d5"));
    assert_eq!(idempotency_key(""), Err(KeyError::Empty));
    assert_eq!(idempotency_key("\"\""), Err(KeyError::Empty));
    assert_eq!(idempotency_key(&"k".repeat(256)), Err(KeyError::TooLong));
    assert_eq!(idempotency_key(&"k".repeat(255)).map(str::len), Ok(255));
    assert_eq!(idempotency_key("a b"), Err(KeyError::BadCharacter));
    assert_eq!(idempotency_key("a\"b"), Err(KeyError::BadCharacter));
    assert_eq!(idempotency_key("é"), Err(KeyError::BadCharacter));
}

#[test]
fn good_finishes() {
    let chat = br#"{"choices":[{"finish_reason":"stop"}],"usage":{}}"#;
    assert!(finished_well("openai_chat", false, chat));
    assert!(!finished_well(
        "openai_chat",
        false,
        br#"{"choices":[{"finish_reason":"content_filter"}]}"#
    ));
    assert!(!finished_well(
        "openai_chat",
        false,
        br#"{"choices":[{"finish_reason":null}]}"#
    ));
    assert!(!finished_well("openai_chat", false, b"not json"));
    assert!(finished_well(
        "anthropic_messages",
        false,
        br#"{"type":"message","stop_reason":"end_turn"}"#
    ));
    assert!(!finished_well(
        "anthropic_messages",
        false,
        br#"{"type":"message","stop_reason":"refusal"}"#
    ));
    let sse = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    assert!(finished_well("openai_chat", true, sse));
    let cut = b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"},\"finish_reason\":null}]}\n\n";
    assert!(!finished_well("openai_chat", true, cut));
    let anth = b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"stop_reason\":null}}\n\nevent: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\"}}\n\nevent: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
    assert!(finished_well("anthropic_messages", true, anth));
    let err =
        b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\"}}\n\n";
    assert!(!finished_well("anthropic_messages", true, err));
    assert!(finished_well("openai_embeddings", false, br#"{"data":[]}"#));
}

fn entry(d: u8, body_len: usize, expires: u64) -> Entry {
    let mut digest = [0u8; 32];
    digest[0] = d;
    digest[31] = d;
    Entry {
        digest,
        body_digest: [7; 32],
        stored_ms: 10,
        expires_ms: expires,
        usage: (1, 2, 3),
        streamed: d.is_multiple_of(2),
        content_type: "application/json".into(),
        model: "gpt-4o".into(),
        body: vec![b'x'; body_len],
    }
}

#[test]
fn entries_round_trip_and_reject_foreign_values() {
    let e = entry(3, 10, 100);
    assert_eq!(Entry::decode(&e.encode()), Some(e.clone()));
    assert_eq!(Entry::decode(&[]), None);
    let mut cut = e.encode();
    cut.truncate(ENTRY_HEADER - 1);
    assert_eq!(Entry::decode(&cut), None);
    let mut bad = e.encode();
    bad[0] = 9;
    assert_eq!(Entry::decode(&bad), None);
}

fn table(store: &MemStore, slots: u32, max_total: u64) -> Table<'_> {
    Table {
        store,
        route: "r",
        family: Family::Cache,
        slots,
        max_total_bytes: max_total,
    }
}

fn held_bytes(store: &MemStore) -> u64 {
    store
        .dump()
        .iter()
        .filter(|(k, _)| !k.ends_with("/meta"))
        .map(|(_, v)| v.len() as u64)
        .sum()
}

#[test]
fn lookup_checks_digest_and_expiry() {
    let s = MemStore::default();
    let t = table(&s, 4, 1 << 20);
    let e = entry(1, 10, 100);
    t.put(&e, 10, false).unwrap();
    assert_eq!(t.lookup(&e.digest, 99).unwrap(), Some(e.clone()));
    assert_eq!(t.lookup(&e.digest, 100).unwrap(), None, "expired");
    // Another digest in the same slot is never served for this one.
    let mut other = e.digest;
    other[31] ^= 1;
    assert_eq!(t.slot_of(&other), t.slot_of(&e.digest));
    assert_eq!(t.lookup(&other, 50).unwrap(), None);
}

#[test]
fn total_bytes_stay_bounded_with_ten_times_the_capacity() {
    let s = MemStore::default();
    let max_total = 10_000;
    let t = table(&s, 64, max_total);
    let one = entry(0, 900, 1_000).encode().len() as u64;
    let mut evicted = 0;
    for i in 0..=255u8 {
        let r = t.put(&entry(i, 900, 1_000), 10, false).unwrap();
        evicted += r.evicted;
        assert!(r.bytes_held <= max_total, "{}", r.bytes_held);
        assert!(held_bytes(&s) <= max_total, "held {}", held_bytes(&s));
    }
    // Keys: 64 slots and one accounting record, whatever was stored.
    assert_eq!(s.keys(), 65);
    assert!(evicted > 200, "{evicted}");
    // The table is as full as the budget allows, and the last one is served.
    assert!(held_bytes(&s) > max_total - 2 * one);
    let last = entry(255, 900, 1_000);
    assert_eq!(t.lookup(&last.digest, 20).unwrap(), Some(last));
}

#[test]
fn a_resized_table_empties_its_old_slots() {
    let s = MemStore::default();
    for i in 0..8u8 {
        table(&s, 8, 1 << 20)
            .put(&entry(i, 100, 1_000), 10, false)
            .unwrap();
    }
    let before = held_bytes(&s);
    table(&s, 4, 1 << 20)
        .put(&entry(1, 100, 1_000), 10, false)
        .unwrap();
    assert!(
        held_bytes(&s) < before / 2,
        "{} -> {}",
        before,
        held_bytes(&s)
    );
}

#[test]
fn a_live_entry_can_be_kept() {
    let s = MemStore::default();
    let t = table(&s, 1, 1 << 20);
    t.put(&entry(1, 10, 100), 10, true).unwrap();
    assert_eq!(
        t.put(&entry(2, 10, 100), 20, true),
        Err(NotStored::SlotTaken)
    );
    assert!(
        t.put(&entry(2, 10, 200), 100, true).is_ok(),
        "expired: replaced"
    );
}

#[test]
fn flights_lead_join_and_end() {
    let s = MemStore::default();
    let f = Flights {
        store: &s,
        route: "r",
        slots: 16,
    };
    let d = [5u8; 32];
    assert_eq!(f.claim(&d, 0, 1_000).unwrap(), Claim::Leader);
    assert!(matches!(f.claim(&d, 1, 1_000).unwrap(), Claim::InFlight(_)));
    assert_eq!(f.join(&d, 1, 2).unwrap(), Some(1_000));
    assert_eq!(f.join(&d, 1, 2).unwrap(), Some(1_000));
    assert_eq!(f.join(&d, 1, 2).unwrap(), None, "full");
    // Another key in the same slot does not take a live flight over.
    let mut other = d;
    other[31] = 0;
    assert_eq!(f.claim(&other, 2, 1_000).unwrap(), Claim::Busy);
    f.finish(&d, false).unwrap();
    assert_eq!(
        f.state(&d).unwrap().map(|x| x.state),
        Some(FlightState::Failed)
    );
    assert_eq!(f.join(&d, 3, 10).unwrap(), None);
    // Ended (or past its deadline), the slot is free again.
    assert_eq!(f.claim(&other, 3, 1_000).unwrap(), Claim::Leader);
    assert_eq!(f.claim(&d, 2_000, 3_000).unwrap(), Claim::Leader);
    assert!(s.get("llmcap/cfl/r/5").is_ok());
    assert!(s.keys() <= 2);
}

#[test]
fn a_number_respelled_is_the_same_key() {
    // Found by the fuzzer before float_roundtrip: a long spelling and its
    // shortest form must read as one value, and the canonical form must read
    // back as itself.
    let long = v(
        r#"{"seed":1.5666666666656666666e3,"t":7.7777777777770000000000000000000000000000000000000000020496382304120000000777}"#,
    );
    let mut once = Vec::new();
    assert!(canonical_json(&long, &mut once));
    let mut twice = Vec::new();
    assert!(canonical_json(
        &serde_json::from_slice(&once).unwrap(),
        &mut twice
    ));
    assert_eq!(once, twice);
    assert_eq!(
        request_digest("openai_chat", "/", &long),
        request_digest("openai_chat", "/", &serde_json::from_slice(&once).unwrap())
    );
}
