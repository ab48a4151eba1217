//! Container logs in the CRI format the kubelet reads
//! (`<RFC 3339 nano> <stdout|stderr> <F|P> <text>`), written by a logger
//! that containerd's shim runs for the container (its "binary" stdio
//! scheme: our binary gets the container's stdout and stderr as fds 3 and
//! 4, and closes fd 5 once ready), so logging outlives `pod-runner create`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// The subcommand the shim runs: `pod-runner <LOGGER_CMD> <path>`.
pub const LOGGER_CMD: &str = "log-shim";

/// Lines longer than this are split into partial (`P`) records, as the
/// kubelet's CRI runtimes do.
const MAX_LINE: usize = 16 * 1024;

/// The stdio URI that makes the shim run `exe` as the logger for `path`.
pub fn uri(exe: &Path, path: &Path) -> String {
    format!(
        "binary://{}?{LOGGER_CMD}={}",
        encode(&exe.to_string_lossy()),
        encode(&path.to_string_lossy())
    )
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn record(out: &mut impl Write, stream: &str, tag: char, text: &[u8]) -> std::io::Result<()> {
    let ts = humantime::format_rfc3339_nanos(SystemTime::now());
    let mut line = Vec::with_capacity(text.len() + 48);
    write!(line, "{ts} {stream} {tag} ")?;
    line.extend_from_slice(text);
    line.push(b'\n');
    // One write per record: the two streams' records never interleave.
    out.write_all(&line)
}

/// Copies one stream into records until it ends.
pub fn copy_stream(input: impl Read, stream: &str, out: &Arc<Mutex<File>>) -> std::io::Result<()> {
    let mut reader = BufReader::with_capacity(MAX_LINE, input);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .by_ref()
            .take(MAX_LINE as u64)
            .read_until(b'\n', &mut buf)?;
        if n == 0 {
            return Ok(());
        }
        let (tag, text) = match buf.strip_suffix(b"\n") {
            Some(t) => ('F', t),
            None => ('P', &buf[..]),
        };
        let mut f = out.lock().unwrap_or_else(|e| e.into_inner());
        record(&mut *f, stream, tag, text)?;
    }
}

/// The logger: runs in the shim until the container's stdio closes.
pub fn run_logger(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    // SAFETY: the shim passes these three fds to us and to nobody else;
    // each is owned by exactly one File from here on.
    let (stdout, stderr, ready) = unsafe {
        (
            File::from_raw_fd(3),
            File::from_raw_fd(4),
            File::from_raw_fd(5),
        )
    };
    drop(ready);
    let out = Arc::new(Mutex::new(file));
    let o2 = Arc::clone(&out);
    let t = std::thread::spawn(move || copy_stream(stderr, "stderr", &o2));
    let r1 = copy_stream(stdout, "stdout", &out);
    let r2 = t.join().unwrap_or(Ok(()));
    r1.and(r2)
}

/// One parsed record.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub partial: bool,
    pub text: &'a str,
}

pub fn parse(line: &str) -> Option<Record<'_>> {
    let mut it = line.splitn(4, ' ');
    let time = it.next()?;
    let stream = it.next()?;
    let tag = it.next()?;
    let text = it.next().unwrap_or("");
    Some(Record {
        time,
        stream,
        partial: tag == "P",
        text,
    })
}

/// Prints the log's text (partial records joined) to `out`. With
/// `follow`, keeps printing what is appended until `done()` says the
/// container has stopped.
pub fn print(
    path: &Path,
    out: &mut impl Write,
    follow: bool,
    mut done: impl FnMut() -> bool,
) -> std::io::Result<()> {
    let mut file = File::open(path)?;
    let mut pending = String::new();
    let mut pos = 0u64;
    loop {
        file.seek(SeekFrom::Start(pos))?;
        let mut reader = BufReader::new(&mut file);
        let mut line = String::new();
        loop {
            line.clear();
            let n = reader.read_line(&mut line)?;
            // A record being written has no newline yet: read it next time.
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            pos += n as u64;
            if let Some(r) = parse(line.trim_end_matches('\n')) {
                pending.push_str(r.text);
                if !r.partial {
                    pending.push('\n');
                    out.write_all(pending.as_bytes())?;
                    pending.clear();
                }
            }
        }
        out.flush()?;
        if !follow || done() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_and_back() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("0.log");
        let f = Arc::new(Mutex::new(File::create(&path).expect("create")));
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("hello\n{long}\nno newline at the end");
        copy_stream(input.as_bytes(), "stdout", &f).expect("copy");
        let text = std::fs::read_to_string(&path).expect("read");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        let first = parse(lines[0]).expect("parse");
        assert_eq!(
            (first.stream, first.partial, first.text),
            ("stdout", false, "hello")
        );
        assert!(first.time.ends_with('Z') && first.time.contains('T'));
        assert!(parse(lines[1]).expect("p").partial);
        assert!(!parse(lines[2]).expect("f").partial);
        assert!(parse(lines[3]).expect("tail").partial);
        let mut out = Vec::new();
        print(&path, &mut out, false, || true).expect("print");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            format!("hello\n{long}\n")
        );
    }

    #[test]
    fn uri_escapes() {
        assert_eq!(
            uri(
                Path::new("/usr/bin/pod-runner"),
                Path::new("/var/log/pods/a b/0.log")
            ),
            "binary:///usr/bin/pod-runner?log-shim=/var/log/pods/a%20b/0.log"
        );
    }
}
