//! Provider lifecycle: deletion, lowering maxSlots, Secret changes.

use super::*;

#[tokio::test]
async fn deleting_a_provider_unassigns_its_consumers_and_leaves_no_reservation() {
    let Some((client, ns)) = setup(&["provdel"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    provider("one", 2).create(&client, ns).await;
    wait_provider_phase(&client, ns, "one", ProviderPhase::Ready).await;
    for m in ["a", "b"] {
        create_mask(&client, ns, m, None).await;
        wait_mask_phase(&client, ns, m, MaskPhase::Active).await;
    }
    provider("two", 1).create(&client, ns).await;
    wait_provider_phase(&client, ns, "two", ProviderPhase::Ready).await;

    let papi = Api::<MaskProvider>::namespaced(client.clone(), ns);
    delete(&papi, "one").await;
    eventually("provider one gone", async || {
        papi.get_opt("one").await.unwrap().is_none().then_some(())
    })
    .await;
    // One Mask moves to the other provider, the other waits for it.
    eventually("one Mask reassigned to two and one Waiting", async || {
        let phases: Vec<MaskPhase> = masks_in(&client, ns)
            .await
            .iter()
            .map(|m| m.phase())
            .collect();
        (phases.iter().filter(|p| **p == MaskPhase::Active).count() == 1
            && phases.iter().filter(|p| **p == MaskPhase::Waiting).count() == 1)
            .then_some(())
    })
    .await;
    let rs = reservations(&client, ns).await;
    assert!(
        rs.iter().all(|r| r.name_any().starts_with("two-")),
        "reservations of a deleted provider left: {rs:?}"
    );

    delete(&papi, "two").await;
    for m in ["a", "b"] {
        let mask = wait_mask_phase(&client, ns, m, MaskPhase::ErrNoProviders).await;
        assert!(
            mask.status
                .unwrap()
                .message
                .unwrap()
                .contains("no eligible provider")
        );
    }
    eventually("no reservation left", async || {
        reservations(&client, ns).await.is_empty().then_some(())
    })
    .await;
    eventually("provider two gone", async || {
        papi.get_opt("two").await.unwrap().is_none().then_some(())
    })
    .await;
}

#[tokio::test]
async fn lowering_max_slots_evicts_the_highest_slots() {
    let Some((client, ns)) = setup(&["evict"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    provider("p", 3).create(&client, ns).await;
    wait_provider_phase(&client, ns, "p", ProviderPhase::Ready).await;
    for m in ["m0", "m1", "m2"] {
        create_mask(&client, ns, m, None).await;
        wait_mask_phase(&client, ns, m, MaskPhase::Active).await;
    }
    let mut by_slot = BTreeMap::new();
    for m in ["m0", "m1", "m2"] {
        let c = consumer(&client, ns, m).await.unwrap();
        by_slot.insert(c.assignment().unwrap().slot, (m, c.uid().unwrap()));
    }
    assert_eq!(by_slot.keys().copied().collect::<Vec<_>>(), vec![0, 1, 2]);
    let (keeper, keeper_uid) = by_slot[&0].clone();

    Api::<MaskProvider>::namespaced(client.clone(), ns)
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"maxSlots": 1}})),
        )
        .await
        .unwrap();
    eventually("only slot 0 held, the others Waiting", async || {
        let rs = reservations(&client, ns).await;
        let waiting = masks_in(&client, ns)
            .await
            .iter()
            .filter(|m| m.phase() == MaskPhase::Waiting)
            .count();
        (rs.len() == 1 && rs[0].name_any() == "p-0" && waiting == 2).then_some(())
    })
    .await;
    let c = consumer(&client, ns, keeper).await.unwrap();
    assert_eq!(
        c.uid().unwrap(),
        keeper_uid,
        "the consumer on the lowest slot is not evicted"
    );
    assert_eq!(c.phase(), MaskPhase::Active);
    eventually("an Evicted event", async || {
        events_about(&client, ns, "p")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Evicted"))
    })
    .await;
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn provider_secret_changes_reach_every_copy() {
    let Some((client, ns)) = setup(&["secret-prov", "secret-apps"]).await else {
        return;
    };
    let (vpn, apps) = (&ns[0], &ns[1]);
    let _ctl = Running::start(&client, &[vpn, apps]);
    let p = provider("p", 2).create(&client, vpn).await;
    wait_provider_phase(&client, vpn, "p", ProviderPhase::Ready).await;
    create_mask(&client, apps, "x", None).await;
    create_mask(&client, vpn, "y", None).await;
    wait_mask_phase(&client, apps, "x", MaskPhase::Active).await;
    wait_mask_phase(&client, vpn, "y", MaskPhase::Active).await;

    let new = data(&[
        ("VPN_SERVICE_PROVIDER", "p"),
        ("WIREGUARD_PRIVATE_KEY", "k2"),
    ]);
    let mut s = Api::<Secret>::namespaced(client.clone(), vpn)
        .get("p-creds")
        .await
        .unwrap();
    s.data = Some(new.clone());
    Api::<Secret>::namespaced(client.clone(), vpn)
        .replace("p-creds", &PostParams::default(), &s)
        .await
        .unwrap();
    let uid = p.uid().unwrap();
    for (ns, m) in [(apps, "x"), (vpn, "y")] {
        let api = Api::<Secret>::namespaced(client.clone(), ns);
        let name = credentials_secret_name(m, &uid);
        eventually(
            &format!("copy {ns}/{name} to equal the new data (key removed, key added)"),
            async || {
                api.get(&name)
                    .await
                    .unwrap()
                    .data
                    .filter(|d| *d == new)
                    .map(|_| ())
            },
        )
        .await;
    }
}
