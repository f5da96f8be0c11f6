//! Taking over a cluster the original vpn-operator managed: its controllers
//! stopped, ours started on the objects exactly as the original leaves them
//! (its finalizer on all four kinds, the owner label on the credentials copy,
//! `provider: null` on waiting consumers).

use k8s_openapi::api::core::v1::Namespace;

use super::*;

const LEGACY: &str = "vpn.beebs.dev/finalizer";

/// What the original left in one namespace: provider `p` (1 slot) held by
/// Mask `first`, Mask `second` waiting for it.
struct Original {
    provider_uid: String,
    first_consumer_uid: String,
}

async fn patch_status<K>(api: &Api<K>, name: &str, status: serde_json::Value)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .unwrap_or_else(|e| panic!("status of {name}: {e}"));
}

fn owner(kind: &str, name: &str, uid: &str) -> serde_json::Value {
    json!([{"apiVersion": "vpn.beebs.dev/v1", "kind": kind, "name": name, "uid": uid,
        "controller": true, "blockOwnerDeletion": true}])
}

async fn create<K>(api: &Api<K>, obj: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(obj).expect("well-formed object");
    api.create(&PostParams::default(), &obj)
        .await
        .expect("create original object")
}

/// Builds the objects the original vpn-operator leaves behind; no controller runs.
async fn leave_original_objects(client: &Client, ns: &str) -> Original {
    let now = jiff::Timestamp::now().to_string();
    create_secret(client, ns, "p-creds", &[("VPN_SERVICE_PROVIDER", "p")]).await;
    let papi = Api::<MaskProvider>::namespaced(client.clone(), ns);
    let p: MaskProvider = create(
        &papi,
        json!({"apiVersion": "vpn.beebs.dev/v1", "kind": "MaskProvider",
            "metadata": {"name": "p", "finalizers": [LEGACY]},
            "spec": {"secret": "p-creds", "maxSlots": 1, "verify": {"skip": true}}}),
    )
    .await;
    let puid = p.uid().unwrap();
    patch_status(
        &papi,
        "p",
        json!({"phase": "Active", "message": "Provider is in use.",
        "lastUpdated": now, "lastVerified": now, "activeSlots": 1}),
    )
    .await;

    let mapi = Api::<Mask>::namespaced(client.clone(), ns);
    let capi = Api::<MaskConsumer>::namespaced(client.clone(), ns);
    let rapi = Api::<MaskReservation>::namespaced(client.clone(), ns);
    let mut consumers = Vec::new();
    for name in ["first", "second"] {
        let m: Mask = create(
            &mapi,
            json!({"apiVersion": "vpn.beebs.dev/v1", "kind": "Mask",
                "metadata": {"name": name, "finalizers": [LEGACY]}, "spec": {}}),
        )
        .await;
        let c: MaskConsumer = create(
            &capi,
            json!({"apiVersion": "vpn.beebs.dev/v1", "kind": "MaskConsumer",
                "metadata": {"name": name, "finalizers": [LEGACY],
                    "ownerReferences": owner("Mask", name, &m.uid().unwrap())},
                "spec": {}}),
        )
        .await;
        consumers.push(c);
    }
    let first_uid = consumers[0].uid().unwrap();
    let r: MaskReservation = create(
        &rapi,
        json!({"apiVersion": "vpn.beebs.dev/v1", "kind": "MaskReservation",
            "metadata": {"name": "p-0", "finalizers": [LEGACY],
                "ownerReferences": owner("MaskProvider", "p", &puid)},
            "spec": {"name": "first", "namespace": ns, "uid": first_uid}}),
    )
    .await;
    patch_status(
        &rapi,
        "p-0",
        json!({"phase": "Active", "message": "in use", "lastUpdated": now}),
    )
    .await;
    let secret = credentials_secret_name("first", &puid);
    let copy: Secret = serde_json::from_value(json!({
        "metadata": {"name": secret, "labels": {"vpn.beebs.dev/owner": puid},
            "ownerReferences": owner("MaskConsumer", "first", &first_uid)},
        "data": {"VPN_SERVICE_PROVIDER": "cA=="}}))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &copy)
        .await
        .unwrap();
    patch_status(
        &capi,
        "first",
        json!({"phase": "Active", "message": "ok", "lastUpdated": now,
        "provider": {"name": "p", "namespace": ns, "uid": puid, "slot": 0,
            "reservation": r.uid().unwrap(), "secret": secret}}),
    )
    .await;
    patch_status(
        &capi,
        "second",
        json!({"phase": "Waiting", "lastUpdated": now,
        "message": "Waiting on a provider to become available.", "provider": null}),
    )
    .await;
    patch_status(
        &mapi,
        "first",
        json!({"phase": "Active", "message": "ok", "lastUpdated": now}),
    )
    .await;
    patch_status(
        &mapi,
        "second",
        json!({"phase": "Waiting", "message": "waiting", "lastUpdated": now}),
    )
    .await;
    Original {
        provider_uid: puid,
        first_consumer_uid: first_uid,
    }
}

