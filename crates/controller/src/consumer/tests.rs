//! The consumer reconciler against the recording executor: decisions and
//! the act-then-look-again steps, no cluster.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use vpno_api::names::credentials_secret_name;
use vpno_api::{
    AssignedProvider, MaskConsumer, MaskConsumerSpec, MaskConsumerStatus, MaskPhase, MaskProvider,
    MaskProviderSpec, MaskReservation, MaskReservationSpec, ProviderPhase,
};

use super::observe::{Candidate, Credentials, Free, Held, Observed, State};
use super::release::{Holding, Owned};
use super::run;
use crate::context::provider_view;
use crate::effect::tests::Recording;
use crate::effect::{Effect, Kind, NewObject, Propagation, StatusWrite};
use crate::plan::{CONSUMER_FINALIZER, LEGACY_FINALIZER};

fn consumer(name: &str) -> MaskConsumer {
    let mut c = MaskConsumer::new(name, MaskConsumerSpec::default());
    c.metadata.namespace = Some("apps".into());
    c.metadata.uid = Some(format!("uid-{name}"));
    c.metadata.resource_version = Some("7".into());
    c.metadata.finalizers = Some(vec![CONSUMER_FINALIZER.into()]);
    c
}

fn provider(name: &str, max_slots: u32) -> MaskProvider {
    let mut p = MaskProvider::new(
        name,
        MaskProviderSpec {
            secret: format!("{name}-creds"),
            max_slots,
            ..Default::default()
        },
    );
    p.metadata.namespace = Some("vpn".into());
    p.metadata.uid = Some(format!("uid-{name}"));
    p.status = Some(vpno_api::MaskProviderStatus {
        phase: Some(ProviderPhase::Ready),
        ..Default::default()
    });
    p
}

fn slots(
    p: &MaskProvider,
    taken: &[u32],
) -> (Arc<MaskProvider>, crate::plan::assign::ProviderSlots) {
    let view = provider_view(p, taken.iter().copied().collect::<BTreeSet<_>>()).unwrap();
    (Arc::new(p.clone()), view)
}

fn source(p: &MaskProvider, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(p.spec.secret.clone()),
            namespace: Some("vpn".into()),
            ..Default::default()
        },
        data: Some([("WIREGUARD_PRIVATE_KEY".into(), ByteString(value.into()))].into()),
        ..Default::default()
    }
}

fn observed(c: MaskConsumer, state: State) -> Observed {
    Observed {
        namespace: "apps".into(),
        uid: c.uid().unwrap(),
        consumer: Arc::new(c),
        state,
    }
}

fn assignment(p: &MaskProvider, c: &MaskConsumer, slot: u32) -> AssignedProvider {
    AssignedProvider {
        name: p.name_any(),
        namespace: "vpn".into(),
        uid: p.uid().unwrap(),
        slot,
        reservation: format!("uid-{}-{slot}", p.name_any()),
        secret: credentials_secret_name(&c.name_any(), &p.uid().unwrap()),
    }
}

fn consumer_status_written(effects: &[Effect]) -> Option<(MaskConsumerStatus, Option<String>)> {
    effects.iter().find_map(|e| match e {
        Effect::PatchStatus {
            status:
                StatusWrite::Consumer {
                    desired,
                    resource_version,
                    ..
                },
            ..
        } => Some(((**desired).clone(), resource_version.clone())),
        _ => None,
    })
}

#[tokio::test]
async fn a_free_slot_is_reserved_then_recorded_on_the_fresh_version_with_the_copy() {
    let p = provider("nord", 2);
    let c = consumer("job");
    let ex = Recording::default();
    ex.consumers
        .lock()
        .unwrap()
        .insert(("apps".into(), "job".into()), c.clone());
    ex.put(&source(&p, "key"));
    let o = observed(
        c,
        State::Unassigned(Free {
            adoptable: None,
            providers: vec![slots(&p, &[0])],
        }),
    );
    let action = run(&o, &ex).await.unwrap();
    assert_eq!(action, Action::await_change());
    let effects = ex.taken();
    assert!(effects.iter().any(|e| matches!(e, Effect::Count("assign"))));
    let copy = effects
        .iter()
        .find_map(|e| match e {
            Effect::Create(NewObject::Credentials { copy, .. }) => Some(copy.clone()),
            _ => None,
        })
        .expect("a credentials copy");
    assert_eq!(copy.data, source(&p, "key").data);
    assert_eq!(copy.name_any(), credentials_secret_name("job", "uid-nord"));
    let (status, rv) = consumer_status_written(&effects).expect("the assignment recorded");
    assert_eq!(
        rv.as_deref(),
        Some("7"),
        "written only on the version just read"
    );
    let a = status.provider.expect("provider recorded");
    assert_eq!((a.name.as_str(), a.slot), ("nord", 1), "slot 0 is taken");
    assert_eq!(a.reservation, "uid-nord-1");
    assert_eq!(status.phase, Some(MaskPhase::Active));
}

