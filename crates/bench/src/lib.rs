//! Control-plane benchmarks run by `vpn-operator bench slots`.
//!
//! `bench slots` starts a private control plane ([`vpno_testenv::TestEnv`]),
//! runs the Mask controller against it, and measures in one run:
//!
//! 1. the time to make 4×N raw object writes (ConfigMap creates) on that API
//!    server, as a yardstick: four writes (consumer, reservation, credentials
//!    Secret, consumer status) are the least a Mask can cost;
//! 2. the time until N Masks, created at once over P providers × S slots
//!    (verification skipped), are all `Active`, and its ratio to (1);
//! 3. the waiting→assigned latency: with every slot taken and extra Masks
//!    `Waiting`, an `Active` Mask is deleted and the time until a waiting one
//!    becomes `Active` is taken (several samples; p50, p99 and max);
//! 4. the controller's peak resident set size (`VmHWM`).
//!
//! The controller runs as a child process (`vpn-operator controller
//! --kubeconfig ...`, so `VmHWM` is the controller's alone) when the bench
//! runs inside the `vpn-operator` binary, else in-process (`VmHWM` is then the
//! whole bench process's); `--controller` chooses explicitly.
#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use indicatif::{ProgressBar, ProgressStyle};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use vpno_api::{
    Mask, MaskPhase, MaskProvider, MaskProviderSpec, MaskSpec, ProviderPhase, VerifySpec,
};
use vpno_testenv::TestEnv;

/// Where the controller under test runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ControllerMode {
    /// Child process when running inside the `vpn-operator` binary, else in-process.
    Auto,
    /// `vpn-operator controller` as a child process (peak RSS is the controller's alone).
    Child,
    /// `vpno_controller::run_with_client` inside the bench process.
    InProcess,
}

/// The least number of API writes one Mask costs (consumer, reservation,
/// credentials Secret, consumer status): the yardstick is this many raw
/// writes per Mask.
pub const RAW_WRITES_PER_MASK: u32 = 4;

/// Arguments of `vpn-operator bench slots`.
#[derive(Debug, Clone, clap::Args)]
pub struct SlotsArgs {
    /// Number of Masks created at once (at most providers × slots).
    #[arg(long, default_value_t = 1000)]
    pub masks: u32,
    /// Number of MaskProviders.
    #[arg(long, default_value_t = 20)]
    pub providers: u32,
    /// `maxSlots` of every provider.
    #[arg(long, default_value_t = 50)]
    pub slots: u32,
    /// Requests in flight while creating Masks and raw objects.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Waiting→assigned latency samples.
    #[arg(long, default_value_t = 7)]
    pub latency_samples: u32,
    /// Upper bound, in seconds, for each waiting phase of the bench.
    #[arg(long, default_value_t = 300)]
    pub timeout_secs: u64,
    /// Where the controller runs.
    #[arg(long, value_enum, default_value_t = ControllerMode::Auto)]
    pub controller: ControllerMode,
    /// Binary to run as `<bin> controller` in child mode (default: this executable).
    #[arg(long)]
    pub controller_bin: Option<PathBuf>,
    /// Hide the progress bars.
    #[arg(long)]
    pub no_progress: bool,
}

impl Default for SlotsArgs {
    fn default() -> Self {
        SlotsArgs {
            masks: 1000,
            providers: 20,
            slots: 50,
            concurrency: 16,
            latency_samples: 7,
            timeout_secs: 300,
            controller: ControllerMode::Auto,
            controller_bin: None,
            no_progress: false,
        }
    }
}

/// Errors of the benchmarks.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The arguments do not describe a runnable benchmark.
    #[error("invalid arguments: {0}")]
    InvalidArgs(String),
    /// The control plane did not start.
    #[error("starting the control plane: {0}")]
    TestEnv(#[from] vpno_testenv::TestEnvError),
    /// An API request failed.
    #[error("{context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what} ({detail})")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
        /// The state reached.
        detail: String,
    },
    /// The controller failed or exited.
    #[error("controller: {0}")]
    Controller(String),
    /// Starting the controller process or reading its status failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn kube_err(context: impl Into<String>) -> impl FnOnce(kube::Error) -> BenchError {
    let context = context.into();
    move |source| BenchError::Kube { context, source }
}

