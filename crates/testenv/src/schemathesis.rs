//! Runs [schemathesis](https://schemathesis.readthedocs.io) (PyPI, pinned in
//! scripts/python-requirements.txt, installed by scripts/setup) against an
//! API's `/openapi.json` and fails unless it found nothing: no 5xx, every
//! answer as documented, no schema-valid request refused and no
//! schema-invalid one accepted. Shared by the in-process API test
//! (crates/server/tests/schemathesis.rs) and the in-cluster e2e
//! (tests/e2e_cluster.rs), so both hold the API to the same checks.
//!
//! Bounded: `--max-examples` per operation and phase, and a deadline on the
//! whole run. Prints `SKIPPED:` without schemathesis, and fails instead under
//! `CI=true`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// Fixed unless `VPNO_SCHEMATHESIS_SEED` says otherwise, so that CI runs are
/// reproducible; set another seed to explore further.
pub const DEFAULT_SEED: &str = "20261201";

/// One bounded schemathesis run.
#[derive(Debug, Clone)]
pub struct Run<'a> {
    /// Base URL of the API (`/openapi.json` is appended).
    pub base_url: String,
    /// Bearer token sent with every request.
    pub token: &'a str,
    /// Generated requests per operation and phase.
    pub max_examples: u32,
    /// The whole run must finish within this.
    pub deadline: Duration,
    /// Further CLI arguments: which operations (`--include-tag`, …) and phases.
    pub selection: &'a [&'a str],
    /// How many operations it must have tested (a run testing nothing fails).
    pub operations: usize,
}

/// The schemathesis CLI: `$VPNO_SCHEMATHESIS`, else scripts/setup's
/// virtualenv (`$VPNO_VENV`, default /opt/vpn-operator/venv), else `PATH`.
pub fn program() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("VPNO_SCHEMATHESIS") {
        return Some(PathBuf::from(path));
    }
    let venv = std::env::var_os("VPNO_VENV").unwrap_or_else(|| "/opt/vpn-operator/venv".into());
    let in_venv = PathBuf::from(venv).join("bin/schemathesis");
    if in_venv.is_file() {
        return Some(in_venv);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join("schemathesis"))
        .find(|p| p.is_file())
}

impl Run<'_> {
    /// Runs schemathesis and panics with its report unless it found nothing
    /// and tested [`Run::operations`] operations; returns the report, or
    /// `None` after `SKIPPED:` when schemathesis is not installed (panics
    /// instead under `CI=true`).
    pub async fn check(&self) -> Option<String> {
        let Some(program) = program() else {
            let why =
                "schemathesis not installed (scripts/setup installs it; or set VPNO_SCHEMATHESIS)";
            assert!(!crate::ci(), "{why} (CI=true: not skipping)");
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
            return None;
        };
        let seed = std::env::var("VPNO_SCHEMATHESIS_SEED").unwrap_or_else(|_| DEFAULT_SEED.into());
        let (success, report) = self.execute(&program, &seed).await;
        assert!(
            success && report.contains("No issues found"),
            "schemathesis (seed {seed}) found problems; its report:\n{report}"
        );
        let tested = format!("Tested: {}", self.operations);
        assert!(
            report.lines().any(|l| l.trim() == tested),
            "schemathesis should have tested {} operations; its report:\n{report}",
            self.operations,
        );
        Some(report)
    }

    /// Runs the CLI in a scratch directory; returns (exit success, stdout+stderr).
    async fn execute(&self, program: &std::path::Path, seed: &str) -> (bool, String) {
        let workdir = std::env::temp_dir().join(crate::unique_name("schemathesis"));
        std::fs::create_dir_all(&workdir).unwrap();
        let mut command = tokio::process::Command::new(program);
        command
            .arg("run")
            .arg(format!("{}/openapi.json", self.base_url))
            .args(["--header", &format!("Authorization: Bearer {}", self.token)])
            .args(["--checks", "all"])
            .args(["--mode", "all"])
            .args(["--max-examples", &self.max_examples.to_string()])
            .args(["--seed", seed])
            .args(["--request-timeout", "30"])
            .args(["--workers", "2"])
            .args(["--generation-database", "none"])
            // "Data generation is too slow" is a timing threshold on the test
            // machine's load, not a property of the API: off.
            .args(["--suppress-health-check", "too_slow"])
            .args(["--no-color", "--output-truncate", "false"])
            .args(self.selection)
            .current_dir(&workdir)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let run = tokio::time::timeout(self.deadline, command.output()).await;
        let _ = std::fs::remove_dir_all(&workdir);
        let deadline = self.deadline;
        let output = run
            .unwrap_or_else(|_| panic!("schemathesis did not finish within {deadline:?}"))
            .unwrap_or_else(|e| panic!("running {}: {e}", program.display()));
        let report = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), report)
    }
}
