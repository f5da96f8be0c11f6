//! `vpn-operator bench servers`: latency and throughput of filtered
//! `GET /servers` over the real catalog, served on loopback, under a bounded
//! load (fixed request count and concurrency, and a time cap).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use vpno_catalog::{Catalog, TextField};

use crate::{ApiConfig, ApiError, TokenSet};

/// Arguments of `vpn-operator bench servers`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServersArgs {
    /// Catalog directory or file (default: gluetun's real 2023 list in ../shared/data).
    #[arg(long, default_value = "../shared/data")]
    pub catalog: PathBuf,
    /// Requests to send in total.
    #[arg(long, default_value_t = 20_000)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Stop sending after this many seconds even if requests remain.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
}

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The API could not start.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A request failed or answered an error status.
    #[error("request {path} failed: {message}")]
    Request {
        /// The request path.
        path: String,
        /// What happened.
        message: String,
    },
    /// Bad arguments.
    #[error("{0}")]
    Args(String),
}

/// The query mix: filtered listings built from the catalog's own values, so
/// every query is valid and most return servers.
pub fn query_mix(catalog: &Catalog) -> Vec<String> {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let providers = catalog.values(TextField::Provider);
    let countries = catalog.values(TextField::Country);
    let cities = catalog.values(TextField::City);
    let regions = catalog.values(TextField::Region);
    let mut mix = Vec::new();
    for (i, p) in providers.iter().enumerate() {
        mix.push(format!("/servers?provider={}&limit=20", enc(p)));
        mix.push(format!(
            "/servers?provider={}&vpn={}&limit=50",
            enc(p),
            if i % 2 == 0 { "openvpn" } else { "wireguard" }
        ));
        mix.push(format!(
            "/servers?provider={}&port_forward=false&owned=false&limit=10&offset=5",
            enc(p)
        ));
    }
    for (i, c) in countries.iter().enumerate().step_by(3) {
        mix.push(format!("/servers?country={}&limit=25", enc(c)));
        let p = &providers[i % providers.len()];
        mix.push(format!("/servers?country={}&provider={}", enc(c), enc(p)));
    }
    for c in cities.iter().step_by(7) {
        mix.push(format!("/servers?city={}&vpn=openvpn&limit=10", enc(c)));
    }
    for r in regions.iter().step_by(11) {
        mix.push(format!("/servers?region={}&free=false", enc(r)));
    }
    mix.push("/servers?limit=100".into());
    mix.push("/servers?port_forward=true&limit=100".into());
    mix.push("/servers?premium=true".into());
    mix
}

