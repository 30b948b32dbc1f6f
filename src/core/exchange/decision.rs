//! What to do with a request once its headers are known.

use crate::core::config::{Config, RoutePolicy, Unmatched};
use crate::core::reply::LocalReply;
use crate::core::telemetry::RequestOutcome;
use std::rc::Rc;

/// The parts of the request head the decision needs, read by the adapter.
#[derive(Debug, Clone, Default)]
pub struct RequestHead<'a> {
    /// Envoy's route name (`xds.route_name`); empty when the route has none.
    pub route: &'a str,
    /// `content-length`, when the request has one (chunked bodies do not).
    pub content_length: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Continue,
    Reply(LocalReply),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub policy: Option<Rc<RoutePolicy>>,
    pub outcome: RequestOutcome,
    pub verdict: Next,
}

pub fn on_request_headers(cfg: &Config, head: &RequestHead<'_>) -> Decision {
    let policy = cfg.route(head.route).cloned();
    let cap = policy.as_ref().map_or(cfg.defaults.max_request_bytes, |p| {
        p.policy.max_request_bytes
    });
    if let Some(len) = head.content_length.filter(|&len| len > cap) {
        return Decision {
            policy,
            outcome: RequestOutcome::TooLarge,
            verdict: Next::Reply(too_large(cap, Some(len))),
        };
    }
    match (&policy, cfg.unmatched) {
        (Some(_), _) => Decision {
            policy,
            outcome: RequestOutcome::Admitted,
            verdict: Next::Continue,
        },
        (None, Unmatched::Pass) => Decision {
            policy,
            outcome: RequestOutcome::Unmatched,
            verdict: Next::Continue,
        },
        (None, Unmatched::Reject) => {
            let msg = format!(
                "No llm-capacity policy is configured for route \"{}\".",
                head.route
            );
            Decision {
                policy,
                outcome: RequestOutcome::NoPolicy,
                verdict: Next::Reply(LocalReply::openai_error(
                    404,
                    "invalid_request_error",
                    "route_not_configured",
                    &msg,
                )),
            }
        }
    }
}

/// The 413 for a body over the route's cap: `len` from the content-length when
/// the headers said it, `None` when a chunked body grew past the cap.
pub fn too_large(cap: u64, len: Option<u64>) -> LocalReply {
    let msg = match len {
        Some(len) => {
            format!("Request body of {len} bytes exceeds the limit of {cap} bytes for this route.")
        }
        None => format!("Request body exceeds the limit of {cap} bytes for this route."),
    };
    LocalReply::openai_error(413, "invalid_request_error", "request_too_large", &msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::config::compile;
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn cfg(unmatched: &str) -> Config {
        compile(&json!({
            "unmatched_routes": unmatched,
            "defaults": {"max_request_bytes": 100},
            "routes": {"chat": {"max_request_bytes": 10}}
        }))
        .unwrap()
    }

    #[test]
    fn policy_route_is_admitted_under_its_cap() {
        let d = on_request_headers(
            &cfg("pass"),
            &RequestHead {
                route: "chat",
                content_length: Some(10),
            },
        );
        assert_eq!(d.outcome, RequestOutcome::Admitted);
        assert_eq!(d.verdict, Next::Continue);
        assert_eq!(d.policy.unwrap().name, "chat");
    }

    #[test]
    fn over_the_route_cap_is_413() {
        let d = on_request_headers(
            &cfg("pass"),
            &RequestHead {
                route: "chat",
                content_length: Some(11),
            },
        );
        assert_eq!(d.outcome, RequestOutcome::TooLarge);
        let Next::Reply(r) = d.verdict else {
            panic!("expected a reply")
        };
        assert_eq!(r.status, 413);
        assert!(String::from_utf8(r.body)
            .unwrap()
            .contains("Request body of 11 bytes exceeds the limit of 10 bytes"));
    }

    #[test]
    fn unmatched_routes_use_the_default_cap_and_policy() {
        let c = cfg("pass");
        let d = on_request_headers(
            &c,
            &RequestHead {
                route: "other",
                content_length: Some(100),
            },
        );
        assert_eq!(
            (d.outcome, d.verdict),
            (RequestOutcome::Unmatched, Next::Continue)
        );
        let d = on_request_headers(
            &c,
            &RequestHead {
                route: "other",
                content_length: Some(101),
            },
        );
        assert_eq!(d.outcome, RequestOutcome::TooLarge);
        // Chunked: no length known at headers time.
        let d = on_request_headers(
            &c,
            &RequestHead {
                route: "other",
                content_length: None,
            },
        );
        assert_eq!(d.outcome, RequestOutcome::Unmatched);
    }

    #[test]
    fn unmatched_routes_can_be_rejected() {
        let d = on_request_headers(
            &cfg("reject"),
            &RequestHead {
                route: "",
                content_length: None,
            },
        );
        assert_eq!(d.outcome, RequestOutcome::NoPolicy);
        let Next::Reply(r) = d.verdict else {
            panic!("expected a reply")
        };
        assert_eq!(r.status, 404);
        assert_eq!(r.details, "route_not_configured");
    }
}
