//! A real single-node Kubernetes cluster (Pods run) for tests: the control
//! plane of [`TestEnv`](crate::TestEnv) bound to the pod gateway
//! 10.244.0.1 with all default controllers, plus kube-scheduler,
//! containerd + runc, the kubelet and kube-proxy (iptables mode), on a CNI
//! bridge `cni0` (10.244.0.0/24). Follows `shared/k8s/README.md`.
//!
//! Needs root, the five Kubernetes binaries (see [`crate::BUILD_HINT`]),
//! Debian's containerd, runc, containernetworking-plugins, busybox-static,
//! iptables, conntrack, gcc and jq, and kubectl unpacked by `scripts/setup`
//! (or `$VPNO_KUBECTL`).
//!
//! # Containment
//! Pods get no default route (only their subnet and the Service range via
//! 10.244.0.1) and `nameserver 127.0.0.1`; nothing is masqueraded; a guard
//! chain at the top of FORWARD drops anything forwarded between `cni0`/`cni1`
//! and any other interface; containerd's registry endpoints point at a closed
//! loopback port (an image missing locally fails at once), and the kubelet's
//! cloud metadata probe is off. Pods must use local images with
//! `imagePullPolicy: Never` ([`BUSYBOX_IMAGE`], [`TESTBOX_IMAGE`], or a
//! tarball from `scripts/image` given to [`Cluster::import_image`]).
//!
//! # Life cycle
//! One cluster per machine (fixed bridge names and addresses): a lock in
//! `/run/vpno-testenv-cluster` serialises test binaries. One cluster per test
//! binary ([`Cluster::shared`]), torn down at exit — also after a failed
//! test. What it creates on the host is recorded in
//! `/run/vpno-testenv-cluster/state.json`, and a start first cleans up what
//! a killed run left.
//!
//! ```no_run
//! # async fn f() {
//! let Some(cluster) = vpno_testenv::Cluster::shared() else { return };
//! let ns = cluster.new_namespace("pods").await;
//! let out = cluster
//!     .kubectl_command()
//!     .args(["-n", &ns, "get", "pods"])
//!     .output()
//!     .unwrap();
//! assert!(out.status.success());
//! # }
//! ```

mod containerd;
mod host;
mod images;
mod kubelet;
mod network;
mod state;
mod teardown;

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Node;
use kube::api::Api;

use crate::binaries::{self, NodeBinaries};
use crate::process::{self, ManagedProcess, SpawnSpec};
use crate::{ControlPlaneSpec, TestEnv, TestEnvError};
use containerd::{Ctr, Layout};
use state::{RecordedProcess, State};

pub use images::{BUSYBOX_IMAGE, TESTBOX_IMAGE, image_script};
pub use kubelet::NODE_NAME;

/// Where Debian's CNI plugins are.
pub(crate) const CNI_PLUGIN_DIR: &str = "/usr/lib/cni";
/// Environment variable naming the kubectl to use.
pub const KUBECTL_ENV: &str = "VPNO_KUBECTL";
/// Where `scripts/setup` unpacks Debian's kubectl v1.20.2.
pub const KUBECTL_CACHE: &str = "/var/cache/vpn-operator/kubectl/usr/bin/kubectl";
/// Prefix of the cluster directory in `$TMPDIR` (not `vpno-testenv-`: the
/// control plane's stale-directory sweep must never reach into its mounts).
const DIR_PREFIX: &str = "vpno-cluster-";
/// How long `up` may take until the node is Ready.
const UP_TIMEOUT: Duration = Duration::from_secs(180);

/// A running single-node cluster. Dropping it tears it down; the shared one
/// is torn down at process exit.
pub struct Cluster {
    dir: PathBuf,
    control_plane: Option<TestEnv>,
    /// containerd, kubelet, kube-scheduler, kube-proxy (start order).
    node: Mutex<Vec<ManagedProcess>>,
    kubectl: PathBuf,
    ctr: Ctr,
    state: Mutex<State>,
    startup: Duration,
    down: AtomicBool,
    _lock: File,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir)
            .field("startup", &self.startup)
            .finish_non_exhaustive()
    }
}

static SHARED: OnceLock<Result<Cluster, TestEnvError>> = OnceLock::new();

fn tear_down_shared() {
    if let Some(Ok(cluster)) = SHARED.get() {
        cluster.teardown();
    }
}

