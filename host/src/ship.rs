//! `adtally ship`: the log watcher. Tails log files of click records (the
//! design's line format, or JSON objects, one per line) into a Kafka topic,
//! and resumes where it stopped after a restart.
//!
//! - Only complete lines (ending in `\n`) are shipped; a partial last line
//!   waits for the rest.
//! - Lines are routed by the core ([`adtally_core::routing`]): clicks are
//!   keyed by `ad_id`, so every click of an ad (and every duplicate of a
//!   click) lands in one partition, the layout the core's per-partition
//!   dedup relies on; heartbeat lines go to every partition; a line that is
//!   not a valid record is shipped unkeyed, and the core side-lines it as
//!   invalid with its reason.
//! - Where each file stands (its device, inode and byte offset) is written
//!   to the state file only after the broker acknowledged every line before
//!   that offset. After a crash, the lines after the last saved offset are
//!   shipped again: they are exact repeats, so the core drops them as
//!   duplicates (within the dedup horizon) and never counts them twice.
//! - A rotated file (same path, new inode) is read to its end through the
//!   old handle, then followed from the start of the new file; a truncated
//!   file is followed from its new start.
//! - A line is acknowledged when its delivery report says so, not when
//!   `flush` returns (which it also does for records that failed). A line
//!   the broker cannot take (larger than the producer's
//!   `message.max.bytes`, or than `max_line_bytes` while it is read, so
//!   that an unterminated line never grows memory without bound) goes to
//!   the dead-letter file with its file and byte range, and shipping goes
//!   on; any other failure stops `ship` with the position kept before the
//!   first unacknowledged line.

use crate::producer::Producer;
use adtally_core::Routing;
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How `ship` runs.
pub struct ShipOptions {
    /// Bootstrap servers.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// The files to follow.
    pub files: Vec<PathBuf>,
    /// Where positions are kept between runs.
    pub state: PathBuf,
    /// Stop after this long without a new line; never if `None`.
    pub exit_when_idle: Option<Duration>,
    /// librdkafka properties for a secured cluster (SASL, TLS, ...).
    pub kafka: crate::connect::KafkaProperties,
    /// Where lines that cannot be shipped go (JSON lines, appended).
    pub dead_letter: PathBuf,
    /// The longest line read; a longer one is dead-lettered (its first
    /// `max_line_bytes` bytes kept there), never held whole in memory.
    pub max_line_bytes: usize,
}

/// Where one file stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilePosition {
    /// The file's device.
    pub dev: u64,
    /// The file's inode.
    pub ino: u64,
    /// The first byte not yet acknowledged by the broker.
    pub offset: u64,
}

/// The state file: each followed path and where it stands.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShipState {
    /// By path.
    pub files: BTreeMap<PathBuf, FilePosition>,
}

impl ShipState {
    /// Reads the state file; a missing file is an empty state.
    pub fn load(path: &Path) -> Result<ShipState> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not an adtally ship state file", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ShipState::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Replaces the state file atomically (write, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(self)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
    }
}

/// How long `ship` sleeps when no file has a new line.
const POLL_FILES: Duration = Duration::from_millis(100);

/// Totals of a ship run.
#[derive(Debug, Default)]
pub struct ShipStats {
    /// Lines produced (a heartbeat counts once).
    pub lines: u64,
    /// Files found rotated or truncated and followed from their start.
    pub restarts: u64,
    /// Lines written to the dead-letter file instead.
    pub dead_lettered: u64,
}

/// A line read from a file: its bytes (at most `max_line_bytes`), where
/// it starts and the offset just after its newline, and its whole length
/// when it was longer than the bytes kept.
struct Line {
    bytes: Vec<u8>,
    start: u64,
    end: u64,
    oversize: Option<u64>,
}

/// Whether the broker (or librdkafka) refuses this record for what it is,
/// so that sending it again can never succeed: it goes to the dead letters.
fn refused_for_good(e: &rdkafka::error::KafkaError) -> bool {
    use rdkafka::types::RDKafkaErrorCode::*;
    matches!(
        e.rdkafka_error_code(),
        Some(
            MessageSizeTooLarge | InvalidMessageSize | InvalidMessage | InvalidRecord | BadMessage
        )
    )
}