#[tokio::test]
async fn conflicting_reservations_leave_the_consumer_waiting() {
    let p = provider("nord", 1);
    let c = consumer("job");
    let ex = Recording::default();
    ex.held.lock().unwrap().push("nord-0".into());
    let o = observed(
        c,
        State::Unassigned(Free {
            adoptable: None,
            providers: vec![slots(&p, &[])],
        }),
    );
    run(&o, &ex).await.unwrap();
    let effects = ex.taken();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Count("reserve_conflict")))
    );
    let (status, _) = consumer_status_written(&effects).expect("Waiting shown");
    assert_eq!(status.phase, Some(MaskPhase::Waiting));
    assert!(status.provider.is_none());
}

#[tokio::test]
async fn no_eligible_provider_shows_err_no_providers_with_an_event_once() {
    let mut p = provider("nord", 1);
    p.spec.tags = Some(vec!["eu".into()]);
    let mut c = consumer("job");
    c.spec.providers = Some(vec!["us".into()]);
    let free = || {
        State::Unassigned(Free {
            adoptable: None,
            providers: vec![slots(&p, &[])],
        })
    };
    let ex = Recording::default();
    run(&observed(c.clone(), free()), &ex).await.unwrap();
    let effects = ex.taken();
    let (status, _) = consumer_status_written(&effects).unwrap();
    assert_eq!(status.phase, Some(MaskPhase::ErrNoProviders));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Event(n) if n.reason == "NoProviders"))
    );
    // Already shown: no write, no second Event.
    c.status = Some(MaskConsumerStatus {
        last_updated: Some("earlier".into()),
        ..status
    });
    let ex = Recording::default();
    run(&observed(c, free()), &ex).await.unwrap();
    assert!(ex.taken().is_empty(), "{:?}", ex.taken());
}

#[tokio::test]
async fn a_slot_taken_meanwhile_by_another_replica_is_given_back() {
    let p = provider("nord", 2);
    let c = consumer("job");
    let mut assigned_elsewhere = c.clone();
    assigned_elsewhere.status = Some(MaskConsumerStatus {
        phase: Some(MaskPhase::Active),
        provider: Some(assignment(&p, &c, 0)),
        ..Default::default()
    });
    let ex = Recording::default();
    ex.consumers
        .lock()
        .unwrap()
        .insert(("apps".into(), "job".into()), assigned_elsewhere);
    let o = observed(
        c,
        State::Unassigned(Free {
            adoptable: None,
            providers: vec![slots(&p, &[0])],
        }),
    );
    run(&o, &ex).await.unwrap();
    let effects = ex.taken();
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Count("assigned_elsewhere")))
    );
    assert!(effects.iter().any(|e| matches!(e,
        Effect::DeleteIf { target, uid: Some(u), .. }
            if target.kind == Kind::MaskReservation && target.name == "nord-1" && u == "uid-nord-1")));
    assert!(consumer_status_written(&effects).is_none());
}

#[tokio::test]
async fn an_adoptable_reservation_is_recorded_without_taking_another() {
    let p = provider("nord", 2);
    let c = consumer("job");
    let mut r = MaskReservation::new(
        "nord-1",
        MaskReservationSpec {
            name: "job".into(),
            namespace: "apps".into(),
            uid: "uid-job".into(),
        },
    );
    r.metadata.namespace = Some("vpn".into());
    r.metadata.uid = Some("uid-r".into());
    let ex = Recording::default();
    ex.consumers
        .lock()
        .unwrap()
        .insert(("apps".into(), "job".into()), c.clone());
    ex.put(&source(&p, "key"));
    ex.held
        .lock()
        .unwrap()
        .extend(["nord-0".into(), "nord-1".into()]);
    let o = observed(
        c,
        State::Unassigned(Free {
            adoptable: Some(Candidate {
                provider: Arc::new(p.clone()),
                slot: 1,
                reservation: Arc::new(r),
            }),
            providers: vec![slots(&p, &[1])],
        }),
    );
    run(&o, &ex).await.unwrap();
    let effects = ex.taken();
    assert!(effects.iter().any(|e| matches!(e, Effect::Count("adopt"))));
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Count("reserve_conflict" | "assign")))
    );
    let (status, _) = consumer_status_written(&effects).unwrap();
    assert_eq!(status.provider.unwrap().reservation, "uid-r");
}

