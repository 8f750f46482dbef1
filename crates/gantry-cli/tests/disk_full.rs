//! A build on a full disk says the disk is full, wherever it runs out:
//! unpacking the bundle, in the build command, copying the artifact. The
//! server's builds directory is a small tmpfs (needs root to mount; the
//! test says why it did nothing otherwise). A failed build leaves no
//! garbage: a small build succeeds on the same file system after them.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::{OutputInTime, Run, TestServer};

/// A tmpfs mounted at a directory, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts `size` of tmpfs at `dir`, or says why it cannot.
    fn mount(dir: &Path, size: &str) -> Result<Self, String> {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to the process's effective user.
        if std::fs::metadata("/proc/self").map_or(true, |m| m.uid() != 0) {
            return Err("not root, so no tmpfs can be mounted".into());
        }
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output_in_time()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Self(dir.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `n` bytes that gzip cannot shrink (xorshift).
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A source directory `name` with `gantry.toml` (`build` as its `[build]`
/// lines) and `files`.
fn source(server: &TestServer, name: &str, build: &str, files: &[(&str, Vec<u8>)]) -> PathBuf {
    let dir = server.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("gantry.toml"),
        format!("[app]\nname = \"full\"\n\n[build]\n{build}\n\n[run]\ncommand = \"./run\"\n"),
    )
    .unwrap();
    for (f, bytes) in files {
        std::fs::write(dir.join(f), bytes).unwrap();
    }
    dir
}

fn build(server: &TestServer, dir: &Path) -> Run {
    server.run(&[
        "build",
        "--env",
        "production",
        "--dir",
        dir.to_str().unwrap(),
    ])
}

#[test]
fn a_build_on_a_full_disk_says_the_disk_is_full() {
    let server = TestServer::start();
    let builds = server.data_dir().join("builds");
    let _tmpfs = match Tmpfs::mount(&builds, "4m") {
        Ok(m) => m,
        Err(why) => {
            println!("skipped: {why}; this test needs root to mount a small tmpfs");
            return;
        }
    };
    let small = source(&server, "small", "", &[("run", b"#!/bin/sh\n".to_vec())]);
    std::fs::copy(
        small.join("gantry.toml"),
        server.dir.path().join("gantry.toml"),
    )
    .unwrap();
    server.run(&["config", "apply", "--env", "production"]).ok();

    // (where it runs out, the source, what the message names besides)
    let cases = [
        (
            "unpacking",
            source(&server, "huge", "", &[("blob", noise(6 << 20))]),
            "unpacking the source bundle",
        ),
        (
            "the build command",
            source(
                &server,
                "filler",
                "command = \"head -c 8000000 /dev/zero > big.bin\"",
                &[],
            ),
            "the build command `head -c 8000000 /dev/zero > big.bin` failed",
        ),
        (
            "copying the artifact",
            source(&server, "half", "", &[("blob", noise(2_500_000))]),
            "copying the source tree into the artifact",
        ),
    ];
    for (when, dir, words) in cases {
        let r = build(&server, &dir);
        assert_eq!(r.code, 1, "{when}: {r:?}");
        let expected = format!("the disk is full at {}", builds.display());
        assert!(r.stderr.contains(&expected), "{when}: {}", r.stderr);
        assert!(r.stderr.contains(words), "{when}: {}", r.stderr);
        assert!(r.stderr.contains("free space"), "{when}: {}", r.stderr);
        assert!(
            r.stderr.contains("No space left on device"),
            "the system's words: {when}: {}",
            r.stderr
        );
        assert!(!r.stderr.contains("panicked"), "{when}: {}", r.stderr);
    }

    // Each failed build took its files with it: a small one fits, and its
    // artifact is stored although builds and artifacts are on different
    // file systems now.
    let r = build(&server, &small);
    r.ok();
    assert!(r.stdout.contains("release 1"), "{}", r.stdout);
    let left: Vec<_> = std::fs::read_dir(&builds)
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_none_or(|x| x != "log"))
        .collect();
    assert!(left.is_empty(), "build directories left: {left:?}");
}