/// What a cluster needs besides root, found on this machine.
struct Prerequisites {
    node: NodeBinaries,
    kubectl: PathBuf,
}

fn missing(what: String) -> TestEnvError {
    TestEnvError::MissingPrerequisite(what)
}

/// Checks root, binaries, packages and kubectl without starting anything.
fn check_prerequisites() -> Result<Prerequisites, TestEnvError> {
    if !host::is_root() {
        return Err(missing("the single-node cluster needs root".into()));
    }
    crate::check_prerequisites()?;
    let node = binaries::locate_node()?;
    let programs = [
        "containerd",
        "containerd-shim-runc-v2",
        "runc",
        "ctr",
        "iptables",
        "ip6tables",
        "conntrack",
        "ip",
        "umount",
        "nft",
        "gcc",
        "jq",
        "busybox",
    ];
    let absent: Vec<&str> = programs
        .into_iter()
        .filter(|p| host::find_program(p).is_none())
        .collect();
    if !absent.is_empty() {
        return Err(missing(format!(
            "{} not found (run scripts/setup: containerd runc containernetworking-plugins \
             busybox-static iptables conntrack gcc jq)",
            absent.join(", ")
        )));
    }
    for plugin in ["bridge", "host-local", "loopback"] {
        if !Path::new(CNI_PLUGIN_DIR).join(plugin).is_file() {
            return Err(missing(format!(
                "CNI plugin {CNI_PLUGIN_DIR}/{plugin} not found (run scripts/setup: containernetworking-plugins)"
            )));
        }
    }
    if !image_script().is_file() {
        return Err(missing(format!("{} not found", image_script().display())));
    }
    Ok(Prerequisites {
        node,
        kubectl: find_kubectl()?,
    })
}

/// `$VPNO_KUBECTL`, else the one `scripts/setup` unpacked.
fn find_kubectl() -> Result<PathBuf, TestEnvError> {
    let path = std::env::var_os(KUBECTL_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(KUBECTL_CACHE));
    if path.is_file() {
        Ok(path)
    } else {
        Err(missing(format!(
            "kubectl not found at {} (run scripts/setup, or set {KUBECTL_ENV})",
            path.display()
        )))
    }
}

