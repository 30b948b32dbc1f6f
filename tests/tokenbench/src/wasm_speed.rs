//! The estimator's speed benchmark, built for wasm32-wasip1 and run under node
//! (`node --no-warnings tests/tokenbench/run-wasi.mjs <file.wasm> [corpus dir]`),
//! so it measures the code as a wasm engine runs it. Also runs natively.

fn main() {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tests/corpus".to_string());
    match llm_tokenbench::load_speed_corpus(std::path::Path::new(&dir)) {
        Ok(samples) => print!("{}", llm_tokenbench::speed_table(&samples, 1.0)),
        Err(e) => {
            eprintln!("tokenbench-wasm: {e}");
            std::process::exit(1);
        }
    }
}
