//! A real Kubernetes control plane (etcd + kube-apiserver +
//! kube-controller-manager v1.20.2) on loopback, for tests and benchmarks.
//!
//! [`TestEnv::start`] picks free ports, generates a CA, a serving certificate
//! and a service-account key pair in a fresh temporary directory, starts the
//! three processes, installs the four `vpn.beebs.dev` CRDs (server-side apply)
//! and waits until they are established and the controller-manager works.
//! Clients authenticate with a bearer token in group `system:masters`.
//!
//! Binaries: `etcd` from `PATH`; `kube-apiserver` and
//! `kube-controller-manager` from `$VPNO_K8S_BIN_DIR`, else unpacked from
//! `../shared/k8s/*.xz` (next to the checkout, or `/work/shared/k8s`) into
//! `$TMPDIR/vpno-k8s-bin-<sha>/` after checking their sha256.
//!
//! The controller-manager runs the `garbagecollector`, `namespace`,
//! `serviceaccount` and `serviceaccount-token` controllers, so owner-reference
//! garbage collection and namespace deletion happen. There is no kubelet or
//! scheduler: Pods are stored but never run (write their status yourself).
//!
//! # Usage in tests
//!
//! Put all control-plane tests of a crate into one `tests/*.rs` file: one
//! test binary shares one control plane, and tests isolate themselves by
//! namespace.
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//!
//! #[tokio::test]
//! async fn creates_a_config_map() {
//!     // `None` (after a loud "SKIPPED:" on stderr) when the binaries are
//!     // missing and CI is not "true"; panics with the reason when CI=true.
//!     let Some(env) = vpno_testenv::TestEnv::shared() else { return };
//!     let client = env.client().await; // fresh client for this test's runtime
//!     let ns = env.new_namespace("configmaps").await;
//!     let api: Api<ConfigMap> = Api::namespaced(client, &ns);
//!     let mut cm = ConfigMap::default();
//!     cm.metadata.name = Some("x".into());
//!     api.create(&PostParams::default(), &cm).await.unwrap();
//! }
//! ```
//!
//! A benchmark or a test that needs its own instance calls
//! [`TestEnv::start`] (blocking, ~10 s) and drops the value (or calls
//! [`TestEnv::stop`]) to tear it down: processes get SIGTERM newest first
//! (controller-manager, apiserver, etcd), SIGKILL after a few seconds, and the
//! directory is removed.
//!
//! Nothing outlives the test process: every child is spawned from a dedicated
//! long-lived thread with `PR_SET_PDEATHSIG = SIGKILL`, and an `atexit` hook
//! stops every instance still running (the shared one) and removes its
//! directory. Directories left by a process killed with a signal are removed
//! by the next start.
#![deny(rust_2018_idioms)]
#![deny(unsafe_code)]

mod binaries;
pub mod cluster;
mod pki;
mod process;
pub mod schemathesis;

use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};

pub use binaries::{BIN_DIR_ENV, BUILD_HINT};
pub use cluster::Cluster;
use process::{ManagedProcess, SpawnSpec};

/// Prefix of the per-instance temporary directory (`<prefix><pid>-<n>-<nanos>`).
pub(crate) const DIR_PREFIX: &str = "vpno-testenv-";

/// Field manager used for the CRD server-side apply.
pub const FIELD_MANAGER: &str = "vpno-testenv";

/// How long start-up may take before it fails.
const START_TIMEOUT: Duration = Duration::from_secs(90);

/// Errors of starting or using a test control plane.
#[derive(Debug, thiserror::Error)]
pub enum TestEnvError {
    /// `etcd` or the Kubernetes binaries are not available; the message says
    /// how to get them.
    #[error("control-plane prerequisites missing: {0}")]
    MissingPrerequisite(String),
    /// Unpacking a shipped binary failed or its checksum did not match.
    #[error("unpacking Kubernetes binaries: {0}")]
    Unpack(String),
    /// A file-system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Generating certificates or keys failed.
    #[error("generating certificates: {0}")]
    Certificates(#[from] rcgen::Error),
    /// A control-plane process exited while it should be running.
    #[error("{name} exited ({status})\n{log_tail}")]
    ProcessExited {
        /// Which process.
        name: &'static str,
        /// Its exit status.
        status: String,
        /// The last lines of its log.
        log_tail: String,
    },
    /// Something did not become ready in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// The kubeconfig could not be read or turned into a client config.
    #[error("loading kubeconfig {path}: {message}")]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// An API request failed.
    #[error("{context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: kube::Error,
    },
}

