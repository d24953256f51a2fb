//! Broadcasts: their secret broadcast IDs (stored only as SHA-256), their view IDs, and the
//! state file that lets them survive a restart.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::engine::BroadcastKey;
use crate::secret;

/// Every broadcast this server knows. Owned by the HTTP layer's shared state.
pub struct Registry {
    path: PathBuf,
    entries: HashMap<BroadcastKey, Entry>,
    /// SHA-256(broadcast ID) → broadcast.
    by_secret: HashMap<[u8; 32], BroadcastKey>,
    by_view: HashMap<String, BroadcastKey>,
    next_key: u64,
    /// Bumped by every change; a snapshot carries the generation it shows.
    generation: u64,
}

/// The state file as of one generation of the registry, ready to be written off the lock.
pub struct Snapshot {
    pub generation: u64,
    text: String,
}

#[derive(Serialize, Deserialize, Clone)]
struct Entry {
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
}

fn published_before_the_field() -> bool {
    true
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
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
    /// Loads `<dir>/broadcasts.json`, or starts empty if there is none.
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
        };
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(registry),
            Err(source) => return Err(RegistryError::Io { path, source }),
        };
        let state: StateFile = serde_json::from_str(&text).map_err(|e| RegistryError::Corrupt {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if state.version != STATE_VERSION {
            return Err(RegistryError::Corrupt {
                path,
                reason: format!("unknown version {}", state.version),
            });
        }
        for entry in state.broadcasts {
            registry.insert(entry);
        }
        Ok(registry)
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
        };
        let key = self.insert(entry);
        self.generation += 1;
        Created {
            key,
            broadcast_id,
            view_id,
        }
    }

    /// Removes a broadcast (a creation whose save failed).
    pub fn forget(&mut self, key: BroadcastKey) {
        if let Some(e) = self.entries.remove(&key) {
            self.by_secret.remove(&e.id_sha256);
            self.by_view.remove(&e.view_id);
            self.generation += 1;
        }
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
        self.generation += 1;
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
        self.generation += 1;
        Some(std::mem::replace(&mut e.view_id, view_id))
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

    /// The state file as it should be now; write it with [`Snapshot::write`] outside the
    /// lock that guards the registry.
    pub fn snapshot(&self) -> Snapshot {
        let mut broadcasts: Vec<Entry> = self.entries.values().cloned().collect();
        broadcasts.sort_by_key(|e| e.created_unix);
        let state = StateFile {
            version: STATE_VERSION,
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

    /// Saves now, on this thread (start-up and tests).
    pub fn save(&self) -> Result<(), RegistryError> {
        self.snapshot().write(&self.path)
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

impl Snapshot {
    /// Writes the state file atomically and privately (it holds every view ID): a fresh
    /// temporary file of mode 0600 that no symlink can redirect (`create_new`), fsync,
    /// rename over the state file, fsync the directory so the rename itself is durable.
    pub fn write(&self, path: &Path) -> Result<(), RegistryError> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let io_err = |source| RegistryError::Io {
            path: path.to_owned(),
            source,
        };
        let tmp = path.with_extension(format!("json.{}.tmp", secret::random_token()));
        let write = || -> io::Result<()> {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(self.text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_err(e));
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err)
    }
}

/// Writes the state file for the HTTP layer, one write at a time and off its async workers:
/// the registry lock is held only to take a snapshot, and a change already covered by a
/// newer write (creations that came together) costs no write of its own.
#[derive(Default)]
pub struct Saver {
    saved: std::sync::Mutex<u64>,
}

impl Saver {
    /// Makes sure the state file holds generation `generation` or a later one. Blocks: call
    /// it from a blocking thread.
    pub fn save_at_least(
        &self,
        registry: &std::sync::Mutex<Registry>,
        generation: u64,
    ) -> Result<(), RegistryError> {
        let mut saved = self.saved.lock().expect("saver lock");
        if *saved >= generation {
            return Ok(());
        }
        let (snapshot, path) = {
            let r = registry.lock().expect("registry lock");
            (r.snapshot(), r.path().to_owned())
        };
        snapshot.write(&path)?;
        *saved = snapshot.generation;
        Ok(())
    }
}

const STATE_FILE: &str = "broadcasts.json";
const STATE_VERSION: u32 = 1;

/// Hex (de)serialisation of a SHA-256 digest.
mod hex32 {
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
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "whipcast-registry-{name}-{}",
            secret::random_token()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn broadcasts_survive_reopening_and_only_a_hash_is_stored() {
        let dir = temp_dir("persist");
        let mut r = Registry::open(&dir).unwrap();
        let created = r.create(1);
        r.save().unwrap();
        let text = fs::read_to_string(dir.join(STATE_FILE)).unwrap();
        assert!(
            !text.contains(&created.broadcast_id),
            "the broadcast ID must not be stored"
        );
        let reopened = Registry::open(&dir).unwrap();
        let key = reopened
            .by_broadcast_id(&created.broadcast_id)
            .expect("broadcast ID still valid");
        assert_eq!(reopened.by_view_id(&created.view_id), Some(key));
        assert_eq!(
            reopened.by_broadcast_id(&created.view_id),
            None,
            "a view ID cannot publish"
        );
        assert_eq!(
            reopened.by_view_id(&created.broadcast_id),
            None,
            "a broadcast ID is not a view ID"
        );
    }

    #[test]
    fn unused_broadcasts_expire_and_rotation_revokes_the_old_view_id() {
        let dir = temp_dir("expire");
        let mut r = Registry::open(&dir).unwrap();
        let old = r.create(1_000);
        let fresh = r.create(1_000_000);
        let ttl = std::time::Duration::from_secs(10_000);
        assert_eq!(r.expire(1_000_000, ttl, ttl), 1);
        assert_eq!(r.by_broadcast_id(&old.broadcast_id), None);
        let (new_view, _) = r.rotate_view_id(fresh.key).unwrap();
        r.save().unwrap();
        assert_eq!(
            r.by_view_id(&fresh.view_id),
            None,
            "old viewer link stops working"
        );
        let reopened = Registry::open(&dir).unwrap();
        let key = reopened.by_broadcast_id(&fresh.broadcast_id).expect("kept");
        assert_eq!(
            reopened.by_view_id(&new_view),
            Some(key),
            "the new view ID survives a restart"
        );
    }

    #[test]
    fn never_published_broadcasts_expire_sooner_than_published_ones() {
        let dir = temp_dir("unpublished");
        let mut r = Registry::open(&dir).unwrap();
        let idle = r.create(1_000);
        let used = r.create(1_000);
        assert!(r.touch(used.key, 1_000), "the first publish is recorded");
        let (ttl, unpublished) = (
            std::time::Duration::from_secs(30 * 86_400),
            std::time::Duration::from_secs(6 * 3_600),
        );
        assert_eq!(r.expire(1_000 + 3_600, ttl, unpublished), 0);
        assert_eq!(r.expire(1_000 + 7 * 3_600, ttl, unpublished), 1);
        assert_eq!(r.by_broadcast_id(&idle.broadcast_id), None);
        assert!(r.by_broadcast_id(&used.broadcast_id).is_some());
    }

    #[test]
    fn the_state_file_is_private_and_no_temporary_file_is_left() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = temp_dir("private");
        let mut r = Registry::open(&dir).unwrap();
        r.create(1);
        r.save().unwrap();
        let mode = fs::metadata(dir.join(STATE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE)]);
    }

    #[test]
    fn corrupt_state_file_is_an_error_not_an_empty_registry() {
        let dir = temp_dir("corrupt");
        fs::write(dir.join(STATE_FILE), "{ not json").unwrap();
        let err = Registry::open(&dir).err().expect("corrupt file must fail");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
