//! The credentials copy a consumer gets (pure): exactly the provider
//! Secret's data and type, owned by the consumer, labelled with the
//! provider's UID.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;

use super::OWNER_LABEL;

/// The copy `name` in `namespace` of `source`, owned by `owner`, for provider `provider_uid`.
pub fn desired_copy(
    source: &Secret,
    namespace: &str,
    name: &str,
    owner: OwnerReference,
    provider_uid: &str,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            owner_references: Some(vec![owner]),
            labels: Some([(OWNER_LABEL.to_string(), provider_uid.to_string())].into()),
            ..Default::default()
        },
        data: Some(source.data.clone().unwrap_or_default()),
        type_: source.type_.clone(),
        ..Default::default()
    }
}

/// `existing` changed to match `desired` (data, owner, owner label; other
/// labels and metadata kept), or `None` when it matches already.
pub fn credentials_update(existing: &Secret, desired: &Secret) -> Option<Secret> {
    let owner = desired.owner_references().first()?;
    let label = desired.labels().get(OWNER_LABEL)?;
    let owned = existing
        .owner_references()
        .iter()
        .any(|o| o.uid == owner.uid);
    let labelled = existing.labels().get(OWNER_LABEL) == Some(label);
    let same_data =
        existing.data.clone().unwrap_or_default() == desired.data.clone().unwrap_or_default();
    if same_data && owned && labelled {
        return None;
    }
    let mut s = existing.clone();
    s.data = desired.data.clone();
    s.string_data = None;
    s.metadata.owner_references = Some(vec![owner.clone()]);
    s.labels_mut()
        .insert(OWNER_LABEL.to_string(), label.clone());
    Some(s)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    fn owner(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "vpn.beebs.dev/v1".into(),
            kind: "MaskConsumer".into(),
            name: "c".into(),
            uid: uid.into(),
            controller: Some(true),
            ..Default::default()
        }
    }

    fn source(value: &str) -> Secret {
        Secret {
            data: Some([("KEY".to_string(), ByteString(value.as_bytes().to_vec()))].into()),
            type_: Some("Opaque".into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_copy_is_the_source_data_owned_and_labelled() {
        let copy = desired_copy(&source("a"), "ns", "c-p", owner("u1"), "p-uid");
        assert_eq!(copy.data, source("a").data);
        assert_eq!(copy.type_.as_deref(), Some("Opaque"));
        assert_eq!(
            copy.labels().get(OWNER_LABEL).map(String::as_str),
            Some("p-uid")
        );
        assert_eq!(copy.owner_references()[0].uid, "u1");
        assert_eq!(copy.namespace().as_deref(), Some("ns"));
    }

    #[test]
    fn an_update_happens_only_when_something_differs() {
        let desired = desired_copy(&source("a"), "ns", "c-p", owner("u1"), "p-uid");
        assert!(credentials_update(&desired, &desired).is_none());
        let mut stale = desired_copy(&source("old"), "ns", "c-p", owner("u1"), "p-uid");
        stale.labels_mut().insert("user".into(), "kept".into());
        let updated = credentials_update(&stale, &desired).expect("data differs");
        assert_eq!(updated.data, desired.data);
        assert_eq!(
            updated.labels().get("user").map(String::as_str),
            Some("kept")
        );
        let foreign = desired_copy(&source("a"), "ns", "c-p", owner("other"), "p-uid");
        let adopted = credentials_update(&foreign, &desired).expect("owner differs");
        assert_eq!(adopted.owner_references()[0].uid, "u1");
        let unlabelled = Secret {
            metadata: ObjectMeta {
                labels: None,
                ..desired.metadata.clone()
            },
            ..desired.clone()
        };
        assert!(credentials_update(&unlabelled, &desired).is_some());
    }
}
