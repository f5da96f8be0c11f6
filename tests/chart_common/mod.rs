//! What the chart tests share: `scripts/helm` (Helm v4's engine through
//! PyPI's helm-python-sdk, installed by `scripts/setup`), rendering the
//! chart into JSON documents, and finding objects and container flags in
//! them. Included by tests/chart.rs and tests/chart_node.rs.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde_json::Value;

pub const RELEASE: &str = "vpn-operator";
pub const NAMESPACE: &str = "vpn-operator";

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/chart").join(name)
}

/// `scripts/helm` with its arguments.
pub fn helm_command() -> Command {
    let mut cmd = Command::new("python3");
    cmd.arg(repo().join("scripts/helm"));
    cmd
}

/// `true` when `scripts/helm` can run; otherwise prints SKIPPED (or panics
/// under CI=true) once per test.
pub fn helm_available(test: &str) -> bool {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let status = AVAILABLE.get_or_init(|| match helm_command().arg("version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Err(e) => Err(format!("python3 not runnable: {e}")),
    });
    match status {
        Ok(()) => true,
        Err(why) => {
            let why = format!("SKIPPED: {test} needs scripts/helm (run scripts/setup): {why}");
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{why} (CI=true)");
            }
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "{why}");
            false
        }
    }
}

/// Runs `scripts/helm ARGS`; `Ok(stdout)`, or `Err(stdout + stderr)` when it
/// exits non-zero with a Helm error (exit 1). Bad usage or a crash panics.
pub fn helm(args: &[&str]) -> Result<String, String> {
    let out = helm_command()
        .args(args)
        .output()
        .expect("running scripts/helm");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    match out.status.code() {
        Some(0) => Ok(stdout),
        Some(1) => Err(format!("{stdout}{stderr}")),
        other => panic!("scripts/helm {args:?} exited with {other:?}: {stdout}{stderr}"),
    }
}

/// Renders the chart as release `vpn-operator` in namespace `vpn-operator`
/// with extra `scripts/helm template` arguments (-f, --set, ...).
pub fn try_render(extra: &[&str]) -> Result<Vec<Value>, String> {
    let mut args = vec!["template", RELEASE, "--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    let text = helm(&args)?;
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text)
        .unwrap_or_else(|e| panic!("rendered chart is not YAML ({e}):\n{text}"));
    Ok(docs.into_iter().filter(|d| !d.is_null()).collect())
}

pub fn render(extra: &[&str]) -> Vec<Value> {
    try_render(extra).unwrap_or_else(|e| panic!("rendering with {extra:?} failed: {e}"))
}

pub fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

pub fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
}

pub fn get<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    find(docs, kind, name).unwrap_or_else(|| {
        let present: Vec<String> = docs
            .iter()
            .map(|d| format!("{}/{}", d["kind"], d["metadata"]["name"]))
            .collect();
        panic!("no {kind} {name} rendered; present: {present:?}")
    })
}

/// The first container of a Deployment.
pub fn container(deployment: &Value) -> &Value {
    &deployment["spec"]["template"]["spec"]["containers"][0]
}

pub fn args(deployment: &Value) -> Vec<String> {
    container(deployment)["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string arg").to_owned())
        .collect()
}

/// The value following flag `flag` in the container's args.
pub fn flag(deployment: &Value, flag: &str) -> Option<String> {
    let args = args(deployment);
    args.iter()
        .position(|a| a == flag)
        .map(|i| args.get(i + 1).cloned().expect("flag without value"))
}

/// The YAML documents of a file in the repository.
pub fn repo_docs(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo().join(path)).expect(path);
    serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}