impl TestEnvError {
    pub(crate) fn io(context: String, source: std::io::Error) -> Self {
        TestEnvError::Io { context, source }
    }

    pub(crate) fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        TestEnvError::Kube {
            context: context.into(),
            source,
        }
    }

    /// Whether the error means "binaries or etcd are not installed" (tests skip
    /// on this unless `CI=true`) rather than a real failure.
    pub fn is_missing_prerequisite(&self) -> bool {
        matches!(self, TestEnvError::MissingPrerequisite(_))
    }
}

/// How a control plane is laid out: the loopback default of [`TestEnv`], or
/// the one a [`Cluster`] runs (bound to the pod gateway, all controllers).
#[derive(Debug, Clone)]
pub(crate) struct ControlPlaneSpec {
    /// Address the API server binds to and advertises (etcd and the
    /// controller-manager stay on loopback).
    pub address: Ipv4Addr,
    /// A directory the caller created and removes; `None`: a fresh temporary
    /// directory that the control plane removes itself.
    pub dir: Option<PathBuf>,
    /// `--controllers` of kube-controller-manager; `None` runs all default ones.
    pub controllers: Option<&'static str>,
    /// Extra kube-apiserver arguments.
    pub apiserver_args: Vec<OsString>,
    /// Extra kube-controller-manager arguments.
    pub controller_manager_args: Vec<OsString>,
}

impl Default for ControlPlaneSpec {
    fn default() -> Self {
        ControlPlaneSpec {
            address: Ipv4Addr::LOCALHOST,
            dir: None,
            controllers: Some(
                "garbagecollector,namespace,serviceaccount-token,serviceaccount,root-ca-cert-publisher",
            ),
            apiserver_args: Vec::new(),
            controller_manager_args: Vec::new(),
        }
    }
}

/// A running control plane. Dropping it (or [`TestEnv::stop`]) tears it down.
pub struct TestEnv {
    id: u64,
    dir: PathBuf,
    owns_dir: bool,
    server_url: String,
    kubeconfig_path: PathBuf,
    config: kube::Config,
    token: String,
    ca_pem: String,
    processes: Mutex<Vec<ManagedProcess>>,
    pending: Mutex<Option<SpawnSpec>>,
    startup: Duration,
}

impl fmt::Debug for TestEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestEnv")
            .field("dir", &self.dir)
            .field("server_url", &self.server_url)
            .field("startup", &self.startup)
            .finish_non_exhaustive()
    }
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static SHARED: OnceLock<Result<TestEnv, TestEnvError>> = OnceLock::new();

/// Installs the rustls ring provider for this process (no-op if one is set).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Checks that `etcd` and the Kubernetes binaries are available (unpacking
/// the shipped ones into the cache if needed), without starting anything.
/// `Err(MissingPrerequisite)` says what is missing and how to get it.
pub fn check_prerequisites() -> Result<(), TestEnvError> {
    binaries::locate().map(|_| ())
}

pub(crate) fn ci() -> bool {
    std::env::var("CI").map(|v| v == "true").unwrap_or(false)
}

