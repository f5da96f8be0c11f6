//! What the proxy Pod's status says about the proxy: a pure reading of the
//! scheduler's and the kubelet's reports (phase, conditions, container
//! states), so that a Pod that cannot run is never shown as a silent
//! "pending". Unit-tested here; [`crate::proxy::derive_state`] uses it.
//!
//! The rules (also in the README's proxy section):
//! * running and ready → `ready`;
//! * phase `Failed` or `Succeeded` (the container stopped for good) → `failed`;
//! * a waiting reason that no retry can fix (`ErrImageNeverPull`,
//!   `InvalidImageName`) → `failed` at once;
//! * an error the kubelet or scheduler keeps retrying (`ErrImagePull`,
//!   `ImagePullBackOff`, `CreateContainerConfigError`, `CrashLoopBackOff`,
//!   `RunContainerError`, `Unschedulable`, a container that exited, ...) →
//!   `starting` with the reason and message, and `failed` once the Pod has
//!   not been ready for [`GIVE_UP_AFTER`];
//! * anything else (`ContainerCreating`, not scheduled yet) → `starting`.
//!
//! The state is derived on every read, so a Pod that recovers after being
//! shown `failed` shows `ready` again.

use std::time::Duration;

use k8s_openapi::api::core::v1::{
    ContainerStateTerminated, ContainerStatus, Pod, PodCondition, PodStatus,
};
use k8s_openapi::jiff::Timestamp;

use crate::proxy::ProxyState;

/// How long a Pod may sit in an error the kubelet retries before the proxy
/// is shown `failed`.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(5 * 60);

/// Waiting reasons that retrying cannot fix: the Pod must be recreated.
const PERMANENT_WAITING: &[&str] = &["ErrImageNeverPull", "InvalidImageName"];

/// Waiting reasons that mean "being set up", not "something is wrong".
const BENIGN_WAITING: &[&str] = &["ContainerCreating", "PodInitializing"];

/// Longest kubelet or container message quoted in the API's `message`.
const MAX_QUOTED: usize = 512;

/// The proxy state the Pod implies, with the reason in words.
pub fn judge_pod(pod: &Pod, now: Timestamp) -> (ProxyState, String) {
    let status = pod.status.clone().unwrap_or_default();
    let node = pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .map(|n| format!(" on node {n}"))
        .unwrap_or_default();
    match status.phase.as_deref() {
        Some("Failed") => {
            return (
                ProxyState::Failed,
                format!(
                    "the proxy Pod failed{}{}; DELETE the proxy to free its VPN slot",
                    pod_detail(&status),
                    exit_detail(&status)
                ),
            );
        }
        Some("Succeeded") => {
            return (
                ProxyState::Failed,
                format!(
                    "the proxy Pod exited{}; DELETE the proxy to free its VPN slot",
                    exit_detail(&status)
                ),
            );
        }
        _ => {}
    }
    if status.phase.as_deref() == Some("Running") && is_ready(&status) {
        return (ProxyState::Ready, "the proxy is running".into());
    }
    let overdue = not_ready_since(pod, &status)
        .is_some_and(|since| now.duration_since(since).unsigned_abs() >= GIVE_UP_AFTER);
    if let Some(problem) = container_problem(&status) {
        return verdict(problem, overdue);
    }
    if let Some(c) = condition(&status, "PodScheduled")
        && c.status == "False"
    {
        let reason = c.reason.as_deref().unwrap_or("NotScheduled");
        let problem = Problem {
            permanent: false,
            retried: reason == "Unschedulable",
            text: format!(
                "the proxy Pod cannot be scheduled: {reason}{}",
                quoted(c.message.as_deref())
            ),
        };
        return verdict(problem, overdue);
    }
    let phase = status.phase.as_deref().unwrap_or("Pending");
    let text = match phase {
        "Running" => format!("the proxy Pod is running{node} but not ready yet"),
        "Unknown" => format!(
            "the proxy Pod's node stopped reporting (phase Unknown){}",
            pod_detail(&status)
        ),
        _ if pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_some() =>
        {
            format!("the proxy Pod is starting{node}{}", waiting_detail(&status))
        }
        _ => "the proxy Pod is waiting to be scheduled".into(),
    };
    (ProxyState::Starting, text)
}

/// An error seen in a container or in scheduling.
#[derive(Debug)]
struct Problem {
    /// Retrying cannot fix it.
    permanent: bool,
    /// The kubelet or scheduler retries it; given up on after [`GIVE_UP_AFTER`].
    retried: bool,
    /// What to tell the user.
    text: String,
}

