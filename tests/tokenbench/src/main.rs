//! llm-tokenbench: fits the estimator's coefficients against exact tokenizers
//! and measures its accuracy and native speed.
//!
//! ```text
//! cargo run --release -p llm-tokenbench -- fit [--write]   # print (or write) the constants
//! cargo run --release -p llm-tokenbench -- accuracy        # writes results/accuracy.md
//! cargo run --release -p llm-tokenbench -- speed           # native MB/s table on stdout
//! ```
//!
//! Run from the workspace root (paths are relative to it).

#[cfg(not(target_arch = "wasm32"))]
mod tool;

fn main() {
    #[cfg(not(target_arch = "wasm32"))]
    std::process::exit(tool::main());
}
