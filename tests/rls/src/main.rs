//! llmcap-rls --listen 127.0.0.1:PORT [--redis redis://127.0.0.1:PORT] --limits FILE [--delay-ms N] [--verbose]
//!
//! Prints `llmcap-rls listening on ADDR` on stdout once it accepts calls (ADDR has the real
//! port when PORT is 0). Errors go to stderr with exit code 2 (usage) or 1 (startup).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use llmcap_rls::{parse_limits, Engine, RateLimitServiceServer, Service};
use tonic::transport::server::TcpIncoming;
use tonic::transport::Server;

const USAGE: &str = "usage: llmcap-rls --listen HOST:PORT --limits FILE [--redis redis://HOST:PORT] [--delay-ms N] [--verbose]
  --listen    address of the gRPC service (envoy.service.ratelimit.v3.RateLimitService); port 0 picks one
  --limits    Limitador limits file (YAML list; JSON works too); namespace = the request's domain
  --redis     counters in this Redis (shared by every instance using it); default: in this process
  --delay-ms  answer every call this much later (to test the caller's timeout)
  --verbose   one line per call on stdout: what was asked, what was answered";

struct Args {
    listen: SocketAddr,
    limits: String,
    redis: Option<String>,
    delay: Duration,
    verbose: bool,
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut listen, mut limits, mut redis, mut delay) = (None, None, None, Duration::ZERO);
    let mut verbose = false;
    while let Some(flag) = argv.next() {
        let mut value = |name: &str| argv.next().ok_or_else(|| format!("{name} needs a value"));
        match flag.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                listen = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|e| format!("--listen {v}: {e}"))?,
                );
            }
            "--limits" => limits = Some(value("--limits")?),
            "--redis" => redis = Some(value("--redis")?),
            "--delay-ms" => {
                let v = value("--delay-ms")?;
                let ms: u64 = v.parse().map_err(|e| format!("--delay-ms {v}: {e}"))?;
                delay = Duration::from_millis(ms);
            }
            "--verbose" => verbose = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(Args {
        listen: listen.ok_or("--listen is required")?,
        limits: limits.ok_or("--limits is required")?,
        redis,
        delay,
        verbose,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("llmcap-rls: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llmcap-rls: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    // Limitador unwraps a condition's evaluation error; the engine catches that panic and
    // answers INVALID_ARGUMENT. One line on stderr for it, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        eprintln!("llmcap-rls: caught panic: {info}")
    }));
    let text = std::fs::read_to_string(&args.limits)
        .map_err(|e| format!("limits file {}: {e}", args.limits))?;
    let limits = parse_limits(&text).map_err(|e| format!("limits file {}: {e}", args.limits))?;
    let count = limits.len();
    let engine = Engine::new(limits, args.redis.as_deref(), args.delay).await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", args.listen))?;
    let addr = listener
        .local_addr()
        .map_err(|e| format!("listen {}: {e}", args.listen))?;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "llmcap-rls listening on {addr} ({count} limits, counters in {}, delay {} ms)",
        args.redis.as_deref().unwrap_or("memory"),
        args.delay.as_millis()
    );
    let _ = out.flush();
    drop(out);
    Server::builder()
        .add_service(RateLimitServiceServer::new(Service::new(
            engine,
            args.verbose,
        )))
        // Small gRPC frames: without TCP_NODELAY a first answer can wait ~40 ms (Nagle and delayed ACK).
        .serve_with_incoming(TcpIncoming::from(listener).with_nodelay(Some(true)))
        .await
        .map_err(|e| format!("serve: {e}"))
}
