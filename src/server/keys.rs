//! Tenant API keys: who a client is when `plugin.tenants = "keys"`.
//!
//! A key is `dnd-` followed by 64 lowercase hex digits: 32 bytes from the operating
//! system's random source. `POST /admin/keys` creates one for a tenant and shows it once;
//! the server keeps only the SHA-256 of the key's text (hex), with the tenant, the creation
//! time (Unix seconds) and the limit, in the adapter store:
//!
//! ```text
//! STORE/.keys.json
//! {"keys": [{"sha256": "3f2a…", "tenant": "acme", "created": 1767225600, "rpm": 60}]}
//! ```
//!
//! The file is replaced whole on every change ([`fsio::write_atomic`]) and read once, at
//! start; one that does not parse stops the start, since serving with fewer keys than the
//! operator made would lock tenants out without a word. A key's id, all the admin API ever
//! shows of it, is the first 12 hex digits of its hash.
//!
//! A request presents its key as `Authorization: Bearer KEY`; the SHA-256 of what it
//! presents is looked up in memory, so the lookup's timing can at most say something about
//! hashes, which a client can neither steer nor invert, never about a key. A revocation takes the key out of
//! memory before it rewrites the file: from the moment the admin call returns (even one
//! that failed to write the file) the key is refused.
//!
//! Limit: `rpm`, requests per minute per key, is a token bucket of `rpm` tokens refilled at
//! `rpm / 60` per second: a burst of up to one minute's requests, then the steady rate. A
//! request finding less than one token is refused with the seconds until it would find
//! one (`Retry-After`). Every request made with the key counts, whatever its route. A
//! bucket is two numbers created and dropped with its key, so the limiter's memory grows
//! with the keys the operator makes and with nothing a client sends.
//!
//! Which task a keyed request reaches is the tagging layer's rule
//! ([`super::tagging::keyed_task_id`]): its key's tenant, always.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use axum::http::{header, HeaderMap, StatusCode};
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::tagging::validate_task_id;
use crate::adapters::store::now_secs;
use crate::format::fsio;

/// The keys file in the adapter store (a name starting with `.`: the store's own, never a
/// task's).
pub const KEYS_FILE: &str = ".keys.json";
/// What every key starts with.
pub const KEY_PREFIX: &str = "dnd-";
/// Hex digits of a key's hash that make its id (48 bits).
const ID_LEN: usize = 12;

/// A key as the file holds it: never the key itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredKey {
    sha256: String,
    tenant: String,
    created: u64,
    rpm: u32,
}

