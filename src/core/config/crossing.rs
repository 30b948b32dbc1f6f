//! Chains across providers: which ones the filter can translate (OpenAI chat
//! completions <-> Anthropic messages, see `core::translate`), refused
//! otherwise with the entry's path.

use super::*;
use crate::core::translate::Dialect;

/// The dialect a cluster's provider speaks, when it is one we translate.
pub fn dialect(p: Provider) -> Option<Dialect> {
    match p {
        Provider::OpenAi => Some(Dialect::OpenAi),
        Provider::Anthropic => Some(Dialect::Anthropic),
        Provider::Gemini | Provider::Generic => None,
    }
}

/// Whether a chain names clusters of more than one provider (`generic` speaks
/// whatever the client does and counts for none).
pub fn crosses_providers(chain: &[Target]) -> bool {
    let mut first: Option<Provider> = None;
    for t in chain {
        let p = t.cluster.provider;
        if p == Provider::Generic {
            continue;
        }
        match first {
            None => first = Some(p),
            Some(f) if f != p => return true,
            Some(_) => {}
        }
    }
    false
}

/// A chain across providers: only OpenAI and Anthropic clusters, on a route
/// whose API is one of theirs (or `auto`), and every entry whose provider may
/// differ from the client's names the model it serves.
pub(super) fn check_chain(
    path: &str,
    chain: &[Target],
    api: Option<Api>,
) -> Result<(), ConfigError> {
    if !crosses_providers(chain) {
        return Ok(());
    }
    let client = match api {
        None => None,
        Some(a) => match Dialect::of_api(a) {
            Some(d) => Some(d),
            None => {
                return Err(err(
                    &join(path, "api"),
                    format!(
                        "a chain across providers is translated only for openai_chat and anthropic_messages, got {}",
                        a.as_str()
                    ),
                ))
            }
        },
    };
    for (i, t) in chain.iter().enumerate() {
        let ip = format!("{path}.clusters[{i}]");
        let c = &t.cluster;
        let Some(d) = dialect(c.provider) else {
            return Err(err(
                &ip,
                format!(
                    "cluster \"{}\" speaks {}: a chain across providers may hold only openai and anthropic clusters",
                    c.name,
                    c.provider.as_str()
                ),
            ));
        };
        if t.model.is_none() && client != Some(d) {
            return Err(err(
                &ip,
                format!(
                    "cluster \"{}\" speaks {} in a chain across providers: name the model it serves ({{cluster: {}, model: ...}})",
                    c.name,
                    c.provider.as_str(),
                    c.name
                ),
            ));
        }
    }
    Ok(())
}

