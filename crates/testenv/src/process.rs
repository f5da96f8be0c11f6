//! Child processes that cannot outlive the test process.
//!
//! Children are spawned from one dedicated thread that lives as long as the
//! process, each with `PR_SET_PDEATHSIG = SIGKILL` (the signal fires when the
//! *spawning thread* exits, so spawning from short-lived test threads would
//! kill the control plane early). An `atexit` hook additionally stops every
//! control plane still registered and removes its directory, which covers the
//! shared instance that lives in a static and is never dropped.
#![allow(unsafe_code)]

use std::ffi::OsString;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::TestEnvError;

/// What to start.
pub(crate) struct SpawnSpec {
    pub name: &'static str,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub log: PathBuf,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
}

type SpawnRequest = (SpawnSpec, mpsc::Sender<std::io::Result<Child>>);

static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("vpno-testenv-spawner".into())
            .spawn(move || {
                // Never returns while the process lives: `tx` sits in a static.
                for (spec, reply) in rx {
                    let _ = reply.send(spawn_here(spec));
                }
            })
            .expect("spawning the vpno-testenv spawner thread");
        Mutex::new(tx)
    })
}

fn spawn_here(spec: SpawnSpec) -> std::io::Result<Child> {
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)?;
    let log2 = log.try_clone()?;
    let parent = std::process::id();
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: the closure runs between fork and exec and only calls the
    // async-signal-safe functions prctl, getppid and returns an error value.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died between fork and prctl.
            if libc::getppid() as u32 != parent {
                return Err(std::io::Error::other("parent exited before exec"));
            }
            Ok(())
        });
    }
    cmd.spawn()
}

/// Spawns a child from the long-lived spawner thread.
pub(crate) fn spawn(spec: SpawnSpec) -> Result<ManagedProcess, TestEnvError> {
    let name = spec.name;
    let log = spec.log.clone();
    let program = spec.program.clone();
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .send((spec, reply_tx))
        .map_err(|_| {
            TestEnvError::io(
                "spawner thread is gone".into(),
                std::io::Error::other("channel closed"),
            )
        })?;
    let child = reply_rx
        .recv()
        .map_err(|_| {
            TestEnvError::io(
                "spawner thread is gone".into(),
                std::io::Error::other("channel closed"),
            )
        })?
        .map_err(|e| TestEnvError::io(format!("starting {}", program.display()), e))?;
    Ok(ManagedProcess { name, child, log })
}

/// A running control-plane process with its log file.
pub(crate) struct ManagedProcess {
    pub name: &'static str,
    pub child: Child,
    pub log: PathBuf,
}

