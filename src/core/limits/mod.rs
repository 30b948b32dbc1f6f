//! What a request may spend, kept in Envoy shared data so every worker agrees:
//! rate and in-flight limits ([`limiter`]) and what clients see of them
//! ([`ratelimit`]), session and tenant budgets ([`budget`]), and the fleet-wide
//! tier behind a rate limit service ([`global`]).

pub mod budget;
pub mod global;
pub mod limiter;
pub mod ratelimit;