/// A chain across providers is translated by the upstream instance, per
/// attempt, from a body read before anything leaves: it needs both. So does
/// hedging: its headers are set once the body is read, and only the upstream
/// instance sees which attempt is a hedge.
pub(super) fn check_hosting(
    routes: &BTreeMap<String, Rc<RoutePolicy>>,
    upstream_filter: bool,
    hold_headers: bool,
) -> Result<(), ConfigError> {
    if let Some(name) = routes
        .iter()
        .find(|(_, r)| r.routing.hedge.is_some())
        .map(|(n, _)| n)
    {
        let path = format!("routes.{name}.hedge");
        if !upstream_filter {
            return Err(err(
                &path,
                "hedging needs upstream_filter: true (the upstream instance tells a hedge from a retry)".to_string(),
            ));
        }
        if !hold_headers {
            return Err(err(
                &path,
                "hedging needs hold_headers: true (the hedge's headers are set after the body is read)".to_string(),
            ));
        }
    }
    for (name, r) in routes {
        let Some(hg) = &r.routing.hedge else { continue };
        if r.clusters.iter().any(|t| t.cluster.name == hg.cluster) {
            return Err(err(
                &format!("routes.{name}.hedge.cluster"),
                format!(
                    "must name the composite cluster over the chain, not a cluster of it, got {}",
                    hg.cluster
                ),
            ));
        }
    }
    let Some(name) = routes
        .iter()
        .find(|(_, r)| crosses_providers(&r.clusters))
        .map(|(n, _)| n)
    else {
        return Ok(());
    };
    let path = format!("routes.{name}.clusters");
    if !upstream_filter {
        return Err(err(
            &path,
            "a chain across providers needs upstream_filter: true (the upstream instance translates each attempt)".to_string(),
        ));
    }
    if !hold_headers {
        return Err(err(
            &path,
            "a chain across providers needs hold_headers: true (failover routing reads the body first)".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn msg(v: Value) -> String {
        match compile(&v) {
            Ok(_) => "accepted".to_string(),
            Err(e) => e.to_string(),
        }
    }

    fn with(route: Value) -> Value {
        json!({
            "clusters": {"o": {"provider": "openai"}, "a": {"provider": "anthropic"},
                         "g": {"provider": "gemini"}, "x": {}},
            "routes": {"chat": route},
            "upstream_filter": true,
        })
    }

    #[test]
    fn chains_across_providers_are_checked_with_exact_messages() {
        let cases = [
            (json!({"api": "openai_chat", "clusters": ["o", {"cluster": "a", "model": "claude-sonnet-4"}]}), "accepted"),
            (json!({"api": "anthropic_messages", "clusters": ["a", {"cluster": "o", "model": "gpt-4o"}]}), "accepted"),
            (json!({"clusters": [{"cluster": "o", "model": "gpt-4o"}, {"cluster": "a", "model": "claude-sonnet-4"}]}), "accepted"),
            // generic speaks the client's API: not a crossing.
            (json!({"clusters": ["o", "x"]}), "accepted"),
            (json!({"clusters": ["g", "x"]}), "accepted"),
            (
                json!({"api": "openai_chat", "clusters": ["o", "a"]}),
                "invalid config at routes.chat.clusters[1]: cluster \"a\" speaks anthropic in a chain across providers: name the model it serves ({cluster: a, model: ...})",
            ),
            (
                json!({"clusters": ["o", {"cluster": "a", "model": "claude-sonnet-4"}]}),
                "invalid config at routes.chat.clusters[0]: cluster \"o\" speaks openai in a chain across providers: name the model it serves ({cluster: o, model: ...})",
            ),
            (
                json!({"api": "openai_chat", "clusters": ["o", {"cluster": "g", "model": "gemini-2.5-pro"}]}),
                "invalid config at routes.chat.clusters[1]: cluster \"g\" speaks gemini: a chain across providers may hold only openai and anthropic clusters",
            ),
            (
                json!({"api": "openai_chat", "clusters": ["o", "x", {"cluster": "a", "model": "c"}]}),
                "invalid config at routes.chat.clusters[1]: cluster \"x\" speaks generic: a chain across providers may hold only openai and anthropic clusters",
            ),
            (
                json!({"api": "openai_responses", "clusters": ["o", {"cluster": "a", "model": "c"}]}),
                "invalid config at routes.chat.api: a chain across providers is translated only for openai_chat and anthropic_messages, got openai_responses",
            ),
        ];
        for (route, want) in cases {
            assert_eq!(msg(with(route.clone())), want, "{route}");
        }
        // Translated by the upstream instance, from a body read first.
        let mut v =
            with(json!({"api": "openai_chat", "clusters": ["o", {"cluster": "a", "model": "c"}]}));
        v["upstream_filter"] = json!(false);
        assert_eq!(
            msg(v.clone()),
            "invalid config at routes.chat.clusters: a chain across providers needs upstream_filter: true (the upstream instance translates each attempt)"
        );
        v["upstream_filter"] = json!(true);
        v["hold_headers"] = json!(false);
        assert_eq!(
            msg(v),
            "invalid config at routes.chat.clusters: a chain across providers needs hold_headers: true (failover routing reads the body first)"
        );
        assert_eq!(
            msg(
                json!({"clusters": {"o": {"provider": "openai"}}, "routes": {"r": {"clusters": ["o"]}}})
            ),
            "accepted"
        );
        // From defaults too.
        let mut v = with(json!({"clusters": ["o", {"cluster": "a", "model": "c"}]}));
        v["defaults"] = json!({"api": "gemini"});
        assert_eq!(
            msg(v),
            "invalid config at routes.chat.api: a chain across providers is translated only for openai_chat and anthropic_messages, got gemini"
        );
    }
}
