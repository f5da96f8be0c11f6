//! What the operator must hear about, as Kubernetes Events on the
//! MaskGateway concerned: a gateway network this node cannot serve, or
//! serves with a reduced MTU. [`notices`] decides (pure, only what changed
//! since the last pass); [`NoticeSink`] publishes; [`KubeEvents`] is the
//! real one (kube's Recorder, events.k8s.io/v1).

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tracing::warn;

use crate::Summary;
use crate::gateways::GatewayInfo;

/// One Warning Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The MaskGateway's namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
    /// CamelCase reason.
    pub reason: &'static str,
    /// Details, naming the node.
    pub note: String,
}

/// Reason of a gateway network this node cannot serve.
pub const REASON_FAILED: &str = "NodeNetworkFailed";
/// Reason of a gateway network served below its tunnel MTU.
pub const REASON_MTU: &str = "MtuReduced";

/// The notices for what changed from `before` to `after` on `node`.
pub fn notices(
    node: &str,
    before: &Summary,
    after: &Summary,
    gateways: &[GatewayInfo],
) -> Vec<Notice> {
    let find = |id: &str| {
        gateways
            .iter()
            .find(|g| format!("{}/{}", g.namespace, g.name) == id)
    };
    let notice = |gw: &GatewayInfo, reason, note: String| Notice {
        namespace: gw.namespace.clone(),
        name: gw.name.clone(),
        uid: gw.uid.clone(),
        reason,
        note,
    };
    let mut out = Vec::new();
    for (id, why) in &after.failed {
        if before.failed.iter().any(|(i, w)| i == id && w == why) {
            continue;
        }
        if let Some(gw) = find(id) {
            out.push(notice(gw, REASON_FAILED, format!("node {node}: {why}")));
        }
    }
    for (id, d) in &after.served {
        let Some(why) = &d.mtu_reduced else { continue };
        if before.served.get(id).and_then(|b| b.mtu_reduced.as_ref()) == Some(why) {
            continue;
        }
        if let Some(gw) = find(id) {
            out.push(notice(
                gw,
                REASON_MTU,
                format!("node {node}: MTU {}: {why}", d.mtu),
            ));
        }
    }
    out
}

/// Where notices go.
#[allow(async_fn_in_trait)]
pub trait NoticeSink {
    /// Publishes one; failures are logged, never fatal.
    async fn publish(&self, notice: &Notice);
}

/// Events through kube's Recorder.
pub struct KubeEvents {
    recorder: Recorder,
}

impl KubeEvents {
    /// Events reported as `vpn-operator-node` on `node`.
    pub fn new(client: kube::Client, node: &str) -> Self {
        Self {
            recorder: Recorder::new(
                client,
                Reporter {
                    controller: "vpn-operator-node".into(),
                    instance: Some(node.to_string()),
                },
            ),
        }
    }
}

impl NoticeSink for KubeEvents {
    async fn publish(&self, n: &Notice) {
        let regarding = ObjectReference {
            api_version: Some("vpn.beebs.dev/v1".into()),
            kind: Some("MaskGateway".into()),
            namespace: Some(n.namespace.clone()),
            name: Some(n.name.clone()),
            uid: Some(n.uid.clone()),
            ..Default::default()
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: n.reason.into(),
            note: Some(n.note.clone()),
            action: "ServeGatewayNetwork".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &regarding).await {
            warn!(reason = n.reason, error = %e, "could not publish event");
        }
    }
}

/// No Events (tests, `--uninstall`).
pub struct NoEvents;

impl NoticeSink for NoEvents {
    async fn publish(&self, _: &Notice) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Desired, VxlanParams};

    fn gw() -> GatewayInfo {
        let mut object = vpno_api::gateway::MaskGateway::new("egress", Default::default());
        object.metadata.uid = Some("u1".into());
        object.metadata.namespace = Some("vpn".into());
        crate::gateways::gateway_info(&object).unwrap()
    }

    fn desired(reduced: Option<&str>) -> Desired {
        Desired {
            bridge: "b".into(),
            vxlan: "x".into(),
            params: VxlanParams {
                vni: 1,
                port: 4789,
                local: "192.0.2.1".parse().unwrap(),
            },
            mtu: 1400,
            mtu_reduced: reduced.map(str::to_string),
            remotes: Default::default(),
            slice: "192.168.24.64/26".parse().unwrap(),
            skipped: vec![],
        }
    }

    #[test]
    fn only_new_failures_and_reductions_are_noticed() {
        let gws = [gw()];
        let failed = Summary {
            failed: vec![("vpn/egress".into(), "no underlay".into())],
            ..Default::default()
        };
        let n = notices("a", &Summary::default(), &failed, &gws);
        assert_eq!(n.len(), 1);
        assert_eq!((n[0].reason, n[0].uid.as_str()), (REASON_FAILED, "u1"));
        assert_eq!(n[0].note, "node a: no underlay");
        assert!(notices("a", &failed, &failed, &gws).is_empty(), "said once");

        let reduced = Summary {
            served: [("vpn/egress".to_string(), desired(Some("underlay 1450")))].into(),
            ..Default::default()
        };
        let n = notices("a", &failed, &reduced, &gws);
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].reason, REASON_MTU);
        assert!(n[0].note.contains("MTU 1400") && n[0].note.contains("underlay 1450"));
        assert!(notices("a", &reduced, &reduced, &gws).is_empty());
        let fine = Summary {
            served: [("vpn/egress".to_string(), desired(None))].into(),
            ..Default::default()
        };
        assert!(notices("a", &reduced, &fine, &gws).is_empty());
    }
}
