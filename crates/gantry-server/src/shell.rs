//! Running a spec's shell command (build, migration, hook): `/bin/sh -c`
//! with stderr folded into stdout, a time limit, and the end of the output
//! kept for the timeline or the error message.
//!
//! The output is read as it comes: only its last `keep` bytes stay in
//! memory, and all of it is appended to a log file (`builds/<build>.log`,
//! `deploys/<id>.log`), so a command that prints a gigabyte costs no more
//! memory than one that prints a line. A command that runs out of time
//! keeps what it printed until then. Only the newest [`KEEP_LOGS`] log
//! files of a directory are kept.
//!
//! Each command gets its own process group, so a timeout (or the end of the
//! caller) stops everything it started, not just the shell. A deploy's
//! commands also leave a marker file (pid + start time) while they run: if
//! the control plane dies meanwhile, the resumed deploy finds the marker
//! and stops the orphaned group before it acts (a migration must not still
//! be running while its rollback runs).

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How many command logs a directory keeps (the oldest go first).
pub(crate) const KEEP_LOGS: usize = 50;

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
    /// The end of its output (at most `keep` bytes), marked when cut.
    pub(crate) output: String,
}

impl Outcome {
    /// One line for the timeline: the command, how it ended, its output.
    pub(crate) fn summary(&self, cmd: &str) -> String {
        format!("`{cmd}` {}: {}", self.ended, self.output.trim())
    }
}

/// Runs `cmd` in `dir`, appending its whole output to `log` when given.
/// With `env`, the command sees exactly that environment; without, the
/// control plane's minus `CARGO_TARGET_DIR` (so build outputs stay inside
/// `dir`) and Gantry's own credentials (`GANTRY_SECRET_KEY`,
/// `GANTRY_TOKEN`), which a build must never see.
pub(crate) async fn run(
    cmd: &str,
    dir: &Path,
    env: Option<BTreeMap<String, String>>,
    timeout: Duration,
    keep: usize,
    log: Option<&Path>,
) -> Outcome {
    run_logged(cmd, dir, env, timeout, keep, None, log).await
}

/// [`run`], writing `marker` (pid and start time of the command's process
/// group) while the command runs, and appending the output to the log
/// beside it (`<marker stem>.log`).
pub(crate) async fn run_marked(
    cmd: &str,
    dir: &Path,
    env: Option<BTreeMap<String, String>>,
    timeout: Duration,
    keep: usize,
    marker: Option<&Path>,
) -> Outcome {
    let log = marker.map(|m| m.with_extension("log"));
    run_logged(cmd, dir, env, timeout, keep, marker, log.as_deref()).await
}

async fn run_logged(
    cmd: &str,
    dir: &Path,
    env: Option<BTreeMap<String, String>>,
    timeout: Duration,
    keep: usize,
    marker: Option<&Path>,
    log: Option<&Path>,
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
    let mut child = match c.spawn() {
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
            let _ = tokio::fs::write(path, text).await;
        }
    }
    let mut log = match log {
        Some(path) => LogFile::open(path, cmd).await,
        None => None,
    };
    let mut tail = Tail::new(keep);
    let Some(mut stdout) = child.stdout.take() else {
        return fail("could not run: no pipe to read its output".into());
    };
    // Reads to the end of the output (every process of the command closed
    // it), then waits for the shell; `tail` and `log` outlive a timeout.
    let ran = tokio::time::timeout(timeout, async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stdout.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            tail.push(&buf[..n]);
            if let Some(l) = &mut log {
                l.write(&buf[..n]).await;
            }
        }
        child.wait().await
    })
    .await;
    if let Some(path) = marker {
        let _ = tokio::fs::remove_file(path).await;
    }
    let (ok, ended) = match ran {
        Err(_) => (false, format!("ran longer than {} s", timeout.as_secs())),
        Ok(Err(e)) => (false, format!("could not run: {e}")),
        Ok(Ok(status)) => (status.success(), status.to_string()),
    };
    let whole = match log {
        Some(l) => l.finish(&ended).await,
        None => None,
    };
    Outcome {
        ok,
        ended,
        output: tail.text(whole.as_deref()),
    }
}

/// The last bytes of a command's output, at most `keep` of them.
struct Tail {
    keep: usize,
    bytes: VecDeque<u8>,
    total: u64,
}

impl Tail {
    fn new(keep: usize) -> Self {
        Self {
            keep,
            bytes: VecDeque::with_capacity(keep.min(1024 * 1024)),
            total: 0,
        }
    }

    fn push(&mut self, chunk: &[u8]) {
        self.total += chunk.len() as u64;
        let chunk = &chunk[chunk.len().saturating_sub(self.keep)..];
        let over = (self.bytes.len() + chunk.len()).saturating_sub(self.keep);
        self.bytes.drain(..over);
        self.bytes.extend(chunk);
    }

