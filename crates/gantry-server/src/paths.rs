//! Where the control plane's own files live in the data directory. (The
//! store's files — `gantry.db`, `audit.head`, `secret.key` — are
//! `gantry-store`'s; `instances/` is `gantry-runtime`'s; `proxy/` is the
//! edge proxy's.)
//!
//! - `gantry.sock`: the API socket; `server.lock`: one server per directory;
//! - `builds/`: builds in progress (a directory each, removed after) and
//!   the whole output of each build command (`builds/build-<id>.log`, the
//!   newest 50 kept);
//! - `artifacts/<sha256>`: the built releases, content-addressed;
//! - `deploys/<id>.command`: the marker of a deploy's running command;
//!   `deploys/<id>.log`: the whole output of its migrations and hooks;
//! - `envs/<app>/<env>/data`: an environment's persistent data.

use std::path::{Path, PathBuf};

/// File name of the API socket inside the data directory.
pub const SOCKET_FILE: &str = "gantry.sock";
/// The lock that keeps a second server off the data directory.
pub(crate) const LOCK_FILE: &str = "server.lock";

/// Where builds run (a fresh directory each).
pub(crate) fn builds_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("builds")
}

/// Where the artifact with `digest` (`sha256:<hex>`) lives.
pub(crate) fn artifact_dir(data_dir: &Path, digest: &str) -> PathBuf {
    data_dir
        .join("artifacts")
        .join(digest.trim_start_matches("sha256:"))
}

/// The log of the build running in `build_dir` (`builds/build-<id>`):
/// `builds/build-<id>.log`, which outlives the directory.
pub(crate) fn build_log(data_dir: &Path, build_dir: &Path) -> PathBuf {
    let name = build_dir
        .file_name()
        .map_or_else(|| "build".into(), |n| n.to_string_lossy().into_owned());
    builds_dir(data_dir).join(format!("{name}.log"))
}
