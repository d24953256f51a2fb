//! Broadcasts: their secret broadcast IDs (stored only as SHA-256), their view IDs, and the
//! state files that let them survive a restart: a snapshot, `broadcasts.json`, and a journal
//! of the changes since, `broadcasts.journal` (see [`journal`]), so that one creation costs
//! one appended line rather than a rewrite of every broadcast.

mod journal;

pub use journal::Saver;

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::broadcast_key::BroadcastKey;
use crate::secret;

/// Every broadcast this server knows. Owned by the HTTP layer's shared state.
pub struct Registry {
    path: PathBuf,
    entries: HashMap<BroadcastKey, Entry>,
    /// SHA-256(broadcast ID) → broadcast.
    by_secret: HashMap<[u8; 32], BroadcastKey>,
    by_view: HashMap<String, BroadcastKey>,
    next_key: u64,
    /// Bumped by every change; a snapshot carries the generation it shows, and each journal
    /// record the generation it made.
    generation: u64,
    /// Changes not yet in the journal, oldest first (the [`Saver`] takes them).
    pending: Vec<journal::Record>,
    /// The journal held records when the registry was opened: compact it before serving.
    replayed: bool,
}

/// The state file as of one generation of the registry, ready to be written off the lock.
pub struct Snapshot {
    pub generation: u64,
    text: String,
}

#[derive(Serialize, Deserialize, Clone)]
pub(crate) struct Entry {
    #[serde(with = "hex32")]
    id_sha256: [u8; 32],
    view_id: String,
    /// An opaque label for the status page (never derived from an ID).
    label: String,
    created_unix: u64,
    /// Last time a publisher started; broadcasts unused for `--id-ttl` are forgotten.
    #[serde(default)]
    last_used_unix: u64,
    /// A publisher has started at least once. Broadcasts never published are forgotten
    /// after `--unpublished-ttl` instead (anyone may create them). Entries from before this
    /// field count as published.
    #[serde(default = "published_before_the_field")]
    published: bool,
    /// The broadcaster page's Record switch (with `--record`): on unless switched off.
    #[serde(default = "published_before_the_field")]
    record: bool,
}

/// `published` and `record` of entries from before those fields.
fn published_before_the_field() -> bool {
    true
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    /// The registry's generation the file shows: journal records up to it are in it already.
    /// (Files from before the journal have none: every record is newer.)
    #[serde(default)]
    generation: u64,
    broadcasts: Vec<Entry>,
}

/// A broadcast just created: the only moment the broadcast ID exists in clear.
pub struct Created {
    pub key: BroadcastKey,
    pub broadcast_id: String,
    pub view_id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot read or write the state file {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "the state file {path} is corrupt ({reason}); move it away to start empty, or restore a backup"
    )]
    Corrupt { path: PathBuf, reason: String },
}