fn verdict(problem: Problem, overdue: bool) -> (ProxyState, String) {
    if problem.permanent {
        (
            ProxyState::Failed,
            format!(
                "{}; this does not fix itself: DELETE the proxy and fix the cause",
                problem.text
            ),
        )
    } else if problem.retried && overdue {
        let minutes = GIVE_UP_AFTER.as_secs() / 60;
        (
            ProxyState::Failed,
            format!(
                "{} (for more than {minutes} minutes; DELETE the proxy to free its VPN slot)",
                problem.text
            ),
        )
    } else {
        (ProxyState::Starting, problem.text)
    }
}

/// Every container status, init containers first, each with whether it is
/// an init container (for which exiting with 0 is success).
fn containers(status: &PodStatus) -> impl Iterator<Item = (bool, &ContainerStatus)> {
    let init = status.init_container_statuses.iter().flatten();
    let main = status.container_statuses.iter().flatten();
    init.map(|c| (true, c)).chain(main.map(|c| (false, c)))
}

/// The first container (init containers first) that is in trouble.
fn container_problem(status: &PodStatus) -> Option<Problem> {
    containers(status).find_map(|(init, c)| problem_of(init, c))
}

fn problem_of(init: bool, c: &ContainerStatus) -> Option<Problem> {
    let state = c.state.as_ref()?;
    if let Some(waiting) = &state.waiting {
        let reason = waiting.reason.as_deref().unwrap_or_default();
        if reason.is_empty() || BENIGN_WAITING.contains(&reason) {
            return None;
        }
        let last_exit = c
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .map(|t| format!("; last exit {}", exit(t)))
            .unwrap_or_default();
        return Some(Problem {
            permanent: PERMANENT_WAITING.contains(&reason),
            retried: true,
            text: format!(
                "container {}: {reason}{}{last_exit}",
                c.name,
                quoted(waiting.message.as_deref())
            ),
        });
    }
    let terminated = state.terminated.as_ref()?;
    if init && terminated.exit_code == 0 {
        return None;
    }
    Some(Problem {
        permanent: false,
        retried: true,
        text: format!("container {} exited with {}", c.name, exit(terminated)),
    })
}

fn condition<'a>(status: &'a PodStatus, type_: &str) -> Option<&'a PodCondition> {
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == type_)
}

/// Ready, or (with no Ready condition reported) every container running.
fn is_ready(status: &PodStatus) -> bool {
    match condition(status, "Ready") {
        Some(c) => c.status == "True",
        None => status
            .container_statuses
            .iter()
            .flatten()
            .all(|c| c.state.as_ref().is_none_or(|s| s.running.is_some())),
    }
}

/// Since when the Pod has not been ready: the last transition of its Ready
/// (else PodScheduled) condition to False, else its creation.
fn not_ready_since(pod: &Pod, status: &PodStatus) -> Option<Timestamp> {
    ["Ready", "PodScheduled"]
        .iter()
        .filter_map(|t| condition(status, t))
        .find(|c| c.status == "False")
        .and_then(|c| c.last_transition_time.as_ref())
        .or(pod.metadata.creation_timestamp.as_ref())
        .map(|t| t.0)
}

/// `: reason: message` of the Pod itself, or empty.
fn pod_detail(status: &PodStatus) -> String {
    let reason = status.reason.as_deref().unwrap_or_default();
    match (reason.is_empty(), status.message.as_deref()) {
        (true, m) => quoted(m),
        (false, m) => format!(": {reason}{}", quoted(m)),
    }
}

/// ` (ContainerCreating)` while a container waits for a benign reason.
fn waiting_detail(status: &PodStatus) -> String {
    status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref()?.reason.clone())
        .next()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default()
}

/// `; container X exited with code N (reason): message` for each container
/// that terminated, current state or last.
fn exit_detail(status: &PodStatus) -> String {
    containers(status)
        .filter_map(|(init, c)| {
            let state = c.state.as_ref()?;
            let t = state
                .terminated
                .as_ref()
                .or_else(|| c.last_state.as_ref().and_then(|s| s.terminated.as_ref()))?;
            if init && t.exit_code == 0 {
                return None;
            }
            Some(format!("; container {} exited with {}", c.name, exit(t)))
        })
        .collect()
}

