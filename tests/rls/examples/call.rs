//! One ShouldRateLimit call, for debugging:
//!   cargo run --release --example call -- 127.0.0.1:PORT DOMAIN llmcap_route=chat,unit=requests:1 llmcap_route=chat,unit=tokens:500
//! Each descriptor is `key=value[,key=value...][:hits]`. Prints the response (or the gRPC error).

use llmcap_rls::{Entry, RateLimitDescriptor, RateLimitRequest, RateLimitServiceClient};
use tonic::transport::Channel;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, domain, descs @ ..] = args.as_slice() else {
        return Err("usage: call HOST:PORT DOMAIN key=value[,key=value][:hits]...".into());
    };
    let mut descriptors = Vec::new();
    for d in descs {
        let (entries, hits) = match d.rsplit_once(':') {
            Some((e, h)) => (e, Some(h.parse::<u64>()?)),
            None => (d.as_str(), None),
        };
        let entries = entries
            .split(',')
            .map(|kv| {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                Entry {
                    key: k.to_string(),
                    value: v.to_string(),
                }
            })
            .collect();
        descriptors.push(RateLimitDescriptor {
            entries,
            limit: None,
            hits_addend: hits,
        });
    }
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = RateLimitServiceClient::new(channel);
    let request = RateLimitRequest {
        domain: domain.clone(),
        descriptors,
        hits_addend: 0,
    };
    match client.should_rate_limit(request).await {
        Ok(r) => println!("{:#?}", r.into_inner()),
        Err(status) => println!("error: {status:?}"),
    }
    Ok(())
}
