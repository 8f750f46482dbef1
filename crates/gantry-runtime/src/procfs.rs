//! Reading processes from /proc: identity (pid + start time, so a reused
//! pid is never mistaken for ours), liveness, and CPU and memory usage of a
//! whole process group.

use std::path::Path;
use std::sync::OnceLock;

/// The fields of `/proc/<pid>/stat` that Gantry uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub state: char,
    pub ppid: i32,
    pub pgrp: i32,
    /// User + system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Start time after boot, in clock ticks: with the pid, a process's identity.
    pub start_ticks: u64,
    pub rss_pages: u64,
}

/// Parses the text of `/proc/<pid>/stat`. The command name may hold spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<ProcStat> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let rest: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    // rest[0] is field 3 (state); field n is rest[n - 3].
    let f = |n: usize| rest.get(n - 3).copied();
    Some(ProcStat {
        pid,
        state: f(3)?.chars().next()?,
        ppid: f(4)?.parse().ok()?,
        pgrp: f(5)?.parse().ok()?,
        cpu_ticks: f(14)?.parse::<u64>().ok()? + f(15)?.parse::<u64>().ok()?,
        start_ticks: f(22)?.parse().ok()?,
        rss_pages: f(24)?.parse().ok()?,
    })
}

/// The stat of `pid`. One small file of /proc: the kernel fills it in
/// from memory, in microseconds, and it never waits on a disk, so the
/// supervisor reads it on its async thread (every [`crate::supervisor::WATCH_EVERY`]).
/// Scans over many processes ([`group`]) run on a blocking thread.
pub fn stat(pid: i32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Whether `pid` is still the process that started at `start_ticks` and
/// has not exited (a zombie has exited).
pub fn is_alive(pid: i32, start_ticks: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_ticks == start_ticks && s.state != 'Z' && s.state != 'X')
}

pub fn clock_ticks_per_sec() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .map_or(100, |v| v as u64)
    })
}

pub fn page_size() -> u64 {
    static SIZE: OnceLock<u64> = OnceLock::new();
    *SIZE.get_or_init(|| {
        nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .map_or(4096, |v| v as u64)
    })
}

/// CPU ticks and resident bytes summed over every live process of a group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupUsage {
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
    pub processes: u32,
}

/// The live (not zombie) processes of process group `pgid`. With
/// `cgroup`, the instance's own cgroup directory, only its members (its
/// `cgroup.procs`) are looked at: a few files instead of one per process
/// of the host; without one, or when it cannot be read (removed once the
/// app is gone), every process in /proc. The app and all its children are
/// in the shim's cgroup, so both give the same group.
///
/// This reads many files: call it on a blocking thread
/// (`tokio::task::spawn_blocking`), never on an async one.
pub fn group(pgid: i32, cgroup: Option<&Path>) -> Vec<ProcStat> {
    let candidates: Vec<i32> = match cgroup.and_then(cgroup_members) {
        Some(pids) => pids,
        None => match std::fs::read_dir("/proc") {
            Ok(dir) => dir
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect(),
            Err(_) => return Vec::new(),
        },
    };
    candidates
        .into_iter()
        .filter_map(stat)
        .filter(|s| s.pgrp == pgid && s.state != 'Z')
        .collect()
}

/// The pids listed in `dir/cgroup.procs`.
fn cgroup_members(dir: &Path) -> Option<Vec<i32>> {
    let text = std::fs::read_to_string(dir.join("cgroup.procs")).ok()?;
    Some(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// What [`group`] finds, summed. Reads many files: a blocking thread's job.
pub fn group_usage(pgid: i32, cgroup: Option<&Path>) -> GroupUsage {
    group(pgid, cgroup)
        .iter()
        .fold(GroupUsage::default(), |mut u, s| {
            u.cpu_ticks += s.cpu_ticks;
            u.rss_bytes += s.rss_pages * page_size();
            u.processes += 1;
            u
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 1 0 123456 1000000 250 18446744073709551615";
        let s = parse_stat(line).unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 4242,
                state: 'S',
                ppid: 1,
                pgrp: 4242,
                cpu_ticks: 10,
                start_ticks: 123456,
                rss_pages: 250
            }
        );
        assert!(parse_stat("garbage").is_none());
        assert!(parse_stat("1 (x) S").is_none());
    }

    #[test]
    fn own_process_is_alive_and_identity_checks_start_time() {
        let me = std::process::id() as i32;
        let s = stat(me).unwrap();
        assert!(is_alive(me, s.start_ticks));
        assert!(
            !is_alive(me, s.start_ticks + 1),
            "another start time is another process"
        );
        assert!(s.rss_pages > 0);
        assert!(group_usage(s.pgrp, None).processes >= 1);
    }

    #[test]
    fn a_group_is_looked_for_among_its_cgroups_members_only() {
        let me = std::process::id() as i32;
        let pgrp = stat(me).unwrap().pgrp;
        let cgroup = tempfile::tempdir().unwrap();
        // Only this process is a member: others of the group are not seen.
        std::fs::write(cgroup.path().join("cgroup.procs"), format!("{me}\n")).unwrap();
        let found: Vec<i32> = group(pgrp, Some(cgroup.path()))
            .iter()
            .map(|s| s.pid)
            .collect();
        assert_eq!(found, [me]);
        let u = group_usage(pgrp, Some(cgroup.path()));
        assert_eq!(u.processes, 1);
        assert!(u.rss_bytes > 0);
        // A member of another group does not count.
        assert!(group(pgrp + 1_000_000, Some(cgroup.path())).is_empty());
        // No members left (or a pid that is gone): nothing.
        std::fs::write(cgroup.path().join("cgroup.procs"), "").unwrap();
        assert!(group(pgrp, Some(cgroup.path())).is_empty());
        // A cgroup that is gone: every process of /proc is looked at.
        let gone = cgroup.path().join("gone");
        assert!(group(pgrp, Some(&gone)).iter().any(|s| s.pid == me));
    }
}
