//! Hitless upgrade: a running proxy starts its successor (the current
//! binary, same arguments), hands it the listening sockets, and leaves once
//! the successor serves.
//!
//! # The hand-off protocol
//!
//! 1. `POST /upgrade` on the admin socket (`gantry proxy upgrade`). One
//!    upgrade at a time; table writes wait meanwhile.
//! 2. The old process binds a one-shot unix socket
//!    `<state_dir>/upgrade-<old pid>.sock` and spawns the new process
//!    (`/proc/self/exe`, i.e. the binary now at the path the old one was
//!    started from, with the same arguments) with the listening sockets
//!    as file descriptors 3.. in this order: the plain listeners (`listen`
//!    order), the TLS listeners (`tls_listen` order), the admin socket.
//!    Its environment says so: `LISTEN_FDS=<n>` and `LISTEN_FDS_FIRST_FD=3`
//!    (the systemd socket-activation convention, read with `listenfd`),
//!    `GANTRY_PROXY_INHERIT=<plain>,<tls>` (the split), and
//!    `GANTRY_PROXY_READY=<path of the one-shot socket>`.
//! 3. The new process takes the sockets instead of binding (it refuses to
//!    start when the counts differ from its own configuration; having the
//!    same arguments, it pairs each socket with the same listener settings,
//!    TLS and PROXY protocol, as the old one did), loads the
//!    persisted table, starts its accept loops, then connects to the
//!    one-shot socket and writes `ready <pid>\n`.
//! 4. The old process answers the admin call with both pids, refuses
//!    further table writes (503: the new process has the table), stops
//!    accepting, and finishes its open requests (idle keep-alive
//!    connections are closed gracefully; HTTP/1.1 responses in flight get
//!    `Connection: close`) for up to `shutdown_timeout`, then exits. It
//!    leaves the admin socket file in place: it belongs to the new process
//!    now. Both processes accept on the same sockets meanwhile, so the
//!    kernel's accept queues hand every new connection to one of them.
//!
//! When the new process exits before it is ready, or is not ready within
//! two minutes (it is then killed), the admin call fails and the old
//! process keeps serving. Metrics counters start from zero in the new
//! process.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::watch;

use crate::error::{HandoffError, ProxyError};

const INHERIT_ENV: &str = "GANTRY_PROXY_INHERIT";
const READY_ENV: &str = "GANTRY_PROXY_READY";
pub(crate) const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Sockets taken over from the previous process.
pub(crate) struct Inherited {
    /// Plain listeners then TLS listeners.
    pub(crate) traffic: Vec<std::net::TcpListener>,
    pub(crate) admin: std::os::unix::net::UnixListener,
}

/// The sockets the previous process handed over, when this process was
/// started by an upgrade.
pub(crate) fn inherited(plain: usize, tls: usize) -> Result<Option<Inherited>, ProxyError> {
    let Ok(spec) = std::env::var(INHERIT_ENV) else {
        return Ok(None);
    };
    let err = |source: HandoffError| ProxyError::Upgrade { source };
    let counts = spec
        .split_once(',')
        .and_then(|(p, t)| Some((p.parse::<usize>().ok()?, t.parse::<usize>().ok()?)));
    let Some((p, t)) = counts else {
        return Err(err(HandoffError::Spec { spec }));
    };
    if (p, t) != (plain, tls) {
        return Err(err(HandoffError::Counts {
            plain: p,
            tls: t,
            want_plain: plain,
            want_tls: tls,
        }));
    }
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() != p + t + 1 {
        return Err(err(HandoffError::FdCount {
            expected: p + t + 1,
            got: fds.len(),
        }));
    }
    let mut traffic = Vec::new();
    for i in 0..p + t {
        let l = fds
            .take_tcp_listener(i)
            .map_err(|source| err(HandoffError::Socket { index: i, source }))?
            .ok_or_else(|| err(HandoffError::MissingSocket { index: i }))?;
        l.set_nonblocking(true)
            .map_err(|source| err(HandoffError::Socket { index: i, source }))?;
        traffic.push(l);
    }
    let admin = fds
        .take_unix_listener(p + t)
        .map_err(|source| err(HandoffError::AdminSocket { source }))?
        .ok_or_else(|| err(HandoffError::MissingAdminSocket))?;
    admin
        .set_nonblocking(true)
        .map_err(|source| err(HandoffError::AdminSocket { source }))?;
    Ok(Some(Inherited { traffic, admin }))
}

/// Tells the process that started this one (by an upgrade) that it serves.
pub(crate) async fn notify_ready() {
    let Some(path) = std::env::var_os(READY_ENV) else {
        return;
    };
    let line = format!("ready {}\n", std::process::id());
    match UnixStream::connect(&path).await {
        Ok(mut s) => {
            if let Err(e) = s.write_all(line.as_bytes()).await {
                tracing::warn!(error = %e, "cannot tell the previous proxy that this one is ready");
            }
        }
        Err(e) => tracing::warn!(
            path = %PathBuf::from(path).display(), error = %e,
            "cannot reach the previous proxy to say this one is ready"
        ),
    }
}

