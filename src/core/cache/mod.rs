//! The exact response cache, request collapsing and idempotency keys (see
//! docs/cache.md): what makes two requests the same ([`canon`]) and where
//! answers are kept in Envoy shared data ([`store`]). The request's life uses
//! them in `exchange::cached`; nothing here knows the host beyond
//! [`SharedStore`](crate::core::env::SharedStore).

pub mod canon;
pub mod store;

#[cfg(test)]
mod tests;

/// Lookups by `result`: `hit`, `miss`, `bypass`.
pub const CACHE_LOOKUPS_TOTAL: &str = "llmcap_cache_lookups_total";
/// Answers stored, by `kind`: `cache`, `idempotency`.
pub const CACHE_STORES_TOTAL: &str = "llmcap_cache_stores_total";
/// Answers not stored, by `result`: `too_large`, `not_complete`, `slot_taken`, `error`.
pub const CACHE_NOT_STORED_TOTAL: &str = "llmcap_cache_not_stored_total";
/// Entries emptied or replaced to make room.
pub const CACHE_EVICTIONS_TOTAL: &str = "llmcap_cache_evictions_total";
/// Bytes the route's cache holds in shared data, by `kind` (`cache`, `idempotency`) (the last store's accounting).
pub const CACHE_BYTES: &str = "llmcap_cache_bytes";
/// Requests that waited for an identical one, by `result`: `hit` (answered
/// from its answer), `alone` (it failed or the wait ran out: sent on their own).
pub const CACHE_COLLAPSED_TOTAL: &str = "llmcap_cache_collapsed_total";
/// Tokens hits did not spend at the provider, by `kind`: `input`, `output`.
pub const CACHE_SAVED_TOKENS_TOTAL: &str = "llmcap_cache_saved_tokens_total";
/// Spend hits saved (priced with `prices` at the stored answer's model).
pub const CACHE_SAVED_MICRODOLLARS_TOTAL: &str = "llmcap_cache_saved_microdollars_total";
/// Requests with an `Idempotency-Key`, by `result`: `first`, `replay`,
/// `reused` (422), `in_use` (409), `invalid` (400), `retry_refused`.
pub const IDEMPOTENCY_TOTAL: &str = "llmcap_idempotency_total";

/// The answer header naming what the cache did: `hit`, `miss`, `bypass`.
pub const CACHE_HEADER: &str = "x-llm-capacity-cache";
/// The request header that opts a request in (`allow`) under `when: opt_in`.
pub const OPT_IN_VALUE: &str = "allow";
/// The answer header of an idempotent replay.
pub const REPLAY_HEADER: &str = "x-llm-capacity-idempotent-replay";
/// The request header naming an idempotency key.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
