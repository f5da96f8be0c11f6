//! MaskConsumer controller: takes a slot for the consumer, copies the
//! credentials, and releases the slot only once the consumer and its Pods
//! are gone.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Arc;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::{ByteString, NamespaceResourceScope};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use vpno_api::names::{credentials_secret_name, reservation_name, slot_of_reservation};
use vpno_api::{
    AssignedProvider, MaskConsumer, MaskConsumerStatus, MaskPhase, MaskProvider, MaskReservation,
    MaskReservationSpec,
};

use crate::context::{Ctx, controller_ref, ns_of, provider_view, uid_of};
use crate::effect::{Effect, EventNote, Executor, Kind, regarding, target_of};
use crate::error::{ControllerError, is_status};
use crate::plan::assign::{AssignmentPlan, SlotRequest, admits, plan_assignment};
use crate::plan::release::{holding_message, pod_holds_secret};
use crate::plan::{CONSUMER_FINALIZER, OWNER_LABEL, PIN_ANNOTATION, finalizers};

const KIND: &str = "MaskConsumer";

/// Reconciles one MaskConsumer.
pub(crate) async fn reconcile(
    consumer: Arc<MaskConsumer>,
    ctx: Arc<Ctx>,
) -> Result<Action, ControllerError> {
    let ns = ns_of(consumer.as_ref(), KIND)?;
    let api: Api<MaskConsumer> = Api::namespaced(ctx.client.clone(), &ns);
    if consumer.meta().deletion_timestamp.is_some() {
        return release(&consumer, &ns, &api, &ctx).await;
    }
    if owner_mask_gone(&consumer, &ns, &ctx).await? {
        // Do not wait for the garbage collector: release the slot now.
        ctx.metrics().action("delete_orphan");
        ctx.delete_if(&api, KIND, &consumer.name_any(), consumer.uid().as_deref())
            .await?;
        return Ok(Action::await_change());
    }
    ctx.adopt_finalizers(&api, KIND, consumer.as_ref(), Some(CONSUMER_FINALIZER))
        .await?;
    match consumer.assignment() {
        Some(a) => keep_assignment(&consumer, &ns, a, &api, &ctx).await,
        None => assign(&consumer, &ns, &api, &ctx).await,
    }
}

/// Whether the consumer's controlling Mask has been deleted (checked against
/// the API server, never on the cache alone).
async fn owner_mask_gone(
    consumer: &MaskConsumer,
    ns: &str,
    ctx: &Ctx,
) -> Result<bool, ControllerError> {
    let Some(owner) = consumer
        .owner_references()
        .iter()
        .find(|o| o.kind == "Mask" && o.controller == Some(true))
    else {
        return Ok(false);
    };
    let cached = ctx
        .masks
        .get(&kube::runtime::reflector::ObjectRef::new(&owner.name).within(ns));
    if cached.is_some_and(|m| {
        m.uid().as_deref() == Some(owner.uid.as_str()) && m.meta().deletion_timestamp.is_none()
    }) {
        return Ok(false);
    }
    let api: Api<vpno_api::Mask> = Api::namespaced(ctx.client.clone(), ns);
    let fresh = ctx.get_opt(&api, "Mask", &owner.name).await?;
    Ok(!fresh.is_some_and(|m| {
        m.uid().as_deref() == Some(owner.uid.as_str()) && m.meta().deletion_timestamp.is_none()
    }))
}

/// Why a held assignment is no longer valid.
enum Lost {
    Provider(String),
    Reservation(String),
}

async fn validate(
    consumer: &MaskConsumer,
    a: &AssignedProvider,
    ctx: &Ctx,
) -> Result<Option<Lost>, ControllerError> {
    let uid = uid_of(consumer, KIND)?;
    let res_name = reservation_name(&a.name, a.slot);
    let store_ok = ctx
        .provider(&a.namespace, &a.name)
        .is_some_and(|p| p.uid().as_deref() == Some(a.uid.as_str()))
        && ctx
            .reservations
            .get(&kube::runtime::reflector::ObjectRef::new(&res_name).within(&a.namespace))
            .is_some_and(|r| {
                r.uid().as_deref() == Some(a.reservation.as_str()) && r.spec.uid == uid
            });
    if store_ok {
        return Ok(None);
    }
    // The store may lag behind our own writes: confirm with the API server before acting.
    let papi: Api<MaskProvider> = Api::namespaced(ctx.client.clone(), &a.namespace);
    match ctx.get_opt(&papi, "MaskProvider", &a.name).await? {
        Some(p) if p.uid().as_deref() == Some(a.uid.as_str()) => {}
        _ => {
            return Ok(Some(Lost::Provider(format!(
                "provider {}/{} no longer exists",
                a.namespace, a.name
            ))));
        }
    }
    let rapi: Api<MaskReservation> = Api::namespaced(ctx.client.clone(), &a.namespace);
    match ctx.get_opt(&rapi, "MaskReservation", &res_name).await? {
        Some(r) if r.uid().as_deref() == Some(a.reservation.as_str()) && r.spec.uid == uid => {
            Ok(None)
        }
        _ => Ok(Some(Lost::Reservation(format!(
            "reservation {}/{res_name} of slot {} was removed",
            a.namespace, a.slot
        )))),
    }
}