fn held(p: &MaskProvider, c: &MaskConsumer, credentials: Credentials) -> State {
    State::Assigned(Held {
        assignment: assignment(p, c, 0),
        lost: None,
        provider: Some(Arc::new(p.clone())),
        credentials,
    })
}

#[tokio::test]
async fn a_held_slot_keeps_the_copy_equal_to_the_provider_secret() {
    let p = provider("nord", 1);
    let c = consumer("job");
    let desired_status = MaskConsumerStatus {
        phase: Some(MaskPhase::Active),
        message: Some("assigned slot 0 of provider vpn/nord".into()),
        last_updated: Some("earlier".into()),
        provider: Some(assignment(&p, &c, 0)),
    };
    let mut c = c;
    c.status = Some(desired_status);
    let owner = c.controller_owner_ref(&()).unwrap();
    let name = credentials_secret_name("job", "uid-nord");
    let up_to_date = crate::plan::credentials::desired_copy(
        &source(&p, "new"),
        "apps",
        &name,
        owner.clone(),
        "uid-nord",
    );
    let stale = crate::plan::credentials::desired_copy(
        &source(&p, "old"),
        "apps",
        &name,
        owner,
        "uid-nord",
    );
    // In step: remembered at both versions, nothing else.
    let ex = Recording::default();
    let with_rv = |mut s: Secret, rv: &str| {
        s.metadata.resource_version = Some(rv.into());
        Box::new(s)
    };
    let read = |copy: &Secret| Credentials::Read {
        source: with_rv(source(&p, "new"), "11"),
        copy: Some(with_rv(copy.clone(), "12")),
    };
    run(&observed(c.clone(), held(&p, &c, read(&up_to_date))), &ex)
        .await
        .unwrap();
    assert!(
        matches!(ex.taken().as_slice(),
        [Effect::NoteCopyInStep { versions, .. }] if versions.source == "11" && versions.copy == "12"),
        "{:?}",
        ex.taken()
    );
    // Seen in step before and unchanged since: no reads, nothing to do.
    let ex = Recording::default();
    run(&observed(c.clone(), held(&p, &c, Credentials::InStep)), &ex)
        .await
        .unwrap();
    assert!(ex.taken().is_empty(), "{:?}", ex.taken());
    // The provider Secret changed: the copy follows.
    let ex = Recording::default();
    run(&observed(c.clone(), held(&p, &c, read(&stale))), &ex)
        .await
        .unwrap();
    assert!(matches!(ex.taken().as_slice(),
        [Effect::UpdateCredentials { copy, .. }] if copy.data == up_to_date.data));
    // The copy is gone: made again.
    let ex = Recording::default();
    let missing = Credentials::Read {
        source: Box::new(source(&p, "new")),
        copy: None,
    };
    run(&observed(c.clone(), held(&p, &c, missing)), &ex)
        .await
        .unwrap();
    assert!(matches!(
        ex.taken().as_slice(),
        [
            Effect::Create(NewObject::Credentials { .. }),
            Effect::Count("copy_credentials")
        ]
    ));
    // The provider Secret is gone: the last copy is kept, with a warning.
    let ex = Recording::default();
    run(
        &observed(c.clone(), held(&p, &c, Credentials::SourceMissing)),
        &ex,
    )
    .await
    .unwrap();
    assert!(matches!(ex.taken().as_slice(),
        [Effect::Event(n)] if n.warning && n.reason == "SecretNotFound"));
}

