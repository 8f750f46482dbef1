//! The shim: a small process per instance (`gantry shim DIR`) between the
//! control plane and the app, like conmon for containers.
//!
//! It detaches into its own session, puts itself under the instance's
//! limits, spawns the app in a new process group with stdout and stderr
//! piped to itself, records `shim.json` (pids and the app's start time),
//! captures the logs, waits for the app, kills whatever is left of its
//! process group, and records `exit.json`. The app's pipes end in the shim,
//! not in the control plane, so the app keeps running, and logging, when
//! the control plane dies; the control plane finds it again from
//! `shim.json`.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::limits::{self, Enforced, Limits};
use crate::logs::{self, Rotation};

pub const SPEC_FILE: &str = "spec.json";
pub const STATE_FILE: &str = "shim.json";
pub const EXIT_FILE: &str = "exit.json";
pub const SHIM_LOG: &str = "shim.log";

/// What the shim runs (written by the supervisor before it starts the shim).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShimSpec {
    /// Cgroup name for this instance.
    pub id: String,
    /// A shell command line, run as [`crate::cmdline::shell_script`] makes
    /// it.
    pub command: String,
    /// The signal that stops the app gracefully (15 = SIGTERM): the shell
    /// traps it, so it waits for the app instead of dying first.
    #[serde(default = "default_stop_signal")]
    pub stop_signal: i32,
    pub workdir: PathBuf,
    /// The app's environment, without the secret variables (those come on
    /// the shim's stdin).
    pub env: BTreeMap<String, String>,
    pub limits: Limits,
    pub log_max_bytes: u64,
    pub log_keep: u32,
}

fn default_stop_signal() -> i32 {
    15
}

/// Written once the app runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimState {
    pub shim_pid: i32,
    /// With the pid, the shim's identity: the supervisor watches it too, as
    /// an app whose shim is gone has nobody reading its output.
    #[serde(default)]
    pub shim_start_ticks: u64,
    pub app_pid: i32,
    /// With the pid, the app's identity (see [`crate::procfs`]).
    pub app_start_ticks: u64,
    pub started_at_ms: i64,
    pub enforced: Enforced,
}

/// Written when the app has exited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShimExit {
    pub app_pid: i32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub oom: bool,
    pub at_ms: i64,
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn write_json<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(v)?)?;
    std::fs::rename(tmp, path)
}

/// Entry point of `gantry shim DIR`. Returns the shim's exit code.
pub fn main(dir: &Path) -> i32 {
    match run(dir) {
        Ok(()) => 0,
        Err(e) => {
            let _ = std::fs::write(dir.join(SHIM_LOG), format!("shim failed: {e}\n"));
            // The supervisor reads a missing state file plus this exit file
            // as "could not start".
            let _ = write_json(
                &dir.join(EXIT_FILE),
                &ShimExit {
                    app_pid: 0,
                    code: Some(127),
                    signal: None,
                    oom: false,
                    at_ms: crate::now_ms(),
                },
            );
            1
        }
    }
}

fn run(dir: &Path) -> Result<(), String> {
    // Own session: a Ctrl-C at the control plane's terminal never reaches
    // the app, and the app outlives the control plane.
    let _ = nix::unistd::setsid();
    let spec: ShimSpec = read_json(&dir.join(SPEC_FILE))
        .ok_or_else(|| format!("cannot read {}", dir.join(SPEC_FILE).display()))?;
    let _ = std::fs::remove_file(dir.join(EXIT_FILE));
    // The secret variables come on stdin (JSON), never from a file.
    let mut secret = Vec::new();
    std::io::stdin()
        .read_to_end(&mut secret)
        .map_err(|e| format!("cannot read the secret variables from stdin: {e}"))?;
    let secret: BTreeMap<String, String> = if secret.iter().all(u8::is_ascii_whitespace) {
        BTreeMap::new()
    } else {
        serde_json::from_slice(&secret)
            .map_err(|e| format!("the secret variables on stdin are not a JSON object: {e}"))?
    };
    let enforced = limits::apply_to_self(&spec.id, &spec.limits);
    let (tx, dropped, writer) = logs::start_writer(
        dir,
        Rotation {
            max_bytes: spec.log_max_bytes,
            keep: spec.log_keep,
        },
    )
    .map_err(|e| format!("cannot open the log in {}: {e}", dir.display()))?;

    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg(crate::cmdline::shell_script(
            &spec.command,
            spec.stop_signal,
        ))
        .current_dir(&spec.workdir)
        .env_clear()
        .envs(&spec.env)
        .envs(&secret)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| {
            format!(
                "cannot start `{}` in {}: {e}",
                spec.command,
                spec.workdir.display()
            )
        })?;
    let app_pid = child.id() as i32;
    let app_start_ticks = crate::procfs::stat(app_pid)
        .map(|s| s.start_ticks)
        .unwrap_or(0);
    let shim_pid = std::process::id() as i32;
    let state = ShimState {
        shim_pid,
        shim_start_ticks: crate::procfs::stat(shim_pid).map_or(0, |s| s.start_ticks),
        app_pid,
        app_start_ticks,
        started_at_ms: crate::now_ms(),
        enforced: enforced.clone(),
    };
    write_json(&dir.join(STATE_FILE), &state).map_err(|e| e.to_string())?;

    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(logs::spawn_reader(
            "stdout",
            out,
            tx.clone(),
            dropped.clone(),
        ));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(logs::spawn_reader(
            "stderr",
            err,
            tx.clone(),
            dropped.clone(),
        ));
    }
    drop(tx);

    let oom_before = limits::oom_kills(&enforced);
    let status = child.wait().map_err(|e| e.to_string())?;
    let cgroup_oom = limits::oom_kills(&enforced) > oom_before;
    // Nothing of the app outlives it: its children die with it.
    let _ = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(app_pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    for r in readers {
        let _ = r.join();
    }
    let _ = writer.join();
    let oom = cgroup_oom
        || (enforced == Enforced::Rlimit
            && matches!(status.signal(), Some(6) | Some(9))
            && tail_says_oom(dir));
    limits::cleanup(&enforced);
    write_json(
        &dir.join(EXIT_FILE),
        &ShimExit {
            app_pid,
            code: status.code(),
            signal: status.signal(),
            oom,
            at_ms: crate::now_ms(),
        },
    )
    .map_err(|e| e.to_string())
}

/// Under an rlimit, running out of memory shows as a failed allocation.
fn tail_says_oom(dir: &Path) -> bool {
    logs::tail(dir, 5).iter().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("memory allocation of")
            || l.contains("cannot allocate memory")
            || l.contains("memoryerror")
            || l.contains("out of memory")
    })
}