async fn keep_assignment(
    consumer: &Arc<MaskConsumer>,
    ns: &str,
    a: &AssignedProvider,
    api: &Api<MaskConsumer>,
    ctx: &Ctx,
) -> Result<Action, ControllerError> {
    if let Some(lost) = validate(consumer, a, ctx).await? {
        let why = match lost {
            Lost::Provider(m) | Lost::Reservation(m) => m,
        };
        // The credentials may still be in use: the only safe way to free them
        // is to delete the consumer (and with it its Pods); the Mask gets a new one.
        let note = format!("{why}; deleting this consumer so its Mask is reassigned");
        ctx.apply_all(let_go(consumer, "unassign", true, "SlotLost", note))
            .await?;
        return Ok(Action::await_change());
    }
    let Some(provider) = ctx.provider(&a.namespace, &a.name) else {
        return Ok(Action::requeue(std::time::Duration::from_secs(1)));
    };
    if let Some(why) = no_longer_admitted(consumer, ns, &provider) {
        // Its Mask's `providers` were edited: release (through deleting this
        // consumer, as for a lost slot) and let the Mask's new consumer be
        // assigned from the new set.
        let note =
            format!("{why}; deleting this consumer so its Mask is assigned from the new set");
        ctx.apply_all(let_go(consumer, "move", false, "ProvidersChanged", note))
            .await?;
        return Ok(Action::await_change());
    }
    // Keep the credentials copy equal to the provider Secret.
    let sapi: Api<Secret> = Api::namespaced(ctx.client.clone(), &a.namespace);
    let Some(source) = ctx.get_opt(&sapi, "Secret", &provider.spec.secret).await? else {
        ctx.event(
            consumer.as_ref(),
            EventType::Warning,
            "SecretNotFound",
            "CopyCredentials",
            format!(
                "provider Secret {}/{} not found; keeping the last copy",
                a.namespace, provider.spec.secret
            ),
        )
        .await;
        return Ok(Action::await_change());
    };
    ensure_credentials(consumer, ns, &a.secret, &a.uid, &source, ctx, false).await?;
    let desired = MaskConsumerStatus {
        phase: Some(MaskPhase::Active),
        message: Some(assigned_message(a)),
        last_updated: None,
        provider: Some(a.clone()),
    };
    ctx.write_status(
        api,
        KIND,
        &consumer.name_any(),
        consumer.status.as_ref(),
        desired,
        None,
    )
    .await?;
    Ok(Action::await_change())
}

/// Gives up a consumer's slot the only safe way: deleting the consumer
/// (its release waits for its Pods); its Mask gets a new consumer.
fn let_go(
    consumer: &MaskConsumer,
    action: &'static str,
    warning: bool,
    reason: &str,
    note: String,
) -> Vec<Effect> {
    vec![
        Effect::Count(action),
        Effect::Event(EventNote {
            regarding: regarding(consumer),
            warning,
            reason: reason.into(),
            action: "Unassign".into(),
            note,
        }),
        Effect::DeleteIf {
            target: target_of(Kind::MaskConsumer, consumer),
            uid: consumer.uid(),
        },
    ]
}

/// The message of an assigned consumer.
fn assigned_message(a: &AssignedProvider) -> String {
    format!(
        "assigned slot {} of provider {}/{}",
        a.slot, a.namespace, a.name
    )
}