impl TestEnv {
    /// The control plane shared by all tests of this test binary, started on
    /// first use and stopped when the process exits.
    ///
    /// Returns `None` after printing `SKIPPED: <why>` to stderr when `etcd` or
    /// the Kubernetes binaries are missing and `CI` is not `true`; panics with
    /// the reason when `CI=true`, and on any other start-up failure.
    /// Blocks while starting (~10 s); safe to call from async tests.
    pub fn shared() -> Option<&'static TestEnv> {
        let result = SHARED.get_or_init(TestEnv::start);
        match result {
            Ok(env) => Some(env),
            Err(e) if e.is_missing_prerequisite() && !ci() => {
                // Straight to fd 2: the test harness captures `eprintln!`.
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: no Kubernetes control plane for this test: {e}"
                );
                None
            }
            Err(e) => panic!("starting the shared test control plane failed: {e}"),
        }
    }

    /// Starts a private control plane. Blocking (~10 s; runs its async work
    /// on a thread of its own, so it may be called from inside a runtime, but
    /// prefer `tokio::task::spawn_blocking` there).
    pub fn start() -> Result<TestEnv, TestEnvError> {
        Self::start_with(&ControlPlaneSpec::default())
    }

    /// [`TestEnv::start`] with a layout of its own (used by [`Cluster`]).
    pub(crate) fn start_with(spec: &ControlPlaneSpec) -> Result<TestEnv, TestEnvError> {
        install_crypto_provider();
        let mut attempt = 1;
        loop {
            match Self::start_once(spec) {
                // A port taken between choosing and binding makes a process exit: retry.
                Err(e @ TestEnvError::ProcessExited { .. }) if attempt < 3 => {
                    tracing::warn!(attempt, error = %e, "control plane failed to start; retrying with new ports");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    fn start_once(spec: &ControlPlaneSpec) -> Result<TestEnv, TestEnvError> {
        let begun = Instant::now();
        let bins = binaries::locate()?;
        let tmp = std::env::temp_dir();
        process::remove_stale_dirs(&tmp);
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let owns_dir = spec.dir.is_none();
        let dir = spec.dir.clone().unwrap_or_else(|| {
            tmp.join(format!("{DIR_PREFIX}{}-{id}-{nanos}", std::process::id()))
        });
        std::fs::create_dir_all(&dir)
            .map_err(|e| TestEnvError::io(format!("creating {}", dir.display()), e))?;
        process::register(id, owns_dir.then_some(dir.as_path()));

        let mut env = TestEnv {
            id,
            dir: dir.clone(),
            owns_dir,
            server_url: String::new(),
            kubeconfig_path: dir.join("kubeconfig"),
            config: kube::Config::new(http::Uri::from_static("https://127.0.0.1")),
            token: random_token(),
            ca_pem: String::new(),
            processes: Mutex::new(Vec::new()),
            pending: Mutex::new(None),
            startup: Duration::ZERO,
        };
        // From here on `env`'s Drop cleans up on every error path.
        let ports = free_ports::<4>()?;
        let [etcd_client, etcd_peer, api_port, kcm_port] = ports;
        let address = spec.address;
        env.server_url = format!("https://{address}:{api_port}");

        let pki = pki::generate(&[address])?;
        env.ca_pem = pki.ca_cert_pem.clone();
        let write = |name: &str, text: &str| -> Result<PathBuf, TestEnvError> {
            let p = dir.join(name);
            std::fs::write(&p, text)
                .map_err(|e| TestEnvError::io(format!("writing {}", p.display()), e))?;
            Ok(p)
        };
        let ca_crt = write("ca.crt", &pki.ca_cert_pem)?;
        write("ca.key", &pki.ca_key_pem)?;
        write("admin-client.crt", &pki.client_cert_pem)?;
        write("admin-client.key", &pki.client_key_pem)?;
        let serving_crt = write("serving.crt", &pki.serving_cert_pem)?;
        let serving_key = write("serving.key", &pki.serving_key_pem)?;
        let sa_key = write("sa.key", &pki.sa_key_pem)?;
        let sa_pub = write("sa.pub", &pki.sa_pub_pem)?;
        let tokens = write(
            "tokens.csv",
            &format!(
                "{},vpno-testenv-admin,vpno-testenv-admin,system:masters\n",
                env.token
            ),
        )?;
        write(
            "kubeconfig",
            &kubeconfig_text(&env.server_url, &pki.ca_cert_pem, &env.token),
        )?;

        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let p = |s: &Path| s.as_os_str().to_owned();
        let o = |s: &str| std::ffi::OsString::from(s);
        env.spawn(SpawnSpec {
            name: "etcd",
            program: bins.etcd.clone(),
            args: vec![
                o("--data-dir"),
                p(&dir.join("etcd")),
                o("--listen-client-urls"),
                o(&etcd_url),
                o("--advertise-client-urls"),
                o(&etcd_url),
                o("--listen-peer-urls"),
                o(&format!("http://127.0.0.1:{etcd_peer}")),
            ],
            log: dir.join("etcd.log"),
            env: Vec::new(),
        })?;
        env.wait_for_tcp(Ipv4Addr::LOCALHOST, etcd_client, "etcd client port")?;

        let mut apiserver_args = vec![
            o(&format!("--etcd-servers={etcd_url}")),
            o(&format!("--bind-address={address}")),
            o(&format!("--advertise-address={address}")),
            o(&format!("--secure-port={api_port}")),
            o("--insecure-port=0"),
            o("--tls-cert-file"),
            p(&serving_crt),
            o("--tls-private-key-file"),
            p(&serving_key),
            o("--token-auth-file"),
            p(&tokens),
            o("--authorization-mode=RBAC"),
            o("--service-account-issuer=https://kubernetes.default.svc"),
            o("--service-account-key-file"),
            p(&sa_pub),
            o("--service-account-signing-key-file"),
            p(&sa_key),
            o("--service-cluster-ip-range=10.96.0.0/12"),
            o("--allow-privileged=true"),
        ];
        apiserver_args.extend(spec.apiserver_args.iter().cloned());
        env.spawn(SpawnSpec {
            name: "kube-apiserver",
            program: bins.apiserver.clone(),
            args: apiserver_args,
            log: dir.join("kube-apiserver.log"),
            env: Vec::new(),
        })?;

        env.wait_for_tcp(address, api_port, "kube-apiserver secure port")?;

        let kubeconfig = env.kubeconfig_path.clone();
        let mut kcm_args = vec![
            o("--kubeconfig"),
            p(&kubeconfig),
            o("--authentication-kubeconfig"),
            p(&kubeconfig),
            o("--authorization-kubeconfig"),
            p(&kubeconfig),
            o("--bind-address=127.0.0.1"),
            o(&format!("--secure-port={kcm_port}")),
            o("--service-account-private-key-file"),
            p(&sa_key),
            o("--root-ca-file"),
            p(&ca_crt),
            o("--use-service-account-credentials=false"),
            o("--leader-elect=false"),
            // v1.20 also serves an insecure port (10252) unless disabled.
            o("--port=0"),
        ];
        if let Some(controllers) = spec.controllers {
            kcm_args.push(o(&format!("--controllers={controllers}")));
        }
        kcm_args.extend(spec.controller_manager_args.iter().cloned());
        env.spawn_later(SpawnSpec {
            name: "kube-controller-manager",
            program: bins.controller_manager.clone(),
            args: kcm_args,
            log: dir.join("kube-controller-manager.log"),
            env: Vec::new(),
        });

        env.config = block_on_quiet(env.bring_up(begun))?;
        env.startup = begun.elapsed();
        tracing::info!(url = %env.server_url, startup = ?env.startup, dir = %env.dir.display(), "test control plane ready");
        Ok(env)
    }

    fn spawn(&self, spec: SpawnSpec) -> Result<(), TestEnvError> {
        let child = process::spawn(spec)?;
        process::register_pid(self.id, child.pid());
        self.processes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
        Ok(())
    }

    /// The controller-manager is started only once the API server is ready
    /// (so it does not spend its first seconds in back-off).
    fn spawn_later(&self, spec: SpawnSpec) {
        *self.pending.lock().unwrap_or_else(|p| p.into_inner()) = Some(spec);
    }

    fn check_processes(&self) -> Result<(), TestEnvError> {
        let mut procs = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        for proc in procs.iter_mut() {
            proc.check_alive()?;
        }
        Ok(())
    }

    fn wait_for_tcp(&self, ip: Ipv4Addr, port: u16, what: &str) -> Result<(), TestEnvError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = SocketAddr::from((ip, port));
        loop {
            self.check_processes()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestEnvError::Timeout {
                    what: what.into(),
                    after: Duration::from_secs(60),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the API server, starts the controller-manager, installs the
    /// CRDs and checks the controller-manager works. Returns the client config.
    async fn bring_up(&self, begun: Instant) -> Result<kube::Config, TestEnvError> {
        let deadline = begun + START_TIMEOUT;
        let config = load_config(&self.kubeconfig_path).await?;
        let client = kube::Client::try_from(config.clone())
            .map_err(|e| TestEnvError::kube("building a client", e))?;

        // 1. API server ready (etcd reachable, post-start hooks done).
        self.poll(deadline, "kube-apiserver /readyz", || async {
            let req = http::Request::get("/readyz")
                .body(Vec::new())
                .expect("static request");
            matches!(client.request_text(req).await.as_deref(), Ok("ok"))
        })
        .await?;

        // 2. Controller-manager.
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(spec) = pending {
            self.spawn(spec)?;
        }

        // 3. CRDs.
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for crd in vpno_api::crd::all() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            crds.patch(&name, &params, &Patch::Apply(&crd))
                .await
                .map_err(|e| TestEnvError::kube(format!("applying CRD {name}"), e))?;
        }
        for crd in vpno_api::crd::all() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let established = kube::runtime::wait::conditions::is_crd_established();
            self.poll(deadline, &format!("CRD {name} to be established"), || async {
                use kube::runtime::wait::Condition;
                matches!(crds.get_opt(&name).await, Ok(obj) if established.matches_object(obj.as_ref()))
            })
            .await?;
        }

        // 4. Controller-manager works: the token controller gave the default
        //    ServiceAccount a token Secret (Pods can be created from now on).
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
        self.poll(
            deadline,
            "the default ServiceAccount's token (kube-controller-manager)",
            || async { sa_has_token(&sas.get_opt("default").await) },
        )
        .await?;
        Ok(config)
    }

    /// Polls `check` every 100 ms until it holds, failing early when a process dies.
    async fn poll<F, Fut>(
        &self,
        deadline: Instant,
        what: &str,
        mut check: F,
    ) -> Result<(), TestEnvError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let started = Instant::now();
        loop {
            self.check_processes()?;
            if check().await {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestEnvError::Timeout {
                    what: what.into(),
                    after: started.elapsed(),
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A fresh client for the calling runtime (every `#[tokio::test]` has its
    /// own runtime; a client from a finished runtime no longer works).
    /// Authenticates as a `system:masters` user.
    pub async fn client(&self) -> kube::Client {
        self.try_client()
            .await
            .expect("building a kube client for the test control plane")
    }

    /// Like [`TestEnv::client`], returning the error instead of panicking.
    pub async fn try_client(&self) -> Result<kube::Client, TestEnvError> {
        install_crypto_provider();
        kube::Client::try_from(self.config.clone())
            .map_err(|e| TestEnvError::kube("building a client", e))
    }

    /// Client configuration (admin token, CA) for building clients yourself.
    pub fn config(&self) -> kube::Config {
        self.config.clone()
    }

    /// Path of a kubeconfig file (token auth, CA data) for this control plane;
    /// usable by child processes (`--kubeconfig`, `KUBECONFIG`).
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig_path
    }

    /// `https://127.0.0.1:<port>` of the API server.
    pub fn server_url(&self) -> &str {
        &self.server_url
    }

    /// PEM of the CA that signed the API server's certificate.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The admin bearer token (group `system:masters`).
    pub fn admin_token(&self) -> &str {
        &self.token
    }

    /// How long [`TestEnv::start`] took for this instance.
    pub fn startup_duration(&self) -> Duration {
        self.startup
    }

    /// The instance's temporary directory (logs: `etcd.log`,
    /// `kube-apiserver.log`, `kube-controller-manager.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates a uniquely named namespace `<prefix>-<suffix>` and waits until
    /// its `default` ServiceAccount has a token, so Pods can be created in it.
    /// Panics on failure (test helper); see [`TestEnv::try_new_namespace`].
    pub async fn new_namespace(&self, prefix: &str) -> String {
        self.try_new_namespace(prefix)
            .await
            .unwrap_or_else(|e| panic!("creating a test namespace: {e}"))
    }

    /// Like [`TestEnv::new_namespace`], returning the error instead of panicking.
    pub async fn try_new_namespace(&self, prefix: &str) -> Result<String, TestEnvError> {
        let client = self.try_client().await?;
        let name = unique_name(prefix);
        let mut ns = Namespace::default();
        ns.metadata.name = Some(name.clone());
        ns.metadata.labels = Some([("vpno-testenv".to_string(), "true".to_string())].into());
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .map_err(|e| TestEnvError::kube(format!("creating namespace {name}"), e))?;
        let sas: Api<ServiceAccount> = Api::namespaced(client, &name);
        let deadline = Instant::now() + Duration::from_secs(30);
        self.poll(
            deadline,
            &format!("ServiceAccount default in namespace {name}"),
            || async { sa_has_token(&sas.get_opt("default").await) },
        )
        .await?;
        Ok(name)
    }

    /// Stops the control plane (same as dropping it).
    pub fn stop(self) {
        self.shutdown();
    }

    /// Stops the processes (newest first: controller-manager, apiserver,
    /// etcd) and removes the directory if it is the control plane's own.
    /// Idempotent.
    pub(crate) fn shutdown(&self) {
        let mut procs =
            std::mem::take(&mut *self.processes.lock().unwrap_or_else(|p| p.into_inner()));
        while let Some(mut proc) = procs.pop() {
            proc.stop(Duration::from_secs(5));
        }
        if self.owns_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        process::unregister(self.id);
    }

    /// Pids and start times of the running processes (for the cluster's state file).
    pub(crate) fn process_ids(&self) -> Vec<(&'static str, i32)> {
        let procs = self.processes.lock().unwrap_or_else(|p| p.into_inner());
        procs.iter().map(|p| (p.name, p.pid())).collect()
    }
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs `future` to completion on a thread with its own Tokio runtime, so
/// that blocking start-up works from inside and outside a runtime. kube logs
/// every failed readiness poll at ERROR level; the outcome is returned as our
/// error anyway, so that thread is kept quiet.
pub(crate) fn block_on_quiet<T: Send>(
    future: impl Future<Output = Result<T, TestEnvError>> + Send,
) -> Result<T, TestEnvError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            let _quiet =
                tracing::subscriber::set_default(tracing::subscriber::NoSubscriber::default());
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| TestEnvError::io("building a Tokio runtime".into(), e))?;
            rt.block_on(future)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(TestEnvError::io(
                "start-up thread panicked".into(),
                std::io::Error::other("panic"),
            ))
        })
    })
}

fn sa_has_token(sa: &Result<Option<ServiceAccount>, kube::Error>) -> bool {
    matches!(sa, Ok(Some(sa)) if sa.secrets.as_ref().is_some_and(|s| !s.is_empty()))
}

async fn load_config(path: &Path) -> Result<kube::Config, TestEnvError> {
    let err = |message: String| TestEnvError::Kubeconfig {
        path: path.to_path_buf(),
        message,
    };
    let kubeconfig = Kubeconfig::read_from(path).map_err(|e| err(e.to_string()))?;
    kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| err(e.to_string()))
}

