//! One Mask per gateway replica: `<gateway>-<ordinal>` for every ordinal
//! below the wanted count, owned by the MaskGateway, with its providers.
//! Scaling down deletes the highest ordinals (their consumers then delete
//! the gateway Pods and free the slots).

use std::collections::BTreeMap;

use kube::ResourceExt;
use vpno_api::names::{
    GATEWAY_LABEL, GATEWAY_ORDINAL_LABEL, gateway_mask_name, ordinal_of_gateway_mask,
};
use vpno_api::{Mask, MaskGateway, MaskSpec};

use crate::context::controller_ref;
use crate::effect::{Effect, Kind, NewObject, Propagation, target_of};

/// The labels every object of replica `ordinal` carries.
pub(crate) fn replica_labels(gw: &MaskGateway, ordinal: u32) -> BTreeMap<String, String> {
    [
        (GATEWAY_LABEL.to_string(), gw.name_any()),
        (GATEWAY_ORDINAL_LABEL.to_string(), ordinal.to_string()),
    ]
    .into()
}

/// The Mask of replica `ordinal` (`None` before the MaskGateway has a uid).
pub(crate) fn mask_for(gw: &MaskGateway, ordinal: u32) -> Option<Mask> {
    let mut m = Mask::new(
        &gateway_mask_name(&gw.name_any(), ordinal),
        MaskSpec {
            providers: gw.spec.providers.clone(),
        },
    );
    m.metadata.namespace = gw.namespace();
    m.metadata.labels = Some(replica_labels(gw, ordinal));
    m.metadata.owner_references = Some(vec![controller_ref(gw)?]);
    Some(m)
}

/// The replica ordinal of one of the MaskGateway's Masks (`None`: not one of its).
pub(crate) fn ordinal_of(gw: &MaskGateway, mask: &Mask) -> Option<u32> {
    let owned = mask
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == gw.uid().as_ref());
    owned.then(|| ordinal_of_gateway_mask(&gw.name_any(), &mask.name_any()))?
}

/// Creates the missing Masks below `wanted`, deletes those at or above it,
/// and copies edited providers onto the ones that stay.
pub(crate) fn mask_effects(gw: &MaskGateway, masks: &[&Mask], wanted: u32) -> Vec<Effect> {
    let by_ordinal: BTreeMap<u32, &Mask> = masks
        .iter()
        .filter_map(|m| Some((ordinal_of(gw, m)?, *m)))
        .collect();
    let mut out = Vec::new();
    for ordinal in 0..wanted {
        match by_ordinal.get(&ordinal) {
            None => {
                if let Some(m) = mask_for(gw, ordinal) {
                    out.push(Effect::Create(NewObject::Mask(Box::new(m))));
                    out.push(Effect::Count("create_gateway_mask"));
                }
            }
            Some(m) if m.spec.providers != gw.spec.providers => out.push(Effect::SetProviders {
                target: target_of(Kind::Mask, *m),
                providers: gw.spec.providers.clone(),
            }),
            Some(_) => {}
        }
    }
    for (_, m) in by_ordinal.range(wanted..).rev() {
        if m.metadata.deletion_timestamp.is_none() {
            out.push(Effect::DeleteIf {
                target: target_of(Kind::Mask, *m),
                uid: m.uid(),
                propagation: Propagation::Background,
            });
            out.push(Effect::Count("delete_gateway_mask"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::tests::gateway;

    fn names(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Create(NewObject::Mask(m)) => Some(format!("+{}", m.name_any())),
                Effect::DeleteIf { target, .. } => Some(format!("-{}", target.name)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn each_replica_gets_a_mask_owned_by_the_gateway_with_its_providers() {
        let mut gw = gateway("egress", 3);
        gw.spec.providers = Some(vec!["eu".into()]);
        let effects = mask_effects(&gw, &[], 3);
        assert_eq!(names(&effects), ["+egress-0", "+egress-1", "+egress-2"]);
        let Effect::Create(NewObject::Mask(m)) = &effects[4] else {
            panic!()
        };
        assert_eq!(m.namespace().as_deref(), Some("apps"));
        assert_eq!(m.spec.providers, Some(vec!["eu".to_string()]));
        assert_eq!(m.labels()[GATEWAY_LABEL], "egress");
        assert_eq!(m.labels()[GATEWAY_ORDINAL_LABEL], "2");
        let owner = &m.owner_references()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str()),
            ("MaskGateway", "uid-egress")
        );
        assert_eq!(owner.controller, Some(true));
    }

    #[test]
    fn scaling_down_deletes_the_highest_ordinals_and_edits_reach_the_rest() {
        let mut gw = gateway("egress", 4);
        let masks: Vec<Mask> = (0..4).map(|i| mask_for(&gw, i).unwrap()).collect();
        let refs: Vec<&Mask> = masks.iter().collect();
        assert!(mask_effects(&gw, &refs, 4).is_empty());
        gw.spec.providers = Some(vec!["us".into()]);
        let effects = mask_effects(&gw, &refs, 2);
        assert_eq!(names(&effects), ["-egress-3", "-egress-2"]);
        let edited: Vec<&str> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::SetProviders {
                    target,
                    providers: Some(p),
                } if p == &["us"] => Some(target.name.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(edited, ["egress-0", "egress-1"]);
    }

    #[test]
    fn masks_of_another_owner_are_not_ours() {
        let gw = gateway("egress", 1);
        let mut stranger = mask_for(&gw, 5).unwrap();
        stranger.metadata.owner_references.as_mut().unwrap()[0].uid = "someone".into();
        assert_eq!(ordinal_of(&gw, &stranger), None);
        assert_eq!(
            names(&mask_effects(&gw, &[&stranger], 0)),
            Vec::<String>::new()
        );
    }
}
