//! Running a spec's shell command (build, migration, hook): `/bin/sh -c`
//! with stderr folded into stdout, a time limit, and the end of the output
//! kept for the timeline or the error message.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

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
/// environment; without, the control plane's (minus `CARGO_TARGET_DIR`, so
/// build outputs stay inside `dir`).
pub(crate) async fn run(
    cmd: &str,
    dir: &Path,
    env: Option<BTreeMap<String, String>>,
    timeout: Duration,
    keep: usize,
) -> Outcome {
    let mut c = tokio::process::Command::new("/bin/sh");
    c.arg("-c")
        .arg(format!("exec 2>&1; {cmd}"))
        .current_dir(dir)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    match env {
        Some(vars) => {
            c.env_clear().envs(vars);
        }
        None => {
            c.env_remove("CARGO_TARGET_DIR");
        }
    }
    let fail = |ended: String| Outcome {
        ok: false,
        ended,
        output: String::new(),
    };
    match tokio::time::timeout(timeout, c.output()).await {
        Err(_) => fail(format!("ran longer than {} s", timeout.as_secs())),
        Ok(Err(e)) => fail(format!("could not run: {e}")),
        Ok(Ok(out)) => Outcome {
            ok: out.status.success(),
            ended: out.status.to_string(),
            output: tail(&String::from_utf8_lossy(&out.stdout), keep),
        },
    }
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