/// Why the assigned `provider` no longer admits the consumer (tags or
/// namespace allow-list), if it does not; phase and free slots do not count.
fn no_longer_admitted(
    consumer: &MaskConsumer,
    ns: &str,
    provider: &MaskProvider,
) -> Option<String> {
    let view = provider_view(provider, Default::default())?;
    let uid = consumer.uid().unwrap_or_default();
    let pinned = consumer.annotations().get(PIN_ANNOTATION).cloned();
    let req = SlotRequest {
        namespace: ns,
        tags: consumer.spec.providers.as_deref(),
        pinned: pinned.as_deref(),
        seed: &uid,
    };
    admits(&view, &req).err().map(|why| {
        format!(
            "provider {}/{} no longer matches ({why})",
            view.namespace, view.name
        )
    })
}

/// Creates or updates the credentials Secret so its data is exactly the
/// provider Secret's, labelled with the provider's UID. `fresh`: the Secret
/// most likely does not exist yet, so try creating it before reading it.
async fn ensure_credentials(
    consumer: &MaskConsumer,
    ns: &str,
    name: &str,
    provider_uid: &str,
    source: &Secret,
    ctx: &Ctx,
    fresh: bool,
) -> Result<(), ControllerError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let data: BTreeMap<String, ByteString> = source.data.clone().unwrap_or_default();
    let owner = controller_ref(consumer).ok_or(ControllerError::MissingField {
        kind: KIND,
        field: "metadata.uid",
    })?;
    let existing = if fresh {
        None
    } else {
        ctx.get_opt(&api, "Secret", name).await?
    };
    match existing {
        None => {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_string()),
                    namespace: Some(ns.to_string()),
                    owner_references: Some(vec![owner.clone()]),
                    labels: Some(owner_label(provider_uid)),
                    ..Default::default()
                },
                data: Some(data.clone()),
                type_: source.type_.clone(),
                ..Default::default()
            };
            match ctx
                .metrics()
                .write("Secret", api.create(&PostParams::default(), &secret))
                .await
            {
                Ok(_) => {
                    ctx.metrics().action("copy_credentials");
                    Ok(())
                }
                Err(e) if is_status(&e, 409) => {
                    // Left over or made by another replica: make it match.
                    match ctx.get_opt(&api, "Secret", name).await? {
                        Some(s) => {
                            update_credentials(
                                consumer,
                                ns,
                                name,
                                s,
                                data,
                                owner,
                                provider_uid,
                                ctx,
                            )
                            .await
                        }
                        None => Ok(()),
                    }
                }
                Err(e) => Err(ControllerError::kube(
                    format!("creating Secret {ns}/{name}"),
                    e,
                )),
            }
        }
        Some(s) => update_credentials(consumer, ns, name, s, data, owner, provider_uid, ctx).await,
    }
}

/// The labels of a credentials Secret copied from provider `provider_uid`.
fn owner_label(provider_uid: &str) -> BTreeMap<String, String> {
    [(OWNER_LABEL.to_string(), provider_uid.to_string())].into()
}

#[allow(clippy::too_many_arguments)]
async fn update_credentials(
    consumer: &MaskConsumer,
    ns: &str,
    name: &str,
    mut s: Secret,
    data: BTreeMap<String, ByteString>,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
    provider_uid: &str,
    ctx: &Ctx,
) -> Result<(), ControllerError> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let owned = s
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == consumer.uid().as_ref());
    let labelled = s.labels().get(OWNER_LABEL).map(String::as_str) == Some(provider_uid);
    if s.data.clone().unwrap_or_default() == data && owned && labelled {
        return Ok(());
    }
    s.data = Some(data);
    s.string_data = None;
    s.metadata.owner_references = Some(vec![owner]);
    s.labels_mut()
        .insert(OWNER_LABEL.to_string(), provider_uid.to_string());
    ctx.metrics()
        .write("Secret", api.replace(name, &PostParams::default(), &s))
        .await
        .map_err(|e| ControllerError::kube(format!("updating Secret {ns}/{name}"), e))?;
    ctx.metrics().action("update_credentials");
    ctx.event(
        consumer,
        EventType::Normal,
        "CredentialsUpdated",
        "CopyCredentials",
        format!("credentials Secret {name} updated from the provider Secret"),
    )
    .await;
    Ok(())
}

async fn set_unassigned_status(
    consumer: &MaskConsumer,
    api: &Api<MaskConsumer>,
    ctx: &Ctx,
    phase: MaskPhase,
    message: String,
) -> Result<(), ControllerError> {
    let desired = MaskConsumerStatus {
        phase: Some(phase),
        message: Some(message.clone()),
        last_updated: None,
        provider: None,
    };
    let wrote = ctx
        .write_status(
            api,
            KIND,
            &consumer.name_any(),
            consumer.status.as_ref(),
            desired,
            None,
        )
        .await?;
    if wrote && phase == MaskPhase::ErrNoProviders {
        ctx.event(
            consumer,
            EventType::Warning,
            "NoProviders",
            "Assign",
            message,
        )
        .await;
    }
    Ok(())
}

