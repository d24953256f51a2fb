//! Writing the registry to disk: an append-only journal of changes next to a snapshot.
//!
//! A change (creation, rotation, first publish, deletion) is one JSON line appended to
//! `broadcasts.journal` and fsynced, so creating a broadcast costs one line however many
//! exist. The journal is folded into a fresh snapshot (`broadcasts.json`) when it has more
//! lines than that snapshot had broadcasts (the snapshot is then at most twice the journal's
//! length, so the rewrite, amortised, is O(1) per change too), after a failed write, and at
//! start-up. Each record carries the registry generation it made and the
//! snapshot the generation it shows, so records a crash left behind after a compaction are
//! skipped rather than replayed over newer state. Both files are private (0600): they hold
//! every view ID.

use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Entry, Registry, RegistryError, Snapshot, hex32};
use crate::secret;

/// One change, as a line of the journal.
#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub(crate) enum Record {
    /// A broadcast as it now is (created, rotated or published): replaces the one with the
    /// same broadcast ID.
    Put { generation: u64, entry: Entry },
    /// A broadcast forgotten.
    Delete {
        generation: u64,
        #[serde(with = "hex32")]
        id_sha256: [u8; 32],
    },
}

impl Record {
    pub(crate) fn generation(&self) -> u64 {
        match self {
            Record::Put { generation, .. } | Record::Delete { generation, .. } => *generation,
        }
    }
}

/// The journal that goes with the snapshot at `snapshot`.
pub(crate) fn path_next_to(snapshot: &Path) -> PathBuf {
    snapshot.with_extension("journal")
}

/// Reads the journal's records, oldest first; none if there is no journal. A last line cut
/// short (a crash while appending) is ignored with a warning; any other line that does not
/// parse makes the journal corrupt.
pub(crate) fn read(path: &Path) -> Result<Vec<Record>, RegistryError> {
    let text = match fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RegistryError::Io {
                path: path.to_owned(),
                source,
            });
        }
    };
    let mut lines: Vec<&[u8]> = text.split(|b| *b == b'\n').collect();
    // After the last newline: empty, or a line whose append never finished.
    let torn = lines.pop().unwrap_or_default();
    if !torn.is_empty() {
        warn!(path = %path.display(), bytes = torn.len(), "ignoring a journal line cut short (the server stopped while writing it)");
    }
    lines
        .iter()
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice(line).map_err(|e| RegistryError::Corrupt {
                path: path.to_owned(),
                reason: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// Writes `snapshot` as the state file at `path` and starts an empty journal next to it;
/// returns the journal, open for appending.
pub(crate) fn compact(path: &Path, snapshot: &Snapshot) -> Result<fs::File, RegistryError> {
    let io_err = |source| RegistryError::Io {
        path: path.to_owned(),
        source,
    };
    replace(path, snapshot.text.as_bytes()).map_err(io_err)?;
    // Records left in the old journal by a crash right here are older than the snapshot.
    let journal = path_next_to(path);
    let file = replace(&journal, b"").map_err(io_err)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err)?;
    Ok(file)
}

/// Replaces the file at `path` with `contents` atomically and privately: a fresh temporary
/// file of mode 0600 that no symlink can redirect (`create_new`), fsync, rename. Returns the
/// new file, open for appending. The caller fsyncs the directory.
fn replace(path: &Path, contents: &[u8]) -> io::Result<fs::File> {
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", secret::random_token()));
    let write = || -> io::Result<fs::File> {
        let mut f = fs::OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        Ok(f)
    };
    write().inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// Appends `records` to the journal and fsyncs; on failure, cuts off what was written.
fn append(file: &mut fs::File, records: &[Record]) -> io::Result<usize> {
    let mut lines = Vec::new();
    for r in records {
        serde_json::to_writer(&mut lines, r).expect("a record serialises");
        lines.push(b'\n');
    }
    let len = file.metadata()?.len();
    let written = file.write_all(&lines).and_then(|()| file.sync_data());
    if let Err(e) = written {
        let _ = file.set_len(len);
        return Err(e);
    }
    Ok(lines.len())
}

/// Writes the registry's changes for the HTTP layer, one write at a time and off its async
/// workers: the registry lock is held only to take the pending records (or a snapshot), and
/// changes that came together share one append and one fsync.
#[derive(Default)]
pub struct Saver {
    writer: std::sync::Mutex<Writer>,
}

#[derive(Default)]
struct Writer {
    /// The generation the files on disk hold.
    saved: u64,
    /// The journal, open for appending; `None` until the first compaction, and after a failed
    /// write (the next save writes a snapshot of memory, which has rolled back by then).
    journal: Option<fs::File>,
    lines: usize,
    /// Broadcasts in the last snapshot written.
    snapshot_len: usize,
    /// Bytes written in all, snapshots and journal lines (for tests of the cost per change).
    bytes: u64,
}

impl Saver {
    /// Makes sure the files hold generation `generation` or a later one. Blocks: call it
    /// from a blocking thread.
    pub fn save_at_least(
        &self,
        registry: &std::sync::Mutex<Registry>,
        generation: u64,
    ) -> Result<(), RegistryError> {
        let mut w = self.writer.lock().expect("saver lock");
        if w.saved >= generation {
            return Ok(());
        }
        let (records, snapshot, upto, path) = {
            let mut r = registry.lock().expect("registry lock");
            let records = std::mem::take(&mut r.pending);
            let compact = w.journal.is_none()
                || w.lines + records.len() > COMPACT_MIN_LINES.max(w.snapshot_len);
            let snapshot = compact.then(|| (r.snapshot(), r.len()));
            (records, snapshot, r.generation(), r.path().to_owned())
        };
        let result = match snapshot {
            Some((snapshot, len)) => compact(&path, &snapshot).map(|journal| {
                w.journal = Some(journal);
                w.lines = 0;
                w.snapshot_len = len;
                (snapshot.text.len(), 0)
            }),
            None => {
                let journal = w
                    .journal
                    .as_mut()
                    .expect("no snapshot only with a journal open");
                append(journal, &records)
                    .map(|bytes| (bytes, records.len()))
                    .map_err(|source| RegistryError::Io {
                        path: path_next_to(&path),
                        source,
                    })
            }
        };
        match result {
            Ok((bytes, lines)) => {
                w.saved = upto;
                w.lines += lines;
                w.bytes += bytes as u64;
                Ok(())
            }
            Err(e) => {
                w.journal = None;
                Err(e)
            }
        }
    }

    /// Bytes written so far, snapshots and journal lines together.
    pub fn bytes_written(&self) -> u64 {
        self.writer.lock().expect("saver lock").bytes
    }
}

/// The journal is folded into a snapshot once it has more lines than the last snapshot had
/// broadcasts, and never for fewer than this many (a small registry would compact often).
const COMPACT_MIN_LINES: usize = 1_024;
