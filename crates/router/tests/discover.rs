//! `--discover`'s gateway source against a real API server (crates/testenv's
//! control plane, no kubelet: the test writes Pod status as a kubelet
//! would). Gateway Pods of one MaskGateway come and go; Pods of another
//! MaskGateway, router Pods, Pods without the address annotation, failed
//! Pods and Pods being deleted are not gateways.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use vpno_api::names::{GATEWAY_LABEL, GATEWAY_ROLE_LABEL, NETWORK_ADDRESS_ANNOTATION};
use vpno_net::egress::Gateway;
use vpno_router::gateways::{GatewaySource, GatewaySourceError, KubernetesGateways};
use vpno_testenv::TestEnv;

const HOLD: &str = "vpno.test/hold";

fn pod(name: &str, gateway: &str, role: &str, address: Option<&str>) -> Pod {
    let mut p: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "labels": {GATEWAY_LABEL: gateway, GATEWAY_ROLE_LABEL: role},
        },
        "spec": {"containers": [{"name": "agent", "image": "vpn-operator:test"}]},
    }))
    .unwrap();
    if let Some(a) = address {
        p.metadata.annotations =
            Some([(NETWORK_ADDRESS_ANNOTATION.to_string(), a.to_string())].into());
    }
    p
}

fn gw(name: &str, last: u8) -> Gateway {
    Gateway {
        name: name.into(),
        address: Ipv4Addr::new(192, 168, 24, last),
    }
}

/// Next sets until one equals `want` (bounded in count and time).
async fn until(source: &mut KubernetesGateways, want: &[Gateway]) {
    let mut last = None;
    for _ in 0..30 {
        let next = match tokio::time::timeout(Duration::from_secs(20), source.next())
            .await
            .unwrap_or_else(|_| panic!("no new gateway set; last one was {last:?}, want {want:?}"))
        {
            Ok(next) => next,
            Err(GatewaySourceError::Watch(e)) => {
                eprintln!("watch error (the source retries): {e}");
                continue;
            }
            Err(e) => panic!("the source ended: {e}"),
        };
        let mut sorted = next.clone();
        sorted.sort_by(|a, b| a.name.cmp(&b.name));
        if sorted == want {
            return;
        }
        last = Some(sorted);
    }
    panic!("the source never showed {want:?}; last {last:?}");
}

/// Writes the status a kubelet would for a Pod in `phase`.
async fn set_phase(api: &Api<Pod>, name: &str, phase: &str) {
    let status = serde_json::json!({"status": {"phase": phase, "podIP": "10.244.0.9"}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_source_follows_the_gateway_pods_of_one_mask_gateway() {
    let Some(env) = TestEnv::shared() else { return };
    let client = env.client().await;
    let ns = env.new_namespace("vpno-router-discover").await;
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let create = |p: Pod| {
        let api = api.clone();
        async move { api.create(&PostParams::default(), &p).await.unwrap() }
    };
    // Present before the watch starts: found by the initial list.
    create(pod(
        "egress-0",
        "egress",
        "gateway",
        Some("192.168.24.16/22"),
    ))
    .await;
    set_phase(&api, "egress-0", "Running").await;
    // Never gateways of "egress":
    create(pod("other-0", "other", "gateway", Some("192.168.24.20/22"))).await;
    create(pod(
        "egress-router-0",
        "egress",
        "router",
        Some("192.168.24.2/22"),
    ))
    .await;
    create(pod("egress-unaddressed", "egress", "gateway", None)).await;

    let mut source = KubernetesGateways::new(client.clone(), &ns, "egress");
    until(&mut source, &[gw("egress-0", 16)]).await;

    // Added at run time.
    let mut held = pod("egress-1", "egress", "gateway", Some("192.168.24.17/22"));
    held.metadata.finalizers = Some(vec![HOLD.into()]);
    create(held).await;
    create(pod(
        "egress-2",
        "egress",
        "gateway",
        Some("192.168.24.18/22"),
    ))
    .await;
    until(
        &mut source,
        &[gw("egress-0", 16), gw("egress-1", 17), gw("egress-2", 18)],
    )
    .await;

    // A failed Pod is no gateway; a Pod being deleted (held by a finalizer) neither.
    set_phase(&api, "egress-2", "Failed").await;
    until(&mut source, &[gw("egress-0", 16), gw("egress-1", 17)]).await;
    api.delete("egress-1", &DeleteParams::default())
        .await
        .unwrap();
    until(&mut source, &[gw("egress-0", 16)]).await;
    assert!(
        api.get_opt("egress-1").await.unwrap().is_some(),
        "the finalizer holds the Pod: it is only being deleted"
    );

    // Removed, and a replacement with the same address under a new name.
    api.delete("egress-0", &DeleteParams::default())
        .await
        .unwrap();
    until(&mut source, &[]).await;
    create(pod("egress-0b", "egress", "gateway", Some("192.168.24.16"))).await;
    until(&mut source, &[gw("egress-0b", 16)]).await;

    let release = serde_json::json!({"metadata": {"finalizers": null}});
    api.patch("egress-1", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
}

/// An API server that cannot be reached is an error the router can show
/// (`/status` `gateway_source_error`), not a silent empty set.
#[tokio::test]
async fn an_unreachable_api_server_is_a_watch_error() {
    vpno_testenv::install_crypto_provider();
    // Nothing listens on port 1 of the loopback.
    let config = kube::Config::new("https://127.0.0.1:1".parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let mut source = KubernetesGateways::new(client, "vpn", "egress");
    let next = tokio::time::timeout(Duration::from_secs(30), source.next())
        .await
        .expect("the error arrives");
    match next {
        Err(GatewaySourceError::Watch(e)) => eprintln!("as expected: {e}"),
        other => panic!("expected a watch error, got {other:?}"),
    }
}
