//! llm-capacity: a capacity layer for LLM traffic, as a proxy-wasm filter.
//!
//! [`core`] holds every decision and knows nothing of proxy-wasm; `filter` is the
//! thin adapter that Envoy loads (feature `filter`, on by default).

pub mod core;

#[cfg(feature = "filter")]
mod filter;
