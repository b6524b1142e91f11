//! What claimsmith reads from the machine it runs on: files and environment
//! variables, behind one trait.
//!
//! Why a trait: configuration validation, the `file` metadata source, the outbound
//! proxy settings and the file watch all depend on the machine, and each would
//! otherwise call `std::fs` and `std::env` from deep inside domain code, where no
//! test can see what was read and no reader can tell which modules touch the disk.
//! Domain code takes a `&dyn Host`; `app::System` is the one implementation that
//! touches the machine (docs/architecture.md, "Layers"), and a test can hand in its
//! own. `tests/module_graph.rs` fails if `std::fs` or `std::env::var` shows up in a
//! module that should not use them.

use std::io;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Files and environment variables, read on behalf of the domain modules.
pub trait Host: Send + Sync {
    /// The whole content of the file at `path` (symlinks followed).
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;

    /// How the file at `path` looks now, without reading it.
    fn stat(&self, path: &Path) -> io::Result<FileStamp>;

    /// The environment variable `name`, when it is set and UTF-8.
    fn env(&self, name: &str) -> Option<String>;

    /// [`Host::read`] as UTF-8 text.
    fn read_text(&self, path: &Path) -> io::Result<String> {
        String::from_utf8(self.read(path)?).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "not UTF-8 text"))
    }
}

/// A file's status: what tells one version of a file from the next without
/// reading it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileStamp {
    pub modified: Option<SystemTime>,
    /// The change time, `(seconds, nanoseconds)`: moved by every write and by
    /// setting the modification time, which a copy that keeps times (`cp -p`,
    /// `rsync -t`) does.
    pub changed: Option<(i64, i64)>,
    pub len: u64,
    /// `(device, inode)`: a rename over the file gives it a new one.
    pub inode: Option<(u64, u64)>,
}

impl FileStamp {
    /// The later of the file's two times (the change time as wall-clock time).
    pub fn latest(&self) -> Option<SystemTime> {
        let changed = self.changed.and_then(|(s, ns)| {
            let secs = u64::try_from(s).ok()?;
            let nanos = u32::try_from(ns).ok()?;
            SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
        });
        self.modified.max(changed)
    }
}
