//! `bench slots` end to end on a tiny scale (private control plane, controller
//! in-process): every phase completes and the figures are consistent.

use vpno_bench::{ControllerMode, SlotsArgs, measure_slots};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_slots_runs_end_to_end_on_a_small_scale() {
    if let Err(why) = prerequisites() {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("control plane unavailable: {why}");
        }
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), "SKIPPED: bench slots smoke test: {why}");
        return;
    }
    let args = SlotsArgs {
        masks: 5,
        providers: 2,
        slots: 3,
        latency_samples: 2,
        concurrency: 4,
        timeout_secs: 120,
        controller: ControllerMode::InProcess,
        no_progress: true,
        ..SlotsArgs::default()
    };
    let report = measure_slots(args).await.expect("bench slots");
    assert_eq!(report.latencies.len(), 2);
    assert!(!report.child_process);
    assert!(report.peak_rss_kib.is_some_and(|k| k > 0));
    // Every Mask needs at least its consumer, reservation and Secret written.
    let io = report.mask_phase_io.expect("controller metrics readable");
    assert!(io.writes >= 3.0 * 5.0, "{io:?}");
    assert!(
        report.all_active > std::time::Duration::ZERO
            && report.raw_writes > std::time::Duration::ZERO
    );
}

/// Whether a control plane can be started here (etcd and binaries present).
fn prerequisites() -> Result<(), String> {
    vpno_testenv::check_prerequisites().map_err(|e| e.to_string())
}