impl StoredKey {
    fn info(&self) -> KeyInfo {
        KeyInfo {
            id: self.sha256[..ID_LEN].to_string(),
            tenant: self.tenant.clone(),
            created: self.created,
            rpm: self.rpm,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct KeysFile {
    keys: Vec<StoredKey>,
}

/// A key as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyInfo {
    /// The first 12 hex digits of the key's SHA-256.
    pub id: String,
    pub tenant: String,
    /// Unix seconds.
    pub created: u64,
    /// Requests per minute at most.
    pub rpm: u32,
}

/// A new key: the key itself, shown this once, and its entry.
#[derive(Debug, Clone, Serialize)]
pub struct NewKey {
    pub key: String,
    #[serde(flatten)]
    pub info: KeyInfo,
}

struct Entry {
    key: StoredKey,
    bucket: Mutex<Bucket>,
}

impl Entry {
    fn new(key: StoredKey, now: Instant) -> Self {
        let bucket = Mutex::new(Bucket::full(key.rpm, now));
        Self { key, bucket }
    }
}

/// The API keys of a store (see the module doc).
pub struct KeyStore {
    path: PathBuf,
    /// By the SHA-256 (hex) of the key.
    keys: RwLock<HashMap<String, Entry>>,
    /// Held by a change from reading the keys to rewriting the file, so that changes apply
    /// one at a time and the file never misses one.
    writing: Mutex<()>,
}

impl KeyStore {
    /// The keys in the file at `path` (none when it does not exist).
    pub fn open(path: &Path) -> Result<Self> {
        let file: KeysFile = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| {
                format!(
                    "API keys file {} does not parse; repair it (deleting it revokes every key)",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => KeysFile::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let now = Instant::now();
        let mut keys = HashMap::new();
        for key in file.keys {
            check_stored(&key).with_context(|| format!("API keys file {}", path.display()))?;
            keys.insert(key.sha256.clone(), Entry::new(key, now));
        }
        Ok(Self {
            path: path.to_path_buf(),
            keys: RwLock::new(keys),
            writing: Mutex::new(()),
        })
    }

    /// Makes a key for `tenant` (a valid task id) allowed `rpm` requests per minute (at
    /// least 1), written to the file before it is returned.
    pub fn create(&self, tenant: &str, rpm: u32) -> Result<NewKey> {
        if rpm == 0 {
            bail!("rpm must be at least 1");
        }
        let _writing = lock(&self.writing);
        let (key, sha256) = loop {
            let key = new_key()?;
            let sha256 = hash(&key);
            // Ids must name one key: draw again on the (2^-48) chance of a shared one.
            let id = &sha256[..ID_LEN];
            if !self.read().keys().any(|h| h.starts_with(id)) {
                break (key, sha256);
            }
        };
        let stored = StoredKey {
            sha256: sha256.clone(),
            tenant: tenant.to_string(),
            created: now_secs(),
            rpm,
        };
        let mut all = self.stored();
        all.push(stored.clone());
        self.save(all)?;
        let info = stored.info();
        self.write()
            .insert(sha256, Entry::new(stored, Instant::now()));
        Ok(NewKey { key, info })
    }

    /// Revokes the key with id `id`: `None` when there is none. The key is refused from
    /// the start of this call; an error means the file still holds it (a restart would
    /// accept it again), so the caller should retry.
    pub fn revoke(&self, id: &str) -> Result<Option<KeyInfo>> {
        let _writing = lock(&self.writing);
        let mut keys = self.write();
        let found = keys.keys().find(|h| h[..ID_LEN] == *id).cloned();
        let removed = found.and_then(|h| keys.remove(&h));
        drop(keys);
        let Some(removed) = removed else {
            return Ok(None);
        };
        self.save(self.stored()).with_context(|| {
            format!(
                "key {id} is refused until the server restarts, but the keys file still holds it"
            )
        })?;
        Ok(Some(removed.key.info()))
    }

    /// Every key, by tenant then age.
    pub fn list(&self) -> Vec<KeyInfo> {
        let mut infos: Vec<KeyInfo> = self.read().values().map(|e| e.key.info()).collect();
        infos.sort_by(|a, b| (&a.tenant, a.created, &a.id).cmp(&(&b.tenant, b.created, &b.id)));
        infos
    }

    /// The tenant of the key the request presents, counting the request against the key's
    /// limit at `now`: 401 `invalid_api_key` without a known key, 429 `rate_limit_exceeded`
    /// with `Retry-After` past its limit.
    pub fn admit(&self, headers: &HeaderMap, now: Instant) -> Result<String, ApiError> {
        let unauthorized = |message: &str| {
            ApiError::new(StatusCode::UNAUTHORIZED, message).with_code("invalid_api_key")
        };
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                unauthorized(
                    "You didn't provide an API key. You need to provide your API key in an \
                     Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                )
            })?;
        let keys = self.read();
        let entry = keys.get(&hash(presented)).ok_or_else(|| {
            unauthorized(
                "Incorrect API key provided. An administrator makes keys with POST /admin/keys.",
            )
        })?;
        let rpm = entry.key.rpm;
        if let Err(wait) = lock(&entry.bucket).take(rpm, now) {
            let secs = (wait.as_secs_f64().ceil() as u64).max(1);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "Rate limit reached for API key {} on requests per min (RPM): Limit {rpm}. \
                     Please try again in {secs}s.",
                    &entry.key.sha256[..ID_LEN]
                ),
            )
            .with_code("rate_limit_exceeded")
            .with_retry_after(secs));
        }
        Ok(entry.key.tenant.clone())
    }

