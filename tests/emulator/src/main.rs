//! llm-emulator: a fake OpenAI / Anthropic / Gemini API for end-to-end tests.
//! See README.md for the flags, the admin API and the token-count formulas.

mod admin;
mod anthropic;
mod app;
mod faults;
mod gemini;
mod http;
mod openai;
mod ratelimit;
mod server;
mod stats;
mod tokens;

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use faults::{Faults, Storm};

const USAGE: &str = "usage: llm-emulator [--listen ADDR] [--admin ADDR] [--port-file PATH]
  [--rpm N] [--tpm N] [--error-rate F] [--error-status CODE[,CODE...]]
  [--latency-ms N] [--ttft-ms N] [--inter-token-ms N] [--storm-retry-after S]
  [--outage] [--seed N] [--verbose]";

struct Opts {
    listen: SocketAddr,
    admin: SocketAddr,
    port_file: Option<PathBuf>,
    rpm: u64,
    tpm: u64,
    seed: u64,
    verbose: bool,
    faults: Faults,
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("bad address {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("address {s:?} resolves to nothing"))
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: bad value {v:?}"))
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Opts, String> {
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut o = Opts {
        listen: parse_addr("127.0.0.1:18080")?,
        admin: parse_addr("127.0.0.1:18081")?,
        port_file: None,
        rpm: 10_000,
        tpm: 10_000_000,
        seed,
        verbose: false,
        faults: Faults::default(),
    };
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        // Boolean flags take no value.
        match flag.as_str() {
            "--outage" => {
                o.faults.outage = inline.map(|v| v != "false").unwrap_or(true);
                continue;
            }
            "--verbose" | "-v" => {
                o.verbose = true;
                continue;
            }
            "--help" | "-h" => return Err(USAGE.to_string()),
            _ => {}
        }
        let val = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?,
        };
        let f = flag.as_str();
        match f {
            "--listen" => o.listen = parse_addr(&val)?,
            "--admin" => o.admin = parse_addr(&val)?,
            "--port-file" => o.port_file = Some(PathBuf::from(val)),
            "--rpm" => o.rpm = num(f, &val)?,
            "--tpm" => o.tpm = num(f, &val)?,
            "--seed" => o.seed = num(f, &val)?,
            "--error-rate" => {
                let r: f64 = num(f, &val)?;
                if !(0.0..=1.0).contains(&r) {
                    return Err(format!("{f} must be in 0..1"));
                }
                o.faults.error_rate = r;
            }
            "--error-status" => o.faults.error_status = faults::parse_status_list(&val)?,
            "--latency-ms" => o.faults.latency_ms = num(f, &val)?,
            "--ttft-ms" => o.faults.ttft_ms = num(f, &val)?,
            "--inter-token-ms" => o.faults.inter_token_ms = num(f, &val)?,
            "--storm-retry-after" => o.faults.storm = Some(Storm::new(num(f, &val)?)),
            _ => return Err(format!("unknown flag {f}\n{USAGE}")),
        }
    }
    Ok(o)
}

/// Writes the port file atomically (temp file + rename) so a reader never
/// sees a partial file.
fn write_port_file(path: &PathBuf, api: u16, admin: u16) -> std::io::Result<()> {
    let mut tmp = path.clone().into_os_string();
    tmp.push(".tmp");
    std::fs::write(&tmp, format!("{{\"api\": {api}, \"admin\": {admin}}}\n"))?;
    std::fs::rename(&tmp, path)
}

async fn run(o: Opts) -> Result<(), String> {
    tokens::warm_up();
    let app = app::App::new(o.faults, o.rpm, o.tpm, o.seed, o.verbose);
    let api = server::bind(o.listen).map_err(|e| format!("binding {}: {e}", o.listen))?;
    let admin = server::bind(o.admin).map_err(|e| format!("binding {}: {e}", o.admin))?;
    let api_addr = api.local_addr().map_err(|e| e.to_string())?;
    let admin_addr = admin.local_addr().map_err(|e| e.to_string())?;
    if let Some(p) = &o.port_file {
        write_port_file(p, api_addr.port(), admin_addr.port())
            .map_err(|e| format!("writing {}: {e}", p.display()))?;
    }
    eprintln!("llm-emulator: api on {api_addr}, admin on {admin_addr}");
    tokio::spawn(server::serve_admin(admin, app.clone()));
    tokio::spawn(server::serve_api(api, api_addr, app));
    wait_for_signal().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn main() {
    let opts = match parse_args(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("llm-emulator: cannot start runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match rt.block_on(run(opts)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("llm-emulator: {e}");
            1
        }
    };
    // Exit at once: open streams and connections need no graceful drain.
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Opts, String> {
        parse_args(s.split_whitespace().map(String::from))
    }

    #[test]
    fn flags() {
        let o = parse("--listen 127.0.0.1:0 --admin=127.0.0.1:0 --rpm 5 --tpm 100 --error-rate 0.25 --error-status 500,503 --latency-ms 3 --ttft-ms 4 --inter-token-ms 5 --storm-retry-after 7 --outage --seed 9 --verbose").expect("valid");
        assert_eq!(o.listen.port(), 0);
        assert_eq!((o.rpm, o.tpm, o.seed), (5, 100, 9));
        assert!(o.verbose);
        assert_eq!(o.faults.error_rate, 0.25);
        assert_eq!(o.faults.error_status, vec![500, 503]);
        assert_eq!(
            (
                o.faults.latency_ms,
                o.faults.ttft_ms,
                o.faults.inter_token_ms
            ),
            (3, 4, 5)
        );
        assert_eq!(o.faults.storm, Some(Storm::new(7)));
        assert!(o.faults.outage);
        let d = parse("").expect("defaults");
        assert_eq!(
            (d.listen.port(), d.admin.port(), d.rpm, d.tpm),
            (18080, 18081, 10_000, 10_000_000)
        );
        assert!(parse("--error-rate 2").is_err());
        assert!(parse("--bogus 1").is_err());
        assert!(parse("--rpm").is_err());
        assert!(parse("--error-status 200").is_err());
    }
}