impl Cluster {
    /// The cluster shared by all tests of this test binary, started on first
    /// use (~15–25 s) and torn down when the process exits.
    ///
    /// Returns `None` after printing `SKIPPED: <why>` when root, a binary or
    /// a package is missing and `CI` is not `true`; panics with the reason
    /// when `CI=true`, and on any other start-up failure.
    pub fn shared() -> Option<&'static Cluster> {
        let result = SHARED.get_or_init(|| {
            let started = Cluster::start();
            if started.is_ok() {
                process::register_exit_action(tear_down_shared);
            }
            started
        });
        match result {
            Ok(cluster) => Some(cluster),
            Err(e) if e.is_missing_prerequisite() && !crate::ci() => {
                use std::io::Write as _;
                let _ = writeln!(
                    std::io::stderr(),
                    "SKIPPED: no single-node Kubernetes cluster for this test: {e}"
                );
                None
            }
            Err(e) => panic!("starting the shared single-node cluster failed: {e}"),
        }
    }

    /// Starts a cluster (blocking). Waits while another process on this
    /// machine runs one; cleans up what a killed run left first.
    pub fn start() -> Result<Cluster, TestEnvError> {
        let begun = Instant::now();
        let pre = check_prerequisites()?;
        let lock = state::lock()?;
        if let Some(old) = State::load() {
            tracing::warn!(dir = %old.dir.display(), "cleaning up after a cluster run that did not finish");
            report("cleaning up a previous run", &teardown::clean_host(&old));
            State::remove();
        }
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{}-{nanos}", std::process::id()));
        let state = State {
            owner_pid: std::process::id(),
            dir: dir.clone(),
            processes: Vec::new(),
            sysctls: network::TOUCHED_SYSCTLS
                .iter()
                .filter_map(|n| host::sysctl_get(n).map(|v| (n.to_string(), v)))
                .collect(),
            absent_paths: teardown::absent_host_paths(),
            nft_tables_before: network::iptables_nft_tables(),
        };
        // Recorded before anything is created.
        state.save()?;
        let layout = Layout::under(&dir);
        let mut cluster = Cluster {
            dir: dir.clone(),
            control_plane: None,
            node: Mutex::new(Vec::new()),
            kubectl: pre.kubectl.clone(),
            ctr: Ctr::new(&layout.socket),
            state: Mutex::new(state),
            startup: Duration::ZERO,
            down: AtomicBool::new(false),
            _lock: lock,
        };
        // From here on, an error drops `cluster`, which tears everything down.
        cluster.bring_up(&pre.node, &layout)?;
        cluster.startup = begun.elapsed();
        tracing::info!(startup = ?cluster.startup, dir = %dir.display(), "single-node cluster ready");
        Ok(cluster)
    }

    fn bring_up(&mut self, bins: &NodeBinaries, layout: &Layout) -> Result<(), TestEnvError> {
        let deadline = Instant::now() + UP_TIMEOUT;
        let dir = self.dir.clone();
        for d in [
            &dir,
            &layout.root,
            &layout.state,
            &layout.cni_bin,
            &layout.cni_conf,
        ] {
            std::fs::create_dir_all(d)
                .map_err(|e| TestEnvError::io(format!("creating {}", d.display()), e))?;
        }
        network::create_bridge()?;
        network::install_guard()?;

        write(&layout.config, &containerd::config(layout))?;
        write(
            &layout.cni_conf.join("10-pods.conflist"),
            &network::cni_config(&dir.join("cni/ipam")),
        )?;
        containerd::link_cni_plugins(layout)?;
        self.spawn_node(
            "containerd",
            host::find_program("containerd").expect("checked"),
            vec!["--config".into(), layout.config.clone().into_os_string()],
            Vec::new(),
        )?;

        // Images (containerd) and the control plane start side by side.
        let cp_spec = control_plane_spec(&dir.join("control-plane"));
        let (images, control_plane) = std::thread::scope(|s| {
            let images = s.spawn(|| {
                self.ctr.wait_ready(Duration::from_secs(30))?;
                images::build_and_import(&dir, &self.ctr)
            });
            let cp = TestEnv::start_with(&cp_spec);
            let images = images.join().unwrap_or_else(|_| {
                Err(TestEnvError::io(
                    "image import thread panicked".into(),
                    std::io::Error::other("panic"),
                ))
            });
            (images, cp)
        });
        let control_plane = control_plane?;
        self.record(control_plane.process_ids());
        self.control_plane = Some(control_plane);
        images?;
        self.check_node()?;

        let cp = self.control_plane();
        let kubeconfig = cp.kubeconfig_path().to_path_buf();
        let cp_dir = cp.dir().to_path_buf();
        write(
            &dir.join("kubelet.yaml"),
            &kubelet::kubelet_config(&cp_dir.join("ca.crt"), &dir.join("resolv.conf")),
        )?;
        write(&dir.join("resolv.conf"), "nameserver 127.0.0.1\n")?;
        self.spawn_node(
            "kubelet",
            bins.kubelet.clone(),
            kubelet::kubelet_args(&dir, &kubeconfig, &layout.socket),
            // kubelet 1.20's in-tree ECR credential provider would ask
            // http://169.254.169.254 for AWS credentials.
            vec![("AWS_EC2_METADATA_DISABLED".into(), "true".into())],
        )?;
        let [scheduler_port, healthz_port, metrics_port] = crate::free_ports::<3>()?;
        self.spawn_node(
            "kube-scheduler",
            bins.scheduler.clone(),
            kubelet::scheduler_args(&kubeconfig, scheduler_port),
            Vec::new(),
        )?;
        self.spawn_node(
            "kube-proxy",
            bins.proxy.clone(),
            kubelet::proxy_args(&kubeconfig, healthz_port, metrics_port),
            Vec::new(),
        )?;

        crate::block_on_quiet(self.wait_node_ready(deadline))?;
        self.wait_guard_first(deadline)?;
        self.restore_panic_sysctls();
        Ok(())
    }

    /// The kubelet sets `kernel.panic_on_oops=1` and `kernel.panic=10` once
    /// at start-up (its "kernel defaults"). On a machine shared with other
    /// work an oops must not reboot it, so they go back to their old values
    /// now; the kubelet does not check them again.
    fn restore_panic_sysctls(&self) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (name, value) in &state.sysctls {
            if name.starts_with("kernel.panic") {
                let _ = host::sysctl_set(name, value);
            }
        }
    }

    /// Starts a node component with PDEATHSIG and records it.
    fn spawn_node(
        &self,
        name: &'static str,
        program: PathBuf,
        args: Vec<OsString>,
        mut env: Vec<(OsString, OsString)>,
    ) -> Result<(), TestEnvError> {
        env.push(("PATH".into(), host::NODE_PATH.into()));
        let child = process::spawn(SpawnSpec {
            name,
            program,
            args,
            log: self.dir.join(format!("{name}.log")),
            env,
        })?;
        self.record(vec![(name, child.pid())]);
        self.node
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
        Ok(())
    }

    /// Adds processes to the state file (with their start times).
    fn record(&self, procs: Vec<(&'static str, i32)>) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for (name, pid) in procs {
            if let Some(start_time) = process::start_time(pid) {
                state.processes.push(RecordedProcess {
                    name: name.to_string(),
                    pid,
                    start_time,
                });
            }
        }
        if let Err(e) = state.save() {
            tracing::warn!(error = %e, "could not update the cluster state file");
        }
    }

    /// `Err` with the log tail if a node component has exited.
    fn check_node(&self) -> Result<(), TestEnvError> {
        let mut node = self.node.lock().unwrap_or_else(|p| p.into_inner());
        for p in node.iter_mut() {
            p.check_alive()?;
        }
        Ok(())
    }

    async fn wait_node_ready(&self, deadline: Instant) -> Result<(), TestEnvError> {
        let client = self.control_plane().try_client().await?;
        let nodes: Api<Node> = Api::all(client);
        loop {
            self.check_node()?;
            if let Ok(Some(node)) = nodes.get_opt(NODE_NAME).await
                && node_is_ready(&node)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(TestEnvError::Timeout {
                    what: format!("node {NODE_NAME} to become Ready"),
                    after: UP_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// kube-proxy inserts its `KUBE-FORWARD` jump at the top of FORWARD on
    /// its first sync; once it is there, the guard goes back on top (kube-proxy
    /// only re-inserts a missing jump, so the order then holds).
    fn wait_guard_first(&self, deadline: Instant) -> Result<(), TestEnvError> {
        loop {
            self.check_node()?;
            let rules = host::run("iptables", ["-t", "filter", "-S", "FORWARD"])?;
            if rules.contains("-j KUBE-FORWARD") {
                return network::keep_guard_first();
            }
            if Instant::now() > deadline {
                return Err(TestEnvError::Timeout {
                    what: "kube-proxy's KUBE-FORWARD chain".into(),
                    after: UP_TIMEOUT,
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn control_plane(&self) -> &TestEnv {
        self.control_plane
            .as_ref()
            .expect("the control plane runs once the cluster is up")
    }

    /// The control plane (API server at `https://10.244.0.1:<port>`).
    pub fn api(&self) -> &TestEnv {
        self.control_plane()
    }

    /// A fresh admin (`system:masters`) client for the calling runtime.
    pub async fn client(&self) -> kube::Client {
        self.control_plane().client().await
    }

    /// A kubeconfig file for this cluster (admin token, CA data).
    pub fn kubeconfig_path(&self) -> &Path {
        self.control_plane().kubeconfig_path()
    }

    /// Path of kubectl v1.20.2.
    pub fn kubectl(&self) -> &Path {
        &self.kubectl
    }

    /// A `kubectl --kubeconfig <this cluster's>` command to add arguments to.
    pub fn kubectl_command(&self) -> Command {
        let mut cmd = Command::new(&self.kubectl);
        cmd.arg("--kubeconfig").arg(self.kubeconfig_path());
        cmd
    }

    /// Imports an image tarball (docker-archive or OCI, e.g. from
    /// `scripts/image`) into the node's containerd; Pods then run it with
    /// `imagePullPolicy: Never`.
    pub fn import_image(&self, tar: &Path) -> Result<(), TestEnvError> {
        self.ctr.import(tar)
    }

    /// Creates a namespace `<prefix>-<suffix>` whose default ServiceAccount
    /// has its token (Pods can be created in it at once).
    pub async fn new_namespace(&self, prefix: &str) -> String {
        self.control_plane().new_namespace(prefix).await
    }

    /// The node's name.
    pub fn node_name(&self) -> &'static str {
        NODE_NAME
    }

    /// The cluster's directory (component logs `<name>.log`, the control
    /// plane's in `control-plane/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long `up` took, until the node was Ready.
    pub fn startup_duration(&self) -> Duration {
        self.startup
    }

    /// The name of the guard chain (filter table, FORWARD).
    pub fn guard_chain(&self) -> &'static str {
        network::GUARD_CHAIN
    }

    /// Stops the cluster now and undoes its changes to the host (same as dropping it).
    pub fn stop(self) {
        self.teardown();
    }

    /// Tears everything down; idempotent. Pods are deleted first (the
    /// kubelet stops their sandboxes through CNI), then the node components
    /// stop, containerd's leftovers are killed with `ctr`, the control plane
    /// stops, and the host is cleaned from the state record.
    fn teardown(&self) {
        if self.down.swap(true, Ordering::SeqCst) {
            return;
        }
        let begun = Instant::now();
        let mut errors = Vec::new();
        let mut node = std::mem::take(&mut *self.node.lock().unwrap_or_else(|p| p.into_inner()));
        let kubelet_runs = node
            .iter_mut()
            .any(|p| p.name == "kubelet" && p.check_alive().is_ok());
        if kubelet_runs && self.control_plane.is_some() {
            self.delete_all_pods();
        }
        let containerd = node
            .iter()
            .position(|p| p.name == "containerd")
            .map(|i| node.remove(i));
        while let Some(mut p) = node.pop() {
            p.stop(Duration::from_secs(5));
        }
        if let Some(mut containerd) = containerd {
            if containerd.check_alive().is_ok() {
                self.ctr.remove_everything(&mut errors);
            }
            containerd.stop(Duration::from_secs(5));
        }
        if let Some(cp) = &self.control_plane {
            cp.shutdown();
        }
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner()).clone();
        errors.extend(teardown::clean_host(&state));
        State::remove();
        report("tearing down the single-node cluster", &errors);
        tracing::info!(took = ?begun.elapsed(), "single-node cluster torn down");
    }

    /// Force-deletes every Pod and waits (bounded) until the kubelet has
    /// stopped their containers and sandboxes.
    fn delete_all_pods(&self) {
        let _ = self
            .kubectl_command()
            .args([
                "delete",
                "pods",
                "--all",
                "--all-namespaces",
                "--grace-period=0",
                "--force",
                "--wait=false",
                "--request-timeout=10s",
            ])
            .output();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.ctr.task_count() {
                Some(0) | None => return,
                Some(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The control plane as the cluster runs it (README: "Control plane,
/// kubelet, kube-proxy").
fn control_plane_spec(dir: &Path) -> ControlPlaneSpec {
    let f = |name: &str| dir.join(name).into_os_string();
    let flag = |name: &str, file: &str| {
        let mut s = OsString::from(name);
        s.push("=");
        s.push(f(file));
        s
    };
    ControlPlaneSpec {
        address: network::GATEWAY,
        dir: Some(dir.to_path_buf()),
        controllers: None,
        apiserver_args: vec![
            flag("--client-ca-file", "ca.crt"),
            flag("--kubelet-client-certificate", "admin-client.crt"),
            flag("--kubelet-client-key", "admin-client.key"),
            "--kubelet-preferred-address-types=InternalIP".into(),
        ],
        controller_manager_args: vec![
            flag("--cluster-signing-cert-file", "ca.crt"),
            flag("--cluster-signing-key-file", "ca.key"),
            flag("--flex-volume-plugin-dir", "kcm-flexvolume"),
        ],
    }
}

fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn write(path: &Path, text: &str) -> Result<(), TestEnvError> {
    std::fs::write(path, text)
        .map_err(|e| TestEnvError::io(format!("writing {}", path.display()), e))
}

/// Tear-down errors go to stderr directly (the test harness captures
/// `eprintln!`, and at exit nothing else would show them).
fn report(what: &str, errors: &[String]) {
    if errors.is_empty() {
        return;
    }
    use std::io::Write as _;
    let mut err = std::io::stderr();
    let _ = writeln!(err, "vpno-testenv: {what}: {} problem(s):", errors.len());
    for e in errors {
        let _ = writeln!(err, "  - {e}");
    }
}
