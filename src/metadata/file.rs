//! The `file` source: one JSON document (docs/configuration.md, "[metadata.NAME]"), re-read on SIGHUP and when the
//! file changes.
//!
//! A change is seen by the file's status (modification and change times, size,
//! inode), and by its content while that status cannot be trusted: an edit made
//! within the same clock tick as the write before it (file times advance by a tick,
//! a few milliseconds on Linux, a second or two on some file systems) leaves every
//! field as it was, so for a while after the last write the content itself is compared.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use serde::Deserialize;

use super::{BoxFuture, Lookup, Metadata, MetadataSource, SourceError};
use crate::host::{FileStamp, Host};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    #[serde(default)]
    users: HashMap<String, UserEntry>,
    #[serde(default)]
    clients: HashMap<String, ClientEntry>,
}

#[derive(Deserialize)]
struct UserEntry {
    #[serde(default)]
    app_metadata: Metadata,
}

#[derive(Deserialize)]
struct ClientEntry {
    #[serde(default)]
    client_metadata: Metadata,
}

struct Loaded {
    users: HashMap<String, Metadata>,
    clients: HashMap<String, Metadata>,
    /// This content's version, unique in the process: cached entries read from it
    /// carry it, so none read from older content is served once it is replaced.
    origin: u64,
}

/// How long after a write a file's status may still look the same after another
/// one: longer than the coarsest clock tick of common file systems, with room for
/// a little clock skew (network file systems).
const RACY: Duration = Duration::from_secs(3);

/// The file as last read: its status, when the read began, and a hash of its bytes.
struct Seen {
    stamp: Option<FileStamp>,
    read_at: SystemTime,
    hash: u64,
}

impl Seen {
    /// Whether an edit since the read could have left the status unchanged: the
    /// file had been written less than [`RACY`] before the read began.
    fn racy(&self) -> bool {
        match self.stamp.as_ref().and_then(FileStamp::latest) {
            Some(t) => t + RACY > self.read_at,
            None => true,
        }
    }
}

/// Why a metadata file could not be used. Never quotes the file's content.
#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error(
        "{0} is not a valid metadata document (line {1}, column {2}); expected {{\"users\": {{...}}, \"clients\": {{...}}}}"
    )]
    Parse(String, usize, usize),
}

/// Metadata read from a JSON file.
pub struct FileSource {
    path: PathBuf,
    /// Where the file is read from (`app::System`: this machine).
    host: Arc<dyn Host>,
    doc: ArcSwap<Loaded>,
    /// Also serialises re-reads, so two never race to store their content.
    seen: Mutex<Seen>,
}

