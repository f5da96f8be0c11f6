//! Assignment: slots, credentials copies, tags, namespaces, preference.

use super::*;

#[tokio::test]
async fn assigns_a_slot_and_copies_credentials_exactly() {
    let Some((client, ns)) = setup(&["assign"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    let p = provider("nord", 2).create(&client, ns).await;
    wait_provider_phase(&client, ns, "nord", ProviderPhase::Ready).await;
    let mask = create_mask(&client, ns, "job", None).await;
    wait_mask_phase(&client, ns, "job", MaskPhase::Active).await;

    let c = consumer(&client, ns, "job").await.expect("consumer exists");
    let owner = c
        .owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .expect("controller owner");
    assert_eq!(
        (owner.kind.as_str(), Some(&owner.uid)),
        ("Mask", mask.uid().as_ref())
    );
    assert_eq!(c.phase(), MaskPhase::Active);
    let a = c.assignment().expect("assignment").clone();
    assert_eq!(
        (a.name.as_str(), a.namespace.as_str()),
        ("nord", ns.as_str())
    );
    assert_eq!(Some(&a.uid), p.uid().as_ref());
    assert!(a.slot < 2);

    let rs = reservations(&client, ns).await;
    assert_eq!(rs.len(), 1);
    let r = &rs[0];
    assert_eq!(r.name_any(), format!("nord-{}", a.slot));
    assert_eq!(
        (r.spec.name.as_str(), r.spec.namespace.as_str()),
        ("job", ns.as_str())
    );
    assert_eq!(Some(&r.spec.uid), c.uid().as_ref());
    assert_eq!(r.uid().as_ref(), Some(&a.reservation));
    assert_eq!(r.owner_references()[0].uid, p.uid().unwrap());

    let secret_name = credentials_secret_name("job", &p.uid().unwrap());
    assert_eq!(a.secret, secret_name);
    let copy = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&secret_name)
        .await
        .unwrap();
    let source = Api::<Secret>::namespaced(client.clone(), ns)
        .get("nord-creds")
        .await
        .unwrap();
    assert_eq!(copy.data, source.data);
    assert_eq!(copy.owner_references()[0].uid, c.uid().unwrap());

    let api = Api::<MaskReservation>::namespaced(client.clone(), ns);
    eventually("reservation Active", async || {
        api.get(&r.name_any())
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase)
            .filter(|p| *p == vpno_api::ReservationPhase::Active)
    })
    .await;
    let p = wait_provider_phase(&client, ns, "nord", ProviderPhase::Active).await;
    assert_eq!(p.status.unwrap().active_slots, Some(1));
    let m = Api::<Mask>::namespaced(client.clone(), ns)
        .get("job")
        .await
        .unwrap();
    assert!(m.status.unwrap().last_updated.is_some());
}

#[tokio::test]
async fn cross_namespace_masks_tags_and_allow_lists() {
    let Some((client, ns)) = setup(&["xns-vpn", "xns-apps", "xns-other"]).await else {
        return;
    };
    let (vpn, apps, other) = (&ns[0], &ns[1], &ns[2]);
    let _ctl = Running::start(&client, &[vpn, apps, other]);
    provider("se", 3)
        .tags(&["sweden", "eu"])
        .namespaces(&[apps])
        .create(&client, vpn)
        .await;
    wait_provider_phase(&client, vpn, "se", ProviderPhase::Ready).await;

    create_mask(&client, apps, "a", Some(&["us", "eu"])).await;
    create_mask(&client, apps, "untagged", None).await;
    create_mask(&client, apps, "wrong-tag", Some(&["us"])).await;
    create_mask(&client, other, "not-allowed", None).await;

    wait_mask_phase(&client, apps, "a", MaskPhase::Active).await;
    wait_mask_phase(&client, apps, "untagged", MaskPhase::Active).await;
    let c = consumer(&client, apps, "a").await.unwrap();
    let a = c.assignment().unwrap();
    assert_eq!(a.namespace, *vpn);
    let secret = Api::<Secret>::namespaced(client.clone(), apps)
        .get(&a.secret)
        .await
        .expect("credentials copied into the Mask's namespace");
    assert_eq!(
        secret.data,
        Some(data(&[
            ("VPN_SERVICE_PROVIDER", "se"),
            ("OPENVPN_USER", "user")
        ]))
    );

    let m = wait_mask_phase(&client, apps, "wrong-tag", MaskPhase::ErrNoProviders).await;
    let msg = m.status.unwrap().message.unwrap();
    assert!(
        msg.contains(&format!("{vpn}/se (no matching tag)")),
        "{msg}"
    );
    let m = wait_mask_phase(&client, other, "not-allowed", MaskPhase::ErrNoProviders).await;
    let msg = m.status.unwrap().message.unwrap();
    assert!(msg.contains("namespace not allowed"), "{msg}");
    eventually("a NoProviders event on the Mask", async || {
        events_about(&client, other, "not-allowed")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("NoProviders"))
    })
    .await;
}

#[tokio::test]
async fn prefers_the_provider_with_most_free_slots() {
    let Some((client, ns)) = setup(&["prefer"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    provider("small", 1).create(&client, ns).await;
    provider("big", 4).create(&client, ns).await;
    wait_provider_phase(&client, ns, "small", ProviderPhase::Ready).await;
    wait_provider_phase(&client, ns, "big", ProviderPhase::Ready).await;
    for name in ["m1", "m2"] {
        create_mask(&client, ns, name, None).await;
        wait_mask_phase(&client, ns, name, MaskPhase::Active).await;
        let c = consumer(&client, ns, name).await.unwrap();
        assert_eq!(
            c.assignment().unwrap().name,
            "big",
            "{name} should go to the provider with more free slots"
        );
    }
}
