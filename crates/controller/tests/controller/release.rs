//! Release: a slot is freed only once the consumer and everything using its credentials are gone, and refilled at once.

use super::*;

#[tokio::test]
async fn waiting_mask_gets_the_slot_once_the_consumer_and_its_pods_are_gone() {
    let Some((client, ns)) = setup(&["release"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    provider("solo", 1).create(&client, ns).await;
    wait_provider_phase(&client, ns, "solo", ProviderPhase::Ready).await;
    create_mask(&client, ns, "first", None).await;
    wait_mask_phase(&client, ns, "first", MaskPhase::Active).await;
    create_mask(&client, ns, "second", None).await;
    let m = wait_mask_phase(&client, ns, "second", MaskPhase::Waiting).await;
    let msg = m.status.unwrap().message.unwrap();
    assert!(
        msg.contains(&format!("{ns}/solo (maxSlots 1)")),
        "Waiting message names the providers: {msg}"
    );

    // A Pod using the credentials, owned by the consumer, that takes a while to stop.
    let c1 = consumer(&client, ns, "first").await.unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "worker", "finalizers": ["test.vpn.beebs.dev/hold"],
            "ownerReferences": [{"apiVersion": "vpn.beebs.dev/v1", "kind": "MaskConsumer", "name": "first", "uid": c1.uid().unwrap()}]},
        "spec": {"containers": [{"name": "app", "image": "busybox",
            "envFrom": [{"secretRef": {"name": c1.assignment().unwrap().secret}}]}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();

    delete(&Api::<Mask>::namespaced(client.clone(), ns), "first").await;
    // The controller deletes the Pod; while it is stopping, the slot stays held.
    eventually(
        "the consumer's Pod to be deleted by the controller",
        async || {
            pods.get("worker")
                .await
                .unwrap()
                .metadata
                .deletion_timestamp
        },
    )
    .await;
    let c = consumer(&client, ns, "first")
        .await
        .expect("consumer held by its finalizer while a Pod remains");
    assert!(c.metadata.deletion_timestamp.is_some());
    assert_eq!(
        reservations(&client, ns).await.len(),
        1,
        "slot released while a Pod still used the credentials"
    );
    assert_eq!(
        Api::<Mask>::namespaced(client.clone(), ns)
            .get("second")
            .await
            .unwrap()
            .phase(),
        MaskPhase::Waiting
    );

    // The Pod stops: the slot is released and handed to the waiting Mask.
    pods.patch(
        "worker",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let freed_at = Instant::now();
    wait_mask_phase(&client, ns, "second", MaskPhase::Active).await;
    eprintln!(
        "waiting -> Active {:?} after the last Pod went away",
        freed_at.elapsed()
    );
    eventually("first consumer gone", async || {
        consumer(&client, ns, "first").await.is_none().then_some(())
    })
    .await;
    let c1_secret = Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(&c1.assignment().unwrap().secret)
        .await
        .unwrap();
    // The second Mask has its own copy; the first consumer's copy is gone.
    assert!(c1_secret.is_none_or(|s| {
        s.owner_references()
            .iter()
            .all(|o| Some(&o.uid) != c1.uid().as_ref())
    }));
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn slot_is_held_until_pods_of_workloads_owned_by_the_consumer_are_gone() {
    let Some((client, ns)) = setup(&["workloads"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    provider("solo", 1).create(&client, ns).await;
    wait_provider_phase(&client, ns, "solo", ProviderPhase::Ready).await;
    create_mask(&client, ns, "first", None).await;
    wait_mask_phase(&client, ns, "first", MaskPhase::Active).await;
    create_mask(&client, ns, "second", None).await;
    wait_mask_phase(&client, ns, "second", MaskPhase::Waiting).await;
    let c1 = consumer(&client, ns, "first").await.unwrap();
    let c1_uid = c1.uid().unwrap();
    let secret = c1.assignment().unwrap().secret.clone();
    let held = reservations(&client, ns).await;
    assert_eq!(held.len(), 1);
    let held_uid = held[0].uid().unwrap();
    assert_eq!(held[0].spec.uid, c1_uid);

    // A Deployment owned by the consumer, with the ReplicaSet and Pod a real
    // deployment controller would make (the test env runs only the GC).
    let template = json!({
        "metadata": {"labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": "busybox",
            "envFrom": [{"secretRef": {"name": secret}}]}]}
    });
    let deployments = Api::<Deployment>::namespaced(client.clone(), ns);
    let deployment: Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web", "ownerReferences": [{"apiVersion": "vpn.beebs.dev/v1",
            "kind": "MaskConsumer", "name": "first", "uid": c1_uid}]},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template}
    }))
    .unwrap();
    let deployment = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let replicasets = Api::<ReplicaSet>::namespaced(client.clone(), ns);
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": {"name": "web-5d8f", "ownerReferences": [{"apiVersion": "apps/v1",
            "kind": "Deployment", "name": "web", "uid": deployment.uid().unwrap(),
            "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "template": template}
    }))
    .unwrap();
    let rs = replicasets
        .create(&PostParams::default(), &rs)
        .await
        .unwrap();
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    // "web-5d8f-x2k" as the ReplicaSet controller makes it (blocking its
    // owner's deletion); "web-5d8f-old" without blockOwnerDeletion, so only
    // its use of the credentials can hold the slot once its owners are gone.
    for (name, block) in [("web-5d8f-x2k", true), ("web-5d8f-old", false)] {
        let mut pod = template.clone();
        pod["metadata"] = json!({"name": name, "labels": {"app": "web"},
            "finalizers": ["test.vpn.beebs.dev/hold"],
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d8f",
                "uid": rs.uid().unwrap(), "controller": true, "blockOwnerDeletion": block}]});
        let pod: Pod = serde_json::from_value(pod).unwrap();
        pods.create(&PostParams::default(), &pod).await.unwrap();
    }
    let release_pod = async |name: &str| {
        pods.patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    };
    // While a Pod using the credentials exists, the slot does not change hands.
    let assert_slot_held = async |why: &str| {
        let window = Instant::now() + Duration::from_secs(2);
        while Instant::now() < window {
            let now: Vec<_> = reservations(&client, ns)
                .await
                .into_iter()
                .map(|r| (r.uid().unwrap(), r.spec.uid))
                .collect();
            assert_eq!(
                now,
                [(held_uid.clone(), c1_uid.clone())],
                "slot released while {why}"
            );
            let second = Api::<Mask>::namespaced(client.clone(), ns)
                .get("second")
                .await
                .unwrap();
            assert_eq!(second.phase(), MaskPhase::Waiting, "while {why}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };

    delete(&Api::<Mask>::namespaced(client.clone(), ns), "first").await;
    // The controller deletes the Deployment in the foreground; the GC then
    // deletes the ReplicaSet and its Pods, which the test keeps stopping.
    for name in ["web-5d8f-x2k", "web-5d8f-old"] {
        eventually(&format!("Pod {name} to be deleted"), async || {
            pods.get(name).await.unwrap().metadata.deletion_timestamp
        })
        .await;
    }
    assert_slot_held("a Pod of the consumer's Deployment still used the credentials").await;
    let d = deployments
        .get_opt("web")
        .await
        .unwrap()
        .expect("the Deployment stays while its Pod is stopping (foreground deletion)");
    assert!(
        d.metadata.deletion_timestamp.is_some()
            && d.finalizers().iter().any(|f| f == "foregroundDeletion"),
        "the Deployment is deleted in the foreground: {:?}",
        d.metadata
    );
    let c = consumer(&client, ns, "first")
        .await
        .expect("consumer held by its finalizer while the Pods remain");
    let msg = c.status.and_then(|s| s.message).unwrap_or_default();
    assert!(
        msg.contains("Pod web-5d8f-") && msg.contains("Deployment web"),
        "the consumer says what holds the slot: {msg}"
    );

    // The blocking Pod stops: the GC removes the ReplicaSet and Deployment,
    // but the other Pod still uses the credentials.
    release_pod("web-5d8f-x2k").await;
    eventually("the Deployment and ReplicaSet to be gone", async || {
        (deployments.get_opt("web").await.unwrap().is_none()
            && replicasets.get_opt("web-5d8f").await.unwrap().is_none())
        .then_some(())
    })
    .await;
    assert_slot_held("a Pod no longer owned by anything still used the credentials").await;

    // The last Pod stops: the waiting Mask gets the slot.
    release_pod("web-5d8f-old").await;
    wait_mask_phase(&client, ns, "second", MaskPhase::Active).await;
    eventually("first consumer gone", async || {
        consumer(&client, ns, "first").await.is_none().then_some(())
    })
    .await;
    let r = reservations(&client, ns).await;
    assert_eq!(r.len(), 1);
    assert_ne!(r[0].spec.uid, c1_uid);
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn consumers_without_status_are_handled() {
    let Some((client, ns)) = setup(&["nostatus"]).await else {
        return;
    };
    let ns = &ns[0];
    // Consumers whose status is absent or partial exist before the controller starts.
    let capi = Api::<MaskConsumer>::namespaced(client.clone(), ns);
    let bare = MaskConsumer::new("bare", Default::default());
    capi.create(&PostParams::default(), &bare).await.unwrap();
    let partial = MaskConsumer::new("partial", Default::default());
    capi.create(&PostParams::default(), &partial).await.unwrap();
    capi.patch_status(
        "partial",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"message": "written by someone else"}})),
    )
    .await
    .unwrap();
    let ctl = Running::start(&client, &[ns]);
    provider("p", 3).create(&client, ns).await;
    for name in ["bare", "partial"] {
        eventually(&format!("consumer {name} assigned"), async || {
            capi.get(name).await.unwrap().assignment().map(|_| ())
        })
        .await;
    }
    create_mask(&client, ns, "after", None).await;
    wait_mask_phase(&client, ns, "after", MaskPhase::Active).await;
    assert!(!ctl.task.is_finished(), "controller must still run");
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn orphaned_reservations_are_reclaimed() {
    let Some((client, ns)) = setup(&["orphan"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    let p = provider("p", 4).create(&client, ns).await;
    wait_provider_phase(&client, ns, "p", ProviderPhase::Ready).await;
    create_mask(&client, ns, "real", None).await;
    wait_mask_phase(&client, ns, "real", MaskPhase::Active).await;
    let taken = consumer(&client, ns, "real")
        .await
        .unwrap()
        .assignment()
        .unwrap()
        .slot;
    let free: Vec<u32> = (0..4).filter(|s| *s != taken).collect();
    let rapi = Api::<MaskReservation>::namespaced(client.clone(), ns);
    let owner = json!([{"apiVersion": "vpn.beebs.dev/v1", "kind": "MaskProvider", "name": "p", "uid": p.uid().unwrap(), "controller": true}]);
    let ghost: MaskReservation = serde_json::from_value(
        json!({"apiVersion": "vpn.beebs.dev/v1", "kind": "MaskReservation",
        "metadata": {"name": format!("p-{}", free[0]), "ownerReferences": owner},
        "spec": {"name": "ghost", "namespace": ns, "uid": "00000000-0000-0000-0000-000000000000"}}),
    )
    .unwrap();
    let impostor: MaskReservation = serde_json::from_value(
        json!({"apiVersion": "vpn.beebs.dev/v1", "kind": "MaskReservation",
        "metadata": {"name": format!("p-{}", free[1]), "ownerReferences": owner},
        "spec": {"name": "real", "namespace": ns, "uid": "11111111-1111-1111-1111-111111111111"}}),
    )
    .unwrap();
    rapi.create(&PostParams::default(), &ghost).await.unwrap();
    rapi.create(&PostParams::default(), &impostor)
        .await
        .unwrap();
    eventually("both orphaned reservations reclaimed", async || {
        let names: Vec<String> = reservations(&client, ns)
            .await
            .iter()
            .map(|r| r.name_any())
            .collect();
        (names == vec![format!("p-{taken}")]).then_some(())
    })
    .await;
    assert_eq!(
        Api::<Mask>::namespaced(client.clone(), ns)
            .get("real")
            .await
            .unwrap()
            .phase(),
        MaskPhase::Active
    );
    assert_no_leaks(&client, ns).await;
}

#[tokio::test]
async fn freeing_many_slots_refills_them_all_promptly() {
    let Some(w) = World::new("refill").provider("p", 10).ready().await else {
        return;
    };
    let (client, ns) = (&w.client, &w.ns);
    let names: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
    w.masks(&names.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    eventually("10 Active and 10 Waiting", async || {
        (w.count(MaskPhase::Active).await == 10 && w.count(MaskPhase::Waiting).await == 10)
            .then_some(())
    })
    .await;
    let active = w.names_in(MaskPhase::Active).await;
    let mapi = w.mask_api();
    let start = Instant::now();
    for name in &active {
        delete(&mapi, name).await;
    }
    eventually("all 10 waiting Masks Active", async || {
        let ms = masks_in(client, ns).await;
        (ms.len() == 10 && ms.iter().all(|m| m.phase() == MaskPhase::Active)).then_some(())
    })
    .await;
    eprintln!("10 freed slots refilled in {:?}", start.elapsed());
    eventually("exactly 10 reservations", async || {
        (reservations(client, ns).await.len() == 10).then_some(())
    })
    .await;
    assert_no_leaks(client, ns).await;
}
