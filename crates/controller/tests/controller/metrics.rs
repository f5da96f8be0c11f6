//! The metrics, health and readiness endpoints.

use super::*;

#[tokio::test]
async fn metrics_health_and_readiness_are_served() {
    let Some(env) = TestEnv::shared() else { return };
    let ns = env.new_namespace("metrics").await;
    let client = env.client().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let args = vpno_controller::ControllerArgs {
        namespaces: vec![ns.clone()],
        metrics_addr: format!("127.0.0.1:{port}").parse().unwrap(),
        kubeconfig: Some(env.kubeconfig_path().to_path_buf()),
        verify_gluetun_image: "qmcgaw/gluetun".into(),
        verify_curl_image: "curlimages/curl".into(),
        verify_ip_url: "https://api.ipify.org".into(),
        verify_timeout: Duration::from_secs(60),
        reporter: "vpn-operator-test".into(),
    };
    let task = tokio::spawn(vpno_controller::run(args));
    struct Abort(tokio::task::JoinHandle<Result<(), vpno_controller::ControllerError>>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _guard = Abort(task);
    provider("p", 1).create(&client, &ns).await;
    create_mask(&client, &ns, "m", None).await;
    wait_mask_phase(&client, &ns, "m", MaskPhase::Active).await;
    let get = async |path: &str| -> Option<(u16, String)> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).await.ok()?;
        let code = out.split_whitespace().nth(1)?.parse().ok()?;
        Some((code, out))
    };
    let (code, _) = eventually("/healthz", async || get("/healthz").await).await;
    assert_eq!(code, 200);
    let (code, _) = eventually("/readyz", async || get("/readyz").await).await;
    assert_eq!(code, 200);
    let (code, body) = get("/metrics").await.unwrap();
    assert_eq!(code, 200);
    for family in [
        "vpno_mask_reconcile_counter_total",
        "vpno_maskconsumer_reconcile_counter_total",
        "vpno_maskconsumer_action_counter_total{action=\"assign\"}",
        "vpno_maskprovider_reconcile_counter_total",
        "vpno_maskreservation_reconcile_counter_total",
        "vpno_maskconsumer_write_duration_seconds_bucket",
        "vpno_maskprovider_read_duration_seconds_bucket",
        "vpno_http_requests_total{path=\"/healthz\",status=\"200\"}",
    ] {
        assert!(
            body.contains(family),
            "missing {family} in /metrics:\n{body}"
        );
    }
    assert!(
        !body.contains("name=\""),
        "object names must not be metric labels"
    );
    // Slot use per provider follows the assignment (the one slot is used).
    let used = format!("vpno_provider_slots{{provider=\"{ns}/p\",state=\"used\"}} 1");
    let free = format!("vpno_provider_slots{{provider=\"{ns}/p\",state=\"free\"}} 0");
    eventually("provider slots", async || {
        let (_, body) = get("/metrics").await?;
        (body.contains(&used) && body.contains(&free)).then_some(())
    })
    .await;
}
