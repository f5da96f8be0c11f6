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
    /// The same reasons as codes (metric labels).
    pub causes: Vec<DownCause>,
}

/// Why a tunnel is down, as a low-cardinality code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DownCause {
    /// The native tunnel's packet processing failed.
    TunnelFailed,
    /// The tunnel interface is missing or down.
    InterfaceDown,
    /// No WireGuard session.
    NoHandshake,
    /// The last handshake is too old.
    StaleHandshake,
    /// No probe has finished yet.
    NoProbe,
    /// The last probe failed.
    ProbeFailed,
    /// The last successful probe is too old.
    StaleProbe,
}

impl DownCause {
    /// Every cause, in a stable order (metric series are created for each).
    pub const ALL: [DownCause; 7] = [
        DownCause::TunnelFailed,
        DownCause::InterfaceDown,
        DownCause::NoHandshake,
        DownCause::StaleHandshake,
        DownCause::NoProbe,
        DownCause::ProbeFailed,
        DownCause::StaleProbe,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DownCause::TunnelFailed => "tunnel_failed",
            DownCause::InterfaceDown => "interface_down",
            DownCause::NoHandshake => "no_handshake",
            DownCause::StaleHandshake => "stale_handshake",
            DownCause::NoProbe => "no_probe",
            DownCause::ProbeFailed => "probe_failed",
            DownCause::StaleProbe => "stale_probe",
        }
    }
}

/// What a tunnel is doing: passing client traffic, healthy but carrying
/// none, or not passing traffic at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelState {
    /// Healthy, and client packets were forwarded since the last tick.
    Up,
    /// Healthy, but no client packet was forwarded since the last tick.
    Idle,
    /// Not healthy (see the causes).
    Down,
}

impl TunnelState {
    /// Every state, in a stable order.
    pub const ALL: [TunnelState; 3] = [TunnelState::Up, TunnelState::Idle, TunnelState::Down];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            TunnelState::Up => "up",
            TunnelState::Idle => "idle",
            TunnelState::Down => "down",
        }
    }
}

/// The state from the verdict and the client packets forwarded since the last tick.
pub fn tunnel_state(verdict: &HealthVerdict, forwarded_since_last: u64) -> TunnelState {
    match (verdict.healthy, forwarded_since_last) {
        (false, _) => TunnelState::Down,
        (true, 0) => TunnelState::Idle,
        (true, _) => TunnelState::Up,
    }
}

/// Whether a handshake happened between two observations of the last
/// handshake's age: a session appeared, or the age went down (WireGuard
/// re-keys every two minutes, so two handshakes within one tick, which this
/// would count once, do not happen in practice).
pub fn handshake_happened(previous: Option<Duration>, now: Option<Duration>) -> bool {
    match (previous, now) {
        (None, Some(_)) => true,
        (Some(before), Some(after)) => after < before,
        _ => false,
    }
}

/// Healthy only while the tunnel passes traffic: for a native tunnel a
/// recent handshake, the interface up, and — when a probe URL is configured
/// — a fresh successful probe through the tunnel.
pub fn evaluate(inputs: &HealthInputs) -> HealthVerdict {
    let mut reasons = Vec::new();
    let mut causes = Vec::new();
    let mut down = |cause: DownCause, reason: String| {
        causes.push(cause);
        reasons.push(reason);
    };
    if let Some(failure) = &inputs.tunnel_failure {
        down(DownCause::TunnelFailed, format!("tunnel failed: {failure}"));
    }
    if !inputs.interface_up {
        down(
            DownCause::InterfaceDown,
            "tunnel interface is missing or down".to_string(),
        );
    }
    if inputs.native {
        match inputs.last_handshake {
            None => down(
                DownCause::NoHandshake,
                "no WireGuard session (no handshake yet, or expired)".into(),
            ),
            Some(age) if age > inputs.max_handshake_age => down(
                DownCause::StaleHandshake,
                format!(
                    "last handshake {}s ago (limit {}s)",
                    age.as_secs(),
                    inputs.max_handshake_age.as_secs()
                ),
            ),
            Some(_) => {}
        }
    }
    if inputs.probe_configured {
        match &inputs.probe {
            None => down(
                DownCause::NoProbe,
                "no probe through the tunnel has finished yet".into(),
            ),
            Some(probe) if !probe.ok => down(
                DownCause::ProbeFailed,
                format!(
                    "probe through the tunnel failed: {}",
                    probe.error.as_deref().unwrap_or("unknown error")
                ),
            ),
            Some(probe) if probe.age > inputs.max_probe_age => down(
                DownCause::StaleProbe,
                format!(
                    "last successful probe is {}ms old (limit {}ms)",
                    probe.age.as_millis(),
                    inputs.max_probe_age.as_millis()
                ),
            ),
            Some(_) => {}
        }
    }
    HealthVerdict {
        healthy: reasons.is_empty(),
        reasons,
        causes,
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

    #[test]
    fn every_reason_has_its_cause_code() {
        let mut i = good();
        i.last_handshake = None;
        i.interface_up = false;
        i.probe = None;
        let v = evaluate(&i);
        assert_eq!(
            v.causes,
            [
                DownCause::InterfaceDown,
                DownCause::NoHandshake,
                DownCause::NoProbe
            ]
        );
        assert_eq!(v.causes.len(), v.reasons.len());
        assert!(evaluate(&good()).causes.is_empty());
    }

    #[test]
    fn idle_is_healthy_without_client_traffic() {
        let healthy = evaluate(&good());
        assert_eq!(tunnel_state(&healthy, 0), TunnelState::Idle);
        assert_eq!(tunnel_state(&healthy, 12), TunnelState::Up);
        let mut i = good();
        i.interface_up = false;
        assert_eq!(tunnel_state(&evaluate(&i), 12), TunnelState::Down);
    }

    #[test]
    fn a_handshake_shows_as_a_younger_age() {
        let s = Duration::from_secs;
        assert!(handshake_happened(None, Some(s(0))));
        assert!(handshake_happened(Some(s(119)), Some(s(1))));
        assert!(!handshake_happened(Some(s(3)), Some(s(4))));
        assert!(!handshake_happened(Some(s(3)), None));
        assert!(!handshake_happened(None, None));
    }
}