/// `code N (reason): message`.
fn exit(t: &ContainerStateTerminated) -> String {
    let reason = t
        .reason
        .as_deref()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    format!(
        "code {}{reason}{}",
        t.exit_code,
        quoted(t.message.as_deref())
    )
}

/// `: message` (trimmed, shortened to [`MAX_QUOTED`] characters), or empty.
fn quoted(message: Option<&str>) -> String {
    let message = message.unwrap_or_default().trim();
    if message.is_empty() {
        return String::new();
    }
    if message.chars().count() <= MAX_QUOTED {
        return format!(": {message}");
    }
    let short: String = message.chars().take(MAX_QUOTED).collect();
    format!(": {short}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        ContainerState, ContainerStateRunning, ContainerStateWaiting, PodSpec,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn now() -> Timestamp {
        "2026-01-01T12:00:00Z".parse().unwrap()
    }

    fn ago(secs: i64) -> Time {
        Time(now() - k8s_openapi::jiff::SignedDuration::from_secs(secs))
    }

    /// A Pod created `age` seconds ago with `status`, scheduled on node-1.
    fn pod(age: i64, status: PodStatus) -> Pod {
        let mut p = Pod {
            spec: Some(PodSpec {
                node_name: Some("node-1".into()),
                ..Default::default()
            }),
            status: Some(status),
            ..Default::default()
        };
        p.metadata.creation_timestamp = Some(ago(age));
        p
    }

    fn waiting(reason: &str, message: &str) -> ContainerStatus {
        ContainerStatus {
            name: "gluetun".into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting {
                    reason: Some(reason.into()),
                    message: Some(message.into()),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn terminated(code: i32, reason: &str, message: &str) -> ContainerStateTerminated {
        ContainerStateTerminated {
            exit_code: code,
            reason: Some(reason.into()),
            message: Some(message.into()),
            ..Default::default()
        }
    }

    fn pending(containers: Vec<ContainerStatus>) -> PodStatus {
        PodStatus {
            phase: Some("Pending".into()),
            container_statuses: Some(containers),
            ..Default::default()
        }
    }

    fn cond(type_: &str, status: &str, reason: &str, message: &str, since: Time) -> PodCondition {
        PodCondition {
            type_: type_.into(),
            status: status.into(),
            reason: Some(reason.into()),
            message: Some(message.into()),
            last_transition_time: Some(since),
            ..Default::default()
        }
    }

    #[test]
    fn image_pull_errors_are_starting_with_the_kubelets_words_then_failed() {
        let msg = "rpc error: pull access denied for qmcgaw/gluetun";
        for reason in ["ErrImagePull", "ImagePullBackOff"] {
            let (state, why) = judge_pod(&pod(30, pending(vec![waiting(reason, msg)])), now());
            assert_eq!(state, ProxyState::Starting, "{why}");
            assert!(why.contains(reason) && why.contains(msg), "{why}");
            assert!(why.contains("gluetun"), "names the container: {why}");
            let (state, why) = judge_pod(&pod(600, pending(vec![waiting(reason, msg)])), now());
            assert_eq!(state, ProxyState::Failed, "{why}");
            assert!(why.contains(reason) && why.contains("5 minutes"), "{why}");
        }
    }

    #[test]
    fn permanent_reasons_fail_at_once() {
        for reason in ["ErrImageNeverPull", "InvalidImageName"] {
            let p = pod(1, pending(vec![waiting(reason, "image not present")]));
            let (state, why) = judge_pod(&p, now());
            assert_eq!(state, ProxyState::Failed, "{reason}: {why}");
            assert!(why.contains(reason) && why.contains("image not present"));
        }
    }

    #[test]
    fn missing_secret_is_starting_until_given_up() {
        let status = pending(vec![waiting(
            "CreateContainerConfigError",
            "secret \"px-abc-uid\" not found",
        )]);
        let (state, why) = judge_pod(&pod(10, status.clone()), now());
        assert_eq!(state, ProxyState::Starting);
        assert!(why.contains("secret \"px-abc-uid\" not found"), "{why}");
        assert_eq!(judge_pod(&pod(301, status), now()).0, ProxyState::Failed);
    }

    #[test]
    fn crash_loop_quotes_the_last_exit_and_counts_from_readiness_loss() {
        let mut c = waiting(
            "CrashLoopBackOff",
            "back-off 40s restarting failed container",
        );
        c.last_state = Some(ContainerState {
            terminated: Some(terminated(1, "Error", "VPN_SERVICE_PROVIDER is not set")),
            ..Default::default()
        });
        // A Pod that has existed for a day but lost readiness a minute ago:
        // still starting; after 10 minutes: failed.
        let mut status = PodStatus {
            phase: Some("Running".into()),
            container_statuses: Some(vec![c]),
            conditions: Some(vec![cond(
                "Ready",
                "False",
                "ContainersNotReady",
                "",
                ago(60),
            )]),
            ..Default::default()
        };
        let (state, why) = judge_pod(&pod(86_400, status.clone()), now());
        assert_eq!(state, ProxyState::Starting, "{why}");
        assert!(
            why.contains("CrashLoopBackOff")
                && why.contains("last exit code 1 (Error)")
                && why.contains("VPN_SERVICE_PROVIDER is not set"),
            "{why}"
        );
        status.conditions = Some(vec![cond("Ready", "False", "", "", ago(600))]);
        assert_eq!(judge_pod(&pod(86_400, status), now()).0, ProxyState::Failed);
    }

    #[test]
    fn unschedulable_says_why() {
        let status = PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![cond(
                "PodScheduled",
                "False",
                "Unschedulable",
                "0/1 nodes are available: 1 Insufficient memory.",
                ago(20),
            )]),
            ..Default::default()
        };
        let mut p = pod(20, status);
        p.spec.as_mut().unwrap().node_name = None;
        let (state, why) = judge_pod(&p, now());
        assert_eq!(state, ProxyState::Starting);
        assert!(why.contains("Unschedulable") && why.contains("Insufficient memory"));
        p.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].last_transition_time =
            Some(ago(900));
        assert_eq!(judge_pod(&p, now()).0, ProxyState::Failed);
    }

    #[test]
    fn pod_phases() {
        let failed = PodStatus {
            phase: Some("Failed".into()),
            reason: Some("Evicted".into()),
            message: Some("The node was low on resource: memory.".into()),
            ..Default::default()
        };
        let (state, why) = judge_pod(&pod(5, failed), now());
        assert_eq!(state, ProxyState::Failed);
        assert!(
            why.contains("Evicted") && why.contains("low on resource"),
            "{why}"
        );

        let exited = PodStatus {
            phase: Some("Succeeded".into()),
            container_statuses: Some(vec![ContainerStatus {
                name: "gluetun".into(),
                state: Some(ContainerState {
                    terminated: Some(terminated(0, "Completed", "")),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let (state, why) = judge_pod(&pod(5, exited), now());
        assert_eq!(state, ProxyState::Failed);
        assert!(why.contains("exited with code 0 (Completed)"), "{why}");

        let running = |ready: Option<&str>| PodStatus {
            phase: Some("Running".into()),
            conditions: ready.map(|r| vec![cond("Ready", r, "", "", ago(1))]),
            container_statuses: Some(vec![ContainerStatus {
                name: "gluetun".into(),
                state: Some(ContainerState {
                    running: Some(ContainerStateRunning::default()),
                    ..Default::default()
                }),
                ..Default::default()
            }]),
            ..Default::default()
        };
        assert_eq!(
            judge_pod(&pod(5, running(Some("True"))), now()).0,
            ProxyState::Ready
        );
        assert_eq!(
            judge_pod(&pod(5, running(None)), now()).0,
            ProxyState::Ready
        );
        let (state, why) = judge_pod(&pod(5, running(Some("False"))), now());
        assert_eq!(state, ProxyState::Starting);
        assert!(why.contains("not ready"), "{why}");
    }

    #[test]
    fn setting_up_is_plain_starting_even_when_slow() {
        let p = pod(3600, pending(vec![waiting("ContainerCreating", "")]));
        let (state, why) = judge_pod(&p, now());
        assert_eq!(state, ProxyState::Starting);
        assert!(
            why.contains("node-1") && why.contains("ContainerCreating"),
            "{why}"
        );
        let mut unscheduled = pod(1, PodStatus::default());
        unscheduled.spec.as_mut().unwrap().node_name = None;
        let (state, why) = judge_pod(&unscheduled, now());
        assert_eq!(state, ProxyState::Starting);
        assert!(why.contains("scheduled"), "{why}");
    }

    #[test]
    fn long_messages_are_shortened() {
        let long = "x".repeat(5000);
        let (_, why) = judge_pod(
            &pod(1, pending(vec![waiting("ErrImagePull", &long)])),
            now(),
        );
        assert!(why.len() < 1000 && why.ends_with('…'), "{}", why.len());
    }
}
