//! The registry's start-up replay (`src/registry.rs`, `src/registry/journal.rs`): a snapshot
//! and a journal made of records (puts and deletes, any generations, IDs that collide),
//! garbage lines and a torn last line, written to a private temporary directory and opened.
//! Never a panic; when it opens, the indices agree with the entries, and saving and opening
//! again gives the same registry.

#![no_main]

use std::fmt::Write as _;
use std::path::PathBuf;

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use whipcast::registry::Registry;

#[derive(Arbitrary, Debug)]
struct Input {
    snapshot: Snapshot,
    lines: Vec<Line>,
    /// The last line cut after this many bytes (none: ends with a newline).
    torn: Option<(Line, u8)>,
}

#[derive(Arbitrary, Debug)]
enum Snapshot {
    None,
    Entries {
        generation: u64,
        entries: Vec<Entry>,
    },
    Text(String),
}

#[derive(Arbitrary, Debug, Clone)]
struct Entry {
    /// One of a few digests, so records name the same broadcasts.
    id: u8,
    view: u8,
    label: String,
    created: u64,
    last_used: Option<u64>,
    published: Option<bool>,
}

#[derive(Arbitrary, Debug)]
enum Line {
    Put(u64, Entry),
    Delete(u64, u8),
    Json(String),
    Bytes(Vec<u8>),
}

fn digest(id: u8) -> String {
    format!("{:064x}", id as u128 * 0x9e37_79b9_7f4a_7c15)
}

fn entry_json(e: &Entry) -> String {
    let mut s = format!(
        r#"{{"id_sha256":"{}","view_id":"view{:018}","label":{:?},"created_unix":{}"#,
        digest(e.id % 8),
        e.view % 8,
        e.label,
        e.created
    );
    if let Some(t) = e.last_used {
        let _ = write!(s, r#","last_used_unix":{t}"#);
    }
    if let Some(p) = e.published {
        let _ = write!(s, r#","published":{p}"#);
    }
    s.push('}');
    s
}

fn line(l: &Line) -> Vec<u8> {
    match l {
        Line::Put(g, e) => format!(
            r#"{{"op":"put","generation":{g},"entry":{}}}"#,
            entry_json(e)
        )
        .into_bytes(),
        Line::Delete(g, id) => format!(
            r#"{{"op":"delete","generation":{g},"id_sha256":"{}"}}"#,
            digest(id % 8)
        )
        .into_bytes(),
        Line::Json(s) => s.clone().into_bytes(),
        Line::Bytes(b) => b.iter().copied().filter(|b| *b != b'\n').collect(),
    }
}

fn dir() -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    base.join(format!("whipcast-fuzz-journal-{}", std::process::id()))
}

fuzz_target!(|input: Input| {
    let dir = dir();
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    match &input.snapshot {
        Snapshot::None => {}
        Snapshot::Entries {
            generation,
            entries,
        } => {
            let list: Vec<String> = entries.iter().map(entry_json).collect();
            let text = format!(
                r#"{{"version":1,"generation":{generation},"broadcasts":[{}]}}"#,
                list.join(",")
            );
            std::fs::write(dir.join("broadcasts.json"), text).unwrap();
        }
        Snapshot::Text(t) => std::fs::write(dir.join("broadcasts.json"), t).unwrap(),
    }
    let mut journal = Vec::new();
    for l in &input.lines {
        journal.extend_from_slice(&line(l));
        journal.push(b'\n');
    }
    if let Some((l, cut)) = &input.torn {
        let bytes = line(l);
        journal.extend_from_slice(&bytes[..(*cut as usize).min(bytes.len())]);
    }
    std::fs::write(dir.join("broadcasts.journal"), &journal).unwrap();
    let Ok(mut registry) = Registry::open(&dir) else {
        return;
    };
    assert!(
        registry.indices_agree(),
        "indices disagree with the entries after replay: {input:?}"
    );
    let (len, generation) = (registry.len(), registry.generation());
    registry
        .save()
        .expect("saving to a private temporary directory");
    let again = Registry::open(&dir).expect("what we saved opens");
    assert!(!again.replayed_journal(), "save leaves an empty journal");
    assert_eq!(
        (again.len(), again.generation()),
        (len, generation),
        "saved and opened again, the same"
    );
    assert!(again.indices_agree());
});
