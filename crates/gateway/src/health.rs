//! The health decision: pure logic over what the agent observed.

use std::time::Duration;

use serde::Serialize;

/// Outcome of the latest probe through the tunnel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeOutcome {
    /// Whether the probe URL answered with a 2xx status.
    pub ok: bool,
    /// What went wrong, when not ok.
    pub error: Option<String>,
    /// The public IP the echo service reported, when its body was one.
    pub public_ip: Option<String>,
    /// How long ago the probe finished.
    #[serde(skip)]
    pub age: Duration,
    /// How long it took.
    pub latency_ms: u64,
}

/// What [`evaluate`] looks at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthInputs {
    /// Native tunnel: time since the last completed handshake (`None` = no
    /// session). External tunnel: not applicable (`native == false`).
    pub native: bool,
    /// Last handshake age of the native tunnel.
    pub last_handshake: Option<Duration>,
    /// Failure of the native tunnel's packet processing, if any.
    pub tunnel_failure: Option<String>,
    /// Whether the tunnel interface exists and is up.
    pub interface_up: bool,
    /// Whether a probe URL is configured.
    pub probe_configured: bool,
    /// The latest probe, if one finished yet.
    pub probe: Option<ProbeOutcome>,
    /// A handshake older than this is stale.
    pub max_handshake_age: Duration,
    /// A probe result older than this is stale.
    pub max_probe_age: Duration,
}

/// The verdict served by `/healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthVerdict {
    /// 200 when true, 503 otherwise.
    pub healthy: bool,
    /// Why it is unhealthy (empty when healthy).
    pub reasons: Vec<String>,
}

/// Healthy only while the tunnel passes traffic: for a native tunnel a
/// recent handshake, the interface up, and — when a probe URL is configured
/// — a fresh successful probe through the tunnel.
pub fn evaluate(inputs: &HealthInputs) -> HealthVerdict {
    let mut reasons = Vec::new();
    if let Some(failure) = &inputs.tunnel_failure {
        reasons.push(format!("tunnel failed: {failure}"));
    }
    if !inputs.interface_up {
        reasons.push("tunnel interface is missing or down".to_string());
    }
    if inputs.native {
        match inputs.last_handshake {
            None => reasons.push("no WireGuard session (no handshake yet, or expired)".into()),
            Some(age) if age > inputs.max_handshake_age => reasons.push(format!(
                "last handshake {}s ago (limit {}s)",
                age.as_secs(),
                inputs.max_handshake_age.as_secs()
            )),
            Some(_) => {}
        }
    }
    if inputs.probe_configured {
        match &inputs.probe {
            None => reasons.push("no probe through the tunnel has finished yet".into()),
            Some(probe) if !probe.ok => reasons.push(format!(
                "probe through the tunnel failed: {}",
                probe.error.as_deref().unwrap_or("unknown error")
            )),
            Some(probe) if probe.age > inputs.max_probe_age => reasons.push(format!(
                "last successful probe is {}ms old (limit {}ms)",
                probe.age.as_millis(),
                inputs.max_probe_age.as_millis()
            )),
            Some(_) => {}
        }
    }
    HealthVerdict {
        healthy: reasons.is_empty(),
        reasons,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> HealthInputs {
        HealthInputs {
            native: true,
            last_handshake: Some(Duration::from_secs(5)),
            tunnel_failure: None,
            interface_up: true,
            probe_configured: true,
            probe: Some(ProbeOutcome {
                ok: true,
                error: None,
                public_ip: Some("203.0.113.1".into()),
                age: Duration::from_millis(300),
                latency_ms: 3,
            }),
            max_handshake_age: Duration::from_secs(180),
            max_probe_age: Duration::from_secs(3),
        }
    }

    #[test]
    fn healthy_only_when_everything_holds() {
        assert!(evaluate(&good()).healthy);
        type Mutation = Box<dyn Fn(&mut HealthInputs)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (
                Box::new(|i| i.last_handshake = None),
                "no WireGuard session",
            ),
            (
                Box::new(|i| i.last_handshake = Some(Duration::from_secs(200))),
                "last handshake",
            ),
            (
                Box::new(|i| i.tunnel_failure = Some("boom".into())),
                "tunnel failed: boom",
            ),
            (Box::new(|i| i.interface_up = false), "interface"),
            (Box::new(|i| i.probe = None), "no probe"),
            (
                Box::new(|i| {
                    let p = i.probe.as_mut().unwrap();
                    p.ok = false;
                    p.error = Some("timed out".into());
                }),
                "probe through the tunnel failed: timed out",
            ),
            (
                Box::new(|i| i.probe.as_mut().unwrap().age = Duration::from_secs(10)),
                "old",
            ),
        ];
        for (mutate, reason) in cases {
            let mut inputs = good();
            mutate(&mut inputs);
            let verdict = evaluate(&inputs);
            assert!(!verdict.healthy);
            assert!(
                verdict.reasons.iter().any(|r| r.contains(reason)),
                "{verdict:?} lacks {reason:?}"
            );
        }
    }

    #[test]
    fn external_tunnel_without_probe_needs_only_the_interface() {
        let mut inputs = good();
        inputs.native = false;
        inputs.last_handshake = None;
        inputs.probe_configured = false;
        inputs.probe = None;
        assert!(evaluate(&inputs).healthy);
        inputs.interface_up = false;
        assert!(!evaluate(&inputs).healthy);
    }
}