async fn assign(
    consumer: &Arc<MaskConsumer>,
    ns: &str,
    api: &Api<MaskConsumer>,
    ctx: &Ctx,
) -> Result<Action, ControllerError> {
    let uid = uid_of(consumer.as_ref(), KIND)?;
    let providers = ctx.provider_slots();
    // A reservation already made for this consumer (e.g. before a crash, or by
    // another replica) is adopted rather than leaked.
    let adoptable = ctx
        .reservations_for(consumer)
        .into_iter()
        .find(|r| r.spec.uid == uid && r.meta().deletion_timestamp.is_none());
    if let Some(r) = adoptable {
        let r_ns = r.namespace().unwrap_or_default();
        let found = providers.iter().find(|(p, _)| {
            p.namespace().as_deref() == Some(r_ns.as_str())
                && r.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == p.uid().as_ref())
                && slot_of_reservation(&p.name_any(), &r.name_any()).is_some()
        });
        if let Some((p, _)) = found {
            let slot = slot_of_reservation(&p.name_any(), &r.name_any()).unwrap_or_default();
            ctx.metrics().action("adopt");
            return complete(consumer, ns, api, ctx, p, slot, &r).await;
        }
    }
    let tags = consumer.spec.providers.as_deref();
    let pinned = consumer.annotations().get(PIN_ANNOTATION).cloned();
    let req = SlotRequest {
        namespace: ns,
        tags,
        pinned: pinned.as_deref(),
        seed: &uid,
    };
    let slots: Vec<_> = providers.iter().map(|(_, s)| s.clone()).collect();
    match plan_assignment(&slots, &req) {
        AssignmentPlan::NoProviders { message } => {
            set_unassigned_status(consumer, api, ctx, MaskPhase::ErrNoProviders, message).await?;
            Ok(Action::await_change())
        }
        AssignmentPlan::Waiting { message } => {
            set_unassigned_status(consumer, api, ctx, MaskPhase::Waiting, message).await?;
            Ok(Action::await_change())
        }
        AssignmentPlan::Try {
            attempts,
            truncated,
            waiting_message,
        } => {
            for attempt in attempts {
                let (provider, _) = &providers[attempt.provider];
                match reserve(consumer, &uid, provider, attempt.slot, ctx).await? {
                    Some(r) => {
                        ctx.metrics().action("assign");
                        return complete(consumer, ns, api, ctx, provider, attempt.slot, &r).await;
                    }
                    None => ctx.metrics().action("reserve_conflict"),
                }
            }
            set_unassigned_status(consumer, api, ctx, MaskPhase::Waiting, waiting_message).await?;
            if truncated {
                // Free slots remain that this round did not try.
                Ok(Action::requeue(std::time::Duration::from_millis(200)))
            } else {
                Ok(Action::await_change())
            }
        }
    }
}

/// Takes `slot` of `provider` by creating its reservation; `None` when someone holds it.
async fn reserve(
    consumer: &MaskConsumer,
    uid: &str,
    provider: &MaskProvider,
    slot: u32,
    ctx: &Ctx,
) -> Result<Option<MaskReservation>, ControllerError> {
    let p_ns = ns_of(provider, "MaskProvider")?;
    let name = reservation_name(&provider.name_any(), slot);
    let mut r = MaskReservation::new(
        &name,
        MaskReservationSpec {
            name: consumer.name_any(),
            namespace: consumer.namespace().unwrap_or_default(),
            uid: uid.to_string(),
        },
    );
    r.metadata.namespace = Some(p_ns.clone());
    r.metadata.owner_references = controller_ref(provider).map(|o| vec![o]);
    let api: Api<MaskReservation> = Api::namespaced(ctx.client.clone(), &p_ns);
    match ctx
        .metrics()
        .write("MaskReservation", api.create(&PostParams::default(), &r))
        .await
    {
        Ok(created) => Ok(Some(created)),
        Err(e) if is_status(&e, 409) => Ok(None),
        Err(e) => Err(ControllerError::kube(
            format!("creating MaskReservation {p_ns}/{name}"),
            e,
        )),
    }
}