    /// The keys as the file holds them, oldest first.
    fn stored(&self) -> Vec<StoredKey> {
        let mut all: Vec<StoredKey> = self.read().values().map(|e| e.key.clone()).collect();
        all.sort_by(|a, b| (a.created, &a.sha256).cmp(&(b.created, &b.sha256)));
        all
    }

    fn save(&self, keys: Vec<StoredKey>) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(&KeysFile { keys })?;
        fsio::write_atomic(&self.path, &bytes)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.keys.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.keys.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A fresh key (see the module doc).
fn new_key() -> Result<String> {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| anyhow!("the system's random source failed: {e}"))?;
    Ok(format!("{KEY_PREFIX}{}", hex::encode(bytes)))
}

/// The SHA-256 of a key's text, in lowercase hex.
fn hash(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// What a hand-edited file could get wrong: a hash that is not one, a tenant that is not a
/// task id (it becomes a store path), a zero limit.
fn check_stored(key: &StoredKey) -> Result<()> {
    if key.sha256.len() != 64
        || !key
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        bail!("{:?} is not a SHA-256 in lowercase hex", key.sha256);
    }
    if let Err(e) = validate_task_id(&key.tenant) {
        bail!("tenant {:?}: {}", key.tenant, e.message);
    }
    if key.rpm == 0 {
        bail!("key {} has rpm 0", &key.sha256[..ID_LEN]);
    }
    Ok(())
}

