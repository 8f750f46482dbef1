//! Reading processes from /proc: identity (pid + start time, so a reused
//! pid is never mistaken for ours), liveness, and CPU and memory usage of a
//! whole process group.

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

pub fn group_usage(pgid: i32) -> GroupUsage {
    let mut usage = GroupUsage::default();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return usage;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if let Some(s) = stat(pid).filter(|s| s.pgrp == pgid && s.state != 'Z') {
            usage.cpu_ticks += s.cpu_ticks;
            usage.rss_bytes += s.rss_pages * page_size();
            usage.processes += 1;
        }
    }
    usage
}

/// Pids of the live processes in a group.
pub fn group_members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| stat(*pid).is_some_and(|s| s.pgrp == pgid && s.state != 'Z'))
        .collect()
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
        assert!(group_usage(s.pgrp).processes >= 1);
    }
}
