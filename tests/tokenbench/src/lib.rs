//! Shared by the native tool and the wasm speed benchmark: loading the corpus
//! and turning samples into the text pieces the filter's request parser feeds to
//! [`TextStats::add`].

use llm_capacity::core::tokens::estimate::{Features, Structure, TextStats};
use serde_json::Value;
use std::path::Path;

/// The generated corpus's classes (`tests/corpus/<class>.jsonl`).
pub const CLASSES: [&str; 6] = ["english", "code", "json", "cjk", "cyrillic", "chat"];

/// The real corpus's classes (`tests/corpus/real/corpus.jsonl`), in report order.
pub const REAL_CLASSES: [&str; 8] = [
    "english", "code", "json", "latin", "cyrillic", "cjk", "korean", "other",
];

/// Where the real corpus lives, relative to the corpus directory.
pub const REAL_CORPUS: &str = "real/corpus.jsonl";

/// One corpus sample as the estimator sees it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub id: String,
    pub class: &'static str,
    /// Language tag for text samples (`en`, `python`, `zh`, ...); `chat` for chats.
    pub lang: String,
    /// The text pieces, each passed to `TextStats::add` on its own.
    pub pieces: Vec<String>,
    pub structure: Structure,
    /// The chat request body (chats only), for exact counting.
    pub body: Option<Value>,
    /// Where the text comes from (real corpus only).
    pub source: String,
}

impl Sample {
    pub fn stats(&self) -> TextStats {
        let mut t = TextStats::default();
        for p in &self.pieces {
            t.add(p);
        }
        t
    }

    /// Exact feature counts over all pieces.
    pub fn features(&self) -> Features {
        let mut f = Features::default();
        for p in &self.pieces {
            f.add(p);
        }
        f
    }

    pub fn bytes(&self) -> usize {
        self.pieces.iter().map(String::len).sum()
    }

    /// Characters over all pieces (the corpus calls a sample short under 600).
    pub fn chars(&self) -> usize {
        self.pieces.iter().map(|p| p.chars().count()).sum()
    }
}

/// Loads `<dir>/<class>.jsonl` for every class.
pub fn load_corpus(dir: &Path) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for class in CLASSES {
        let path = dir.join(format!("{class}.jsonl"));
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        for (n, line) in text.lines().enumerate() {
            let v: Value = serde_json::from_str(line)
                .map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
            let id = v["id"].as_str().unwrap_or_default().to_string();
            if class == "chat" {
                let (pieces, structure) = chat_pieces(&v["body"]);
                out.push(Sample {
                    id,
                    class,
                    lang: "chat".into(),
                    pieces,
                    structure,
                    body: Some(v["body"].clone()),
                    source: String::new(),
                });
            } else {
                out.push(Sample {
                    id,
                    class,
                    lang: v["lang"].as_str().unwrap_or_default().to_string(),
                    pieces: vec![v["text"].as_str().unwrap_or_default().to_string()],
                    structure: Structure::default(),
                    body: None,
                    source: String::new(),
                });
            }
        }
    }
    Ok(out)
}

/// Loads the real corpus, `<dir>/real/corpus.jsonl` (one text per line with
/// its class, language and source).
pub fn load_real(dir: &Path) -> Result<Vec<Sample>, String> {
    let path = dir.join(REAL_CORPUS);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let v: Value =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), n + 1))?;
        let name = v["class"].as_str().unwrap_or_default();
        let class = REAL_CLASSES
            .into_iter()
            .find(|c| *c == name)
            .ok_or_else(|| format!("{}:{}: unknown class {name:?}", path.display(), n + 1))?;
        out.push(Sample {
            id: v["id"].as_str().unwrap_or_default().to_string(),
            class,
            lang: v["lang"].as_str().unwrap_or_default().to_string(),
            pieces: vec![v["text"].as_str().unwrap_or_default().to_string()],
            structure: Structure::default(),
            body: None,
            source: v["source"].as_str().unwrap_or_default().to_string(),
        });
    }
    Ok(out)
}

/// The speed benchmark's input: the real corpus and the generated chats
/// (requests of many small pieces, as the filter adds them).
pub fn load_speed_corpus(dir: &Path) -> Result<Vec<Sample>, String> {
    let mut s = load_real(dir)?;
    s.extend(load_corpus(dir)?.into_iter().filter(|s| s.class == "chat"));
    Ok(s)
}

