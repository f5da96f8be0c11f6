//! The verification Pod: rendering, overrides, and reading its outcome.

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use serde_json::json;
use vpno_api::VerifyOverrides;

/// Inputs of [`render_pod`].
#[derive(Debug, Clone)]
pub struct VerifyPodParams<'a> {
    /// Pod name.
    pub name: &'a str,
    /// Namespace (the provider's).
    pub namespace: &'a str,
    /// UID of the provider (label value).
    pub provider_uid: &'a str,
    /// Name and UID of the verification MaskConsumer (owner).
    pub consumer_name: &'a str,
    /// UID of the verification MaskConsumer.
    pub consumer_uid: &'a str,
    /// Credentials Secret in the namespace (from the consumer).
    pub secret: &'a str,
    /// gluetun image.
    pub gluetun_image: &'a str,
    /// curl image.
    pub curl_image: &'a str,
    /// URL answering with the caller's public IP.
    pub ip_url: &'a str,
    /// `verify.overrides`.
    pub overrides: Option<&'a VerifyOverrides>,
}

use crate::ControllerError;

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// Renders the verification Pod: `init` records the unmasked public IP,
/// `vpn` runs gluetun with the credentials, `probe` succeeds once the public
/// IP differs. Overrides are merged (JSON merge patch, RFC 7386) onto the Pod
/// and onto each container; identity fields (name, namespace, owner, label)
/// are then re-imposed so the controller can still find and own the Pod.
pub fn render_pod(p: &VerifyPodParams<'_>) -> Result<Pod, ControllerError> {
    let url = shell_quote(p.ip_url);
    let init_script = format!(
        "set -e; ip=$(curl -fsS --max-time 15 {url}); echo \"$ip\" > /shared/unmasked-ip; echo \"unmasked public IP: $ip\""
    );
    let probe_script = format!(
        "unmasked=$(cat /shared/unmasked-ip); while true; do \
         ip=$(curl -fsS --max-time 10 {url} || true); \
         if [ -n \"$ip\" ] && [ \"$ip\" != \"$unmasked\" ]; then echo \"public IP changed from $unmasked to $ip\"; exit 0; fi; \
         sleep 2; done"
    );
    let mut init = json!({
        "name": "init",
        "image": p.curl_image,
        "command": ["sh", "-c", init_script],
        "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
    });
    let mut vpn = json!({
        "name": "vpn",
        "image": p.gluetun_image,
        "envFrom": [{"secretRef": {"name": p.secret}}],
        "securityContext": {"capabilities": {"add": ["NET_ADMIN"]}},
    });
    let mut probe = json!({
        "name": "probe",
        "image": p.curl_image,
        "command": ["sh", "-c", probe_script],
        "volumeMounts": [{"name": "shared", "mountPath": "/shared"}],
    });
    if let Some(c) = p.overrides.and_then(|o| o.containers.as_ref()) {
        if let Some(o) = &c.init {
            json_patch::merge(&mut init, o);
        }
        if let Some(o) = &c.vpn {
            json_patch::merge(&mut vpn, o);
        }
        if let Some(o) = &c.probe {
            json_patch::merge(&mut probe, o);
        }
    }
    for (c, name) in [
        (&mut init, "init"),
        (&mut vpn, "vpn"),
        (&mut probe, "probe"),
    ] {
        c["name"] = json!(name);
    }
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "initContainers": [init],
            "containers": [vpn, probe],
        }
    });
    if let Some(o) = p.overrides.and_then(|o| o.pod.as_ref()) {
        json_patch::merge(&mut pod, o);
    }
    let meta = &mut pod["metadata"];
    if !meta.is_object() {
        *meta = json!({});
    }
    meta["name"] = json!(p.name);
    meta["namespace"] = json!(p.namespace);
    if !meta["labels"].is_object() {
        meta["labels"] = json!({});
    }
    meta["labels"][super::VERIFY_LABEL] = json!(p.provider_uid);
    meta["ownerReferences"] = json!([{
        "apiVersion": "vpn.beebs.dev/v1",
        "kind": "MaskConsumer",
        "name": p.consumer_name,
        "uid": p.consumer_uid,
        "controller": true,
        "blockOwnerDeletion": true,
    }]);
    serde_json::from_value(pod).map_err(|e| ControllerError::InvalidOverrides(e.to_string()))
}

fn describe_container(s: &ContainerStatus) -> Option<String> {
    let st = s.state.as_ref()?;
    if let Some(t) = &st.terminated {
        let reason = t
            .reason
            .as_deref()
            .map(|r| format!(" ({r})"))
            .unwrap_or_default();
        let msg = t
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return Some(format!(
            "container {} terminated with exit code {}{reason}{msg}",
            s.name, t.exit_code
        ));
    }
    if let Some(w) = &st.waiting {
        let reason = w.reason.as_deref().unwrap_or("waiting");
        let msg = w
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return Some(format!("container {} waiting ({reason}{msg})", s.name));
    }
    if st.running.is_some() {
        return Some(format!("container {} running", s.name));
    }
    None
}

