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

/// Writes a record durably and in one piece (`gantry_common::write_atomic`):
/// a reader, or a control plane after a crash, finds the old record or the
/// new one, never half of one.
fn write_json<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    gantry_common::write_atomic(path, &serde_json::to_vec(v)?, 0o644)
}

/// Why the shim could not run the app (or record its exit). Each message
/// says what failed; the cause is its `source()`.
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("cannot read {}", .0.display())]
    Spec(PathBuf),
    #[error("cannot read the secret variables from stdin")]
    Stdin(#[source] std::io::Error),
    #[error("the secret variables on stdin are not a JSON object")]
    Secrets(#[source] serde_json::Error),
    #[error("cannot open the log in {}", dir.display())]
    Log {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start `{command}` in {}", workdir.display())]
    Spawn {
        command: String,
        workdir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write {}", path.display())]
    Record {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for the app")]
    Wait(#[source] std::io::Error),
}

/// Entry point of `gantry shim DIR`. Returns the shim's exit code.
pub fn main(dir: &Path) -> i32 {
    match run(dir) {
        Ok(()) => 0,
        Err(e) => {
            let _ = std::fs::write(
                dir.join(SHIM_LOG),
                format!("shim failed: {}\n", crate::error_chain(&e)),
            );
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

fn run(dir: &Path) -> Result<(), ShimError> {
    // Own session: a Ctrl-C at the control plane's terminal never reaches
    // the app, and the app outlives the control plane.
    let _ = nix::unistd::setsid();
    let spec: ShimSpec =
        read_json(&dir.join(SPEC_FILE)).ok_or_else(|| ShimError::Spec(dir.join(SPEC_FILE)))?;
    let _ = std::fs::remove_file(dir.join(EXIT_FILE));
    // The secret variables come on stdin (JSON), never from a file.
    let mut secret = Vec::new();
    std::io::stdin()
        .read_to_end(&mut secret)
        .map_err(ShimError::Stdin)?;
    let secret: BTreeMap<String, String> = if secret.iter().all(u8::is_ascii_whitespace) {
        BTreeMap::new()
    } else {
        serde_json::from_slice(&secret).map_err(ShimError::Secrets)?
    };
    let enforced = limits::apply_to_self(&spec.id, &spec.limits);
    let (tx, dropped, writer) = logs::start_writer(
        dir,
        Rotation {
            max_bytes: spec.log_max_bytes,
            keep: spec.log_keep,
        },
    )
    .map_err(|source| ShimError::Log {
        dir: dir.to_path_buf(),
        source,
    })?;

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
        .map_err(|source| ShimError::Spawn {
            command: spec.command.clone(),
            workdir: spec.workdir.clone(),
            source,
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
    let record = |path: PathBuf| move |source: std::io::Error| ShimError::Record { path, source };
    write_json(&dir.join(STATE_FILE), &state).map_err(record(dir.join(STATE_FILE)))?;

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
    let status = child.wait().map_err(ShimError::Wait)?;
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
    .map_err(record(dir.join(EXIT_FILE)))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_failed_and_keep_the_cause_apart() {
        let e = ShimError::Spawn {
            command: "./app".into(),
            workdir: "/srv/app".into(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(e.to_string(), "cannot start `./app` in /srv/app");
        assert!(std::error::Error::source(&e).is_some());
        // What the shim's log says: the message, then its cause, once.
        assert_eq!(
            crate::error_chain(&e),
            "cannot start `./app` in /srv/app: entity not found"
        );
    }

    #[test]
    fn records_are_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(EXIT_FILE);
        let exit = ShimExit {
            app_pid: 7,
            code: Some(0),
            signal: None,
            oom: false,
            at_ms: 1,
        };
        write_json(&path, &exit).unwrap();
        assert_eq!(read_json::<ShimExit>(&path), Some(exit));
        // No temporary file is left next to it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [EXIT_FILE]);
    }
}
