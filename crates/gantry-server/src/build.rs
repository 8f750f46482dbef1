//! Builds: a source bundle in, a content-addressed artifact and a numbered
//! release out.
//!
//! The bundle is unpacked into a fresh directory (a clean copy of the
//! source), `build.command` runs there, and the declared `build.outputs`
//! (files or directories, relative to the build's workdir) are copied to the
//! artifact's top level under their own names — so `outputs =
//! ["target/release/hello-app"]` runs as `./hello-app`. With no outputs the
//! whole source tree is the artifact. The artifact's digest is SHA-256 over
//! its sorted file list (path, executable bit, size, content hash), so
//! identical outputs are stored once under `artifacts/<hex>`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gantry_store::Store;
use gantry_store::releases::Release;
use sha2::{Digest, Sha256};

use crate::db::{blocking, db};
use crate::error::{ApiError, chain};
use crate::paths;

const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const LOG_LIMIT: usize = 64 * 1024;

pub(crate) async fn build_release(
    store: &Arc<Store>,
    app: &str,
    env: &str,
    bundle: axum::body::Bytes,
    commit: Option<String>,
    actor: &str,
) -> Result<Release, ApiError> {
    let data = store.dir().to_path_buf();
    let builds = paths::builds_dir(&data);
    let work = blocking(move || {
        std::fs::create_dir_all(&builds)
            .map_err(|e| io_failure(&builds, "cannot create the builds directory", e))?;
        tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&builds)
            .map_err(|e| io_failure(&builds, "cannot create a build directory", e))
    })
    .await??;
    let work = BuildDir(Some(work));
    let dir = work.path().to_path_buf();
    let log = paths::build_log(&data, &dir);
    let src = dir.join("src");
    let s2 = src.clone();
    let spec = blocking(move || {
        std::fs::create_dir_all(&s2)?;
        gantry_api::bundle::unpack(&bundle[..], &s2)?;
        Ok(gantry_spec::load(&s2.join("gantry.toml")))
    })
    .await?
    .map_err(|e: std::io::Error| {
        if is_disk_full(&e) {
            disk_full(&src, "unpacking the source bundle", chain(&e))
        } else {
            ApiError::unprocessable(format!(
                "the uploaded source bundle is unusable: {}",
                chain(&e)
            ))
        }
    })?
    .map_err(|d| ApiError::unprocessable(format!("the bundle's gantry.toml has errors:\n{d}")))?;
    if spec.app_name() != app {
        return Err(ApiError::unprocessable(format!(
            "the bundle is app `{}`, not `{app}`",
            spec.app_name()
        )));
    }
    let resolved = spec
        .resolve(env)
        .map_err(|d| ApiError::unprocessable(format!("{d}")))?;
    let workdir = match &resolved.build.workdir {
        Some(w) => src.join(w),
        None => src.clone(),
    };
    let mut output = String::new();
    if let Some(cmd) = &resolved.build.command {
        output = run_build(cmd, &workdir, &log).await?;
    }
    let staging = dir.join("artifact");
    let outputs = resolved.build.outputs.clone();
    let spec_path = src.join("gantry.toml");
    let dest = blocking(move || -> Result<_, ApiError> {
        collect_outputs(&workdir, &outputs, &staging)?;
        // The spec travels with the artifact, so a release knows its config.
        std::fs::copy(workdir.join("gantry.toml"), staging.join("gantry.toml"))
            .or_else(|_| std::fs::copy(spec_path, staging.join("gantry.toml")))
            .map_err(|e| io_failure(&staging, "cannot copy gantry.toml into the artifact", e))?;
        let digest = digest_tree(&staging)
            .map_err(|e| ApiError::internal(format!("cannot hash the artifact: {e}")))?;
        let dest = paths::artifact_dir(&data, &digest);
        if !dest.exists() {
            store_artifact(&staging, &dest)
                .map_err(|e| io_failure(&dest, "cannot store the artifact", e))?;
        }
        Ok(digest)
    })
    .await??;
    let (a, d, c, actor) = (app.to_string(), dest, commit, actor.to_string());
    let release = db(store, move |s| {
        s.add_release(&a, &d, c.as_deref(), &actor, &output)
    })
    .await;
    work.remove().await;
    release
}

/// A build's directory, removed when the build ends: on the blocking pool
/// (it holds a whole source tree), also when the request is dropped.
struct BuildDir(Option<tempfile::TempDir>);

impl BuildDir {
    fn path(&self) -> &Path {
        self.0.as_ref().map_or(Path::new(""), |d| d.path())
    }

    /// Removes the directory and waits until it is gone.
    async fn remove(mut self) {
        if let Some(d) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || drop(d)).await;
        }
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || drop(d))),
                Err(_) => drop(d),
            }
        }
    }
}

/// Moves the staged artifact to `dest`; by copy when the builds and
/// artifacts directories are on different file systems.
fn store_artifact(staging: &Path, dest: &Path) -> std::io::Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::rename(staging, dest) {
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            let tmp = dest.with_extension("partial");
            let _ = std::fs::remove_dir_all(&tmp);
            let copied = std::fs::create_dir_all(&tmp)
                .and_then(|()| copy_tree(staging, &tmp))
                .and_then(|()| std::fs::rename(&tmp, dest));
            if copied.is_err() {
                let _ = std::fs::remove_dir_all(&tmp);
            }
            copied
        }
        other => other,
    }
}

