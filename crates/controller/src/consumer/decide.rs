//! The consumer controller's decisions (pure): what to do about an
//! [`Observed`] consumer, and about the second look after a slot was taken.

use std::time::Duration;

use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use vpno_api::names::{credentials_secret_name, reservation_name};
use vpno_api::{
    AssignedProvider, MaskConsumer, MaskConsumerStatus, MaskPhase, MaskProvider, MaskReservation,
    MaskReservationSpec,
};

use super::observe::{Candidate, Completion, Credentials, Free, Held, Observed, State};
use super::release;
use crate::context::{Versions, controller_ref, provider_view};
use crate::effect::{
    Effect, EventNote, Kind, NewObject, Propagation, StatusWrite, regarding, status_changed,
    target_of,
};
use crate::plan::assign::{AssignmentPlan, SlotRequest, admits, plan_assignment};
use crate::plan::credentials::{credentials_update, desired_copy};
use crate::plan::{CONSUMER_FINALIZER, PIN_ANNOTATION};

/// When to look at the consumer again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Next {
    /// When something it depends on changes.
    OnChange,
    /// After this long (polling what no watch covers, or a retry).
    After(Duration),
}

impl Next {
    /// The controller's action.
    pub fn action(self) -> Action {
        match self {
            Next::OnChange => Action::await_change(),
            Next::After(d) => Action::requeue(d),
        }
    }
}

/// Effects, then when to look again.
#[derive(Debug)]
pub(crate) struct Decided {
    pub effects: Vec<Effect>,
    pub next: Next,
}

impl Decided {
    pub fn wait(effects: Vec<Effect>) -> Self {
        Self {
            effects,
            next: Next::OnChange,
        }
    }

    pub fn after(effects: Vec<Effect>, d: Duration) -> Self {
        Self {
            effects,
            next: Next::After(d),
        }
    }
}

/// One reservation to try.
pub(crate) struct Attempt {
    pub provider: std::sync::Arc<MaskProvider>,
    pub slot: u32,
    pub reservation: MaskReservation,
}

/// Slots to try taking, in order; the first created reservation wins.
pub(crate) struct ReservePlan {
    pub attempts: Vec<Attempt>,
    /// Free slots were left out (retry soon if all fail).
    pub truncated: bool,
    /// Shown when every attempt conflicts.
    pub waiting_message: String,
}

/// What the first decision leaves to do after its effects.
pub(crate) enum Then {
    /// Nothing: look again as said.
    Done(Next),
    /// Record this held slot (after a second look).
    Complete(Candidate),
    /// Take a slot (act, then look again).
    Reserve(ReservePlan),
}

/// The first decision: effects, then what follows.
pub(crate) struct Step {
    pub effects: Vec<Effect>,
    pub then: Then,
}

impl From<Decided> for Step {
    fn from(d: Decided) -> Self {
        Step {
            effects: d.effects,
            then: Then::Done(d.next),
        }
    }
}

/// What to do about an observed consumer.
pub(crate) fn decide(o: &Observed) -> Step {
    let consumer = o.consumer.as_ref();
    match &o.state {
        State::Deleting(holding) => release::decide(o, holding).into(),
        // Do not wait for the garbage collector: release the slot now.
        State::Orphaned => Decided::wait(vec![
            Effect::Count("delete_orphan"),
            delete_consumer(consumer),
        ])
        .into(),
        State::Assigned(held) => {
            let mut d = keep(o, held);
            d.effects.splice(0..0, adopt_finalizers(consumer));
            d.into()
        }
        State::Unassigned(free) => {
            let mut step = assign(o, free);
            step.effects.splice(0..0, adopt_finalizers(consumer));
            step
        }
    }
}

/// Our finalizer instead of the original vpn-operator's.
fn adopt_finalizers(consumer: &MaskConsumer) -> Vec<Effect> {
    crate::effect::adopt_finalizers(Kind::MaskConsumer, consumer, CONSUMER_FINALIZER)
}

