//! Running a spec's shell command (build, migration, hook): `/bin/sh -c`
//! with stderr folded into stdout, a time limit, and the end of the output
//! kept for the timeline or the error message.
//!
//! Each command gets its own process group, so a timeout (or the end of the
//! caller) stops everything it started, not just the shell. A deploy's
//! commands also leave a marker file (pid + start time) while they run: if
//! the control plane dies meanwhile, the resumed deploy finds the marker
//! and stops the orphaned group before it acts (a migration must not still
//! be running while its rollback runs).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The marker of a running command: its process group and start time.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    pid: i32,
    start_ticks: u64,
    command: String,
}

/// How a command ended.
pub(crate) struct Outcome {
    pub(crate) ok: bool,
    /// How it ended: `exit status: 3`, `ran longer than 600 s`, …
    pub(crate) ended: String,
    /// The end of its output (at most `keep` bytes).
    pub(crate) output: String,
}

impl Outcome {
    /// One line for the timeline: the command, how it ended, its output.
    pub(crate) fn summary(&self, cmd: &str) -> String {
        format!("`{cmd}` {}: {}", self.ended, self.output.trim())
    }
}

/// Runs `cmd` in `dir`. With `env`, the command sees exactly that
/// environment; without, the control plane's minus `CARGO_TARGET_DIR` (so
/// build outputs stay inside `dir`) and Gantry's own credentials
/// (`GANTRY_SECRET_KEY`, `GANTRY_TOKEN`), which a build must never see.
pub(crate) async fn run(
    cmd: &str,
    dir: &Path,
    env: Option<BTreeMap<String, String>>,
    timeout: Duration,
    keep: usize,
) -> Outcome {
    run_marked(cmd, dir, env, timeout, keep, None).await
}

/// [`run`], writing `marker` (pid and start time of the command's process
/// group) while the command runs.
pub(crate) async fn run_marked(
    cmd: &str,
    dir: &Path,
    env: Option<BTreeMap<String, String>>,
    timeout: Duration,
    keep: usize,
    marker: Option<&Path>,
) -> Outcome {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("exec 2>&1; {cmd}"))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    match env {
        Some(vars) => {
            c.env_clear().envs(vars);
        }
        None => {
            c.env_remove("CARGO_TARGET_DIR")
                .env_remove("GANTRY_SECRET_KEY")
                .env_remove("GANTRY_TOKEN");
        }
    }
    let fail = |ended: String| Outcome {
        ok: false,
        ended,
        output: String::new(),
    };
    let child = match c.spawn() {
        Ok(c) => c,
        Err(e) => return fail(format!("could not run: {e}")),
    };
    let group = child.id().and_then(|p| i32::try_from(p).ok());
    // Kills the whole group however this function ends (timeout, caller
    // dropped); the group is gone by then when the command ended itself.
    let _group_guard = GroupGuard(group);
    if let (Some(path), Some(pid)) = (marker, group)
        && let Some(st) = gantry_runtime::procfs::stat(pid)
    {
        let m = Marker {
            pid,
            start_ticks: st.start_ticks,
            command: cmd.to_string(),
        };
        if let Ok(text) = serde_json::to_vec(&m) {
            let _ = std::fs::write(path, text);
        }
    }
    let result = tokio::time::timeout(timeout, child.wait_with_output()).await;
    if let Some(path) = marker {
        let _ = std::fs::remove_file(path);
    }
    match result {
        Err(_) => fail(format!("ran longer than {} s", timeout.as_secs())),
        Ok(Err(e)) => fail(format!("could not run: {e}")),
        Ok(Ok(out)) => Outcome {
            ok: out.status.success(),
            ended: out.status.to_string(),
            output: tail(&String::from_utf8_lossy(&out.stdout), keep),
        },
    }
}

/// Kills a command's process group when dropped.
struct GroupGuard(Option<i32>);

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Stops the command a crashed control plane left running under `marker`,
/// if it is still the same process; returns a line for the timeline.
pub(crate) fn stop_orphan(marker: &Path) -> Option<String> {
    let text = std::fs::read(marker).ok()?;
    let _ = std::fs::remove_file(marker);
    let m: Marker = serde_json::from_slice(&text).ok()?;
    if !gantry_runtime::procfs::is_alive(m.pid, m.start_ticks) {
        return None;
    }
    let _ = killpg(Pid::from_raw(m.pid), Signal::SIGKILL);
    Some(format!(
        "stopped `{}` (process group {}), left running by the control plane that died",
        m.command, m.pid
    ))
}

/// The last `keep` bytes of `text` (on a character boundary), marked when cut.
fn tail(text: &str, keep: usize) -> String {
    if text.len() <= keep {
        return text.to_string();
    }
    let cut = (text.len() - keep..text.len())
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(text.len());
    format!("…\n{}", &text[cut..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end_on_a_char_boundary() {
        assert_eq!(tail("abc", 5), "abc");
        assert_eq!(tail("abcdef", 2), "…\nef");
        assert_eq!(tail("aé", 1), "…\n");
    }

    #[tokio::test]
    async fn outcomes() {
        let dir = std::env::temp_dir();
        let ok = run(
            "echo out; echo err >&2",
            &dir,
            None,
            Duration::from_secs(5),
            100,
        )
        .await;
        assert!(ok.ok);
        assert_eq!(ok.output, "out\nerr\n");
        let bad = run(
            "exit 3",
            &dir,
            Some(BTreeMap::new()),
            Duration::from_secs(5),
            100,
        )
        .await;
        assert!(!bad.ok);
        assert_eq!(bad.summary("exit 3"), "`exit 3` exit status: 3: ");
        let slow = run("sleep 5", &dir, None, Duration::from_millis(50), 100).await;
        assert_eq!(slow.ended, "ran longer than 0 s");
    }
}
