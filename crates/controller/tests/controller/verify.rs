//! Verification Pods (the tests play the kubelet).

use super::*;

#[tokio::test]
async fn verification_pod_holds_a_slot_and_success_makes_ready() {
    let Some((client, ns)) = setup(&["verify-ok"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    let overrides: vpno_api::VerifyOverrides = serde_json::from_value(json!({
        "pod": {"metadata": {"labels": {"team": "vpn"}}, "spec": {"nodeSelector": {"vpn": "yes"}}},
        "containers": {"vpn": {"image": "example/gluetun:test", "env": [{"name": "VPN_TYPE", "value": "wireguard"}]}}
    }))
    .unwrap();
    let p = provider("v", 1)
        .verify(VerifySpec {
            skip: None,
            timeout: Some("1m".into()),
            interval: None,
            overrides: Some(overrides),
        })
        .create(&client, ns)
        .await;
    create_mask(&client, ns, "early", None).await;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let pod = eventually("the verification pod", async || {
        pods.get_opt("vpno-verify-v").await.unwrap()
    })
    .await;
    let prov = Api::<MaskProvider>::namespaced(client.clone(), ns)
        .get("v")
        .await
        .unwrap();
    assert_eq!(prov.phase(), ProviderPhase::Verifying);
    let early = Api::<Mask>::namespaced(client.clone(), ns)
        .get("early")
        .await
        .unwrap();
    assert_ne!(
        early.phase(),
        MaskPhase::Active,
        "no Mask is assigned to an unverified provider"
    );
    // The pod uses a slot through its own Mask.
    let rs = reservations(&client, ns).await;
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0].spec.name, "vpno-verify-v");
    let spec = pod.spec.clone().unwrap();
    let names: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(spec.containers.iter())
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(names, ["init", "vpn", "probe"]);
    let vpn = &spec.containers[0];
    assert_eq!(vpn.image.as_deref(), Some("example/gluetun:test"));
    assert_eq!(
        vpn.env_from.as_ref().unwrap()[0]
            .secret_ref
            .as_ref()
            .unwrap()
            .name,
        credentials_secret_name("vpno-verify-v", &p.uid().unwrap())
    );
    assert_eq!(spec.node_selector.unwrap()["vpn"], "yes");
    assert_eq!(pod.labels()["team"], "vpn");

    play_kubelet(&client, ns, "vpno-verify-v", json!({"phase": "Succeeded"})).await;
    let prov = wait_provider_phase(&client, ns, "v", ProviderPhase::Active).await;
    assert!(prov.status.unwrap().last_verified.is_some());
    wait_mask_phase(&client, ns, "early", MaskPhase::Active).await;
    eventually("verification Mask, consumer and Pod gone", async || {
        let gone = Api::<Mask>::namespaced(client.clone(), ns)
            .get_opt("vpno-verify-v")
            .await
            .unwrap()
            .is_none()
            && pods.get_opt("vpno-verify-v").await.unwrap().is_none();
        gone.then_some(())
    })
    .await;
    let papi = Api::<MaskProvider>::namespaced(client.clone(), ns);
    eventually(
        "the verification slot released (activeSlots 1, one reservation)",
        async || {
            let used = papi
                .get("v")
                .await
                .unwrap()
                .status
                .and_then(|s| s.active_slots);
            (used == Some(1) && reservations(&client, ns).await.len() == 1).then_some(())
        },
    )
    .await;
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn verification_failure_timeout_and_missing_secret_are_reported() {
    let Some((client, ns)) = setup(&["verify-bad"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    let verify = |timeout: &str| VerifySpec {
        skip: None,
        timeout: Some(timeout.into()),
        interval: None,
        overrides: None,
    };
    provider("fails", 1)
        .verify(verify("1m"))
        .create(&client, ns)
        .await;
    provider("slow", 1)
        .verify(verify("2s"))
        .create(&client, ns)
        .await;
    provider("nosecret", 1)
        .without_secret()
        .create(&client, ns)
        .await;
    let bad: vpno_api::VerifyOverrides =
        serde_json::from_value(json!({"pod": {"spec": {"restartPolicy": "Sometimes"}}})).unwrap();
    provider("badpod", 1)
        .verify(VerifySpec {
            skip: None,
            timeout: Some("1m".into()),
            interval: None,
            overrides: Some(bad),
        })
        .create(&client, ns)
        .await;

    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    eventually("verification pod of 'fails'", async || {
        pods.get_opt("vpno-verify-fails").await.unwrap()
    })
    .await;
    play_kubelet(
        &client,
        ns,
        "vpno-verify-fails",
        json!({"phase": "Failed", "containerStatuses": [
        {"name": "vpn", "ready": false, "restartCount": 0, "image": "qmcgaw/gluetun", "imageID": "",
         "state": {"terminated": {"exitCode": 1, "reason": "Error", "message": "AUTH_FAILED"}}}]}),
    )
    .await;
    let p = wait_provider_phase(&client, ns, "fails", ProviderPhase::ErrVerifyFailed).await;
    let msg = p.status.unwrap().message.unwrap();
    assert!(
        msg.contains("container vpn terminated with exit code 1") && msg.contains("AUTH_FAILED"),
        "{msg}"
    );
    eventually("ErrVerifyFailed event on 'fails'", async || {
        events_about(&client, ns, "fails")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ErrVerifyFailed"))
    })
    .await;

    // The user fixes the provider: editing its spec verifies it again.
    eventually("the failed verification pod gone", async || {
        pods.get_opt("vpno-verify-fails")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    Api::<MaskProvider>::namespaced(client.clone(), ns)
        .patch("fails", &PatchParams::default(), &Patch::Merge(json!({"spec": {"verify": {"overrides": {"containers": {"vpn": {"image": "fixed/gluetun"}}}}}})))
        .await
        .unwrap();
    let pod = eventually("a new verification pod of 'fails'", async || {
        pods.get_opt("vpno-verify-fails").await.unwrap()
    })
    .await;
    assert_eq!(
        pod.spec.unwrap().containers[0].image.as_deref(),
        Some("fixed/gluetun")
    );
    play_kubelet(
        &client,
        ns,
        "vpno-verify-fails",
        json!({"phase": "Succeeded"}),
    )
    .await;
    wait_provider_phase(&client, ns, "fails", ProviderPhase::Ready).await;
    let papi = Api::<MaskProvider>::namespaced(client.clone(), ns);
    delete(&papi, "fails").await;
    eventually("provider 'fails' gone", async || {
        papi.get_opt("fails").await.unwrap().is_none().then_some(())
    })
    .await;

    let p = wait_provider_phase(&client, ns, "slow", ProviderPhase::ErrVerifyFailed).await;
    let msg = p.status.unwrap().message.unwrap();
    assert!(msg.contains("timed out after 2s"), "{msg}");

    let p = wait_provider_phase(&client, ns, "badpod", ProviderPhase::ErrVerifyFailed).await;
    let msg = p.status.unwrap().message.unwrap();
    assert!(
        msg.contains("rejected the verification pod") && msg.contains("restartPolicy"),
        "{msg}"
    );

    let p = wait_provider_phase(&client, ns, "nosecret", ProviderPhase::ErrSecretNotFound).await;
    assert!(
        p.status
            .unwrap()
            .message
            .unwrap()
            .contains("nosecret-creds")
    );

    for (name, reason) in [
        ("slow", "ErrVerifyFailed"),
        ("nosecret", "ErrSecretNotFound"),
    ] {
        eventually(&format!("{reason} event on {name}"), async || {
            events_about(&client, ns, name)
                .await
                .into_iter()
                .find(|e| e.reason.as_deref() == Some(reason))
        })
        .await;
    }
    // Failed verification frees its slot.
    eventually("verification slots freed", async || {
        reservations(&client, ns).await.is_empty().then_some(())
    })
    .await;
    // A Mask has nowhere to go.
    create_mask(&client, ns, "m", None).await;
    wait_mask_phase(&client, ns, "m", MaskPhase::ErrNoProviders).await;

    // The Secret appears: the provider (verification skipped) becomes usable and the Mask is assigned.
    create_secret(
        &client,
        ns,
        "nosecret-creds",
        &[("VPN_SERVICE_PROVIDER", "x")],
    )
    .await;
    wait_mask_phase(&client, ns, "m", MaskPhase::Active).await;
    assert_eq!(
        consumer(&client, ns, "m")
            .await
            .unwrap()
            .assignment()
            .unwrap()
            .name,
        "nosecret"
    );
}

#[tokio::test]
async fn reverification_waits_for_a_free_slot_and_never_exceeds_max_slots() {
    let Some((client, ns)) = setup(&["reverify"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    let p = provider("r", 1)
        .verify(VerifySpec {
            skip: None,
            timeout: Some("5m".into()),
            interval: Some("1s".into()),
            overrides: None,
        })
        .create(&client, ns)
        .await;
    let (violation, watch) = watch_over_assignment(&client, ns, [("r".to_string(), 1)].into());
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    eventually_checked("first verification pod", Some(&violation), async || {
        pods.get_opt("vpno-verify-r").await.unwrap()
    })
    .await;
    play_kubelet(&client, ns, "vpno-verify-r", json!({"phase": "Succeeded"})).await;
    let first = wait_provider_phase(&client, ns, "r", ProviderPhase::Ready)
        .await
        .status
        .unwrap()
        .last_verified
        .unwrap();
    create_mask(&client, ns, "user", None).await;
    eventually_checked("user Mask Active", Some(&violation), async || {
        (Api::<Mask>::namespaced(client.clone(), ns)
            .get("user")
            .await
            .unwrap()
            .phase()
            == MaskPhase::Active)
            .then_some(())
    })
    .await;
    // Interval due: the re-verification Mask waits, the provider stays usable.
    let vmasks = Api::<Mask>::namespaced(client.clone(), ns);
    eventually_checked(
        "re-verification Mask Waiting",
        Some(&violation),
        async || {
            vmasks
                .get_opt("vpno-verify-r")
                .await
                .unwrap()
                .filter(|m| m.phase() == MaskPhase::Waiting)
        },
    )
    .await;
    let papi = Api::<MaskProvider>::namespaced(client.clone(), ns);
    let prov = eventually_checked(
        "provider to report the wait for a slot",
        Some(&violation),
        async || {
            papi.get("r").await.unwrap().status.filter(|s| {
                s.message
                    .as_deref()
                    .is_some_and(|m| m.contains("waiting for a slot"))
            })
        },
    )
    .await;
    assert_eq!(
        prov.phase,
        Some(ProviderPhase::Active),
        "re-verification keeps a verified provider usable"
    );
    assert!(
        pods.get_opt("vpno-verify-r").await.unwrap().is_none(),
        "no verification pod without a slot"
    );
    delete(&vmasks, "user").await;
    eventually_checked("second verification pod", Some(&violation), async || {
        pods.get_opt("vpno-verify-r").await.unwrap()
    })
    .await;
    play_kubelet(&client, ns, "vpno-verify-r", json!({"phase": "Succeeded"})).await;
    eventually_checked("lastVerified to advance", Some(&violation), async || {
        papi.get("r")
            .await
            .unwrap()
            .status
            .and_then(|s| s.last_verified)
            .filter(|t| *t != first)
    })
    .await;
    assert!(violation.lock().unwrap().is_none());
    watch.abort();
    let _ = p;
}

#[tokio::test]
async fn a_failed_verification_stays_failed_across_a_restart_until_the_secret_changes() {
    let Some((client, ns)) = setup(&["verify-restart"]).await else {
        return;
    };
    let ns = &ns[0];
    let ctl = Running::start(&client, &[ns]);
    provider("f", 1)
        .verify(VerifySpec {
            skip: None,
            timeout: Some("1m".into()),
            interval: None,
            overrides: None,
        })
        .create(&client, ns)
        .await;
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    eventually("the verification pod", async || {
        pods.get_opt("vpno-verify-f").await.unwrap()
    })
    .await;
    play_kubelet(&client, ns, "vpno-verify-f", json!({"phase": "Failed"})).await;
    let failed = wait_provider_phase(&client, ns, "f", ProviderPhase::ErrVerifyFailed).await;
    let message = failed.status.as_ref().unwrap().message.clone();
    assert!(
        failed.status.as_ref().unwrap().verify_failure.is_some(),
        "the failure is remembered in status: {:?}",
        failed.status
    );
    let masks = Api::<Mask>::namespaced(client.clone(), ns);
    eventually("the verification Mask and Pod gone", async || {
        (masks.get_opt("vpno-verify-f").await.unwrap().is_none()
            && pods.get_opt("vpno-verify-f").await.unwrap().is_none())
        .then_some(())
    })
    .await;
    drop(ctl);

    // A new controller process: it reconciles the provider and leaves it failed.
    let metrics = Arc::new(vpno_controller::Metrics::default());
    let _ctl = Running::start_with(
        &client,
        ControllerConfig {
            metrics: metrics.clone(),
            ..ControllerConfig::for_namespaces([ns.as_str()])
        },
    );
    eventually(
        "the restarted controller to reconcile the provider",
        async || (metrics.provider.reconcile_count("ok") > 0).then_some(()),
    )
    .await;
    assert_eq!(metrics.provider.action_count("start_verification"), 0);
    assert!(masks.get_opt("vpno-verify-f").await.unwrap().is_none());
    let p = Api::<MaskProvider>::namespaced(client.clone(), ns)
        .get("f")
        .await
        .unwrap();
    assert_eq!(p.phase(), ProviderPhase::ErrVerifyFailed);
    assert_eq!(p.status.unwrap().message, message);

    // The user fixes the credentials: verification runs again.
    Api::<Secret>::namespaced(client.clone(), ns)
        .patch(
            "f-creds",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"OPENVPN_USER": "Zml4ZWQ="}})),
        )
        .await
        .unwrap();
    eventually("a new verification pod", async || {
        pods.get_opt("vpno-verify-f").await.unwrap()
    })
    .await;
    play_kubelet(&client, ns, "vpno-verify-f", json!({"phase": "Succeeded"})).await;
    let p = wait_provider_phase(&client, ns, "f", ProviderPhase::Ready).await;
    assert_eq!(p.status.unwrap().verify_failure, None);
}