/// Figures measured by one run of `bench slots`.
#[derive(Debug, Clone)]
pub struct SlotsReport {
    /// Control-plane start-up time.
    pub startup: Duration,
    /// Time until every Mask was `Active`, from the first create.
    pub all_active: Duration,
    /// Time to make 4×N raw ConfigMap creates (the floor of N Masks).
    pub raw_writes: Duration,
    /// Waiting→assigned latencies, one per sample.
    pub latencies: Vec<Duration>,
    /// Controller peak RSS in KiB, and what it covers.
    pub peak_rss_kib: Option<u64>,
    /// Whether the controller ran as a child process.
    pub child_process: bool,
    /// The controller's API calls and reconciles while the Masks became Active.
    pub mask_phase_io: Option<IoCounts>,
}

/// Runs the slot-assignment benchmark and prints its figures.
pub async fn run_slots(args: SlotsArgs) -> Result<(), BenchError> {
    measure_slots(args).await.map(|_| ())
}

/// Runs the slot-assignment benchmark, prints its figures and returns them.
pub async fn measure_slots(args: SlotsArgs) -> Result<SlotsReport, BenchError> {
    validate(&args)?;
    vpno_testenv::install_crypto_provider();
    let child = match args.controller {
        ControllerMode::Child => true,
        ControllerMode::InProcess => false,
        ControllerMode::Auto => {
            args.controller_bin.is_some()
                || std::env::current_exe()
                    .ok()
                    .and_then(|p| p.file_name().map(|n| n == "vpn-operator"))
                    .unwrap_or(false)
        }
    };
    println!(
        "bench slots: {} Masks over {} providers x {} slots, controller {}",
        args.masks,
        args.providers,
        args.slots,
        if child {
            "as a child process"
        } else {
            "in-process"
        }
    );
    println!("starting control plane (etcd + kube-apiserver + kube-controller-manager v1.20)...");
    let env = tokio::task::spawn_blocking(TestEnv::start)
        .await
        .map_err(|e| BenchError::Controller(format!("start-up task failed: {e}")))??;
    let startup = env.startup_duration();
    println!(
        "control plane ready in {:.1} s at {}",
        startup.as_secs_f64(),
        env.server_url()
    );

    let rss_before = vm_hwm_kib(None);
    let controller = match RunningController::start(&env, child, args.controller_bin.clone()).await
    {
        Ok(c) => c,
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || env.stop()).await;
            return Err(e);
        }
    };
    let result = measure(&env, &args, &controller).await;
    let peak_rss_kib = controller.peak_rss_kib();
    let controller_log = controller.log.clone();
    let stopped = controller.stop().await;
    let _ = tokio::task::spawn_blocking(move || env.stop()).await;
    let Measured {
        all_active,
        raw_writes,
        latencies,
        mask_phase_io,
    } = match (result, stopped) {
        (Ok(m), Ok(())) => m,
        (Err(e), _) | (Ok(_), Err(e)) => {
            if let Some(log) = controller_log {
                eprintln!("controller log was {}", log.display());
            }
            return Err(e);
        }
    };
    let report = SlotsReport {
        startup,
        all_active,
        raw_writes,
        latencies,
        peak_rss_kib,
        child_process: child,
        mask_phase_io,
    };
    print_report(&args, &report, rss_before);
    Ok(report)
}

fn validate(args: &SlotsArgs) -> Result<(), BenchError> {
    let capacity = u64::from(args.providers) * u64::from(args.slots);
    if args.masks == 0 || args.providers == 0 || args.slots == 0 {
        return Err(BenchError::InvalidArgs(
            "--masks, --providers and --slots must be at least 1".into(),
        ));
    }
    if u64::from(args.masks) > capacity {
        return Err(BenchError::InvalidArgs(format!(
            "--masks {} exceeds the {capacity} slots of {} providers x {} slots; not all could become Active",
            args.masks, args.providers, args.slots
        )));
    }
    if args.latency_samples > args.masks {
        return Err(BenchError::InvalidArgs(
            "--latency-samples must not exceed --masks".into(),
        ));
    }
    if args.concurrency == 0 {
        return Err(BenchError::InvalidArgs(
            "--concurrency must be at least 1".into(),
        ));
    }
    Ok(())
}