async fn wait_gone<K>(api: &Api<K>, what: &str, name: &str)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    eventually(&format!("{what} {name} to be gone"), async || {
        api.get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

async fn delete_provider_and_namespace(client: &Client, ns: &str) {
    delete(&Api::<MaskProvider>::namespaced(client.clone(), ns), "p").await;
    delete(&Api::<Namespace>::all(client.clone()), ns).await;
}

async fn wait_provider_and_namespace_gone(client: &Client, ns: &str) {
    wait_gone(
        &Api::<MaskProvider>::namespaced(client.clone(), ns),
        "provider",
        "p",
    )
    .await;
    wait_gone(&Api::<Namespace>::all(client.clone()), "namespace", ns).await;
}

#[tokio::test]
async fn a_mask_the_original_left_frees_its_slot_for_the_waiting_mask() {
    let Some((client, ns)) = setup(&["takeover-mask"]).await else {
        return;
    };
    let ns = &ns[0];
    let original = leave_original_objects(&client, ns).await;
    let mapi = Api::<Mask>::namespaced(client.clone(), ns);
    // Deleted while the original is stopped: hangs on its finalizer.
    delete(&mapi, "first").await;
    assert!(
        mapi.get("first")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );

    let started = Instant::now();
    let _ctl = Running::start(&client, &[ns]);
    wait_mask_phase(&client, ns, "second", MaskPhase::Active).await;
    eprintln!(
        "waiting Mask Active {:?} after the controller started",
        started.elapsed()
    );
    wait_gone(&mapi, "Mask", "first").await;
    wait_gone(
        &Api::<MaskConsumer>::namespaced(client.clone(), ns),
        "consumer",
        "first",
    )
    .await;

    let c = consumer(&client, ns, "second").await.unwrap();
    let a = c.assignment().expect("second holds the slot");
    assert_eq!((a.name.as_str(), a.slot), ("p", 0));
    let rs = reservations(&client, ns).await;
    assert_eq!(rs.len(), 1);
    assert_ne!(rs[0].spec.uid, original.first_consumer_uid);
    assert!(
        rs[0].finalizers().iter().all(|f| f != LEGACY),
        "{:?}",
        rs[0].finalizers()
    );
    let copy = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&a.secret)
        .await
        .unwrap();
    assert_eq!(
        copy.labels().get("vpn.beebs.dev/owner"),
        Some(&original.provider_uid),
        "the credentials copy carries the original's owner label"
    );
    assert!(
        c.finalizers().iter().all(|f| f != LEGACY),
        "{:?}",
        c.finalizers()
    );
    eventually(
        "the original's finalizer traded for ours on every live object",
        async || {
            let m = mapi.get("second").await.unwrap();
            let p = Api::<MaskProvider>::namespaced(client.clone(), ns)
                .get("p")
                .await
                .unwrap();
            let left: Vec<String> = [("Mask", m.finalizers()), ("MaskProvider", p.finalizers())]
                .iter()
                .filter(|(_, f)| f.iter().any(|f| f == LEGACY))
                .map(|(k, _)| k.to_string())
                .collect();
            eprintln!("still with the original's finalizer: {left:?}");
            left.is_empty().then_some(())
        },
    )
    .await;
    assert_no_leaks(&client, ns).await;

    delete_provider_and_namespace(&client, ns).await;
    wait_provider_and_namespace_gone(&client, ns).await;
}

#[tokio::test]
async fn a_provider_and_namespace_the_original_left_deleting_both_finish() {
    let Some((client, ns)) = setup(&["takeover-ns"]).await else {
        return;
    };
    let ns = &ns[0];
    leave_original_objects(&client, ns).await;
    // Deleted while the original is stopped: everything hangs on its finalizer.
    delete_provider_and_namespace(&client, ns).await;
    let p = Api::<MaskProvider>::namespaced(client.clone(), ns)
        .get("p")
        .await
        .unwrap();
    assert!(p.metadata.deletion_timestamp.is_some());

    let _ctl = Running::start(&client, &[ns]);
    wait_provider_and_namespace_gone(&client, ns).await;
}

#[tokio::test]
async fn skipped_verification_records_last_verified() {
    let Some((client, ns)) = setup(&["takeover-skip"]).await else {
        return;
    };
    let ns = &ns[0];
    let _ctl = Running::start(&client, &[ns]);
    provider("p", 1).create(&client, ns).await;
    let p = wait_provider_phase(&client, ns, "p", ProviderPhase::Ready).await;
    let status = p.status.unwrap();
    let last = status.last_verified.expect("lastVerified set on skip");
    assert!(last.parse::<jiff::Timestamp>().is_ok(), "{last}");
}