    /// The kept bytes as text (lossily), marked when the output was longer;
    /// the mark names `whole`, the log with all of it, if there is one.
    fn text(&self, whole: Option<&Path>) -> String {
        let (a, b) = self.bytes.as_slices();
        let kept = [a, b].concat();
        let cut = self.total > kept.len() as u64;
        // A character cut in two at the start is dropped, not garbled.
        let start = if cut {
            kept.iter()
                .take(3)
                .take_while(|b| (**b & 0xC0) == 0x80)
                .count()
        } else {
            0
        };
        let text = String::from_utf8_lossy(&kept[start..]);
        let text = if cut {
            format!("…\n{text}")
        } else {
            tail(&text, self.keep)
        };
        match whole {
            Some(path) if text.starts_with("…\n") => format!(
                "… (the whole output is in {})\n{}",
                path.display(),
                &text["…\n".len()..]
            ),
            _ => text,
        }
    }
}

/// A command's log: appended to as the output comes; a write that fails
/// (a full disk) ends the logging, never the command.
struct LogFile {
    path: PathBuf,
    file: tokio::fs::File,
    /// A write failed: nothing more is written, the file stays as it is.
    failed: bool,
}

impl LogFile {
    /// Opens (appending) the log at `path`, headed by the command; a new
    /// log first makes room: only the newest [`KEEP_LOGS`] logs of its
    /// directory are kept.
    async fn open(path: &Path, cmd: &str) -> Option<Self> {
        if let Some(dir) = path.parent().map(Path::to_path_buf)
            && !tokio::fs::try_exists(path).await.unwrap_or(true)
        {
            let _ = tokio::task::spawn_blocking(move || prune_logs(&dir, KEEP_LOGS - 1)).await;
        }
        let opened = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .await;
        let mut log = match opened {
            Ok(file) => Self {
                path: path.to_path_buf(),
                file,
                failed: false,
            },
            Err(e) => {
                tracing::warn!(log = %path.display(), error = %e, "cannot open a command log; the output's tail is still kept");
                return None;
            }
        };
        log.write(format!("--- `{cmd}`\n").as_bytes()).await;
        Some(log)
    }

    async fn write(&mut self, bytes: &[u8]) {
        if self.failed {
            return;
        }
        if let Err(e) = self.file.write_all(bytes).await {
            tracing::warn!(log = %self.path.display(), error = %e, "cannot write a command log; the output's tail is still kept");
            self.failed = true;
        }
    }

    /// Ends the log with how the command ended; its path when all of the
    /// output is in it.
    async fn finish(mut self, ended: &str) -> Option<PathBuf> {
        self.write(format!("\n--- {ended}\n").as_bytes()).await;
        if self.failed {
            return None;
        }
        match self.file.flush().await {
            Ok(()) => Some(self.path),
            Err(e) => {
                tracing::warn!(log = %self.path.display(), error = %e, "cannot write a command log; the output's tail is still kept");
                None
            }
        }
    }
}