/// What the filter's request parser (src/core/tokens/request.rs) passes to the
/// estimator for an OpenAI chat body: each message's role, name and content
/// text, its `tool_calls` / `function_call` as JSON text, and the whole `tools`
/// array as one JSON text; image parts are counted in `images`. (It does not add
/// `tool_call_id`; the fitted per-message overhead absorbs that.) Raw JSON is
/// taken as compact JSON, which is what SDKs send.
pub fn chat_pieces(body: &Value) -> (Vec<String>, Structure) {
    let mut pieces = Vec::new();
    let mut s = Structure::default();
    for m in body["messages"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        s.messages += 1;
        for key in ["role", "name"] {
            if let Some(t) = m[key].as_str() {
                pieces.push(t.to_string());
            }
        }
        match &m["content"] {
            Value::String(t) => pieces.push(t.clone()),
            Value::Array(parts) => {
                for p in parts {
                    match p["text"].as_str() {
                        Some(t) => pieces.push(t.to_string()),
                        None => s.images += 1,
                    }
                }
            }
            _ => {}
        }
        for key in ["tool_calls", "function_call"] {
            if !m[key].is_null() {
                pieces.push(m[key].to_string());
            }
        }
    }
    if let Some(tools) = body["tools"].as_array() {
        s.tools += tools.len() as u32;
        pieces.push(body["tools"].to_string());
    }
    (pieces, s)
}

/// One pass over all pieces, each added to a fresh `TextStats` as the filter
/// does per request part. Not inlined, so engines can tier it up between calls.
#[inline(never)]
pub fn pass(pieces: &[&str]) -> u64 {
    let mut sum = 0u64;
    for p in pieces {
        let mut t = TextStats::default();
        t.add(p);
        sum = sum.wrapping_add(t.bytes);
        std::hint::black_box(&t);
    }
    sum
}

/// Measures `TextStats::add` throughput per class (each sample's pieces added one
/// by one, as the filter does) and returns a markdown table.
pub fn speed_table(samples: &[Sample], min_seconds: f64) -> String {
    use std::hint::black_box;
    use std::time::Instant;
    let mut rows = String::from("| class | corpus bytes | pieces | MB/s |\n|---|---:|---:|---:|\n");
    let big: String = samples
        .iter()
        .filter(|s| s.class == "english")
        .flat_map(|s| s.pieces.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join("\n\n");
    let big = big.repeat(1_000_000 / big.len().max(1) + 1);
    let mut classes: Vec<&str> = Vec::new();
    for s in samples {
        if !classes.contains(&s.class) {
            classes.push(s.class);
        }
    }
    let mut groups: Vec<(String, Vec<&str>)> = classes
        .iter()
        .map(|c| {
            let pieces = samples
                .iter()
                .filter(|s| s.class == *c)
                .flat_map(|s| s.pieces.iter().map(String::as_str))
                .collect();
            (c.to_string(), pieces)
        })
        .collect();
    groups.push((
        "all classes".into(),
        samples
            .iter()
            .flat_map(|s| s.pieces.iter().map(String::as_str))
            .collect(),
    ));
    groups.push(("english, one ~1 MB piece".into(), vec![big.as_str()]));
    for (name, pieces) in &groups {
        let bytes: usize = pieces.iter().map(|p| p.len()).sum();
        // Warm up first: wasm engines start in a baseline compiler and switch a
        // function to optimised code on a later call, never mid-call.
        let warm = Instant::now();
        while warm.elapsed().as_secs_f64() < min_seconds / 4.0 {
            black_box(pass(black_box(pieces)));
        }
        let mut reps = 0u64;
        let start = Instant::now();
        let mut elapsed;
        loop {
            black_box(pass(black_box(pieces)));
            reps += 1;
            elapsed = start.elapsed().as_secs_f64();
            if reps >= 3 && elapsed >= min_seconds {
                break;
            }
        }
        let mbs = bytes as f64 * reps as f64 / elapsed / 1e6;
        rows.push_str(&format!(
            "| {name} | {bytes} | {} | {mbs:.0} |\n",
            pieces.len()
        ));
    }
    rows
}
