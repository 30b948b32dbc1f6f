//! What a request costs: its body read ([`request`]), its tokens estimated
//! ([`estimate`], [`calibrate`]), reserved before it leaves and settled with
//! the usage its answer reports ([`accounting`], [`usage`]); what each model
//! accepts ([`models`]).

pub mod accounting;
pub mod calibrate;
pub mod estimate;
pub mod models;
pub mod request;
pub mod usage;