/// A held slot: still valid and admitted? then keep the copy equal to the
/// provider Secret and show the assignment.
fn keep(o: &Observed, held: &Held) -> Decided {
    let consumer = o.consumer.as_ref();
    if let Some(why) = &held.lost {
        // The credentials may still be in use: the only safe way to free them
        // is to delete the consumer (and with it its Pods); the Mask gets a new one.
        let note = format!("{why}; deleting this consumer so its Mask is reassigned");
        return Decided::wait(let_go(consumer, "unassign", true, "SlotLost", note));
    }
    let Some(provider) = &held.provider else {
        return Decided::after(Vec::new(), Duration::from_secs(1));
    };
    if let Some(why) = no_longer_admitted(consumer, &o.namespace, provider) {
        // Its Mask's `providers` were edited: release (through deleting this
        // consumer, as for a lost slot) and let the Mask's new consumer be
        // assigned from the new set.
        let note =
            format!("{why}; deleting this consumer so its Mask is assigned from the new set");
        return Decided::wait(let_go(consumer, "move", false, "ProvidersChanged", note));
    }
    let a = &held.assignment;
    let (source, copy) = match &held.credentials {
        Credentials::Read { source, copy } => (source, copy),
        Credentials::NotRead => return Decided::wait(Vec::new()),
        Credentials::InStep => {
            let desired = active_status(a.clone());
            let status = consumer_status(consumer, consumer.status.as_ref(), desired, None);
            return Decided::wait(status.into_iter().collect());
        }
        Credentials::SourceMissing => {
            let note = format!(
                "provider Secret {}/{} not found; keeping the last copy",
                a.namespace, provider.spec.secret
            );
            return Decided::wait(vec![event(consumer, true, "SecretNotFound", note)]);
        }
    };
    let mut effects = Vec::new();
    if let Some(owner) = controller_ref(consumer) {
        let desired = desired_copy(source, &o.namespace, &a.secret, owner, &a.uid);
        match copy {
            None => effects.extend([
                Effect::Create(NewObject::Credentials {
                    copy: Box::new(desired),
                    source_version: source.metadata.resource_version.clone(),
                }),
                Effect::Count("copy_credentials"),
            ]),
            Some(existing) => match credentials_update(existing, &desired) {
                Some(s) => effects.push(Effect::UpdateCredentials {
                    copy: Box::new(s),
                    source_version: source.metadata.resource_version.clone(),
                }),
                None => effects.extend(in_step(&o.namespace, &a.secret, source, existing)),
            },
        }
    }
    let desired = active_status(a.clone());
    effects.extend(consumer_status(
        consumer,
        consumer.status.as_ref(),
        desired,
        None,
    ));
    Decided::wait(effects)
}

/// Remembers a copy seen equal to its source, at both versions.
fn in_step(
    ns: &str,
    name: &str,
    source: &k8s_openapi::api::core::v1::Secret,
    copy: &k8s_openapi::api::core::v1::Secret,
) -> Option<Effect> {
    Some(Effect::NoteCopyInStep {
        namespace: ns.to_string(),
        name: name.to_string(),
        versions: Versions {
            source: source.metadata.resource_version.clone()?,
            copy: copy.metadata.resource_version.clone()?,
        },
    })
}

