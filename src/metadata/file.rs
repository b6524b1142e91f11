//! The `file` source: one JSON document (docs/configuration.md, "[metadata.NAME]"), re-read on SIGHUP and when its
//! modification time changes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Deserialize;

use super::{BoxFuture, Lookup, Metadata, MetadataSource, SourceError};

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
    modified: Option<SystemTime>,
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
    doc: ArcSwap<Loaded>,
}

impl FileSource {
    /// Reads and parses the file.
    pub fn load(path: &Path) -> Result<FileSource, FileSourceError> {
        let doc = read(path)?;
        Ok(FileSource { path: path.to_path_buf(), doc: ArcSwap::from_pointee(doc) })
    }

    /// Parses a document given as text (the demo embeds its own).
    pub fn from_json(path: &Path, text: &str) -> Result<FileSource, FileSourceError> {
        let doc = parse(path, text.as_bytes(), None)?;
        Ok(FileSource { path: path.to_path_buf(), doc: ArcSwap::from_pointee(doc) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file. On error the old content stays in use.
    pub fn reload(&self) -> Result<(), FileSourceError> {
        let doc = read(&self.path)?;
        self.doc.store(Arc::new(doc));
        Ok(())
    }

    /// Re-reads the file when its modification time changed; true when it did.
    pub fn reload_if_changed(&self) -> Result<bool, FileSourceError> {
        let now = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
        if now.is_some() && now != self.doc.load().modified {
            self.reload()?;
            return Ok(true);
        }
        Ok(false)
    }

    pub fn counts(&self) -> (usize, usize) {
        let d = self.doc.load();
        (d.users.len(), d.clients.len())
    }
}

fn read(path: &Path) -> Result<Loaded, FileSourceError> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let bytes = std::fs::read(path).map_err(|e| FileSourceError::Read(path.display().to_string(), e))?;
    parse(path, &bytes, modified)
}

fn parse(path: &Path, bytes: &[u8], modified: Option<SystemTime>) -> Result<Loaded, FileSourceError> {
    let doc: Doc = serde_json::from_slice(bytes)
        .map_err(|e| FileSourceError::Parse(path.display().to_string(), e.line(), e.column()))?;
    Ok(Loaded {
        users: doc.users.into_iter().map(|(k, v)| (k, v.app_metadata)).collect(),
        clients: doc.clients.into_iter().map(|(k, v)| (k, v.client_metadata)).collect(),
        modified,
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
}

/// The embedded default document of docs/configuration.md, "[metadata.NAME]".
pub const EXAMPLE: &str = r#"{"users":   {"auth0|u1": {"app_metadata": {"roles": ["admin"]}}},
 "clients": {"CLIENT_ID_1": {"client_metadata": {"tenant_key": "k-123"}}}}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_the_spec_example() {
        let s = FileSource::from_json(Path::new("x.json"), EXAMPLE).unwrap();
        let u = s.user("auth0|u1").await.unwrap().unwrap();
        assert_eq!(u["roles"][0], "admin");
        assert!(s.user("auth0|nobody").await.unwrap().is_none());
        let c = s.client("CLIENT_ID_1").await.unwrap().unwrap();
        assert_eq!(c["tenant_key"], "k-123");
    }

    #[test]
    fn parse_errors_do_not_quote_content() {
        let e = FileSource::from_json(Path::new("m.json"), r#"{"users": {"u": "secret-value"}}"#).err().unwrap();
        assert!(!e.to_string().contains("secret-value"), "{e}");
    }
}