impl FileSource {
    /// Reads and parses the file.
    pub fn load(path: &Path, host: Arc<dyn Host>) -> Result<FileSource, FileSourceError> {
        let (seen, bytes) = read(&*host, path)?;
        let doc = parse(path, &bytes)?;
        Ok(FileSource { path: path.to_path_buf(), host, doc: ArcSwap::from_pointee(doc), seen: Mutex::new(seen) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file when it changed; true when its content did (and is now in
    /// use). On error the old content stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, FileSourceError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // Gone for a moment (replaced by a rename): keep what we have.
        let Ok(now) = self.host.stat(&self.path) else { return Ok(false) };
        if seen.stamp.as_ref() == Some(&now) && !seen.racy() {
            return Ok(false);
        }
        let (fresh, bytes) = read(&*self.host, &self.path)?;
        if fresh.hash == seen.hash {
            // Touched, or read again while racy: same content, nothing to drop.
            *seen = fresh;
            return Ok(false);
        }
        let doc = parse(&self.path, &bytes)?;
        self.doc.store(Arc::new(doc));
        *seen = fresh;
        Ok(true)
    }

    pub fn counts(&self) -> (usize, usize) {
        let d = self.doc.load();
        (d.users.len(), d.clients.len())
    }
}

/// The file's bytes and how it looked. The time and status are taken before the
/// bytes are read, so a write racing the read at worst makes the next look read again.
fn read(host: &dyn Host, path: &Path) -> Result<(Seen, Vec<u8>), FileSourceError> {
    let read_at = SystemTime::now();
    let stamp = host.stat(path).ok();
    let bytes = host.read(path).map_err(|e| FileSourceError::Read(path.display().to_string(), e))?;
    Ok((Seen { stamp, read_at, hash: hash(&bytes) }, bytes))
}

/// Tells contents apart (not a defence against anyone: the file is the operator's).
fn hash(bytes: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

fn parse(path: &Path, bytes: &[u8]) -> Result<Loaded, FileSourceError> {
    let doc: Doc = serde_json::from_slice(bytes)
        .map_err(|e| FileSourceError::Parse(path.display().to_string(), e.line(), e.column()))?;
    Ok(Loaded {
        users: doc.users.into_iter().map(|(k, v)| (k, v.app_metadata)).collect(),
        clients: doc.clients.into_iter().map(|(k, v)| (k, v.client_metadata)).collect(),
        origin: super::new_origin(),
    })
}

impl MetadataSource for FileSource {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn user<'a>(&'a self, user_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        let found = self.doc.load().users.get(user_id).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn client<'a>(&'a self, client_id: &'a str) -> BoxFuture<'a, Result<Lookup, SourceError>> {
        let found = self.doc.load().clients.get(client_id).cloned();
        Box::pin(async move { Ok(found) })
    }

    fn origin(&self) -> u64 {
        self.doc.load().origin
    }
}

/// The embedded default document of docs/configuration.md, "[metadata.NAME]".
pub const EXAMPLE: &str = r#"{"users":   {"auth0|u1": {"app_metadata": {"roles": ["admin"]}}},
 "clients": {"CLIENT_ID_1": {"client_metadata": {"tenant_key": "k-123"}}}}"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses a document given as text.
    fn from_json(path: &Path, text: &str) -> Result<FileSource, FileSourceError> {
        let doc = parse(path, text.as_bytes())?;
        let seen = Seen { stamp: None, read_at: SystemTime::now(), hash: hash(text.as_bytes()) };
        let host = Arc::new(crate::app::System);
        Ok(FileSource { path: path.to_path_buf(), host, doc: ArcSwap::from_pointee(doc), seen: Mutex::new(seen) })
    }

    #[tokio::test]
    async fn reads_the_spec_example() {
        let s = from_json(Path::new("x.json"), EXAMPLE).unwrap();
        let u = s.user("auth0|u1").await.unwrap().unwrap();
        assert_eq!(u["roles"][0], "admin");
        assert!(s.user("auth0|nobody").await.unwrap().is_none());
        let c = s.client("CLIENT_ID_1").await.unwrap().unwrap();
        assert_eq!(c["tenant_key"], "k-123");
    }

    fn doc(note: &str) -> String {
        format!(r#"{{"users": {{"u1": {{"app_metadata": {{"note": "{note}"}}}}}}}}"#)
    }

    async fn note(s: &FileSource) -> String {
        let u = s.user("u1").await.unwrap().unwrap();
        u["note"].as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn an_edit_that_keeps_size_and_times_is_still_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(&path, doc("aaa")).unwrap();
        let s = FileSource::load(&path, Arc::new(crate::app::System)).unwrap();
        let first = s.origin();
        assert!(!s.reload_if_changed().unwrap(), "nothing changed");
        assert_eq!(s.origin(), first, "re-reading the same content is no new origin");
        // Same size, modification time set back: as an edit within one clock tick.
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, doc("bbb")).unwrap();
        std::fs::File::options().write(true).open(&path).unwrap().set_modified(before).unwrap();
        assert!(s.reload_if_changed().unwrap());
        assert_eq!(note(&s).await, "bbb");
        assert_ne!(s.origin(), first);
        assert!(!s.reload_if_changed().unwrap());
    }

    #[tokio::test]
    async fn a_broken_edit_keeps_the_old_content_and_origin() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.json");
        std::fs::write(&path, doc("aaa")).unwrap();
        let s = FileSource::load(&path, Arc::new(crate::app::System)).unwrap();
        let first = s.origin();
        std::fs::write(&path, "{not json").unwrap();
        assert!(s.reload_if_changed().is_err());
        assert_eq!((note(&s).await, s.origin()), ("aaa".to_string(), first));
        std::fs::write(&path, doc("ccc")).unwrap();
        assert!(s.reload_if_changed().unwrap());
        assert_eq!(note(&s).await, "ccc");
    }

    #[test]
    fn parse_errors_do_not_quote_content() {
        let e = from_json(Path::new("m.json"), r#"{"users": {"u": "secret-value"}}"#).err().unwrap();
        assert!(!e.to_string().contains("secret-value"), "{e}");
    }
}