/// No slot yet: adopt a reservation made for it, or plan which slots to try.
fn assign(o: &Observed, free: &Free) -> Step {
    let consumer = o.consumer.as_ref();
    if let Some(candidate) = &free.adoptable {
        return Step {
            effects: vec![Effect::Count("adopt")],
            then: Then::Complete(candidate.clone()),
        };
    }
    let pinned = consumer.annotations().get(PIN_ANNOTATION).cloned();
    let req = SlotRequest {
        namespace: &o.namespace,
        tags: consumer.spec.providers.as_deref(),
        pinned: pinned.as_deref(),
        seed: &o.uid,
    };
    let slots: Vec<_> = free.providers.iter().map(|(_, s)| s.clone()).collect();
    match plan_assignment(&slots, &req) {
        AssignmentPlan::NoProviders { message } => {
            unassigned(consumer, MaskPhase::ErrNoProviders, message).into()
        }
        AssignmentPlan::Waiting { message } => {
            unassigned(consumer, MaskPhase::Waiting, message).into()
        }
        AssignmentPlan::Try {
            attempts,
            truncated,
            waiting_message,
        } => {
            let attempts = attempts
                .into_iter()
                .filter_map(|at| {
                    let provider = free.providers.get(at.provider)?.0.clone();
                    let reservation = new_reservation(o, &provider, at.slot)?;
                    Some(Attempt {
                        provider,
                        slot: at.slot,
                        reservation,
                    })
                })
                .collect();
            Step {
                effects: Vec::new(),
                then: Then::Reserve(ReservePlan {
                    attempts,
                    truncated,
                    waiting_message,
                }),
            }
        }
    }
}

/// Every attempt conflicted: the consumer waits (and retries soon when free
/// slots were left out of the plan).
pub(crate) fn unreserved(o: &Observed, plan: &ReservePlan) -> Decided {
    let mut d = unassigned(
        o.consumer.as_ref(),
        MaskPhase::Waiting,
        plan.waiting_message.clone(),
    );
    if plan.truncated {
        d.next = Next::After(Duration::from_millis(200));
    }
    d
}

/// Whether the second look must read the provider Secret: only when the
/// fresh consumer is live and has no assignment recorded yet.
pub(crate) fn needs_source(o: &Observed, fresh: Option<&MaskConsumer>) -> bool {
    fresh.is_some_and(|c| {
        c.uid().as_deref() == Some(o.uid.as_str())
            && c.meta().deletion_timestamp.is_none()
            && c.assignment().is_none()
    })
}

/// The second look after a slot was taken: record it (with the credentials
/// copy), or give it back when the consumer is gone, was assigned meanwhile
/// (by another replica), or the provider lost its Secret.
pub(crate) fn complete(o: &Observed, c: &Completion) -> Decided {
    let consumer = o.consumer.as_ref();
    let (Some(r_uid), Some(p_uid)) = (c.held.reservation.uid(), c.held.provider.uid()) else {
        return Decided::wait(Vec::new());
    };
    let Some(fresh) = c.fresh.as_ref().filter(|f| {
        f.uid().as_deref() == Some(o.uid.as_str()) && f.meta().deletion_timestamp.is_none()
    }) else {
        // Gone or being deleted: its release frees the slot.
        return Decided::wait(Vec::new());
    };
    let give_back = Effect::DeleteIf {
        target: target_of(Kind::MaskReservation, c.held.reservation.as_ref()),
        uid: Some(r_uid.clone()),
        propagation: Propagation::Background,
    };
    match fresh.assignment() {
        Some(a) if a.reservation == r_uid => return Decided::wait(Vec::new()),
        Some(_) => return Decided::wait(vec![Effect::Count("assigned_elsewhere"), give_back]),
        None => {}
    }
    let provider = c.held.provider.as_ref();
    let p_ns = provider.namespace().unwrap_or_default();
    let Some(source) = &c.source else {
        // The provider lost its Secret since it was Ready: give the slot back.
        let message = format!(
            "provider {p_ns}/{} has no Secret {:?}; waiting",
            provider.name_any(),
            provider.spec.secret
        );
        let mut d = unassigned(consumer, MaskPhase::Waiting, message);
        d.effects.insert(0, give_back);
        d.next = Next::After(Duration::from_secs(5));
        return d;
    };
    let secret = credentials_secret_name(&consumer.name_any(), &p_uid);
    let mut effects = Vec::new();
    if let Some(owner) = controller_ref(consumer) {
        let copy = desired_copy(source, &o.namespace, &secret, owner, &p_uid);
        effects.push(Effect::Create(NewObject::Credentials {
            copy: Box::new(copy),
            source_version: source.metadata.resource_version.clone(),
        }));
        effects.push(Effect::Count("copy_credentials"));
    }
    let assigned = AssignedProvider {
        name: provider.name_any(),
        namespace: p_ns,
        uid: p_uid,
        slot: c.held.slot,
        reservation: r_uid,
        secret,
    };
    // Recorded only on the version just read: if another replica assigned
    // this consumer meanwhile, the write conflicts and the next look gives
    // our extra slot back.
    effects.extend(consumer_status(
        consumer,
        fresh.status.as_ref(),
        active_status(assigned),
        fresh.resource_version(),
    ));
    Decided::wait(effects)
}