/// Removes all but the newest `keep` `.log` files of `dir`.
fn prune_logs(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut logs: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    logs.sort_by(|a, b| b.cmp(a));
    for (_, old) in logs.into_iter().skip(keep) {
        let _ = std::fs::remove_file(old);
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
/// (Synchronous: a file of a few dozen bytes, read once as a deploy resumes.)
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
            None,
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
            None,
        )
        .await;
        assert!(!bad.ok);
        assert_eq!(bad.summary("exit 3"), "`exit 3` exit status: 3: ");
        let slow = run("sleep 5", &dir, None, Duration::from_millis(50), 100, None).await;
        assert_eq!(slow.ended, "ran longer than 0 s");
    }

    #[tokio::test]
    async fn a_timeout_keeps_the_output_printed_so_far() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("deploy.log");
        // The marker file says when the output is out, so the timeout
        // cannot come before it however slow the machine is.
        let cmd = "echo migrating table users; echo step 2 >&2; touch printed; sleep 30";
        let out = run_logged(
            cmd,
            dir.path(),
            None,
            Duration::from_secs(3),
            1000,
            None,
            Some(&log),
        )
        .await;
        assert!(dir.path().join("printed").exists());
        assert!(!out.ok);
        assert_eq!(out.ended, "ran longer than 3 s");
        assert_eq!(out.output, "migrating table users\nstep 2\n");
        assert_eq!(
            out.summary("migrate"),
            "`migrate` ran longer than 3 s: migrating table users\nstep 2"
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text,
            format!("--- `{cmd}`\nmigrating table users\nstep 2\n\n--- ran longer than 3 s\n")
        );
    }

    /// `seq 1 n` as the command prints it.
    fn seq(n: u32) -> String {
        (1..=n).map(|i| format!("{i}\n")).collect()
    }

    #[tokio::test]
    async fn only_the_tail_is_kept_and_the_log_has_everything() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        let out = run(
            "seq 1 300000",
            dir.path(),
            None,
            Duration::from_secs(60),
            1000,
            Some(&log),
        )
        .await;
        assert!(out.ok, "{}", out.ended);
        let all = seq(300_000);
        let last = &all[all.len() - 1000..];
        assert_eq!(
            out.output,
            format!("… (the whole output is in {})\n{last}", log.display())
        );
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(
            text,
            format!("--- `seq 1 300000`\n{all}\n--- exit status: 0\n")
        );
        // A second command appends to the same log.
        let again = run(
            "echo again",
            dir.path(),
            None,
            Duration::from_secs(5),
            1000,
            Some(&log),
        )
        .await;
        assert_eq!(again.output, "again\n", "not cut, so not marked");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.ends_with("--- `echo again`\nagain\n\n--- exit status: 0\n"));
    }

    #[test]
    fn a_character_cut_at_the_start_of_the_tail_is_dropped() {
        let mut t = Tail::new(4);
        t.push("ab".as_bytes());
        t.push("éé".as_bytes()); // 4 bytes: the tail is exactly them
        assert_eq!(t.text(None), "…\néé");
        t.push("x".as_bytes()); // the first é is cut in two
        assert_eq!(t.text(None), "…\néx");
        let mut whole = Tail::new(10);
        whole.push(b"short");
        assert_eq!(whole.text(Some(Path::new("/x.log"))), "short");
    }

    #[test]
    fn only_the_newest_logs_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = std::time::SystemTime::now() - Duration::from_secs(3600);
        for i in 0..6u64 {
            let p = dir.path().join(format!("build-{i}.log"));
            std::fs::write(&p, "x").unwrap();
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t0 + Duration::from_secs(i))
                .unwrap();
        }
        std::fs::write(dir.path().join("deploys.command"), "m").unwrap();
        prune_logs(dir.path(), 3);
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [
                "build-3.log",
                "build-4.log",
                "build-5.log",
                "deploys.command"
            ]
        );
    }

    /// The peak resident memory of this process (`VmHWM`), in bytes.
    fn peak_rss() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        let kib: u64 = line
            .trim_start_matches("VmHWM:")
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        kib * 1024
    }

    #[tokio::test]
    async fn a_command_that_prints_200_mib_costs_no_more_memory_than_its_tail() {
        const TOTAL: u64 = 200 * 1024 * 1024;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("big.log");
        let before = peak_rss();
        let cmd = format!("yes 0123456789abcdef | head -c {TOTAL}");
        let out = run(
            &cmd,
            dir.path(),
            None,
            Duration::from_secs(600),
            64 * 1024,
            Some(&log),
        )
        .await;
        let grew = peak_rss().saturating_sub(before);
        eprintln!(
            "peak RSS grew by {} KiB while capturing 200 MiB",
            grew / 1024
        );
        assert!(out.ok, "{}", out.ended);
        // Reading it all into memory would take at least 200 MiB more.
        assert!(
            grew < 32 * 1024 * 1024,
            "the peak RSS grew by {} MiB",
            grew / (1024 * 1024)
        );
        // The tail is the end of the output: whole lines of the pattern,
        // after the first, cut one.
        let tail = out.output.split_once('\n').unwrap().1;
        assert_eq!(tail.len(), 64 * 1024);
        let first_full = tail.find('\n').unwrap() + 1;
        let (whole, last) = tail[first_full..].rsplit_once('\n').unwrap();
        assert!(whole.split('\n').all(|l| l == "0123456789abcdef"));
        let cut = (TOTAL % 17) as usize;
        assert_eq!(
            last,
            &"0123456789abcdef"[..cut],
            "`head -c` cuts the last line"
        );
        // The log has all of it, between its header and its footer.
        let header = format!("--- `{cmd}`\n").len() as u64;
        let footer = "\n--- exit status: 0\n".len() as u64;
        let len = std::fs::metadata(&log).unwrap().len();
        assert_eq!(len, header + TOTAL + footer);
        use std::io::{BufRead, Read, Seek};
        let mut f = std::io::BufReader::new(std::fs::File::open(&log).unwrap());
        f.seek(std::io::SeekFrom::Start(header)).unwrap();
        let mut body = f.take(TOTAL);
        let mut lines = 0u64;
        let mut line = String::new();
        loop {
            line.clear();
            if body.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if line.ends_with('\n') {
                assert_eq!(line, "0123456789abcdef\n");
                lines += 1;
            } else {
                assert!("0123456789abcdef".starts_with(&line), "{line:?}");
            }
        }
        assert_eq!(lines, TOTAL / 17);
    }
}
