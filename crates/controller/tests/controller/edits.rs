//! Edits of live objects: a Mask's `providers`.

use super::*;

async fn set_mask_providers(client: &Client, ns: &str, name: &str, tags: &[&str]) {
    Api::<Mask>::namespaced(client.clone(), ns)
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"providers": tags}})),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn editing_a_masks_providers_moves_it_only_when_its_provider_no_longer_matches() {
    let Some(w) = World::new("edit-providers")
        .with(provider("a", 1).tags(&["x"]))
        .with(provider("b", 1).tags(&["y"]))
        .ready()
        .await
    else {
        return;
    };
    let (client, ns, metrics) = (w.client.clone(), &w.ns, w.metrics.clone());
    create_mask(&client, ns, "m1", Some(&["x"])).await;
    create_mask(&client, ns, "m2", Some(&["y"])).await;
    wait_mask_phase(&client, ns, "m1", MaskPhase::Active).await;
    wait_mask_phase(&client, ns, "m2", MaskPhase::Active).await;
    wait_provider_phase(&client, ns, "a", ProviderPhase::Active).await;
    wait_provider_phase(&client, ns, "b", ProviderPhase::Active).await;
    eventually("both reservations Active", async || {
        let rs = reservations(&client, ns).await;
        (rs.len() == 2
            && rs.iter().all(|r| {
                r.status.as_ref().and_then(|s| s.phase) == Some(vpno_api::ReservationPhase::Active)
            }))
        .then_some(())
    })
    .await;
    let before = consumer(&client, ns, "m1").await.unwrap();
    assert_eq!(before.assignment().unwrap().name, "a");

    // Still matching: the consumer keeps its slot.
    let reconciles = metrics.consumer.reconcile_count("ok");
    set_mask_providers(&client, ns, "m1", &["x", "z"]).await;
    eventually(
        "the consumer to see the new providers and be reconciled",
        async || {
            let c = consumer(&client, ns, "m1").await?;
            (c.spec.providers.as_deref() == Some(&["x".to_string(), "z".to_string()][..])
                && metrics.consumer.reconcile_count("ok") > reconciles)
                .then_some(())
        },
    )
    .await;
    let kept = consumer(&client, ns, "m1").await.unwrap();
    assert_eq!(
        kept.uid(),
        before.uid(),
        "a still-matching provider keeps the slot"
    );
    assert_eq!(kept.assignment(), before.assignment());
    assert_eq!(metrics.consumer.action_count("move"), 0);

    // No longer matching, and the new set is full: released, then Waiting.
    set_mask_providers(&client, ns, "m1", &["y"]).await;
    let m = wait_mask_phase(&client, ns, "m1", MaskPhase::Waiting).await;
    assert!(
        m.status
            .unwrap()
            .message
            .unwrap()
            .contains("/b (maxSlots 1)"),
        "waits for the new set"
    );
    eventually("the slot of a freed", async || {
        let rs = reservations(&client, ns).await;
        (rs.len() == 1 && rs[0].name_any() == "b-0").then_some(())
    })
    .await;
    let waiting = consumer(&client, ns, "m1").await.unwrap();
    assert_ne!(waiting.uid(), before.uid());
    assert_eq!(waiting.assignment(), None);

    // A slot of the new set frees: assigned there.
    delete(&Api::<Mask>::namespaced(client.clone(), ns), "m2").await;
    wait_mask_phase(&client, ns, "m1", MaskPhase::Active).await;
    let c = consumer(&client, ns, "m1").await.unwrap();
    assert_eq!(c.assignment().unwrap().name, "b");
    eventually("a ProvidersChanged event", async || {
        events_about(&client, ns, "m1")
            .await
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ProvidersChanged"))
    })
    .await;
    assert_no_leaks(&client, ns).await;
}