/// The status write from `current` to `desired`, if it says something new.
pub(crate) fn consumer_status(
    consumer: &MaskConsumer,
    current: Option<&MaskConsumerStatus>,
    desired: MaskConsumerStatus,
    resource_version: Option<String>,
) -> Option<Effect> {
    status_changed(current, &desired).then(|| Effect::PatchStatus {
        target: target_of(Kind::MaskConsumer, consumer),
        status: StatusWrite::Consumer {
            current: current.cloned().map(Box::new),
            desired: Box::new(desired),
            resource_version,
        },
    })
}

/// Waiting or ErrNoProviders (an Event when it newly has no provider).
fn unassigned(consumer: &MaskConsumer, phase: MaskPhase, message: String) -> Decided {
    let desired = MaskConsumerStatus {
        phase: Some(phase),
        message: Some(message.clone()),
        last_updated: None,
        provider: None,
    };
    let mut effects: Vec<Effect> =
        consumer_status(consumer, consumer.status.as_ref(), desired, None)
            .into_iter()
            .collect();
    if !effects.is_empty() && phase == MaskPhase::ErrNoProviders {
        effects.push(Effect::Event(EventNote {
            regarding: regarding(consumer),
            warning: true,
            reason: "NoProviders".into(),
            action: "Assign".into(),
            note: message,
        }));
    }
    Decided::wait(effects)
}

fn active_status(a: AssignedProvider) -> MaskConsumerStatus {
    MaskConsumerStatus {
        phase: Some(MaskPhase::Active),
        message: Some(format!(
            "assigned slot {} of provider {}/{}",
            a.slot, a.namespace, a.name
        )),
        last_updated: None,
        provider: Some(a),
    }
}

/// The reservation that takes `slot` of `provider` for the consumer.
fn new_reservation(o: &Observed, provider: &MaskProvider, slot: u32) -> Option<MaskReservation> {
    let consumer = o.consumer.as_ref();
    let mut r = MaskReservation::new(
        &reservation_name(&provider.name_any(), slot),
        MaskReservationSpec {
            name: consumer.name_any(),
            namespace: o.namespace.clone(),
            uid: o.uid.clone(),
        },
    );
    r.metadata.namespace = Some(provider.namespace()?);
    r.metadata.owner_references = Some(vec![controller_ref(provider)?]);
    Some(r)
}

fn delete_consumer(consumer: &MaskConsumer) -> Effect {
    Effect::DeleteIf {
        target: target_of(Kind::MaskConsumer, consumer),
        uid: consumer.uid(),
        propagation: Propagation::Background,
    }
}

fn event(consumer: &MaskConsumer, warning: bool, reason: &str, note: String) -> Effect {
    Effect::Event(EventNote {
        regarding: regarding(consumer),
        warning,
        reason: reason.into(),
        action: "CopyCredentials".into(),
        note,
    })
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
        delete_consumer(consumer),
    ]
}

/// Why the assigned `provider` no longer admits the consumer (tags or
/// namespace allow-list), if it does not; phase and free slots do not count.
pub(crate) fn no_longer_admitted(
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