/// Copies the credentials and records the assignment once the slot is held.
async fn complete(
    consumer: &Arc<MaskConsumer>,
    ns: &str,
    api: &Api<MaskConsumer>,
    ctx: &Ctx,
    provider: &MaskProvider,
    slot: u32,
    reservation: &MaskReservation,
) -> Result<Action, ControllerError> {
    let p_ns = ns_of(provider, "MaskProvider")?;
    let p_uid = uid_of(provider, "MaskProvider")?;
    let r_uid = uid_of(reservation, "MaskReservation")?;
    // The cache may lag behind our own last write: decide on a fresh read.
    // The assignment is recorded only if none is recorded yet (written with
    // this read's resourceVersion); if another replica assigned this consumer
    // meanwhile, our extra slot is given back.
    let fresh = match ctx.get_opt(api, KIND, &consumer.name_any()).await? {
        Some(c) if c.uid() == consumer.uid() && c.meta().deletion_timestamp.is_none() => c,
        _ => return Ok(Action::await_change()), // gone or being deleted: its release frees the slot
    };
    match fresh.assignment() {
        Some(a) if a.reservation == r_uid => return Ok(Action::await_change()), // already recorded
        Some(_) => {
            ctx.metrics().action("assigned_elsewhere");
            let rapi: Api<MaskReservation> = Api::namespaced(ctx.client.clone(), &p_ns);
            ctx.delete_if(
                &rapi,
                "MaskReservation",
                &reservation.name_any(),
                Some(&r_uid),
            )
            .await?;
            return Ok(Action::await_change());
        }
        None => {}
    }
    let sapi: Api<Secret> = Api::namespaced(ctx.client.clone(), &p_ns);
    let Some(source) = ctx.get_opt(&sapi, "Secret", &provider.spec.secret).await? else {
        // The provider lost its Secret since it was Ready: give the slot back.
        let rapi: Api<MaskReservation> = Api::namespaced(ctx.client.clone(), &p_ns);
        ctx.delete_if(
            &rapi,
            "MaskReservation",
            &reservation.name_any(),
            Some(&r_uid),
        )
        .await?;
        let message = format!(
            "provider {p_ns}/{} has no Secret {:?}; waiting",
            provider.name_any(),
            provider.spec.secret
        );
        set_unassigned_status(consumer, api, ctx, MaskPhase::Waiting, message).await?;
        return Ok(Action::requeue(std::time::Duration::from_secs(5)));
    };
    let secret = credentials_secret_name(&consumer.name_any(), &p_uid);
    ensure_credentials(consumer, ns, &secret, &p_uid, &source, ctx, true).await?;
    let assigned = AssignedProvider {
        name: provider.name_any(),
        namespace: p_ns.clone(),
        uid: p_uid,
        slot,
        reservation: r_uid,
        secret,
    };
    let message = assigned_message(&assigned);
    let desired = MaskConsumerStatus {
        phase: Some(MaskPhase::Active),
        message: Some(message.clone()),
        last_updated: None,
        provider: Some(assigned),
    };
    // Recorded only on the version just read (see above).
    let rv = fresh.resource_version();
    ctx.write_status(
        api,
        KIND,
        &consumer.name_any(),
        fresh.status.as_ref(),
        desired,
        rv,
    )
    .await?;
    tracing::debug!(consumer = %consumer.name_any(), %message, "assigned");
    Ok(Action::await_change())
}