/// Reads a verification Pod's progress. Success is the Pod phase `Succeeded`
/// or the `probe` container having exited 0 (gluetun itself never exits).
pub fn pod_progress(pod: &Pod) -> super::verify::PodProgress {
    use super::verify::PodProgress;
    let status = pod.status.clone().unwrap_or_default();
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let all: Vec<&ContainerStatus> = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .collect();
    let probe_ok = all.iter().any(|s| {
        s.name == "probe"
            && s.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0)
    });
    if phase == "Succeeded" || probe_ok {
        return PodProgress::Succeeded;
    }
    let failed_container = all
        .iter()
        .find(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code != 0)
        })
        .and_then(|s| describe_container(s));
    if phase == "Failed" || failed_container.is_some() {
        let detail = failed_container
            .or_else(|| status.message.clone().map(|m| format!("pod failed: {m}")))
            .unwrap_or_else(|| "pod phase Failed".to_string());
        return PodProgress::Failed { detail };
    }
    let parts: Vec<String> = all.iter().filter_map(|s| describe_container(s)).collect();
    let detail = if parts.is_empty() {
        format!("pod phase {phase}")
    } else {
        format!("pod phase {phase}; {}", parts.join("; "))
    };
    PodProgress::Running { detail }
}

#[cfg(test)]
mod tests {
    use super::super::verify::PodProgress;
    use super::*;
    use serde_json::Value;
    use vpno_api::ContainerOverrides;

    fn params<'a>(o: Option<&'a VerifyOverrides>) -> VerifyPodParams<'a> {
        VerifyPodParams {
            name: "vpno-verify-nord",
            namespace: "vpn",
            provider_uid: "p-uid",
            consumer_name: "vpno-verify-nord",
            consumer_uid: "c-uid",
            secret: "vpno-verify-nord-p-uid",
            gluetun_image: "qmcgaw/gluetun",
            curl_image: "curl",
            ip_url: "https://ip.example",
            overrides: o,
        }
    }

    #[test]
    fn renders_three_containers_with_credentials_and_owner() {
        let pod = render_pod(&params(None)).unwrap();
        let spec = pod.spec.unwrap();
        assert_eq!(spec.init_containers.as_ref().unwrap()[0].name, "init");
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["vpn", "probe"]);
        let env_from = spec.containers[0].env_from.as_ref().unwrap();
        assert_eq!(
            env_from[0].secret_ref.as_ref().unwrap().name,
            "vpno-verify-nord-p-uid"
        );
        let owner = &pod.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.uid.as_str(), owner.controller),
            ("MaskConsumer", "c-uid", Some(true))
        );
        assert_eq!(
            pod.metadata.labels.unwrap()[crate::plan::VERIFY_LABEL],
            "p-uid"
        );
        assert!(spec.containers[1].command.as_ref().unwrap()[2].contains("'https://ip.example'"));
    }

    #[test]
    fn overrides_merge_onto_pod_and_containers_but_keep_identity() {
        let o = VerifyOverrides {
            pod: Some(
                json!({"metadata": {"name": "evil", "labels": {"team": "vpn"}}, "spec": {"nodeSelector": {"zone": "a"}}}),
            ),
            containers: Some(ContainerOverrides {
                init: None,
                vpn: Some(
                    json!({"image": "my/gluetun:v3", "env": [{"name": "VPN_TYPE", "value": "wireguard"}]}),
                ),
                probe: Some(json!({"resources": {"limits": {"cpu": "100m"}}, "name": "renamed"})),
            }),
        };
        let pod = render_pod(&params(Some(&o))).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("vpno-verify-nord"));
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["team"], "vpn");
        assert_eq!(labels[crate::plan::VERIFY_LABEL], "p-uid");
        let spec = pod.spec.unwrap();
        assert_eq!(spec.node_selector.unwrap()["zone"], "a");
        assert_eq!(spec.containers[0].image.as_deref(), Some("my/gluetun:v3"));
        assert_eq!(spec.containers[0].env.as_ref().unwrap()[0].name, "VPN_TYPE");
        assert!(
            spec.containers[0].env_from.is_some(),
            "merge keeps generated fields"
        );
        assert_eq!(spec.containers[1].name, "probe");
        assert!(spec.containers[1].resources.is_some());
    }

    #[test]
    fn invalid_overrides_are_reported_not_panicked() {
        let o = VerifyOverrides {
            pod: Some(json!({"spec": {"containers": "nope"}})),
            containers: None,
        };
        let err = render_pod(&params(Some(&o))).unwrap_err();
        assert!(err.to_string().contains("verify.overrides"));
    }

    fn pod_with(status: Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "status": status})).unwrap()
    }

    #[test]
    fn reads_progress_from_status() {
        assert_eq!(
            pod_progress(&pod_with(json!({"phase": "Succeeded"}))),
            PodProgress::Succeeded
        );
        let probe_done = json!({"phase": "Running", "containerStatuses": [
            {"name": "vpn", "ready": true, "restartCount": 0, "image": "g", "imageID": "", "state": {"running": {}}},
            {"name": "probe", "ready": false, "restartCount": 0, "image": "c", "imageID": "", "state": {"terminated": {"exitCode": 0}}}]});
        assert_eq!(pod_progress(&pod_with(probe_done)), PodProgress::Succeeded);
        let vpn_failed = json!({"phase": "Failed", "containerStatuses": [
            {"name": "vpn", "ready": false, "restartCount": 0, "image": "g", "imageID": "", "state": {"terminated": {"exitCode": 1, "reason": "Error"}}}]});
        match pod_progress(&pod_with(vpn_failed)) {
            PodProgress::Failed { detail } => assert!(
                detail.contains("container vpn terminated with exit code 1 (Error)"),
                "{detail}"
            ),
            other => panic!("{other:?}"),
        }
        match pod_progress(&pod_with(json!({}))) {
            PodProgress::Running { detail } => assert_eq!(detail, "pod phase Pending"),
            other => panic!("{other:?}"),
        }
        match pod_progress(&pod_with(json!({"phase": "Failed", "message": "evicted"}))) {
            PodProgress::Failed { detail } => assert!(detail.contains("evicted")),
            other => panic!("{other:?}"),
        }
    }
}