/// What a running proxy needs to start its successor.
pub(crate) struct Upgrade {
    /// Duplicates of the listening sockets, in hand-off order; emptied at
    /// shutdown (`close_sockets`).
    fds: std::sync::Mutex<Vec<OwnedFd>>,
    plain: usize,
    tls: usize,
    state_dir: PathBuf,
    lock: tokio::sync::Mutex<()>,
    /// Turns true once a successor serves: this process then leaves.
    pub(crate) done: watch::Sender<bool>,
}

impl Upgrade {
    /// `traffic`: plain then TLS listeners.
    pub(crate) fn new(
        traffic: &[&tokio::net::TcpListener],
        plain: usize,
        admin: &UnixListener,
        state_dir: PathBuf,
    ) -> std::io::Result<Upgrade> {
        let mut fds = Vec::new();
        for l in traffic {
            fds.push(l.as_fd().try_clone_to_owned()?);
        }
        fds.push(admin.as_fd().try_clone_to_owned()?);
        Ok(Upgrade {
            fds: std::sync::Mutex::new(fds),
            plain,
            tls: traffic.len() - plain,
            state_dir,
            lock: tokio::sync::Mutex::new(()),
            done: watch::Sender::new(false),
        })
    }

    /// Closes this process's copies of the listening sockets, once it stops
    /// accepting: the kernel then refuses new connections instead of
    /// queueing them for nobody (a successor holds its own copies).
    pub(crate) fn close_sockets(&self) {
        gantry_common::lock(&self.fds).clear();
    }

    pub(crate) fn handed_over(&self) -> bool {
        *self.done.borrow()
    }

    /// Starts the successor and waits until it serves; then marks this
    /// process as handed over. Returns (old pid, new pid).
    pub(crate) async fn start(&self) -> Result<(u32, u32), HandoffError> {
        let _one = self.lock.try_lock().map_err(|_| HandoffError::Running)?;
        if self.handed_over() {
            return Err(HandoffError::HandedOver);
        }
        let exe = std::env::current_exe().map_err(|source| HandoffError::OwnBinary { source })?;
        let args: Vec<OsString> = std::env::args_os().skip(1).collect();
        let old_pid = std::process::id();
        let notify_path = self.state_dir.join(format!("upgrade-{old_pid}.sock"));
        // Unlinking a socket file is one metadata call, on the control
        // runtime (the admin socket's), never on a traffic worker.
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixListener::bind(&notify_path).map_err(|source| HandoffError::Bind {
            path: notify_path.clone(),
            source,
        })?;
        let result = self.spawn_and_wait(exe, args, &notify, &notify_path).await;
        let _ = std::fs::remove_file(&notify_path);
        let new_pid = result?;
        self.done.send_replace(true);
        Ok((old_pid, new_pid))
    }

    async fn spawn_and_wait(
        &self,
        exe: PathBuf,
        args: Vec<OsString>,
        notify: &UnixListener,
        notify_path: &std::path::Path,
    ) -> Result<u32, HandoffError> {
        let mut mappings = Vec::new();
        {
            let fds = gantry_common::lock(&self.fds);
            if fds.is_empty() {
                return Err(HandoffError::ShuttingDown);
            }
            for (i, fd) in fds.iter().enumerate() {
                mappings.push(FdMapping {
                    parent_fd: fd
                        .try_clone()
                        .map_err(|source| HandoffError::Dup { source })?,
                    // A handful of sockets: far below i32::MAX.
                    child_fd: 3 + i32::try_from(i).unwrap_or(i32::MAX - 3),
                });
            }
        }
        let mut cmd = std::process::Command::new(&exe);
        cmd.args(&args)
            .env("LISTEN_FDS", mappings.len().to_string())
            .env("LISTEN_FDS_FIRST_FD", "3")
            .env_remove("LISTEN_PID")
            .env(INHERIT_ENV, format!("{},{}", self.plain, self.tls))
            .env(READY_ENV, notify_path)
            .stdin(Stdio::null());
        cmd.fd_mappings(mappings)
            .map_err(|source| HandoffError::PassSockets { source })?;
        let mut child = cmd.spawn().map_err(|source| HandoffError::Spawn {
            exe: exe.clone(),
            source,
        })?;
        let new_pid = child.id();
        tracing::info!(new_pid, exe = %exe.display(), "upgrade: new proxy started; waiting until it serves");
        let ready = async {
            let (mut s, _) = notify.accept().await?;
            let mut line = String::new();
            s.read_to_string(&mut line).await?;
            Ok::<_, std::io::Error>(line)
        };
        let exited = async {
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let outcome = tokio::select! {
            r = tokio::time::timeout(READY_TIMEOUT, ready) => match r {
                Ok(Ok(line)) if line.trim() == format!("ready {new_pid}") => Ok(new_pid),
                Ok(Ok(line)) => Err(HandoffError::Readiness { line }),
                Ok(Err(source)) => Err(HandoffError::Wait { source }),
                Err(_) => Err(HandoffError::NotReady { pid: new_pid, timeout: READY_TIMEOUT }),
            },
            status = exited => {
                return Err(HandoffError::Exited { pid: new_pid, status });
            }
        };
        if outcome.is_err() {
            let _ = child.kill();
            let _ = child.wait();
        }
        outcome
    }
}
