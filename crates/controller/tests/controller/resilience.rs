//! Several controllers, crashes and restarts: never over-assign, never leak.

use super::*;

#[tokio::test]
async fn two_controllers_never_over_assign_under_concurrent_churn() {
    let Some((client, ns)) = setup(&["race-vpn", "race-apps"]).await else {
        return;
    };
    let (vpn, apps) = (&ns[0], &ns[1]);
    let _a = Running::start(&client, &[vpn, apps]);
    let _b = Running::start(&client, &[vpn, apps]);
    provider("p3", 3).create(&client, vpn).await;
    provider("p4", 4).create(&client, vpn).await;
    wait_provider_phase(&client, vpn, "p3", ProviderPhase::Ready).await;
    wait_provider_phase(&client, vpn, "p4", ProviderPhase::Ready).await;
    let (violation, watch) = watch_over_assignment(
        &client,
        vpn,
        [("p3".to_string(), 3), ("p4".to_string(), 4)].into(),
    );

    // 24 Masks created concurrently; every third one deleted again while the rest are still coming.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let client = client.clone();
        let apps = apps.clone();
        tasks.push(tokio::spawn(async move {
            create_mask(&client, &apps, &format!("m{i}"), None).await;
            if i % 3 == 0 {
                tokio::task::yield_now().await;
                delete(
                    &Api::<Mask>::namespaced(client.clone(), &apps),
                    &format!("m{i}"),
                )
                .await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually_checked("7 Active and 9 Waiting", Some(&violation), async || {
        let ms = masks_in(&client, apps).await;
        let active = ms.iter().filter(|m| m.phase() == MaskPhase::Active).count();
        let waiting = ms
            .iter()
            .filter(|m| m.phase() == MaskPhase::Waiting)
            .count();
        (ms.len() == 16
            && active == 7
            && waiting == 9
            && reservations(&client, vpn).await.len() == 7)
            .then_some(())
    })
    .await;
    // Delete the Active ones concurrently: the waiting ones take over.
    let active: Vec<String> = masks_in(&client, apps)
        .await
        .into_iter()
        .filter(|m| m.phase() == MaskPhase::Active)
        .map(|m| m.name_any())
        .collect();
    let mut tasks = Vec::new();
    for name in active {
        let api = Api::<Mask>::namespaced(client.clone(), apps);
        tasks.push(tokio::spawn(async move { delete(&api, &name).await }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    eventually_checked(
        "the 9 remaining: 7 Active, 2 Waiting",
        Some(&violation),
        async || {
            let ms = masks_in(&client, apps).await;
            let active = ms.iter().filter(|m| m.phase() == MaskPhase::Active).count();
            (ms.len() == 9 && active == 7 && reservations(&client, vpn).await.len() == 7)
                .then_some(())
        },
    )
    .await;
    assert!(
        violation.lock().unwrap().is_none(),
        "{:?}",
        violation.lock().unwrap()
    );
    watch.abort();
    assert_no_leaks(&client, vpn).await;
}

#[tokio::test]
async fn killed_controller_restarts_and_converges_without_leaking_slots() {
    let Some((client, ns)) = setup(&["crash"]).await else {
        return;
    };
    let ns = &ns[0];
    let ctl = Running::start(&client, &[ns]);
    provider("p", 6).create(&client, ns).await;
    wait_provider_phase(&client, ns, "p", ProviderPhase::Ready).await;
    for i in 0..10 {
        create_mask(&client, ns, &format!("m{i}"), None).await;
    }
    // Kill it mid-run, as soon as some (not necessarily all) Masks are assigned.
    eventually("some Masks Active", async || {
        (masks_in(&client, ns)
            .await
            .iter()
            .any(|m| m.phase() == MaskPhase::Active))
        .then_some(())
    })
    .await;
    ctl.kill();
    // Changes while no controller runs.
    let mapi = Api::<Mask>::namespaced(client.clone(), ns);
    for i in 0..3 {
        delete(&mapi, &format!("m{i}")).await;
    }
    for i in 10..13 {
        create_mask(&client, ns, &format!("m{i}"), None).await;
    }
    let _ctl = Running::start(&client, &[ns]);
    eventually(
        "10 Masks: 6 Active, 4 Waiting, 6 reservations",
        async || {
            let ms = masks_in(&client, ns).await;
            let active = ms.iter().filter(|m| m.phase() == MaskPhase::Active).count();
            let waiting = ms
                .iter()
                .filter(|m| m.phase() == MaskPhase::Waiting)
                .count();
            (ms.len() == 10
                && active == 6
                && waiting == 4
                && reservations(&client, ns).await.len() == 6)
                .then_some(())
        },
    )
    .await;
    eventually("deleted Masks' consumers gone", async || {
        let cs = Api::<MaskConsumer>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .unwrap()
            .items;
        (cs.len() == 10).then_some(())
    })
    .await;
    assert_no_leaks(&client, ns).await;
}