/// Appends a line that cannot be shipped to the dead-letter file (synced:
/// the position moves past the line right after).
fn dead_letter(path: &Path, file: &Path, line: &Line, reason: &str) -> Result<()> {
    use std::io::Write;
    let entry = serde_json::json!({
        "file": file,
        "start": line.start,
        "end": line.end,
        "bytes": line.oversize.unwrap_or(line.bytes.len() as u64),
        "reason": reason,
        "line": String::from_utf8_lossy(&line.bytes),
    });
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening the dead-letter file {}", path.display()))?;
    writeln!(f, "{entry}")?;
    f.sync_all()
        .with_context(|| format!("writing the dead-letter file {}", path.display()))
}

struct Followed {
    path: PathBuf,
    file: Option<File>,
    pos: FilePosition,
    /// Bytes read but not yet a complete line (at most `max_line_bytes`).
    partial: Vec<u8>,
    /// The length of the line being read, beyond what `partial` keeps.
    partial_len: u64,
}

impl Followed {
    /// Opens the path if it exists; a different inode than the stored one
    /// (or a file shorter than the stored offset) starts from 0.
    fn open(&mut self, stats: &mut ShipStats) -> Result<()> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("opening {}", self.path.display())),
        };
        let meta = file.metadata()?;
        if (meta.dev(), meta.ino()) != (self.pos.dev, self.pos.ino) || meta.len() < self.pos.offset
        {
            if self.pos != FilePosition::default() {
                stats.restarts += 1;
            }
            self.pos = FilePosition {
                dev: meta.dev(),
                ino: meta.ino(),
                offset: 0,
            };
        }
        let mut file = file;
        file.seek(SeekFrom::Start(self.pos.offset))?;
        self.file = Some(file);
        self.partial.clear();
        self.partial_len = 0;
        Ok(())
    }

    /// Whether the path now names another file than the open one (rotation).
    fn rotated(&self) -> bool {
        match (&self.file, std::fs::metadata(&self.path)) {
            (Some(_), Ok(m)) => (m.dev(), m.ino()) != (self.pos.dev, self.pos.ino),
            (None, Ok(_)) => true,
            _ => false,
        }
    }

    /// Reads what was appended; returns the complete lines. A line keeps
    /// at most `max_line` bytes, however long it grows.
    fn read_lines(&mut self, max_bytes: usize, max_line: usize) -> Result<Vec<Line>> {
        let Some(file) = self.file.as_mut() else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; max_bytes];
        let n = file.read(&mut buf)?;
        let mut lines = Vec::new();
        let mut at = self.pos.offset + self.partial_len;
        for &b in &buf[..n] {
            at += 1;
            if b == b'\n' {
                let len = std::mem::take(&mut self.partial_len);
                let bytes = std::mem::take(&mut self.partial);
                lines.push(Line {
                    oversize: (len > bytes.len() as u64).then_some(len),
                    start: at - 1 - len,
                    end: at,
                    bytes,
                });
            } else {
                if self.partial.len() < max_line {
                    self.partial.push(b);
                }
                self.partial_len += 1;
            }
        }
        // Shrunk below where we are: truncated, start over.
        if n == 0 && file.metadata()?.len() < self.pos.offset {
            self.pos.offset = 0;
            file.seek(SeekFrom::Start(0))?;
            self.partial.clear();
            self.partial_len = 0;
        }
        Ok(lines)
    }
}