async fn run_build(cmd: &str, workdir: &Path, log: &Path) -> Result<String, ApiError> {
    let out = crate::shell::run(cmd, workdir, None, BUILD_TIMEOUT, LOG_LIMIT, Some(log)).await;
    if !out.ok {
        let wd = workdir.to_path_buf();
        let full = says_disk_full(&out.output)
            || tokio::task::spawn_blocking(move || no_space_left(&wd))
                .await
                .unwrap_or(false);
        if full {
            let mut e = disk_full(
                workdir,
                &format!("the build command `{cmd}` failed"),
                &out.ended,
            );
            e.message
                .push_str(&format!("\nits output:\n{}", out.output));
            return Err(e);
        }
        return Err(ApiError::unprocessable(format!(
            "the build command `{cmd}` failed ({}):\n{}",
            out.ended, out.output
        )));
    }
    Ok(out.output)
}

// === disk full ===

/// Whether an I/O error means the file system is full (no space, or the
/// user's quota), also when a library wrapped it and kept only its text.
fn is_disk_full(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(e.kind(), ErrorKind::StorageFull | ErrorKind::QuotaExceeded)
        || matches!(e.raw_os_error(), Some(28 | 122)) // ENOSPC, EDQUOT
        || says_disk_full(&e.to_string())
}

/// Whether a message carries the system's words for a full disk.
fn says_disk_full(text: &str) -> bool {
    text.contains("No space left on device") || text.contains("Disk quota exceeded")
}

/// Whether writing (and syncing) 64 KiB in `dir` fails for lack of space:
/// asked after a build command failed without saying why.
fn no_space_left(dir: &Path) -> bool {
    use std::io::Write;
    let probe = dir.join(".gantry-space-probe");
    let result = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0u8; 64 * 1024])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    result.is_err_and(|e| is_disk_full(&e))
}

/// "the disk is full at PATH (what: detail)", with the way out; 507.
fn disk_full(path: &Path, what: &str, detail: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::INSUFFICIENT_STORAGE,
        format!(
            "the disk is full at {} ({what}: {detail}); free space on that file system (builds \
             run under the data directory's builds/, releases are kept in artifacts/) and build \
             again",
            path.display()
        ),
    )
}

/// A build step's I/O failure: a full disk says so; anything else names
/// the step and the path.
fn io_failure(path: &Path, what: &str, e: std::io::Error) -> ApiError {
    if is_disk_full(&e) {
        disk_full(path, what, chain(&e))
    } else {
        ApiError::internal(format!("{what} ({}): {}", path.display(), chain(&e)))
    }
}

fn collect_outputs(workdir: &Path, outputs: &[String], staging: &Path) -> Result<(), ApiError> {
    std::fs::create_dir_all(staging)
        .map_err(|e| io_failure(staging, "cannot create the artifact directory", e))?;
    if outputs.is_empty() {
        return copy_tree(workdir, staging)
            .map_err(|e| io_failure(staging, "copying the source tree into the artifact", e));
    }
    for o in outputs {
        let from = workdir.join(o);
        let name = from.file_name().ok_or_else(|| {
            ApiError::unprocessable(format!("build output `{o}` has no file name"))
        })?;
        let to = staging.join(name);
        let meta = std::fs::metadata(&from).map_err(|_| {
            ApiError::unprocessable(format!(
                "build output `{o}` does not exist after the build; check `[build] outputs`"
            ))
        })?;
        let r = if meta.is_dir() {
            std::fs::create_dir_all(&to).and_then(|()| copy_tree(&from, &to))
        } else {
            std::fs::copy(&from, &to).map(|_| ())
        };
        r.map_err(|e| io_failure(&to, &format!("copying build output `{o}`"), e))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        let ft = e.file_type()?;
        if ft.is_dir() {
            std::fs::create_dir_all(&dst)?;
            copy_tree(&src, &dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// `sha256:<hex>` over the sorted (path, executable, size, content hash)
/// of every file under `root`.
pub(crate) fn digest_tree(root: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                stack.push(e.path());
            } else {
                files.push(e.path());
            }
        }
    }
    files.sort();
    let mut h = Sha256::new();
    for f in files {
        let rel = f.strip_prefix(root).unwrap_or(&f);
        let meta = std::fs::symlink_metadata(&f)?;
        let content = if meta.file_type().is_symlink() {
            std::fs::read_link(&f)?
                .to_string_lossy()
                .into_owned()
                .into_bytes()
        } else {
            std::fs::read(&f)?
        };
        let exec = meta.permissions().mode() & 0o111 != 0;
        h.update(format!(
            "{}\0{}\0{}\0{}\n",
            rel.display(),
            u8::from(exec),
            content.len(),
            hex::encode(Sha256::digest(&content))
        ));
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_content_names_and_modes_only() {
        use std::os::unix::fs::PermissionsExt;
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        for d in [&a, &b] {
            std::fs::create_dir_all(d.path().join("bin")).unwrap();
            std::fs::write(d.path().join("bin/app"), "binary").unwrap();
            std::fs::write(d.path().join("gantry.toml"), "x").unwrap();
        }
        let da = digest_tree(a.path()).unwrap();
        assert_eq!(da, digest_tree(b.path()).unwrap());
        assert!(da.starts_with("sha256:") && da.len() == 71);
        std::fs::set_permissions(
            b.path().join("bin/app"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_ne!(da, digest_tree(b.path()).unwrap(), "the exec bit counts");
        std::fs::write(a.path().join("bin/app"), "binary2").unwrap();
        assert_ne!(da, digest_tree(a.path()).unwrap());
    }
}