/// The consumer is being deleted: the workloads it owns (and through the
/// garbage collector theirs) and every Pod using its credentials go first,
/// then its credentials, then the reservation; only then the finalizer.
async fn release(
    consumer: &Arc<MaskConsumer>,
    ns: &str,
    api: &Api<MaskConsumer>,
    ctx: &Ctx,
) -> Result<Action, ControllerError> {
    if !finalizers::awaits_release(consumer.finalizers(), Some(CONSUMER_FINALIZER)) {
        return Ok(Action::await_change());
    }
    let uid = uid_of(consumer.as_ref(), KIND)?;
    // Workloads owned by the consumer are deleted in the foreground, so the
    // garbage collector removes their ReplicaSets and Pods before them.
    let mut owned = Vec::new();
    owned.extend(delete_owned::<Deployment>(ctx, ns, &uid, "Deployment").await?);
    owned.extend(delete_owned::<StatefulSet>(ctx, ns, &uid, "StatefulSet").await?);
    owned.extend(delete_owned::<DaemonSet>(ctx, ns, &uid, "DaemonSet").await?);
    owned.extend(delete_owned::<ReplicaSet>(ctx, ns, &uid, "ReplicaSet").await?);
    owned.extend(delete_owned::<Job>(ctx, ns, &uid, "Job").await?);
    let owned_pods = delete_owned::<Pod>(ctx, ns, &uid, "Pod").await?;
    // Any Pod still using the credentials holds the slot, whoever owns it
    // (e.g. a Pod of a ReplicaSet of a Deployment owned by the consumer).
    let mut using = Vec::new();
    if let Some(a) = consumer.assignment() {
        let papi: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        let pods = ctx
            .metrics()
            .read("Pod", papi.list(&ListParams::default()))
            .await
            .map_err(|e| ControllerError::kube(format!("listing Pods in {ns}"), e))?;
        using = pods
            .items
            .iter()
            .filter(|p| pod_holds_secret(p, &a.secret))
            .map(|p| format!("Pod {}", p.name_any()))
            .filter(|p| !owned_pods.contains(p))
            .collect();
    }
    // Deleted Pods the consumer owns wake this reconcile; nothing watches the
    // other kinds or indirectly owned Pods, so poll for those.
    let poll = !owned.is_empty() || !using.is_empty();
    owned.extend(owned_pods);
    let message = holding_message(&owned, &using);
    let desired = MaskConsumerStatus {
        phase: Some(MaskPhase::Terminating),
        message: Some(message),
        last_updated: None,
        provider: consumer.assignment().cloned(),
    };
    // Best effort: the namespace may be going away.
    let _ = ctx
        .write_status(
            api,
            KIND,
            &consumer.name_any(),
            consumer.status.as_ref(),
            desired,
            None,
        )
        .await;
    if poll {
        return Ok(Action::requeue(std::time::Duration::from_secs(1)));
    }
    if !owned.is_empty() {
        // Pods take their grace period to stop; their deletion wakes this
        // reconcile (the timer is only a safety net).
        return Ok(Action::requeue(std::time::Duration::from_secs(5)));
    }
    if let Some(a) = consumer.assignment() {
        let sapi: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
        ctx.delete_if(&sapi, "Secret", &a.secret, None).await?;
    }
    let mut released = 0;
    for r in ctx
        .reservations_for(consumer)
        .into_iter()
        .filter(|r| r.spec.uid == uid)
    {
        let r_ns = r.namespace().unwrap_or_default();
        let rapi: Api<MaskReservation> = Api::namespaced(ctx.client.clone(), &r_ns);
        ctx.delete_if(&rapi, "MaskReservation", &r.name_any(), r.uid().as_deref())
            .await?;
        released += 1;
    }
    if let Some(a) = consumer.assignment() {
        // Also when the store has not seen the reservation yet.
        let rapi: Api<MaskReservation> = Api::namespaced(ctx.client.clone(), &a.namespace);
        ctx.delete_if(
            &rapi,
            "MaskReservation",
            &reservation_name(&a.name, a.slot),
            Some(&a.reservation),
        )
        .await?;
        released += 1;
    }
    if released > 0 {
        ctx.metrics().action("release");
    }
    ctx.release_finalizers(api, KIND, consumer.as_ref(), Some(CONSUMER_FINALIZER))
        .await?;
    Ok(Action::await_change())
}

/// Deletes, with foreground propagation, the `kind` objects in `ns` owned
/// directly by the consumer `uid`; returns `"<kind> <name>"` of each one
/// still present (being deleted included).
async fn delete_owned<K>(
    ctx: &Ctx,
    ns: &str,
    uid: &str,
    kind: &'static str,
) -> Result<Vec<String>, ControllerError>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let list = ctx
        .metrics()
        .read(kind, api.list_metadata(&ListParams::default()))
        .await
        .map_err(|e| ControllerError::kube(format!("listing {kind}s in {ns}"), e))?;
    let mut left = Vec::new();
    for o in list
        .items
        .into_iter()
        .filter(|o| o.owner_references().iter().any(|r| r.uid == uid))
    {
        if o.metadata.deletion_timestamp.is_none() {
            ctx.delete_foreground_if(&api, kind, &o.name_any(), o.uid().as_deref())
                .await?;
            ctx.metrics().action(if kind == "Pod" {
                "delete_pod"
            } else {
                "delete_workload"
            });
        }
        left.push(format!("{kind} {}", o.name_any()));
    }
    Ok(left)
}
