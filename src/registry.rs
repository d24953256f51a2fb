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

    /// Issues a new broadcast with fresh, independent broadcast and view IDs, and saves.
    pub fn create(&mut self, now_unix: u64) -> Result<Created, RegistryError> {
        let broadcast_id = secret::random_token();
        let view_id = secret::random_token();
        let entry = Entry {
            id_sha256: secret::digest(&broadcast_id),
            view_id: view_id.clone(),
            label: format!("broadcast-{}", &secret::random_token()[..6]),
            created_unix: now_unix,
            last_used_unix: now_unix,
        };
        let key = self.insert(entry);
        self.save()?;
        Ok(Created {
            key,
            broadcast_id,
            view_id,
        })
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

    /// Records that a publisher started, which keeps the broadcast from expiring.
    pub fn touch(&mut self, key: BroadcastKey, now_unix: u64) -> Result<(), RegistryError> {
        let Some(e) = self.entries.get_mut(&key) else {
            return Ok(());
        };
        // Once a day is enough for a TTL counted in days, and spares the disk a write per POST.
        if now_unix.saturating_sub(e.last_used_unix) < 86_400 {
            return Ok(());
        }
        e.last_used_unix = now_unix;
        self.save()
    }

    /// Forgets broadcasts unused for `ttl`. Returns how many went.
    pub fn expire(
        &mut self,
        now_unix: u64,
        ttl: std::time::Duration,
    ) -> Result<usize, RegistryError> {
        let cutoff = now_unix.saturating_sub(ttl.as_secs());
        let old: Vec<BroadcastKey> = self
            .entries
            .iter()
            .filter(|(_, e)| e.last_used_unix.max(e.created_unix) < cutoff)
            .map(|(k, _)| *k)
            .collect();
        for k in &old {
            if let Some(e) = self.entries.remove(k) {
                self.by_secret.remove(&e.id_sha256);
                self.by_view.remove(&e.view_id);
            }
        }
        if !old.is_empty() {
            self.save()?;
        }
        Ok(old.len())
    }

    /// Replaces the view ID: the old viewer link stops working.
    pub fn rotate_view_id(&mut self, key: BroadcastKey) -> Result<Option<String>, RegistryError> {
        let Some(e) = self.entries.get_mut(&key) else {
            return Ok(None);
        };
        let fresh = secret::random_token();
        self.by_view.remove(&e.view_id);
        e.view_id = fresh.clone();
        self.by_view.insert(fresh.clone(), key);
        self.save()?;
        Ok(Some(fresh))
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

    fn insert(&mut self, entry: Entry) -> BroadcastKey {
        let key = BroadcastKey(self.next_key);
        self.next_key += 1;
        self.by_secret.insert(entry.id_sha256, key);
        self.by_view.insert(entry.view_id.clone(), key);
        self.entries.insert(key, entry);
        key
    }

    /// Writes the state file atomically: a temporary file, fsync, rename.
    fn save(&self) -> Result<(), RegistryError> {
        let mut broadcasts: Vec<Entry> = self.entries.values().cloned().collect();
        broadcasts.sort_by_key(|e| e.created_unix);
        let state = StateFile {
            version: STATE_VERSION,
            broadcasts,
        };
        let text = serde_json::to_string_pretty(&state).expect("the state serialises");
        let tmp = self.path.with_extension("json.tmp");
        let io_err = |source| RegistryError::Io {
            path: self.path.clone(),
            source,
        };
        {
            use std::io::Write as _;
            let mut f = fs::File::create(&tmp).map_err(io_err)?;
            f.write_all(text.as_bytes()).map_err(io_err)?;
            f.sync_all().map_err(io_err)?;
        }
        fs::rename(&tmp, &self.path).map_err(io_err)
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
        let created = Registry::open(&dir).unwrap().create(1).unwrap();
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
        let old = r.create(1_000).unwrap();
        let fresh = r.create(1_000_000).unwrap();
        let ttl = std::time::Duration::from_secs(10_000);
        assert_eq!(r.expire(1_000_000, ttl).unwrap(), 1);
        assert_eq!(r.by_broadcast_id(&old.broadcast_id), None);
        let new_view = r.rotate_view_id(fresh.key).unwrap().unwrap();
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
    fn corrupt_state_file_is_an_error_not_an_empty_registry() {
        let dir = temp_dir("corrupt");
        fs::write(dir.join(STATE_FILE), "{ not json").unwrap();
        let err = Registry::open(&dir).err().expect("corrupt file must fail");
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}