/// Follows the files into the topic until idle (or forever).
pub fn ship(opts: &ShipOptions) -> Result<ShipStats> {
    if opts.files.is_empty() {
        bail!("adtally ship: give at least one file to follow");
    }
    let producer = Producer::new(&opts.brokers, &opts.kafka)?;
    let partitions = producer.partitions(&opts.topic)?;
    let mut state = ShipState::load(&opts.state)?;
    let mut stats = ShipStats::default();
    let mut followed: Vec<Followed> = opts
        .files
        .iter()
        .map(|p| Followed {
            path: p.clone(),
            file: None,
            pos: state.files.get(p).copied().unwrap_or_default(),
            partial: Vec::new(),
            partial_len: 0,
        })
        .collect();
    for f in &mut followed {
        f.open(&mut stats)?;
    }
    let mut last_line = Instant::now();
    loop {
        let mut shipped = 0usize;
        for f in &mut followed {
            let lines = f.read_lines(1 << 20, opts.max_line_bytes)?;
            if lines.is_empty() {
                if f.rotated() {
                    // The old file is drained: follow the new one.
                    if f.file.is_some() {
                        stats.restarts += 1;
                    }
                    f.pos = FilePosition::default();
                    f.open(&mut stats)?;
                }
                continue;
            }
            let mut dead: Vec<(usize, String)> = Vec::new();
            let mut sent: Vec<usize> = Vec::new();
            for (i, line) in lines.iter().enumerate() {
                let bytes = line.bytes.strip_suffix(b"\r").unwrap_or(&line.bytes);
                if let Some(len) = line.oversize {
                    dead.push((
                        i,
                        format!(
                            "a line of {len} bytes, longer than --max-line-bytes {}",
                            opts.max_line_bytes
                        ),
                    ));
                    continue;
                }
                if bytes.trim_ascii().is_empty() {
                    continue;
                }
                match send_line(&producer, &opts.topic, partitions, i, bytes) {
                    Ok(()) => sent.push(i),
                    Err(e) if refused_for_good(&e) => {
                        dead.push((i, format!("refused by the producer: {e}")))
                    }
                    Err(e) => bail!("producing a line of {}: {e}", f.path.display()),
                }
            }
            // Every line's delivery report is in once the queue is empty;
            // only acknowledged lines let the position move.
            let mut not_acked: Option<(usize, rdkafka::error::KafkaError)> = None;
            let mut refused = BTreeMap::new();
            for (i, e) in producer.deliveries()? {
                if refused_for_good(&e) {
                    refused.insert(i, e);
                } else if not_acked.as_ref().is_none_or(|(first, _)| i < *first) {
                    not_acked = Some((i, e));
                }
            }
            // A broker refuses a whole batch for one record in it: each
            // refused line is sent again alone, and only one refused by
            // itself is a dead letter.
            for (i, e) in refused {
                if not_acked.as_ref().is_some_and(|(first, _)| i > *first) {
                    break;
                }
                let bytes = lines[i]
                    .bytes
                    .strip_suffix(b"\r")
                    .unwrap_or(&lines[i].bytes);
                let alone = send_line(&producer, &opts.topic, partitions, i, bytes)
                    .map_err(|e| (i, e))
                    .and_then(|()| match producer.deliveries() {
                        Ok(failed) => failed.into_iter().next().map_or(Ok(()), Err),
                        Err(_) => Ok(()),
                    });
                match alone {
                    Ok(()) => {}
                    Err((_, again)) if refused_for_good(&again) => {
                        dead.push((i, format!("refused by the broker: {again} (first: {e})")))
                    }
                    Err((_, again)) => {
                        if not_acked.as_ref().is_none_or(|(first, _)| i < *first) {
                            not_acked = Some((i, again));
                        }
                    }
                }
            }
            dead.sort_by_key(|(i, _)| *i);
            let before_failure = |i: usize| not_acked.as_ref().is_none_or(|(first, _)| i < *first);
            for (i, reason) in dead.iter().filter(|(i, _)| before_failure(*i)) {
                dead_letter(&opts.dead_letter, &f.path, &lines[*i], reason)?;
                stats.dead_lettered += 1;
            }
            let acked = sent
                .iter()
                .filter(|i| before_failure(**i) && !dead.iter().any(|(d, _)| d == *i))
                .count();
            stats.lines += acked as u64;
            shipped += sent.len();
            if let Some((first, e)) = not_acked {
                // The position moves to the first line not acknowledged:
                // a restart ships from there (repeats are duplicates).
                f.pos.offset = lines[first].start;
                state.files.insert(f.path.clone(), f.pos);
                state.save(&opts.state)?;
                bail!(
                    "the broker did not acknowledge the line at byte {} of {}: {e}; the position is \
                     kept there, and the next run ships from it",
                    lines[first].start,
                    f.path.display()
                );
            }
            f.pos.offset = lines.last().map_or(f.pos.offset, |l| l.end);
            state.files.insert(f.path.clone(), f.pos);
            state.save(&opts.state)?;
        }
        if shipped > 0 {
            last_line = Instant::now();
            continue;
        }
        if opts
            .exit_when_idle
            .is_some_and(|idle| last_line.elapsed() >= idle)
        {
            return Ok(stats);
        }
        std::thread::sleep(POLL_FILES);
    }
}

/// Queues line `i` of a batch as the core routes it ([`adtally_core::routing`]):
/// a click keyed by its ad, a heartbeat to every partition, anything else
/// anywhere.
fn send_line(
    producer: &Producer,
    topic: &str,
    partitions: i32,
    i: usize,
    bytes: &[u8],
) -> Result<(), rdkafka::error::KafkaError> {
    match adtally_core::routing(bytes) {
        Routing::EveryPartition => {
            (0..partitions).try_for_each(|p| producer.send(topic, Some(p), None, bytes, i))
        }
        Routing::ByAd(ad) => producer.send(topic, None, Some(ad.as_str().as_bytes()), bytes, i),
        Routing::AnyPartition => producer.send(topic, None, None, bytes, i),
    }
}