#[tokio::test]
async fn a_lost_slot_or_edited_providers_let_the_consumer_go() {
    let p = provider("nord", 1);
    let c = consumer("job");
    let lost = State::Assigned(Held {
        assignment: assignment(&p, &c, 0),
        lost: Some("provider vpn/nord no longer exists".into()),
        provider: None,
        credentials: Credentials::NotRead,
    });
    let ex = Recording::default();
    run(&observed(c.clone(), lost), &ex).await.unwrap();
    assert!(matches!(ex.taken().as_slice(),
        [Effect::Count("unassign"), Effect::Event(n), Effect::DeleteIf { target, .. }]
            if n.reason == "SlotLost" && target.kind == Kind::MaskConsumer));
    let mut moved = c.clone();
    moved.spec.providers = Some(vec!["us".into()]);
    let ex = Recording::default();
    run(
        &observed(moved.clone(), held(&p, &moved, Credentials::NotRead)),
        &ex,
    )
    .await
    .unwrap();
    assert!(matches!(ex.taken().as_slice(),
        [Effect::Count("move"), Effect::Event(n), Effect::DeleteIf { .. }]
            if n.reason == "ProvidersChanged" && !n.warning));
}

#[tokio::test]
async fn the_original_finalizer_is_adopted_first() {
    let p = provider("nord", 1);
    let mut c = consumer("job");
    c.metadata.finalizers = Some(vec![LEGACY_FINALIZER.into()]);
    let ex = Recording::default();
    run(
        &observed(c.clone(), held(&p, &c, Credentials::NotRead)),
        &ex,
    )
    .await
    .unwrap();
    assert!(matches!(&ex.taken()[..2],
        [Effect::Count("adopt_legacy"), Effect::SetFinalizers { new, .. }]
            if new == &[CONSUMER_FINALIZER.to_string()]));
}

fn deleting(c: &mut MaskConsumer) {
    c.metadata.deletion_timestamp = Some(Time(Default::default()));
}

fn holding(owned: Vec<Owned>, using: Vec<String>) -> Holding {
    Holding {
        awaits: true,
        owned,
        using,
        reservations: Vec::new(),
    }
}

#[tokio::test]
async fn release_waits_for_owned_pods_then_frees_the_slot_and_the_finalizer() {
    let p = provider("nord", 1);
    let mut c = consumer("job");
    c.status = Some(MaskConsumerStatus {
        phase: Some(MaskPhase::Active),
        provider: Some(assignment(&p, &c, 0)),
        ..Default::default()
    });
    deleting(&mut c);
    let pod = Owned {
        kind: Kind::Pod,
        name: "worker".into(),
        uid: Some("uid-pod".into()),
        deleting: false,
    };
    let ex = Recording::default();
    let action = run(
        &observed(
            c.clone(),
            State::Deleting(holding(vec![pod.clone()], vec![])),
        ),
        &ex,
    )
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    let effects = ex.taken();
    assert!(matches!(&effects[..2],
        [Effect::DeleteIf { target, propagation: Propagation::Foreground, .. }, Effect::Count("delete_pod")]
            if target.name == "worker"));
    let (status, _) = consumer_status_written(&effects).unwrap();
    assert_eq!(status.phase, Some(MaskPhase::Terminating));
    assert!(status.message.unwrap().contains("Pod worker"));
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::SetFinalizers { .. }))
    );
    // A Pod of someone else still uses the credentials: poll.
    let ex = Recording::default();
    let action = run(
        &observed(
            c.clone(),
            State::Deleting(holding(vec![], vec!["Pod other".into()])),
        ),
        &ex,
    )
    .await
    .unwrap();
    assert_eq!(action, Action::requeue(Duration::from_secs(1)));
    // Nothing holds it: credentials, reservation, then the finalizer.
    let ex = Recording::default();
    run(
        &observed(c.clone(), State::Deleting(holding(vec![], vec![]))),
        &ex,
    )
    .await
    .unwrap();
    let effects = ex.taken();
    let kinds: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::DeleteIf { target, .. } => Some(target.kind),
            _ => None,
        })
        .collect();
    assert_eq!(kinds, [Kind::Secret, Kind::MaskReservation]);
    assert!(matches!(effects.last(), Some(Effect::SetFinalizers { new, .. }) if new.is_empty()));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Count("release")))
    );
}

#[tokio::test]
async fn an_orphaned_consumer_is_deleted_at_once() {
    let c = consumer("job");
    let ex = Recording::default();
    run(&observed(c, State::Orphaned), &ex).await.unwrap();
    assert!(matches!(ex.taken().as_slice(),
        [Effect::Count("delete_orphan"), Effect::DeleteIf { uid: Some(u), .. }] if u == "uid-job"));
}