impl Registry {
    /// Loads `<dir>/broadcasts.json` and the journal of changes after it, or starts empty if
    /// there is neither.
    pub fn open(dir: &Path) -> Result<Self, RegistryError> {
        let path = dir.join(STATE_FILE);
        fs::create_dir_all(dir).map_err(|source| RegistryError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let mut registry = Self {
            path: path.clone(),
            entries: HashMap::new(),
            by_secret: HashMap::new(),
            by_view: HashMap::new(),
            next_key: 1,
            generation: 0,
            pending: Vec::new(),
            replayed: false,
        };
        match fs::read_to_string(&path) {
            Ok(text) => registry.load_snapshot(&text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(RegistryError::Io { path, source }),
        }
        let journal = journal::path_next_to(&path);
        for (i, record) in journal::read(&journal)?.into_iter().enumerate() {
            registry.replayed = true;
            if record.generation() > registry.generation {
                registry.generation = record.generation();
                registry
                    .apply(record)
                    .map_err(|reason| RegistryError::Corrupt {
                        path: journal.clone(),
                        reason: format!("line {}: {reason}", i + 1),
                    })?;
            }
        }
        Ok(registry)
    }

    fn load_snapshot(&mut self, text: &str) -> Result<(), RegistryError> {
        let path = self.path.clone();
        let corrupt = |reason| RegistryError::Corrupt {
            path: path.clone(),
            reason,
        };
        let state: StateFile = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(corrupt(format!("unknown version {}", state.version)));
        }
        self.generation = state.generation;
        for entry in state.broadcasts {
            // Each ID names one broadcast: indexing a second one under it would hand the
            // first one's viewers (or publisher) to it.
            if self.by_secret.contains_key(&entry.id_sha256) {
                return Err(corrupt("a broadcast ID is listed twice".to_owned()));
            }
            if self.by_view.contains_key(&entry.view_id) {
                return Err(corrupt("two broadcasts share a view ID".to_owned()));
            }
            self.insert(entry);
        }
        Ok(())
    }

    /// Replays one journal record (not journalled again); refuses one that gives a
    /// broadcast another broadcast's view ID.
    fn apply(&mut self, record: journal::Record) -> Result<(), String> {
        match record {
            journal::Record::Put { entry, .. } => {
                let owner = self.by_view.get(&entry.view_id);
                if owner.is_some() && owner != self.by_secret.get(&entry.id_sha256) {
                    return Err("a broadcast is given another broadcast's view ID".to_owned());
                }
                self.put(entry);
            }
            journal::Record::Delete { id_sha256, .. } => {
                if let Some(key) = self.by_secret.get(&id_sha256).copied() {
                    self.remove(key);
                }
            }
        }
        Ok(())
    }

    /// Inserts an entry, or replaces the one with the same broadcast ID.
    fn put(&mut self, entry: Entry) {
        match self.by_secret.get(&entry.id_sha256).copied() {
            Some(key) => {
                let old = self.entries.insert(key, entry.clone());
                if let Some(old) = old {
                    self.by_view.remove(&old.view_id);
                }
                self.by_view.insert(entry.view_id, key);
            }
            None => {
                self.insert(entry);
            }
        }
    }

    /// Records a change for the journal.
    fn changed(&mut self, record: impl FnOnce(u64) -> journal::Record) {
        self.generation += 1;
        self.pending.push(record(self.generation));
    }

    /// Records the current state of one broadcast for the journal.
    fn changed_entry(&mut self, key: BroadcastKey) {
        if let Some(entry) = self.entries.get(&key).cloned() {
            self.changed(|generation| journal::Record::Put { generation, entry });
        }
    }

    /// Issues a new broadcast with fresh, independent broadcast and view IDs (in memory: see
    /// [`snapshot`](Self::snapshot); [`forget`](Self::forget) undoes it).
    pub fn create(&mut self, now_unix: u64) -> Created {
        let broadcast_id = secret::random_token();
        let view_id = secret::random_token();
        let entry = Entry {
            id_sha256: secret::digest(&broadcast_id),
            view_id: view_id.clone(),
            label: format!("broadcast-{}", &secret::random_token()[..6]),
            created_unix: now_unix,
            last_used_unix: now_unix,
            published: false,
            record: true,
        };
        let key = self.insert(entry);
        self.changed_entry(key);
        Created {
            key,
            broadcast_id,
            view_id,
        }
    }

    /// Removes a broadcast (a creation whose save failed).
    pub fn forget(&mut self, key: BroadcastKey) {
        if let Some(id_sha256) = self.remove(key) {
            self.changed(|generation| journal::Record::Delete {
                generation,
                id_sha256,
            });
        }
    }

    /// Removes a broadcast from memory; returns its digest if it was there.
    fn remove(&mut self, key: BroadcastKey) -> Option<[u8; 32]> {
        let e = self.entries.remove(&key)?;
        self.by_secret.remove(&e.id_sha256);
        self.by_view.remove(&e.view_id);
        Some(e.id_sha256)
    }

    /// The broadcast a broadcast ID (publish secret) opens.
    pub fn by_broadcast_id(&self, broadcast_id: &str) -> Option<BroadcastKey> {
        if !secret::is_token(broadcast_id) {
            return None;
        }
        let digest = secret::digest(broadcast_id);
        let key = *self.by_secret.get(&digest)?;
        // The map lookup already matched the digest; compare again in constant time so the
        // check does not depend on how the map compares keys.
        secret::equal(&self.entries.get(&key)?.id_sha256, &digest).then_some(key)
    }

    /// The broadcast a view ID shows.
    pub fn by_view_id(&self, view_id: &str) -> Option<BroadcastKey> {
        if !secret::is_token(view_id) {
            return None;
        }
        self.by_view.get(view_id).copied()
    }

    /// Records that a publisher started, which keeps the broadcast from expiring. Returns
    /// whether anything changed that needs saving.
    pub fn touch(&mut self, key: BroadcastKey, now_unix: u64) -> bool {
        let Some(e) = self.entries.get_mut(&key) else {
            return false;
        };
        // Once a day is enough for a TTL counted in days, and spares the disk a write per POST.
        if e.published && now_unix.saturating_sub(e.last_used_unix) < 86_400 {
            return false;
        }
        e.published = true;
        e.last_used_unix = now_unix;
        self.changed_entry(key);
        true
    }

    /// Forgets broadcasts unused for `ttl`, and those never published for `unpublished_ttl`.
    /// Returns how many went.
    pub fn expire(
        &mut self,
        now_unix: u64,
        ttl: std::time::Duration,
        unpublished_ttl: std::time::Duration,
    ) -> usize {
        let cutoff = now_unix.saturating_sub(ttl.as_secs());
        let unpublished_cutoff = now_unix.saturating_sub(unpublished_ttl.as_secs());
        let old: Vec<BroadcastKey> = self
            .entries
            .iter()
            .filter(|(_, e)| {
                let used = e.last_used_unix.max(e.created_unix);
                used < cutoff || (!e.published && used < unpublished_cutoff)
            })
            .map(|(k, _)| *k)
            .collect();
        for k in &old {
            self.forget(*k);
        }
        old.len()
    }

    /// Replaces the view ID: the old viewer link stops working. Returns the new one and
    /// the old one (to [`set_view_id`](Self::set_view_id) back if saving fails).
    pub fn rotate_view_id(&mut self, key: BroadcastKey) -> Option<(String, String)> {
        let fresh = secret::random_token();
        let old = self.set_view_id(key, fresh.clone())?;
        Some((fresh, old))
    }

    /// Sets a broadcast's view ID; returns the one it replaced.
    pub fn set_view_id(&mut self, key: BroadcastKey, view_id: String) -> Option<String> {
        let e = self.entries.get_mut(&key)?;
        self.by_view.remove(&e.view_id);
        self.by_view.insert(view_id.clone(), key);
        let old = std::mem::replace(&mut e.view_id, view_id);
        self.changed_entry(key);
        Some(old)
    }

    /// Sets the Record switch; returns what it was (to set back if saving fails).
    pub fn set_record(&mut self, key: BroadcastKey, on: bool) -> Option<bool> {
        let e = self.entries.get_mut(&key)?;
        let old = std::mem::replace(&mut e.record, on);
        if old != on {
            self.changed_entry(key);
        }
        Some(old)
    }

    /// The Record switch (on for a broadcast the registry does not know: `--record` says so).
    pub fn record(&self, key: BroadcastKey) -> bool {
        self.entries.get(&key).is_none_or(|e| e.record)
    }

    /// Broadcasts whose Record switch is off.
    pub fn not_recorded(&self) -> impl Iterator<Item = BroadcastKey> + '_ {
        self.entries
            .iter()
            .filter(|(_, e)| !e.record)
            .map(|(k, _)| *k)
    }