fn kubeconfig_text(server: &str, ca_pem: &str, token: &str) -> String {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    // JSON is YAML: every kubeconfig reader accepts it.
    let doc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "vpno-testenv", "cluster": {"server": server, "certificate-authority-data": ca}}],
        "users": [{"name": "vpno-testenv-admin", "user": {"token": token}}],
        "contexts": [{"name": "vpno-testenv", "context": {"cluster": "vpno-testenv", "user": "vpno-testenv-admin", "namespace": "default"}}],
        "current-context": "vpno-testenv",
    });
    serde_json::to_string_pretty(&doc).expect("JSON value serializes")
}

/// `N` distinct free loopback ports (all bound at once, then released).
pub(crate) fn free_ports<const N: usize>() -> Result<[u16; N], TestEnvError> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TestEnvError::io("binding a free loopback port".into(), e))?;
    let mut ports = [0u16; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l
            .local_addr()
            .map_err(|e| TestEnvError::io("reading a bound port".into(), e))?
            .port();
    }
    Ok(ports)
}

fn random_token() -> String {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `<prefix>-<6 random hex>-<counter>`, a valid DNS-1123 label.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut clean: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    clean.truncate(40);
    let clean = clean.trim_matches('-');
    let clean = if clean.is_empty() { "t" } else { clean };
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut bytes = [0u8; 3];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes);
    format!(
        "{clean}-{:02x}{:02x}{:02x}-{n}",
        bytes[0], bytes[1], bytes[2]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_names_are_dns_labels_and_distinct() {
        let a = unique_name("My_Test.Prefix");
        let b = unique_name("My_Test.Prefix");
        assert_ne!(a, b);
        for n in [&a, &b, &unique_name(""), &unique_name(&"x".repeat(100))] {
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{n}"
            );
            assert!(!n.starts_with('-') && !n.ends_with('-'), "{n}");
        }
        assert!(a.starts_with("my-test-prefix-"), "{a}");
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports::<4>().unwrap();
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(ports[i], ports[j]);
            }
        }
    }

    #[test]
    fn kubeconfig_text_is_a_loadable_kubeconfig() {
        let text = kubeconfig_text("https://127.0.0.1:1234", "PEM", "tok");
        let kc: Kubeconfig = Kubeconfig::from_yaml(&text).unwrap();
        assert_eq!(kc.current_context.as_deref(), Some("vpno-testenv"));
        let cluster = kc.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://127.0.0.1:1234"));
    }
}
