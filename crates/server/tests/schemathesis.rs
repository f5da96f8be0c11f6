//! The proxy API against its own OpenAPI document, checked by schemathesis
//! (run by `vpno_testenv::schemathesis`, which the in-cluster e2e shares):
//! it generates requests from `/openapi.json` — valid ones
//! and invalid ones — and checks that none gets a 5xx, every answer matches
//! the documented status codes, content types and schemas, no schema-valid
//! request is refused and no schema-invalid one accepted.
//!
//! The API runs in-process on loopback: catalog-only for the catalog
//! endpoints, and against the real API server (vpno-testenv) for the proxy
//! endpoints. Bounded: `--max-examples` per operation and a deadline on the
//! whole run. Prints `SKIPPED:` without schemathesis (or without the
//! control plane), and fails instead under `CI=true`.

mod support;

use std::time::Duration;

use support::testdata_catalog;
use vpno_server::{ApiConfig, RunningApi, TokenSet};
use vpno_testenv::TestEnv;
use vpno_testenv::schemathesis::Run;

const TOKEN: &str = "schemathesis-test-token";
/// Generated requests per API operation and phase.
const MAX_EXAMPLES: u32 = 40;
/// The whole schemathesis run must finish within this.
const DEADLINE: Duration = Duration::from_secs(480);

async fn start(client: Option<kube::Client>, namespace: &str) -> RunningApi {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = ApiConfig::new(testdata_catalog(), TokenSet::new([TOKEN]), namespace);
    vpno_server::start(config, client, listener).await.unwrap()
}

/// Runs schemathesis against `api` on the operations `selection` picks;
/// `operations` is how many operations it must have tested.
async fn run_schemathesis(api: &RunningApi, selection: &[&str], operations: usize) {
    let run = Run {
        base_url: api.url(),
        token: TOKEN,
        max_examples: MAX_EXAMPLES,
        deadline: DEADLINE,
        selection,
        operations,
    };
    if let Some(report) = run.check().await {
        println!("{report}");
    }
}

#[tokio::test]
async fn catalog_endpoints_keep_their_openapi_promises() {
    let api = start(None, "unused").await;
    run_schemathesis(
        &api,
        &[
            "--exclude-tag",
            "proxies",
            "--exclude-tag",
            "aliases",
            // The catalog has no links between operations to follow.
            "--phases",
            "examples,coverage,fuzzing",
        ],
        4,
    )
    .await;
}

#[tokio::test]
async fn proxy_endpoints_keep_their_openapi_promises() {
    let Some(env) = TestEnv::shared() else {
        return;
    };
    let client = env.client().await;
    let ns = env.new_namespace("schemathesis").await;
    let api = start(Some(client), &ns).await;
    run_schemathesis(
        &api,
        &["--include-tag", "proxies", "--include-tag", "aliases"],
        9,
    )
    .await;
}
