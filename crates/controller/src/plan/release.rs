//! What still holds a consumer's slot while it is being released (pure).

use k8s_openapi::api::core::v1::{Pod, PodSpec};

/// Whether a Pod spec references the Secret `name`: `envFrom`, `env`
/// `secretKeyRef` or a `secret` volume, in containers, init containers or
/// ephemeral containers.
pub fn spec_uses_secret(spec: &PodSpec, name: &str) -> bool {
    let volumes = spec.volumes.iter().flatten().any(|v| {
        v.secret
            .as_ref()
            .is_some_and(|s| s.secret_name.as_deref() == Some(name))
            || v.projected.as_ref().is_some_and(|p| {
                p.sources
                    .iter()
                    .flatten()
                    .any(|s| s.secret.as_ref().is_some_and(|s| s.name == name))
            })
    });
    let env_uses = |env_from: Option<&Vec<k8s_openapi::api::core::v1::EnvFromSource>>,
                    env: Option<&Vec<k8s_openapi::api::core::v1::EnvVar>>| {
        env_from
            .into_iter()
            .flatten()
            .any(|e| e.secret_ref.as_ref().is_some_and(|s| s.name == name))
            || env.into_iter().flatten().any(|e| {
                e.value_from
                    .as_ref()
                    .and_then(|v| v.secret_key_ref.as_ref())
                    .is_some_and(|s| s.name == name)
            })
    };
    volumes
        || spec
            .containers
            .iter()
            .any(|c| env_uses(c.env_from.as_ref(), c.env.as_ref()))
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| env_uses(c.env_from.as_ref(), c.env.as_ref()))
        || spec
            .ephemeral_containers
            .iter()
            .flatten()
            .any(|c| env_uses(c.env_from.as_ref(), c.env.as_ref()))
}

/// Whether `pod` may still be using the Secret `name`: it references it and
/// has not finished (a Succeeded or Failed Pod runs no container any more).
pub fn pod_holds_secret(pod: &Pod, name: &str) -> bool {
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    !finished && pod.spec.as_ref().is_some_and(|s| spec_uses_secret(s, name))
}

/// The Terminating message of a consumer whose slot is still held by
/// `owned` workload objects it owns and `pods` Pods using its credentials.
pub fn holding_message(owned: &[String], pods: &[String]) -> String {
    let mut parts = Vec::new();
    if !owned.is_empty() {
        parts.push(format!(
            "{} owned workload object(s) (e.g. {})",
            owned.len(),
            owned[0]
        ));
    }
    if !pods.is_empty() {
        parts.push(format!(
            "{} Pod(s) using the credentials (e.g. {})",
            pods.len(),
            pods[0]
        ));
    }
    if parts.is_empty() {
        "releasing the slot".to_string()
    } else {
        format!(
            "releasing the slot once these are gone: {}",
            parts.join(" and ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn finds_every_way_of_referencing_the_secret() {
        let cases = [
            json!({"containers": [{"name": "a", "envFrom": [{"secretRef": {"name": "creds"}}]}]}),
            json!({"containers": [{"name": "a", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]}]}),
            json!({"containers": [{"name": "a"}], "volumes": [{"name": "v", "secret": {"secretName": "creds"}}]}),
            json!({"containers": [{"name": "a"}], "volumes": [{"name": "v", "projected": {"sources": [{"secret": {"name": "creds"}}]}}]}),
            json!({"containers": [{"name": "a"}], "initContainers": [{"name": "i", "envFrom": [{"secretRef": {"name": "creds"}}]}]}),
        ];
        for spec in cases {
            let p = pod(json!({"spec": spec.clone()}));
            assert!(pod_holds_secret(&p, "creds"), "not found in {spec}");
            assert!(!pod_holds_secret(&p, "other"), "wrongly found in {spec}");
        }
    }

    #[test]
    fn ignores_unrelated_and_finished_pods() {
        let unrelated = pod(json!({"spec": {"containers": [{"name": "a",
            "envFrom": [{"configMapRef": {"name": "creds"}}],
            "env": [{"name": "X", "value": "creds"}]}],
            "volumes": [{"name": "v", "configMap": {"name": "creds"}}]}}));
        assert!(!pod_holds_secret(&unrelated, "creds"));
        let spec =
            json!({"containers": [{"name": "a", "envFrom": [{"secretRef": {"name": "creds"}}]}]});
        for (phase, holds) in [
            ("Running", true),
            ("Pending", true),
            ("Succeeded", false),
            ("Failed", false),
        ] {
            let p = pod(json!({"spec": spec.clone(), "status": {"phase": phase}}));
            assert_eq!(pod_holds_secret(&p, "creds"), holds, "phase {phase}");
        }
        assert!(!pod_holds_secret(&pod(json!({})), "creds"));
    }

    #[test]
    fn holding_message_names_what_remains() {
        assert_eq!(holding_message(&[], &[]), "releasing the slot");
        let m = holding_message(
            &["Deployment web".into()],
            &["Pod web-1".into(), "Pod web-2".into()],
        );
        assert_eq!(
            m,
            "releasing the slot once these are gone: 1 owned workload object(s) (e.g. Deployment web) and 2 Pod(s) using the credentials (e.g. Pod web-1)"
        );
    }
}