impl ManagedProcess {
    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// `Err` with the log tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), TestEnvError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(TestEnvError::ProcessExited {
                name: self.name,
                status: status.to_string(),
                log_tail: log_tail(&self.log, 25),
            }),
            Err(e) => Err(TestEnvError::io(format!("waiting for {}", self.name), e)),
        }
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL; always reaps.
    pub fn stop(&mut self, grace: Duration) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: plain kill(2) on a pid we spawned and have not reaped yet.
        unsafe {
            libc::kill(self.pid(), libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        tracing::debug!(
            process = self.name,
            "did not stop on SIGTERM; sending SIGKILL"
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last `lines` lines of a log file (for error messages).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    format!(
        "--- last lines of {} ---\n{}",
        path.display(),
        all[start..].join("\n")
    )
}

/// A control plane as seen by the exit hook: pids (oldest first) and the
/// directory to remove (if it is its own).
struct Registered {
    id: u64,
    pids: Vec<i32>,
    dir: Option<PathBuf>,
}

static REGISTRY: Mutex<Vec<Registered>> = Mutex::new(Vec::new());
static EXIT_ACTIONS: Mutex<Vec<fn()>> = Mutex::new(Vec::new());
static EXIT_HOOK: OnceLock<()> = OnceLock::new();

fn install_exit_hook() {
    EXIT_HOOK.get_or_init(|| {
        // SAFETY: registers a plain `extern "C" fn()` with the C runtime.
        unsafe {
            libc::atexit(exit_hook);
        }
    });
}

/// Records a control plane so that the exit hook can stop it.
pub(crate) fn register(id: u64, dir: Option<&Path>) {
    install_exit_hook();
    let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    reg.push(Registered {
        id,
        pids: Vec::new(),
        dir: dir.map(Path::to_path_buf),
    });
}

/// Runs `action` at process exit, before the registered control planes are
/// stopped (the cluster tears its node down while its API server still runs).
pub(crate) fn register_exit_action(action: fn()) {
    install_exit_hook();
    EXIT_ACTIONS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(action);
}

/// Records a started process of control plane `id`.
pub(crate) fn register_pid(id: u64, pid: i32) {
    let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(r) = reg.iter_mut().find(|r| r.id == id) {
        r.pids.push(pid);
    }
}

/// Forgets control plane `id` (it was stopped normally).
pub(crate) fn unregister(id: u64) {
    let mut reg = REGISTRY.lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|r| r.id != id);
}

extern "C" fn exit_hook() {
    let actions = match EXIT_ACTIONS.try_lock() {
        Ok(mut a) => std::mem::take(&mut *a),
        Err(_) => Vec::new(),
    };
    for action in actions {
        action();
    }
    let entries = match REGISTRY.try_lock() {
        Ok(mut reg) => std::mem::take(&mut *reg),
        Err(_) => return,
    };
    for entry in entries.into_iter().rev() {
        for &pid in entry.pids.iter().rev() {
            stop_pid(pid, Duration::from_secs(3));
        }
        if let Some(dir) = entry.dir {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Stops a child known only by pid (used at exit, where the `Child` handles
/// live in a static that is never dropped).
fn stop_pid(pid: i32, grace: Duration) {
    // SAFETY: kill/waitpid on pids this process spawned; waitpid reaps them so
    // they cannot be reused while we signal them.
    unsafe {
        let mut status = 0;
        if libc::waitpid(pid, &mut status, libc::WNOHANG) != 0 {
            return; // already exited (reaped now) or not our child
        }
        libc::kill(pid, libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if libc::waitpid(pid, &mut status, libc::WNOHANG) != 0 {
                return;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, &mut status, 0);
    }
}

/// Removes `vpno-testenv-<pid>-*` directories left in `tmp` by processes that
/// no longer exist (e.g. a test binary killed by a signal, where no exit hook runs).
pub(crate) fn remove_stale_dirs(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix(crate::DIR_PREFIX))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// Sends `signal` to `pid`; `false` if there is no such process.
pub(crate) fn send_signal(pid: i32, signal: i32) -> bool {
    if pid <= 0 {
        return false; // never a process group or "every process"
    }
    // SAFETY: plain kill(2) with a positive pid.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// The start time of `pid` (clock ticks since boot, field 22 of
/// `/proc/<pid>/stat`): a pid together with it names one process, never a
/// later one that reused the pid.
pub(crate) fn start_time(pid: i32) -> Option<u64> {
    parse_start_time(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Field 22 of a `/proc/<pid>/stat` line (the command in field 2 may hold
/// spaces and parentheses, so count from its closing parenthesis).
fn parse_start_time(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After ")" come fields 3.. ; start time is field 22, i.e. index 19 here.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Stops the process `pid` if it is still the one that started at
/// `started` (SIGTERM, then SIGKILL after `grace`). For processes this test
/// process did not spawn itself (found in a dead run's records); does not reap.
pub(crate) fn stop_recorded(pid: i32, started: u64, grace: Duration) {
    if start_time(pid) != Some(started) {
        return;
    }
    send_signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if start_time(pid) != Some(started) || is_zombie(pid) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    send_signal(pid, libc::SIGKILL);
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s[s.rfind(')')? + 1..].to_string();
            rest.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_is_field_22_even_with_odd_command_names() {
        let stat = "1234 (we ird) (x)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_time(stat), Some(987654));
        assert_eq!(parse_start_time("garbage"), None);
    }

    #[test]
    fn own_start_time_is_stable() {
        let me = std::process::id() as i32;
        let a = start_time(me).expect("own /proc/<pid>/stat");
        assert_eq!(start_time(me), Some(a));
    }
}
