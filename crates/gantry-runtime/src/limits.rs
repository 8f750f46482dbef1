//! Resource limits for one instance: cgroup v2 where it is mounted with the
//! controllers, else cgroup v1 (memory and cpu hierarchies), else rlimits.
//!
//! The shim puts *itself* into the instance's cgroup (or sets its own
//! rlimits) before it spawns the app, so the app and all its children
//! inherit the limits without any code between fork and exec.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Parent cgroup of every instance.
const PARENT: &str = "gantry";

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// Hard memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in cores (0.5 = half a core).
    pub cpu: Option<f64>,
}

impl Limits {
    pub fn is_empty(&self) -> bool {
        self.memory_bytes.is_none() && self.cpu.is_none()
    }
}

/// How limits were put in place, so OOM kills can be read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Enforced {
    None,
    V2 {
        dir: PathBuf,
    },
    V1 {
        memory: Option<PathBuf>,
        cpu: Option<PathBuf>,
    },
    /// Only memory, as RLIMIT_AS (address space), and no CPU limit.
    Rlimit,
}

impl Enforced {
    pub fn describe(&self) -> &'static str {
        match self {
            Enforced::None => "none",
            Enforced::V2 { .. } => "cgroup v2",
            Enforced::V1 { .. } => "cgroup v1",
            Enforced::Rlimit => "rlimit (memory only)",
        }
    }

    /// The instance's own cgroup directory, when it has one: its
    /// `cgroup.procs` lists every process of the instance (the shim, the
    /// app and the app's children).
    pub fn cgroup_dir(&self) -> Option<&Path> {
        match self {
            Enforced::V2 { dir } => Some(dir),
            Enforced::V1 { memory, cpu } => memory.as_deref().or(cpu.as_deref()),
            Enforced::None | Enforced::Rlimit => None,
        }
    }
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, value)
}

fn v2_available() -> bool {
    std::fs::read_to_string(Path::new(CGROUP_ROOT).join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
}

fn v1_dir(controller: &str) -> Option<PathBuf> {
    let d = Path::new(CGROUP_ROOT).join(controller);
    d.join("cgroup.procs").exists().then_some(d)
}

/// Puts the calling process under `limits`, in a cgroup named `id`.
pub fn apply_to_self(id: &str, limits: &Limits) -> Enforced {
    if limits.is_empty() {
        return Enforced::None;
    }
    let pid = std::process::id().to_string();
    if v2_available()
        && let Ok(e) = apply_v2(id, limits, &pid)
    {
        return e;
    }
    if let Some(e) = apply_v1(id, limits, &pid) {
        return e;
    }
    match limits.memory_bytes {
        Some(bytes) => {
            use nix::sys::resource::{Resource, setrlimit};
            match setrlimit(Resource::RLIMIT_AS, bytes, bytes) {
                Ok(()) => Enforced::Rlimit,
                Err(_) => Enforced::None,
            }
        }
        None => Enforced::None,
    }
}

fn apply_v2(id: &str, limits: &Limits, pid: &str) -> std::io::Result<Enforced> {
    let parent = Path::new(CGROUP_ROOT).join(PARENT);
    std::fs::create_dir_all(&parent)?;
    let _ = write(
        &Path::new(CGROUP_ROOT).join("cgroup.subtree_control"),
        "+memory +cpu",
    );
    let _ = write(&parent.join("cgroup.subtree_control"), "+memory +cpu");
    let dir = parent.join(id);
    std::fs::create_dir_all(&dir)?;
    if let Some(m) = limits.memory_bytes {
        write(&dir.join("memory.max"), &m.to_string())?;
        let _ = write(&dir.join("memory.swap.max"), "0");
    }
    if let Some(c) = limits.cpu {
        let period = 100_000u64;
        write(
            &dir.join("cpu.max"),
            &format!("{} {period}", cpu_quota(c, period)),
        )?;
    }
    write(&dir.join("cgroup.procs"), pid)?;
    Ok(Enforced::V2 { dir })
}

fn cpu_quota(cores: f64, period: u64) -> u64 {
    ((cores * period as f64) as u64).max(1000)
}

fn apply_v1(id: &str, limits: &Limits, pid: &str) -> Option<Enforced> {
    let mut memory = None;
    let mut cpu = None;
    if let (Some(bytes), Some(root)) = (limits.memory_bytes, v1_dir("memory")) {
        let dir = root.join(PARENT).join(id);
        let ok = std::fs::create_dir_all(&dir).is_ok()
            && write(&dir.join("memory.limit_in_bytes"), &bytes.to_string()).is_ok();
        if ok {
            // No swap beyond the limit, where swap accounting exists.
            let _ = write(&dir.join("memory.memsw.limit_in_bytes"), &bytes.to_string());
            if write(&dir.join("cgroup.procs"), pid).is_ok() {
                memory = Some(dir);
            }
        }
    }
    if let (Some(cores), Some(root)) = (limits.cpu, v1_dir("cpu")) {
        let dir = root.join(PARENT).join(id);
        let period = 100_000u64;
        let ok = std::fs::create_dir_all(&dir).is_ok()
            && write(&dir.join("cpu.cfs_period_us"), &period.to_string()).is_ok()
            && write(
                &dir.join("cpu.cfs_quota_us"),
                &cpu_quota(cores, period).to_string(),
            )
            .is_ok()
            && write(&dir.join("cgroup.procs"), pid).is_ok();
        if ok {
            cpu = Some(dir);
        }
    }
    (memory.is_some() || cpu.is_some()).then_some(Enforced::V1 { memory, cpu })
}

/// How many times the kernel's OOM killer fired inside the instance's cgroup.
pub fn oom_kills(e: &Enforced) -> u64 {
    let read_counter = |path: PathBuf, key: &str| -> u64 {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let mut it = l.split_whitespace();
                    (it.next() == Some(key)).then(|| it.next()?.parse().ok())?
                })
            })
            .unwrap_or(0)
    };
    match e {
        Enforced::V2 { dir } => read_counter(dir.join("memory.events"), "oom_kill"),
        Enforced::V1 {
            memory: Some(dir), ..
        } => read_counter(dir.join("memory.oom_control"), "oom_kill"),
        _ => 0,
    }
}

/// Removes the instance's cgroups, once the app is gone. The caller (the
/// shim) is still a member, so it first moves itself to the parent.
pub fn cleanup(e: &Enforced) {
    let leave = |dir: &Path| {
        if let Some(parent) = dir.parent() {
            let _ = write(
                &parent.join("cgroup.procs"),
                &std::process::id().to_string(),
            );
        }
        let _ = std::fs::remove_dir(dir);
    };
    match e {
        Enforced::V2 { dir } => leave(dir),
        Enforced::V1 { memory, cpu } => {
            for d in [memory, cpu].into_iter().flatten() {
                leave(d);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_has_a_floor() {
        assert_eq!(cpu_quota(0.5, 100_000), 50_000);
        assert_eq!(cpu_quota(0.0001, 100_000), 1000);
    }

    #[test]
    fn no_limits_means_nothing_to_do() {
        assert_eq!(apply_to_self("x", &Limits::default()), Enforced::None);
    }
}
