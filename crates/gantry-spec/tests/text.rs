//! The file as a whole: its size limit and its encoding, on every way in
//! (`load` for the CLI, `parse_bytes` and `parse_str` for the server).

use std::path::PathBuf;

const GOOD: &str = "[app]\nname = \"text\"\n\n[run]\ncommand = \"./text\"\n";

fn temp_file(name: &str, bytes: &[u8]) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("gantry-spec-text-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let path = dir.join("gantry.toml");
    std::fs::write(&path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    path
}

/// A valid spec padded with a comment to exactly `len` bytes.
fn padded(len: usize) -> String {
    let mut text = String::from(GOOD);
    text.push('#');
    while text.len() < len - 1 {
        text.push('x');
    }
    text.push('\n');
    text
}

fn first_line(r: Result<gantry_spec::Spec, gantry_spec::Diagnostics>) -> String {
    match r {
        Ok(_) => panic!("accepted"),
        Err(d) => d.to_string().lines().next().unwrap_or_default().to_string(),
    }
}

#[test]
fn the_size_limit_is_the_same_on_every_way_in() {
    let limit = gantry_spec::MAX_SPEC_BYTES;
    assert_eq!(limit, 1 << 20);
    let at_limit = padded(limit);
    assert_eq!(at_limit.len(), limit);
    if let Err(d) = gantry_spec::parse_str("gantry.toml", &at_limit) {
        panic!("a spec of exactly the limit was refused: {d}");
    }
    let over = padded(limit + limit / 5);
    let expected =
        "gantry.toml:1:1: gantry.toml is 1.2 MiB (1258291 bytes); the limit is 1 MiB".to_string();
    assert_eq!(
        first_line(gantry_spec::parse_str("gantry.toml", &over)),
        expected
    );
    assert_eq!(
        first_line(gantry_spec::parse_bytes("gantry.toml", over.as_bytes())),
        expected
    );
    let path = temp_file("big", over.as_bytes());
    assert_eq!(
        first_line(gantry_spec::load(&path)),
        expected.replacen("gantry.toml", &path.display().to_string(), 1)
    );
    // One byte over is refused too.
    let path = temp_file("one-over", padded(limit + 1).as_bytes());
    assert!(first_line(gantry_spec::load(&path)).ends_with("(1048577 bytes); the limit is 1 MiB"));
}

#[test]
fn invalid_utf8_is_reported_where_it_is() {
    let mut bytes = GOOD.as_bytes().to_vec();
    bytes.extend_from_slice(b"[env]\nGREETING = \"gr\xFC\xDF gott\"\n");
    let offset = GOOD.len() + "[env]\nGREETING = \"gr".len();
    let path = temp_file("latin1", &bytes);
    let line = first_line(gantry_spec::load(&path));
    assert_eq!(
        line,
        format!(
            "{}:7:15: invalid UTF-8 at byte offset {offset} (byte 0xFC): gantry.toml must be UTF-8 text",
            path.display()
        )
    );
    assert!(
        first_line(gantry_spec::parse_bytes("gantry.toml", &bytes)).starts_with(&format!(
            "gantry.toml:7:15: invalid UTF-8 at byte offset {offset} "
        ))
    );
}

#[test]
fn only_a_regular_file_is_read_never_a_fifo_or_a_device() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("gantry-spec-text-{}-special", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo.toml");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    // A symlink named gantry.toml to a FIFO (as a bundle could carry) or
    // to a device: refused at once, saying what the path is.
    for (name, target) in [
        ("to-fifo.toml", fifo.clone()),
        ("to-zero.toml", "/dev/zero".into()),
    ] {
        let link = dir.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let line = first_line(gantry_spec::load(&link));
        assert!(line.contains("not a regular file"), "{line}");
    }
    let line = first_line(gantry_spec::load(&dir));
    assert!(line.contains("not a regular file"), "{line}");
    // A symlink to a regular file still works.
    let good = temp_file("link-target", GOOD.as_bytes());
    let link = dir.join("to-good.toml");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&good, &link).unwrap();
    assert!(gantry_spec::load(&link).is_ok());
}