    pub fn view_id(&self, key: BroadcastKey) -> Option<&str> {
        self.entries.get(&key).map(|e| e.view_id.as_str())
    }

    pub fn label(&self, key: BroadcastKey) -> Option<&str> {
        self.entries.get(&key).map(|e| e.label.as_str())
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The state file as it should be now, to write outside the lock that guards the
    /// registry.
    pub fn snapshot(&self) -> Snapshot {
        let mut broadcasts: Vec<Entry> = self.entries.values().cloned().collect();
        broadcasts.sort_by_key(|e| e.created_unix);
        let state = StateFile {
            version: STATE_VERSION,
            generation: self.generation,
            broadcasts,
        };
        Snapshot {
            generation: self.generation,
            text: serde_json::to_string(&state).expect("the state serialises"),
        }
    }

    /// The generation of the latest change (see [`Saver`]).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Where the state file lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the journal held records when the registry was opened (then start-up should
    /// [`save`](Self::save), which folds them into the snapshot).
    pub fn replayed_journal(&self) -> bool {
        self.replayed
    }

    /// Writes a fresh snapshot and an empty journal now, on this thread (start-up and tests;
    /// not once a [`Saver`] is writing, which keeps the journal open).
    pub fn save(&mut self) -> Result<(), RegistryError> {
        journal::compact(&self.path, &self.snapshot())?;
        self.pending.clear();
        self.replayed = false;
        Ok(())
    }

    /// Whether the indices agree with the entries (each entry found by its digest and by its
    /// view ID, nothing else indexed): the `journal` fuzz target's check after a replay.
    #[cfg(feature = "fuzzing")]
    #[doc(hidden)]
    pub fn indices_agree(&self) -> bool {
        self.indices_agree_for_tests()
    }

    #[cfg(any(test, feature = "fuzzing"))]
    fn indices_agree_for_tests(&self) -> bool {
        self.by_secret.len() == self.entries.len()
            && self.by_view.len() == self.entries.len()
            && self.entries.iter().all(|(key, e)| {
                self.by_secret.get(&e.id_sha256) == Some(key)
                    && self.by_view.get(&e.view_id) == Some(key)
            })
    }

    fn insert(&mut self, entry: Entry) -> BroadcastKey {
        let key = BroadcastKey(self.next_key);
        self.next_key += 1;
        self.by_secret.insert(entry.id_sha256, key);
        self.by_view.insert(entry.view_id.clone(), key);
        self.entries.insert(key, entry);
        key
    }
}

const STATE_FILE: &str = "broadcasts.json";
const STATE_VERSION: u32 = 1;

/// Hex (de)serialisation of a SHA-256 digest.
pub(crate) mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&v.iter().map(|b| format!("{b:02x}")).collect::<String>())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| s.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| serde::de::Error::custom("not hex"))?;
        bytes
            .try_into()
            .map_err(|_| serde::de::Error::custom("not 32 bytes"))
    }
}

#[cfg(test)]
mod tests;