/// Mean time per query of the mix answered in process, through the index and
/// by a linear scan of every server (the same page is built either way).
fn index_vs_scan(catalog: &Catalog, mix: &[String]) -> (Duration, Duration) {
    let queries: Vec<_> = mix
        .iter()
        .filter_map(|path| {
            crate::servers::parse_server_query(path.split_once('?').map(|(_, q)| q), true).ok()
        })
        .collect();
    let rounds = 5;
    let mut checksum = 0usize;
    let started = Instant::now();
    for _ in 0..rounds {
        for q in &queries {
            if let Ok(page) = catalog.query(&q.filter, q.offset, q.limit) {
                checksum += page.total + page.servers.len();
            }
        }
    }
    let indexed = started.elapsed() / (rounds * queries.len().max(1)) as u32;
    let started = Instant::now();
    let mut check_scan = 0usize;
    for _ in 0..rounds {
        for q in &queries {
            let matching: Vec<_> = catalog
                .servers()
                .iter()
                .filter(|s| q.filter.matches(s))
                .collect();
            check_scan += matching.len() + matching.iter().skip(q.offset).take(q.limit).count();
        }
    }
    let scanned = started.elapsed() / (rounds * queries.len().max(1)) as u32;
    assert_eq!(checksum, check_scan, "index and scan must agree");
    (indexed, scanned)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Runs the benchmark and prints its figures.
pub async fn run(args: ServersArgs) -> Result<(), BenchError> {
    if args.requests == 0 || args.concurrency == 0 {
        return Err(BenchError::Args(
            "--requests and --concurrency must be at least 1".into(),
        ));
    }
    let token = crate::proxy::random_token(32);
    let config = ApiConfig::new(
        args.catalog.clone(),
        TokenSet::new([token.as_str()]),
        "unused",
    );
    let load_started = Instant::now();
    let catalog_path = args.catalog.clone();
    let catalog = tokio::task::spawn_blocking(move || Catalog::load(&catalog_path))
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))
        .map_err(ApiError::from)?;
    let load_time = load_started.elapsed();
    let mix = Arc::new(query_mix(&catalog));
    println!(
        "catalog: {} servers, {} providers from {} (load + index {:.0} ms)",
        catalog.servers().len(),
        catalog.providers().len(),
        catalog.source().display(),
        ms(load_time)
    );
    let (indexed, scanned) = index_vs_scan(&catalog, &mix);
    println!(
        "in-process, same mix: indexed query {:.1} µs, linear scan {:.1} µs per query (index {:.1}x faster)",
        indexed.as_secs_f64() * 1e6,
        scanned.as_secs_f64() * 1e6,
        scanned.as_secs_f64() / indexed.as_secs_f64().max(1e-12)
    );
    drop(catalog);

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| ApiError::Serve {
            addr: "127.0.0.1:0".into(),
            source,
        })?;
    let api = crate::start(config, None, listener).await?;
    let base = api.url();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();

    println!(
        "load: {} requests, {} in flight, {} distinct filtered GET /servers queries, cap {} s",
        args.requests,
        args.concurrency,
        mix.len(),
        args.max_seconds
    );
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (client, next, mix, base, token) = (
            client.clone(),
            next.clone(),
            mix.clone(),
            base.clone(),
            token.clone(),
        );
        let total = args.requests;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut bytes = 0usize;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total || Instant::now() >= deadline {
                    return Ok((latencies, bytes));
                }
                // A fixed stride over the mix so every run sends the same sequence.
                let path = &mix[(i * 7919) % mix.len()];
                let request = hyper::Request::get(format!("{base}{path}"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(Empty::<Bytes>::new())
                    .map_err(|e| BenchError::Request {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                let t0 = Instant::now();
                let response = client
                    .request(request)
                    .await
                    .map_err(|e| BenchError::Request {
                        path: path.clone(),
                        message: e.to_string(),
                    })?;
                let status = response.status();
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|e| BenchError::Request {
                        path: path.clone(),
                        message: e.to_string(),
                    })?
                    .to_bytes();
                latencies.push(t0.elapsed());
                bytes += body.len();
                if status != hyper::StatusCode::OK {
                    return Err(BenchError::Request {
                        path: path.clone(),
                        message: format!("{status}: {}", String::from_utf8_lossy(&body)),
                    });
                }
            }
        }));
    }
    let mut latencies = Vec::with_capacity(args.requests);
    let mut bytes = 0;
    for worker in workers {
        let (l, b) = worker
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        latencies.extend(l);
        bytes += b;
    }
    let elapsed = started.elapsed();
    drop(api);
    latencies.sort_unstable();
    let n = latencies.len();
    let mean = latencies.iter().sum::<Duration>() / n.max(1) as u32;
    println!(
        "completed: {n} requests in {:.2} s{}",
        elapsed.as_secs_f64(),
        if n < args.requests {
            " (time cap hit)"
        } else {
            ""
        }
    );
    println!(
        "throughput: {:.0} requests/s, {:.1} MB/s of JSON",
        n as f64 / elapsed.as_secs_f64(),
        bytes as f64 / 1e6 / elapsed.as_secs_f64()
    );
    println!(
        "latency: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms, mean {:.3} ms",
        ms(percentile(&latencies, 50.0)),
        ms(percentile(&latencies, 90.0)),
        ms(percentile(&latencies, 99.0)),
        ms(latencies.last().copied().unwrap_or_default()),
        ms(mean)
    );
    println!(
        "mean response: {:.1} KB",
        bytes as f64 / 1e3 / n.max(1) as f64
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_sorted_samples() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }
}
