//! Log capture, inside the shim: each line of the app's stdout and stderr
//! gets a timestamp and its stream name, and goes to `output.log`, rotated by
//! size (`output.log.1` … `.N`).
//!
//! Readers never wait on the disk: they hand lines to the writer through a
//! bounded queue and, when it is full, drop the line and count it. The
//! writer notes each run of dropped lines in the log itself, so the app is
//! never slowed by capture, and a reader knows what is missing.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};

/// The current log file of an instance.
pub const LOG_FILE: &str = "output.log";
/// Longer lines are split.
const MAX_LINE: usize = 16 * 1024;
const QUEUE_LINES: usize = 4096;

#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub keep: u32,
}

impl Default for Rotation {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            keep: 3,
        }
    }
}

pub(crate) struct Line {
    stream: &'static str,
    at_ms: i64,
    text: Vec<u8>,
}

/// Starts capture: returns the sender for readers, the shared drop counter,
/// and the writer thread.
pub(crate) fn start_writer(
    dir: &Path,
    rotation: Rotation,
) -> std::io::Result<(
    SyncSender<Line>,
    Arc<AtomicU64>,
    std::thread::JoinHandle<()>,
)> {
    let (tx, rx) = sync_channel(QUEUE_LINES);
    let dropped = Arc::new(AtomicU64::new(0));
    let mut writer = Writer::open(dir.join(LOG_FILE), rotation)?;
    let d = dropped.clone();
    let handle = std::thread::spawn(move || writer.run(rx, &d));
    Ok((tx, dropped, handle))
}

/// Reads `input` line by line into the queue until EOF.
pub(crate) fn spawn_reader(
    stream: &'static str,
    input: impl Read + Send + 'static,
    tx: SyncSender<Line>,
    dropped: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::with_capacity(64 * 1024, input);
        let mut buf = Vec::with_capacity(256);
        loop {
            buf.clear();
            match read_line_bounded(&mut reader, &mut buf) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            if buf.last() == Some(&b'\n') {
                buf.pop();
            }
            let line = Line {
                stream,
                at_ms: crate::now_ms(),
                text: std::mem::take(&mut buf),
            };
            match tx.try_send(line) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => return,
            }
        }
    })
}

fn read_line_bounded(r: &mut impl BufRead, out: &mut Vec<u8>) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let available = r.fill_buf()?;
        if available.is_empty() {
            return Ok(total);
        }
        let room = MAX_LINE - out.len();
        let (used, done) = match available.iter().take(room).position(|b| *b == b'\n') {
            Some(i) => (i + 1, true),
            None => {
                let n = available.len().min(room);
                (n, out.len() + n >= MAX_LINE)
            }
        };
        out.extend_from_slice(&available[..used]);
        r.consume(used);
        total += used;
        if done {
            return Ok(total);
        }
    }
}

struct Writer {
    path: PathBuf,
    file: File,
    size: u64,
    rotation: Rotation,
}

impl Writer {
    fn open(path: PathBuf, rotation: Rotation) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(Self {
            path,
            file,
            size,
            rotation,
        })
    }

    fn run(&mut self, rx: Receiver<Line>, dropped: &AtomicU64) {
        let mut reported = 0;
        for line in rx {
            let now_dropped = dropped.load(Ordering::Relaxed);
            if now_dropped > reported {
                let note = format!(
                    "{} gantry [{} lines dropped: the log writer fell behind]\n",
                    crate::rfc3339_ms(crate::now_ms()),
                    now_dropped - reported
                );
                self.write(note.as_bytes());
                reported = now_dropped;
            }
            let mut out = Vec::with_capacity(line.text.len() + 40);
            out.extend_from_slice(crate::rfc3339_ms(line.at_ms).as_bytes());
            out.push(b' ');
            out.extend_from_slice(line.stream.as_bytes());
            out.push(b' ');
            out.extend_from_slice(&line.text);
            out.push(b'\n');
            self.write(&out);
        }
        let _ = self.file.flush();
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.size + bytes.len() as u64 > self.rotation.max_bytes && self.size > 0 {
            self.rotate();
        }
        if self.file.write_all(bytes).is_ok() {
            self.size += bytes.len() as u64;
        }
    }

    fn rotate(&mut self) {
        let name = |i: u32| PathBuf::from(format!("{}.{i}", self.path.display()));
        let keep = self.rotation.keep;
        if keep == 0 {
            let _ = self.file.set_len(0);
            self.size = 0;
            return;
        }
        let _ = std::fs::remove_file(name(keep));
        for i in (1..keep).rev() {
            let _ = std::fs::rename(name(i), name(i + 1));
        }
        let _ = std::fs::rename(&self.path, name(1));
        if let Ok(f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
        {
            self.file = f;
            self.size = 0;
        }
    }
}

/// The last `n` lines of an instance's log (current file, then rotated ones).
pub fn tail(dir: &Path, n: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut files = vec![dir.join(LOG_FILE)];
    for i in 1..=100 {
        let p = dir.join(format!("{LOG_FILE}.{i}"));
        if !p.exists() {
            break;
        }
        files.push(p);
    }
    for f in files {
        let Ok(text) = std::fs::read(&f) else {
            continue;
        };
        let text = String::from_utf8_lossy(&text);
        let mut these: Vec<String> = text.lines().map(str::to_string).collect();
        these.append(&mut lines);
        lines = these;
        if lines.len() >= n {
            break;
        }
    }
    let skip = lines.len().saturating_sub(n);
    lines.split_off(skip)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_timestamped_rotated_and_tailed() {
        let dir = tempfile::tempdir().unwrap();
        let (tx, dropped, writer) = start_writer(
            dir.path(),
            Rotation {
                max_bytes: 200,
                keep: 2,
            },
        )
        .unwrap();
        let input: Vec<u8> = (0..20)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        let r = spawn_reader("stdout", std::io::Cursor::new(input), tx, dropped);
        r.join().unwrap();
        writer.join().unwrap();
        assert!(dir.path().join("output.log.1").exists());
        assert!(dir.path().join("output.log.2").exists());
        assert!(!dir.path().join("output.log.3").exists());
        let last = tail(dir.path(), 3);
        assert_eq!(last.len(), 3);
        assert!(last[2].ends_with(" stdout line 19"), "{last:?}");
        assert!(last[0].ends_with(" stdout line 17"), "{last:?}");
        assert!(last[2].starts_with("20"), "timestamped: {last:?}");
    }

    #[test]
    fn overlong_lines_are_split() {
        let mut r = std::io::Cursor::new(vec![b'x'; MAX_LINE + 10]);
        let mut out = Vec::new();
        assert_eq!(read_line_bounded(&mut r, &mut out).unwrap(), MAX_LINE);
        out.clear();
        assert_eq!(read_line_bounded(&mut r, &mut out).unwrap(), 10);
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_blocking() {
        let (tx, rx) = sync_channel(2);
        let dropped = Arc::new(AtomicU64::new(0));
        let input: Vec<u8> = (0..10)
            .flat_map(|i| format!("l{i}\n").into_bytes())
            .collect();
        // Nobody reads `rx` while the reader runs: it must still finish.
        spawn_reader("stderr", std::io::Cursor::new(input), tx, dropped.clone())
            .join()
            .unwrap();
        assert_eq!(dropped.load(Ordering::Relaxed), 8);
        assert_eq!(rx.iter().count(), 2);
    }
}