/// A token bucket: `tokens` left at `at`.
#[derive(Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(rpm: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(rpm),
            at: now,
        }
    }

    /// Takes a token for a request at `now`, or says how long until there is one.
    fn take(&mut self, rpm: u32, now: Instant) -> Result<(), Duration> {
        let cap = f64::from(rpm.max(1));
        let per_second = cap / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(cap);
        self.at = self.at.max(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_second))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn bearer(key: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = HeaderValue::from_str(&format!("Bearer {key}")).unwrap();
        h.insert(header::AUTHORIZATION, v);
        h
    }

    #[test]
    fn keys_are_random_and_stored_as_hashes_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEYS_FILE);
        let keys = KeyStore::open(&path).unwrap();
        assert!(keys.list().is_empty(), "no file: no keys");
        let a = keys.create("acme", 60).unwrap();
        let b = keys.create("acme", 60).unwrap();
        for k in [&a.key, &b.key] {
            assert!(
                k.starts_with(KEY_PREFIX) && k.len() == KEY_PREFIX.len() + 64,
                "{k}"
            );
        }
        assert_ne!(a.key, b.key);
        assert_eq!(a.info.id, hash(&a.key)[..ID_LEN]);

        let text = std::fs::read_to_string(&path).unwrap();
        for k in [&a.key, &b.key] {
            assert!(
                !text.contains(&k[KEY_PREFIX.len()..]),
                "plaintext on disk: {text}"
            );
            assert!(text.contains(&hash(k)), "{text}");
        }
        let listed = serde_json::to_string(&keys.list()).unwrap();
        assert!(!listed.contains(&a.key[KEY_PREFIX.len()..]), "{listed}");
        assert!(
            !listed.contains(&hash(&a.key)),
            "the list shows the id only: {listed}"
        );

        // Reopened (a restart): the same keys, the same tenant.
        let reopened = KeyStore::open(&path).unwrap();
        assert_eq!(reopened.list(), keys.list());
        let t = reopened.admit(&bearer(&a.key), Instant::now()).unwrap();
        assert_eq!(t, "acme");
    }

    #[test]
    fn a_revoked_key_is_refused_at_once_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEYS_FILE);
        let keys = KeyStore::open(&path).unwrap();
        let a = keys.create("acme", 60).unwrap();
        let b = keys.create("globex", 60).unwrap();
        assert_eq!(keys.revoke(&a.info.id).unwrap(), Some(a.info.clone()));
        let e = keys.admit(&bearer(&a.key), Instant::now()).unwrap_err();
        assert_eq!(
            (e.status, e.code),
            (StatusCode::UNAUTHORIZED, Some("invalid_api_key"))
        );
        assert_eq!(keys.revoke(&a.info.id).unwrap(), None, "already gone");
        assert_eq!(keys.revoke("nonsense").unwrap(), None);

        let reopened = KeyStore::open(&path).unwrap();
        assert!(reopened.admit(&bearer(&a.key), Instant::now()).is_err());
        assert_eq!(
            reopened.admit(&bearer(&b.key), Instant::now()).unwrap(),
            "globex"
        );
        assert_eq!(reopened.list(), vec![b.info]);
    }

    #[test]
    fn a_missing_or_wrong_key_is_401_invalid_api_key() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(&dir.path().join(KEYS_FILE)).unwrap();
        let good = keys.create("acme", 60).unwrap().key;
        let mut cases = vec![HeaderMap::new(), bearer(""), bearer(&format!("{good}x"))];
        cases.push(bearer(&good[..good.len() - 1]));
        let mut basic = HeaderMap::new();
        basic.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {good}")).unwrap(),
        );
        cases.push(basic);
        for h in &cases {
            let e = keys.admit(h, Instant::now()).unwrap_err();
            assert_eq!(e.status, StatusCode::UNAUTHORIZED, "{h:?}");
            assert_eq!(e.code, Some("invalid_api_key"), "{h:?}");
            assert_eq!(e.kind(), "authentication_error");
        }
        assert!(keys.admit(&bearer(&good), Instant::now()).is_ok());
    }

    #[test]
    fn the_rate_limit_refills_and_says_when() {
        let dir = tempfile::tempdir().unwrap();
        let keys = KeyStore::open(&dir.path().join(KEYS_FILE)).unwrap();
        let slow = keys.create("acme", 2).unwrap().key;
        let other = keys.create("acme", 2).unwrap().key;
        let t0 = Instant::now();
        assert!(keys.admit(&bearer(&slow), t0).is_ok());
        assert!(keys.admit(&bearer(&slow), t0).is_ok());
        let e = keys.admit(&bearer(&slow), t0).unwrap_err();
        assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code, Some("rate_limit_exceeded"));
        assert!(
            matches!(e.retry_after, Some(29..=30)),
            "{:?}",
            e.retry_after
        );
        assert!(
            keys.admit(&bearer(&other), t0).is_ok(),
            "each key has its own bucket"
        );
        // 2 per minute: one more every 30 s, never more than 2 saved up.
        assert!(keys
            .admit(&bearer(&slow), t0 + Duration::from_secs(29))
            .is_err());
        assert!(keys
            .admit(&bearer(&slow), t0 + Duration::from_secs(31))
            .is_ok());
        let later = t0 + Duration::from_secs(3600);
        assert!(keys.admit(&bearer(&slow), later).is_ok());
        assert!(keys.admit(&bearer(&slow), later).is_ok());
        assert!(keys.admit(&bearer(&slow), later).is_err());
        assert!(
            keys.create("acme", 0).is_err(),
            "rpm 0 would refuse every request"
        );
    }

    #[test]
    fn a_bad_keys_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEYS_FILE);
        std::fs::write(&path, b"{\"keys\": [").unwrap();
        let e = format!("{:#}", KeyStore::open(&path).err().unwrap());
        assert!(e.contains(&path.display().to_string()), "{e}");
        let bad = |tenant: &str, sha: &str| {
            let key = serde_json::json!({"sha256": sha, "tenant": tenant, "created": 0, "rpm": 1});
            let v = serde_json::json!({ "keys": [key] });
            std::fs::write(&path, v.to_string()).unwrap();
            KeyStore::open(&path).is_err()
        };
        let sha = hash("dnd-x");
        assert!(!bad("acme", sha.as_str()), "a good entry opens");
        assert!(bad("../etc", sha.as_str()));
        assert!(bad("acme", "plaintext-key"));
        assert!(bad("acme", sha.to_uppercase().as_str()));
    }
}
