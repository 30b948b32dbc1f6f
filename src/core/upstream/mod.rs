//! Where a request may go: each cluster's circuit ([`circuit`]), the plan over
//! a route's cluster chain ([`failover`]), and what providers' answers say
//! about when to come back ([`provider_headers`]).

pub mod circuit;
pub mod failover;
pub mod provider_headers;
pub mod routing;
