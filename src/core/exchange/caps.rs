//! Per-request caps checked before anything leaves: the conversation's length
//! (`max_messages`) and the request's price (`max_request_cost_usd`).

use crate::core::exchange::budgets::usd;
use crate::core::limits::budget::Price;
use crate::core::reply::LocalReply;

/// The `400 too_many_turns` for a conversation of `turns` entries over `max`.
pub fn too_many_turns(turns: u32, max: u32) -> LocalReply {
    let msg = format!(
        "This conversation has {turns} messages; this route accepts at most {max}. Summarize or trim the history and send it again."
    );
    let mut r = LocalReply::openai_error(400, "invalid_request_error", "too_many_turns", &msg);
    r.headers
        .push(("x-should-retry".to_string(), "false".to_string()));
    r
}

/// The reservation's price (reserved input, output allowance) at `price`, in
/// pico-dollars; `None` when the model has no price (then there is no check).
pub fn reserved_cost(price: Option<Price>, tokens: (u64, u64)) -> Option<u64> {
    price.map(|p| p.cost(tokens.0, tokens.1, 0))
}

/// The `402 request_cost_exceeded` when the reservation priced at the attempt's
/// model (`model`, priced `price`) costs more than `max` pico-dollars.
pub fn over_cost(
    price: Option<Price>,
    tokens: (u64, u64),
    max: u64,
    model: Option<&str>,
) -> Option<LocalReply> {
    let cost = reserved_cost(price, tokens)?;
    if cost <= max {
        return None;
    }
    let msg = format!(
        "This request could cost up to ${} at {} ({} input and {} output tokens reserved); this route accepts at most ${} per request. Lower max_tokens or shorten the prompt.",
        usd(cost),
        model.unwrap_or("its model"),
        tokens.0,
        tokens.1,
        usd(max)
    );
    let mut r =
        LocalReply::openai_error(402, "invalid_request_error", "request_cost_exceeded", &msg);
    r.headers
        .push(("x-should-retry".to_string(), "false".to_string()));
    Some(r)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::limits::budget::PICO_PER_USD;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn body(r: &LocalReply) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn a_cost_at_the_cap_passes_and_one_pico_dollar_over_is_refused() {
        // $2.50 / $10 per million tokens: 1000 in + 100 out = $0.0035.
        let p = Price::from_usd_per_mtok(2.5, 10.0, 1.25);
        let cost = 3_500 * PICO_PER_USD / 1_000_000;
        assert_eq!(reserved_cost(p, (1000, 100)), Some(cost));
        assert!(over_cost(p, (1000, 100), cost, Some("gpt-4o")).is_none());
        let r = over_cost(p, (1000, 100), cost - 1, Some("gpt-4o")).unwrap();
        assert_eq!(r.status, 402);
        assert_eq!(body(&r)["error"]["code"], "request_cost_exceeded");
        assert_eq!(
            body(&r)["error"]["message"],
            "This request could cost up to $0.003500 at gpt-4o (1000 input and 100 output tokens reserved); this route accepts at most $0.003499 per request. Lower max_tokens or shorten the prompt."
        );
        assert!(r
            .headers
            .contains(&("x-should-retry".into(), "false".into())));
    }

    #[test]
    fn an_unpriced_model_is_not_checked() {
        assert!(over_cost(None, (1_000_000, 1_000_000), 1, Some("mystery")).is_none());
    }

    #[test]
    fn too_many_turns_names_both_counts() {
        let r = too_many_turns(21, 20);
        assert_eq!(r.status, 400);
        assert_eq!(body(&r)["error"]["code"], "too_many_turns");
        assert_eq!(
            body(&r)["error"]["message"],
            "This conversation has 21 messages; this route accepts at most 20. Summarize or trim the history and send it again."
        );
        assert!(r
            .headers
            .contains(&("x-should-retry".into(), "false".into())));
    }
}
