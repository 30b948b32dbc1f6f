//! The pure core: everything the filter decides, with no proxy-wasm imports.
//!
//! Grouped by concern: [`exchange`] is one request's life (and each upstream
//! attempt's), built on [`tokens`] (what a request costs), [`limits`] (what it
//! may spend), [`upstream`] (where it may go) and [`config`]. Host access goes
//! through the small traits of [`host`] and [`env`] (clock, randomness, shared
//! data), so the core runs natively and on wasm32 in tests.

pub mod cache;
pub mod config;
pub mod env;
pub mod exchange;
pub mod host;
pub mod limits;
pub mod pbstruct;
pub mod reply;
pub mod telemetry;
pub mod tokens;
pub mod translate;
pub mod upstream;

/// Crate version and git revision, stamped by build.rs.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const GIT_REVISION: &str = env!("LLMCAP_GIT_REVISION");

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary: names, labels and ids are bounded without splitting a character.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Turns raw plugin configuration bytes into a compiled config.
///
/// JSON text (a `StringValue`, or what Istio's WasmPlugin produces) starts with `{`
/// after optional whitespace; anything else is a serialized `google.protobuf.Struct`.
pub fn load_config(bytes: &[u8]) -> Result<config::Config, config::ConfigError> {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        None | Some(b'{') => config::parse_json(bytes),
        Some(_) => {
            let value = pbstruct::decode_struct(bytes).map_err(|e| config::ConfigError {
                path: String::new(),
                message: format!(
                    "configuration is neither JSON nor a google.protobuf.Struct ({})",
                    e.0
                ),
            })?;
            config::compile(&value)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn truncate_keeps_whole_characters() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("a\u{e9}b", 2), "a");
        assert_eq!(truncate("\u{e9}", 0), "");
    }

    #[test]
    fn load_config_detects_json_and_struct() {
        assert!(load_config(b"  {\"log_level\": \"warn\"}").is_ok());
        assert!(load_config(b"").is_ok());
        // Struct with one entry "log_level" -> string "warn".
        let entry: Vec<u8> = [&[0x0a, 9][..], b"log_level", &[0x12, 6, 0x1a, 4], b"warn"].concat();
        let bytes: Vec<u8> = [&[0x0a, entry.len() as u8][..], &entry].concat();
        assert_eq!(
            load_config(&bytes).unwrap().log_level,
            config::LogLevel::Warn
        );
        let e = load_config(&[0x0a, 0x50]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid config: configuration is neither JSON nor a google.protobuf.Struct (truncated field)"
        );
    }
}