async fn measure(
    env: &TestEnv,
    args: &SlotsArgs,
    controller: &RunningController,
) -> Result<Measured, BenchError> {
    let client = env.try_client().await?;
    let timeout = Duration::from_secs(args.timeout_secs);
    let providers_ns = env.try_new_namespace("bench-providers").await?;
    let masks_ns = env.try_new_namespace("bench-masks").await?;
    let raw_ns = env.try_new_namespace("bench-raw").await?;

    // Providers with their Secrets, verification skipped; wait until Ready.
    create_providers(&client, &providers_ns, args).await?;
    let providers: Api<MaskProvider> = Api::namespaced(client.clone(), &providers_ns);
    let deadline = Instant::now() + timeout;
    loop {
        controller.check_alive()?;
        let list = providers
            .list(&ListParams::default())
            .await
            .map_err(kube_err("listing providers"))?;
        let ready = list
            .items
            .iter()
            .filter(|p| p.phase() == ProviderPhase::Ready)
            .count();
        if ready == args.providers as usize {
            break;
        }
        if Instant::now() > deadline {
            let phases: BTreeMap<String, usize> =
                list.items.iter().fold(BTreeMap::new(), |mut m, p| {
                    *m.entry(format!("{:?}", p.phase())).or_default() += 1;
                    m
                });
            return Err(BenchError::Timeout {
                what: "providers to become Ready".into(),
                after: timeout,
                detail: format!("phases {phases:?}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!("{} providers Ready", args.providers);

    // Yardstick: raw writes on the same API server, same concurrency.
    let raw_count = RAW_WRITES_PER_MASK * args.masks;
    let bar = progress(args, u64::from(raw_count), "raw ConfigMap creates");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &raw_ns);
    let started = Instant::now();
    futures::stream::iter(0..raw_count)
        .map(|i| {
            let cms = cms.clone();
            let bar = bar.clone();
            async move {
                let mut cm = ConfigMap::default();
                cm.metadata.name = Some(format!("raw-{i}"));
                cm.data = Some(BTreeMap::from([("i".to_string(), i.to_string())]));
                cms.create(&PostParams::default(), &cm)
                    .await
                    .map_err(kube_err(format!("creating ConfigMap raw-{i}")))?;
                bar.inc(1);
                Ok::<_, BenchError>(())
            }
        })
        .buffer_unordered(args.concurrency)
        .try_collect::<()>()
        .await?;
    let raw_writes = started.elapsed();
    bar.finish_and_clear();
    println!(
        "{raw_count} raw writes in {:.2} s",
        raw_writes.as_secs_f64()
    );

    // Masks: create all at once, wait until all are Active.
    let masks: Api<Mask> = Api::namespaced(client.clone(), &masks_ns);
    let tracker = MaskTracker::start(masks.clone());
    tracker.wait_synced(timeout).await?;
    let bar = progress(args, u64::from(args.masks), "Masks Active");
    let io_before = controller.io_counts().await;
    let started = Instant::now();
    let names: Vec<String> = (0..args.masks).map(|i| format!("mask-{i}")).collect();
    create_masks(&masks, &names, args.concurrency).await?;
    let total = args.masks as usize;
    tracker
        .wait(controller, timeout, "all Masks to become Active", |s| {
            let active = s.count(|n, p| n.starts_with("mask-") && p == MaskPhase::Active);
            bar.set_position(active as u64);
            active == total
        })
        .await?;
    let all_active = started.elapsed();
    let mask_phase_io = match (io_before, controller.io_counts().await) {
        (Some(before), Some(after)) => Some(after.minus(before)),
        _ => None,
    };
    bar.finish_and_clear();
    println!(
        "{} Masks Active in {:.2} s",
        args.masks,
        all_active.as_secs_f64()
    );

    // Fill the remaining slots, then queue waiting Masks.
    let capacity = (args.providers * args.slots) as usize;
    let fillers: Vec<String> = (0..capacity - total)
        .map(|i| format!("filler-{i}"))
        .collect();
    if !fillers.is_empty() {
        create_masks(&masks, &fillers, args.concurrency).await?;
        tracker
            .wait(controller, timeout, "filler Masks to become Active", |s| {
                s.count(|n, p| n.starts_with("filler-") && p == MaskPhase::Active) == fillers.len()
            })
            .await?;
    }
    let samples = args.latency_samples as usize;
    let waiters: Vec<String> = (0..samples).map(|i| format!("waiter-{i}")).collect();
    create_masks(&masks, &waiters, args.concurrency).await?;
    tracker
        .wait(
            controller,
            timeout,
            "extra Masks to be Waiting (every slot taken)",
            |s| s.count(|n, p| n.starts_with("waiter-") && p == MaskPhase::Waiting) == samples,
        )
        .await?;

    // Free one slot at a time; time until a waiting Mask is Active.
    let mut latencies = Vec::with_capacity(samples);
    for i in 0..samples {
        let victim = format!("mask-{i}");
        let freed_at = Instant::now();
        masks
            .delete(&victim, &DeleteParams::background())
            .await
            .map_err(kube_err(format!("deleting Mask {victim}")))?;
        let state = tracker
            .wait(
                controller,
                timeout,
                "a waiting Mask to become Active after a slot freed",
                |s| s.count(|n, p| n.starts_with("waiter-") && p == MaskPhase::Active) == i + 1,
            )
            .await?;
        let activated = state
            .activated_at
            .iter()
            .filter(|(n, _)| n.starts_with("waiter-"))
            .map(|(_, t)| *t)
            .filter(|t| *t >= freed_at)
            .max()
            .unwrap_or_else(Instant::now);
        latencies.push(activated.saturating_duration_since(freed_at));
    }
    tracker.stop();
    Ok(Measured {
        all_active,
        raw_writes,
        latencies,
        mask_phase_io,
    })
}

/// What [`measure`] found.
struct Measured {
    all_active: Duration,
    raw_writes: Duration,
    latencies: Vec<Duration>,
    mask_phase_io: Option<IoCounts>,
}

async fn create_providers(
    client: &kube::Client,
    ns: &str,
    args: &SlotsArgs,
) -> Result<(), BenchError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let providers: Api<MaskProvider> = Api::namespaced(client.clone(), ns);
    for i in 0..args.providers {
        let name = format!("provider-{i}");
        let mut secret = Secret::default();
        secret.metadata.name = Some(format!("{name}-creds"));
        secret.string_data = Some(BTreeMap::from([
            ("VPN_SERVICE_PROVIDER".to_string(), "custom".to_string()),
            ("VPN_TYPE".to_string(), "wireguard".to_string()),
            (
                "WIREGUARD_PRIVATE_KEY".to_string(),
                format!("bench-key-{i}"),
            ),
        ]));
        secrets
            .create(&PostParams::default(), &secret)
            .await
            .map_err(kube_err(format!("creating Secret {name}-creds")))?;
        let provider = MaskProvider::new(
            &name,
            MaskProviderSpec {
                secret: format!("{name}-creds"),
                max_slots: args.slots,
                verify: Some(VerifySpec {
                    skip: Some(true),
                    ..Default::default()
                }),
                ..Default::default()
            },
        );
        providers
            .create(&PostParams::default(), &provider)
            .await
            .map_err(kube_err(format!("creating MaskProvider {name}")))?;
    }
    Ok(())
}

async fn create_masks(
    masks: &Api<Mask>,
    names: &[String],
    concurrency: usize,
) -> Result<(), BenchError> {
    futures::stream::iter(names)
        .map(|name| async move {
            let mask = Mask::new(name, MaskSpec::default());
            masks
                .create(&PostParams::default(), &mask)
                .await
                .map_err(kube_err(format!("creating Mask {name}")))?;
            Ok::<_, BenchError>(())
        })
        .buffer_unordered(concurrency)
        .try_collect::<()>()
        .await
}

fn progress(args: &SlotsArgs, len: u64, what: &'static str) -> ProgressBar {
    if args.no_progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {pos}/{len} {msg}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}

/// Phases of the Masks in one namespace, kept current by a watcher.
#[derive(Debug, Clone, Default)]
struct TrackerState {
    synced: bool,
    phases: HashMap<String, MaskPhase>,
    /// When each Mask was first seen `Active` (by this process's watch).
    activated_at: HashMap<String, Instant>,
    error: Option<String>,
}

impl TrackerState {
    fn count(&self, pred: impl Fn(&str, MaskPhase) -> bool) -> usize {
        self.phases.iter().filter(|(n, p)| pred(n, **p)).count()
    }

    fn summary(&self) -> String {
        let mut by_phase: BTreeMap<String, usize> = BTreeMap::new();
        for p in self.phases.values() {
            *by_phase.entry(format!("{p:?}")).or_default() += 1;
        }
        format!("{} Masks seen, by phase {by_phase:?}", self.phases.len())
    }
}

struct MaskTracker {
    rx: watch::Receiver<TrackerState>,
    task: tokio::task::JoinHandle<()>,
}

impl MaskTracker {
    fn start(api: Api<Mask>) -> Self {
        let (tx, rx) = watch::channel(TrackerState::default());
        let task = tokio::spawn(async move {
            let mut stream =
                std::pin::pin!(watcher::watcher(api, watcher::Config::default()).default_backoff());
            while let Some(event) = stream.next().await {
                let now = Instant::now();
                tx.send_modify(|s| match event {
                    Ok(Event::Apply(m)) | Ok(Event::InitApply(m)) => {
                        let name = m.metadata.name.clone().unwrap_or_default();
                        let phase = m.phase();
                        if phase == MaskPhase::Active {
                            s.activated_at.entry(name.clone()).or_insert(now);
                        }
                        s.phases.insert(name, phase);
                    }
                    Ok(Event::Delete(m)) => {
                        s.phases
                            .remove(m.metadata.name.as_deref().unwrap_or_default());
                    }
                    Ok(Event::Init) => {}
                    Ok(Event::InitDone) => s.synced = true,
                    Err(e) => s.error = Some(e.to_string()),
                });
            }
        });
        MaskTracker { rx, task }
    }

    async fn wait_synced(&self, timeout: Duration) -> Result<(), BenchError> {
        let mut rx = self.rx.clone();
        tokio::time::timeout(timeout, rx.wait_for(|s| s.synced))
            .await
            .map_err(|_| BenchError::Timeout {
                what: "the Mask watch to start".into(),
                after: timeout,
                detail: self.rx.borrow().error.clone().unwrap_or_default(),
            })?
            .map_err(|_| BenchError::Controller("Mask watcher ended".into()))?;
        Ok(())
    }

    /// Waits until `pred` holds, checking every second that the controller
    /// still runs; returns the state that satisfied `pred`.
    async fn wait(
        &self,
        controller: &RunningController,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&TrackerState) -> bool,
    ) -> Result<TrackerState, BenchError> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.rx.clone();
        loop {
            let slice =
                Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(slice, rx.wait_for(&mut pred)).await {
                Ok(Ok(state)) => return Ok(state.clone()),
                Ok(Err(_)) => return Err(BenchError::Controller("Mask watcher ended".into())),
                Err(_) => {}
            }
            controller.check_alive()?;
            if Instant::now() >= deadline {
                let state = self.rx.borrow();
                let mut detail = state.summary();
                if let Some(e) = &state.error {
                    detail.push_str(&format!("; last watch error: {e}"));
                }
                return Err(BenchError::Timeout {
                    what: what.into(),
                    after: timeout,
                    detail,
                });
            }
        }
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// The controller under test.
struct RunningController {
    kind: ControllerKind,
    log: Option<PathBuf>,
}

enum ControllerKind {
    InProcess {
        metrics: std::sync::Arc<vpno_controller::Metrics>,
        shutdown: CancellationToken,
        task: std::sync::Mutex<
            Option<tokio::task::JoinHandle<Result<(), vpno_controller::ControllerError>>>,
        >,
    },
    Child {
        child: std::sync::Mutex<tokio::process::Child>,
        pid: u32,
        metrics_port: u16,
    },
}

impl RunningController {
    async fn start(env: &TestEnv, child: bool, bin: Option<PathBuf>) -> Result<Self, BenchError> {
        if !child {
            let client = env.try_client().await?;
            let shutdown = CancellationToken::new();
            let config = vpno_controller::ControllerConfig::default();
            let metrics = config.metrics.clone();
            let task = tokio::spawn(vpno_controller::run_with_client(
                client,
                config,
                shutdown.clone(),
            ));
            return Ok(RunningController {
                kind: ControllerKind::InProcess {
                    metrics,
                    shutdown,
                    task: std::sync::Mutex::new(Some(task)),
                },
                log: None,
            });
        }
        let bin = match bin {
            Some(b) => b,
            None => std::env::current_exe().map_err(|source| BenchError::Io {
                context: "finding the vpn-operator executable".into(),
                source,
            })?,
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|source| BenchError::Io {
                context: "choosing a metrics port".into(),
                source,
            })?
            .port();
        let log = env.dir().join("controller.log");
        let file = std::fs::File::create(&log).map_err(|source| BenchError::Io {
            context: format!("creating {}", log.display()),
            source,
        })?;
        let file2 = file.try_clone().map_err(|source| BenchError::Io {
            context: format!("opening {}", log.display()),
            source,
        })?;
        let child = tokio::process::Command::new(&bin)
            .arg("controller")
            .arg("--kubeconfig")
            .arg(env.kubeconfig_path())
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(std::process::Stdio::null())
            .stdout(file)
            .stderr(file2)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BenchError::Io {
                context: format!("starting {} controller", bin.display()),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        Ok(RunningController {
            kind: ControllerKind::Child {
                child: std::sync::Mutex::new(child),
                pid,
                metrics_port: port,
            },
            log: Some(log),
        })
    }

    fn check_alive(&self) -> Result<(), BenchError> {
        match &self.kind {
            ControllerKind::InProcess { task, .. } => {
                let guard = task.lock().unwrap_or_else(|p| p.into_inner());
                if guard.as_ref().is_some_and(|t| t.is_finished()) {
                    return Err(BenchError::Controller(
                        "the in-process controller stopped unexpectedly".into(),
                    ));
                }
                Ok(())
            }
            ControllerKind::Child { child, .. } => {
                let mut child = child.lock().unwrap_or_else(|p| p.into_inner());
                match child.try_wait() {
                    Ok(None) => Ok(()),
                    Ok(Some(status)) => Err(BenchError::Controller(format!(
                        "the controller process exited ({status}); see {}",
                        self.log
                            .as_ref()
                            .map(|l| l.display().to_string())
                            .unwrap_or_default()
                    ))),
                    Err(source) => Err(BenchError::Io {
                        context: "checking the controller process".into(),
                        source,
                    }),
                }
            }
        }
    }

    /// The controller's API call counters, from its Prometheus metrics.
    async fn io_counts(&self) -> Option<IoCounts> {
        let text = match &self.kind {
            ControllerKind::InProcess { metrics, .. } => metrics.encode(),
            ControllerKind::Child { metrics_port, .. } => scrape(*metrics_port).await?,
        };
        Some(IoCounts::parse(&text))
    }

    fn peak_rss_kib(&self) -> Option<u64> {
        match &self.kind {
            ControllerKind::InProcess { .. } => vm_hwm_kib(None),
            ControllerKind::Child { pid, .. } => vm_hwm_kib(Some(*pid)),
        }
    }

    async fn stop(self) -> Result<(), BenchError> {
        match self.kind {
            ControllerKind::InProcess { shutdown, task, .. } => {
                shutdown.cancel();
                let task = task.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(task) = task {
                    match tokio::time::timeout(Duration::from_secs(10), task).await {
                        Ok(Ok(Ok(()))) => {}
                        Ok(Ok(Err(e))) => return Err(BenchError::Controller(e.to_string())),
                        Ok(Err(e)) => {
                            return Err(BenchError::Controller(format!(
                                "controller task failed: {e}"
                            )));
                        }
                        Err(_) => {
                            return Err(BenchError::Controller(
                                "did not stop within 10 s of shutdown".into(),
                            ));
                        }
                    }
                }
                Ok(())
            }
            ControllerKind::Child { child, .. } => {
                let mut child = child.into_inner().unwrap_or_else(|p| p.into_inner());
                let _ = child.kill().await;
                Ok(())
            }
        }
    }
}

/// Totals of the controller's API calls and reconciles (all controllers).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct IoCounts {
    /// API writes (`vpno_*_write_duration_seconds_count`).
    pub writes: f64,
    /// API reads that bypassed the watch caches (`vpno_*_read_duration_seconds_count`).
    pub reads: f64,
    /// Reconciles (`vpno_*_reconcile_counter_total`).
    pub reconciles: f64,
}

impl IoCounts {
    /// Sums the counters in a Prometheus text exposition.
    pub fn parse(text: &str) -> IoCounts {
        let mut c = IoCounts::default();
        for line in text
            .lines()
            .filter(|l| l.starts_with("vpno_") && !l.starts_with("vpno_http"))
        {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
                continue;
            };
            if name.ends_with("_write_duration_seconds_count") {
                c.writes += value;
            } else if name.ends_with("_read_duration_seconds_count") {
                c.reads += value;
            } else if name.ends_with("_reconcile_counter_total") {
                c.reconciles += value;
            }
        }
        c
    }

    fn minus(self, before: IoCounts) -> IoCounts {
        IoCounts {
            writes: self.writes - before.writes,
            reads: self.reads - before.reads,
            reconciles: self.reconciles - before.reconciles,
        }
    }
}

/// `GET /metrics` of a controller on loopback (HTTP/1.0, bounded to 5 s).
async fn scrape(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .ok()?;
        let mut buf = Vec::new();
        stream.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8(buf).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.").then_some(())?;
        head.split(' ').nth(1).filter(|code| *code == "200")?;
        Some(body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}

/// `VmHWM` (peak resident set size) of a process in KiB, `None` for this process.
fn vm_hwm_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_string(),
    };
    parse_vm_hwm(&std::fs::read_to_string(path).ok()?)
}

fn parse_vm_hwm(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// `(p50, max)` of a sample (nearest-rank median).
fn p50_max(samples: &[Duration]) -> Option<(Duration, Duration)> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let max = *sorted.last()?;
    Some((sorted[(sorted.len() - 1) / 2], max))
}

/// The `q`-quantile (0..=1) of `samples`, nearest rank.
fn quantile(samples: &[Duration], q: f64) -> Option<Duration> {
    let mut sorted = samples.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied()
}

fn print_report(args: &SlotsArgs, r: &SlotsReport, rss_before: Option<u64>) {
    let secs = |d: Duration| d.as_secs_f64();
    println!();
    println!(
        "== bench slots: {} Masks, {} providers x {} slots ({} build) ==",
        args.masks,
        args.providers,
        args.slots,
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!(
        "control-plane start-up               {:>9.2} s",
        secs(r.startup)
    );
    println!(
        "all {} Masks Active                {:>9.2} s   ({:.0} Masks/s)",
        args.masks,
        secs(r.all_active),
        f64::from(args.masks) / secs(r.all_active)
    );
    let raw = RAW_WRITES_PER_MASK * args.masks;
    println!(
        "{} raw writes (4N ConfigMap creates) {:>9.2} s   ({:.0} writes/s, {} in flight)",
        raw,
        secs(r.raw_writes),
        f64::from(raw) / secs(r.raw_writes),
        args.concurrency
    );
    println!(
        "ratio Masks Active / 4N raw writes   {:>9.2} x",
        secs(r.all_active) / secs(r.raw_writes)
    );
    if let Some(io) = r.mask_phase_io {
        let per = |v: f64| v / f64::from(args.masks);
        println!(
            "controller during that phase          {:.0} API writes ({:.1}/Mask), {:.0} uncached reads ({:.1}/Mask), {:.0} reconciles ({:.1}/Mask)",
            io.writes,
            per(io.writes),
            io.reads,
            per(io.reads),
            io.reconciles,
            per(io.reconciles)
        );
    }
    if let (Some((p50, max)), Some(p99)) = (p50_max(&r.latencies), quantile(&r.latencies, 0.99)) {
        println!(
            "waiting->assigned after a slot frees  p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms  (n={})",
            p50.as_secs_f64() * 1000.0,
            p99.as_secs_f64() * 1000.0,
            max.as_secs_f64() * 1000.0,
            r.latencies.len()
        );
    }
    match (r.peak_rss_kib, r.child_process) {
        (Some(kib), true) => println!(
            "controller peak RSS (VmHWM, child)    {:>9.1} MiB",
            kib as f64 / 1024.0
        ),
        (Some(kib), false) => println!(
            "bench process peak RSS (VmHWM; controller in-process + bench client) {:.1} MiB (before controller start: {:.1} MiB)",
            kib as f64 / 1024.0,
            rss_before.unwrap_or(0) as f64 / 1024.0
        ),
        (None, _) => println!("controller peak RSS: not available"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vm_hwm() {
        let status = "Name:\tx\nVmPeak:\t  2000 kB\nVmHWM:\t   12345 kB\nVmRSS:\t 100 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(12345));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        assert!(vm_hwm_kib(None).is_some_and(|k| k > 0));
    }

    #[test]
    fn sums_controller_counters() {
        let text = "# HELP x\n\
            vpno_mask_write_duration_seconds_count{kind=\"Mask\"} 3\n\
            vpno_consumer_write_duration_seconds_count{kind=\"Secret\"} 4\n\
            vpno_consumer_write_duration_seconds_sum{kind=\"Secret\"} 0.5\n\
            vpno_consumer_read_duration_seconds_count{kind=\"Secret\"} 2\n\
            vpno_mask_reconcile_counter_total{outcome=\"ok\",error=\"none\"} 7\n\
            vpno_http_requests_total{path=\"/metrics\",status=\"200\"} 9\n";
        let c = IoCounts::parse(text);
        assert_eq!(
            c,
            IoCounts {
                writes: 7.0,
                reads: 2.0,
                reconciles: 7.0
            }
        );
        assert_eq!(
            c.minus(IoCounts {
                writes: 1.0,
                reads: 1.0,
                reconciles: 2.0
            })
            .writes,
            6.0
        );
    }

    #[test]
    fn nearest_rank_quantiles() {
        let ms = |v: &[u64]| {
            v.iter()
                .map(|m| Duration::from_millis(*m))
                .collect::<Vec<_>>()
        };
        let s = ms(&[50, 10, 40, 20, 30]);
        assert_eq!(quantile(&s, 0.5), Some(Duration::from_millis(30)));
        assert_eq!(quantile(&s, 0.99), Some(Duration::from_millis(50)));
        assert_eq!(quantile(&ms(&[7]), 0.99), Some(Duration::from_millis(7)));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn p50_and_max() {
        let ms = |v: u64| Duration::from_millis(v);
        assert_eq!(p50_max(&[ms(30), ms(10), ms(20)]), Some((ms(20), ms(30))));
        assert_eq!(p50_max(&[ms(10), ms(40)]), Some((ms(10), ms(40))));
        assert_eq!(p50_max(&[]), None);
    }

    #[test]
    fn validates_arguments() {
        assert!(validate(&SlotsArgs::default()).is_ok());
        let too_many = SlotsArgs {
            masks: 1001,
            ..Default::default()
        };
        assert!(
            matches!(validate(&too_many), Err(BenchError::InvalidArgs(m)) if m.contains("1000 slots"))
        );
        assert!(
            validate(&SlotsArgs {
                slots: 0,
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            validate(&SlotsArgs {
                masks: 3,
                latency_samples: 4,
                ..Default::default()
            })
            .is_err()
        );
    }
}
