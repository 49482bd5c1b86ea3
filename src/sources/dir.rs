//! The directory source: every `.yaml`/`.yml` file below a directory.
//!
//! File events are only a trigger. A burst of events (an editor's write-rename, a
//! `git checkout`, a Kubernetes ConfigMap's `..data` symlink swap) is debounced, then the
//! whole tree is read again and a snapshot is published only when its content changed.
//! Hidden files and directories (`.git`, `..data`, the `.tessera` state directory) are not
//! read as configuration, but symlinks are followed, so a ConfigMap mount reads as the files
//! it shows. A `.tesseraignore` file at the root lists patterns of paths to leave out, like
//! Flux's `.sourceignore`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobSet, GlobSetBuilder};
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::resources::{Problem, Snapshot, SourceFile};

/// Quiet time after the last event before reading: long enough to cover an editor's
/// write-then-rename, short enough that a change shows within a second.
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// Longest wait after the first event of a burst, so a steady stream of events (a large
/// `git pull`) still gets read.
pub const MAX_DELAY: Duration = Duration::from_millis(500);
/// Full re-read even without events: file events can be lost (network file systems,
/// overflowing inotify queues).
pub const RESYNC: Duration = Duration::from_secs(60);
/// Larger files are not configuration; they are refused with a problem.
pub const MAX_FILE_BYTES: u64 = 8 << 20;
/// Depth limit of the walk, which also stops symlink loops that the visited set misses.
const MAX_DEPTH: usize = 32;
/// Name of the ignore file at the root.
pub const IGNORE_FILE: &str = ".tesseraignore";

/// Errors of the directory source.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    #[error("failed to read configuration directory {path}")]
    Root {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to watch configuration directory {path}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },
}

/// A directory of configuration.
#[derive(Clone, Debug)]
pub struct DirSource {
    root: PathBuf,
    /// Left out of reading and of watching (the state directory, when it is inside).
    excluded: Vec<PathBuf>,
}

impl DirSource {
    /// A source reading `root`, leaving out `excluded` paths below it.
    pub fn new(root: impl Into<PathBuf>, excluded: Vec<PathBuf>) -> Result<Self, DirError> {
        let root = root.into();
        let root = root.canonicalize().map_err(|source| DirError::Root {
            path: root.clone(),
            source,
        })?;
        let excluded = excluded
            .into_iter()
            .map(|path| path.canonicalize().unwrap_or(path))
            .collect();
        Ok(Self { root, excluded })
    }

    /// The directory read.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Reads every configuration file now.
    pub fn scan(&self) -> Snapshot {
        let mut files = Vec::new();
        let mut problems = Vec::new();
        let ignore = self.ignore_patterns(&mut problems);
        let mut visited = HashSet::new();
        self.walk(
            &self.root,
            0,
            &ignore,
            &mut visited,
            &mut files,
            &mut problems,
        );
        files.sort_by(|a, b| a.path.cmp(&b.path));
        let mut digest = Sha256::new();
        for file in &files {
            digest.update(file.path.as_bytes());
            digest.update([0]);
            digest.update(file.text.as_bytes());
            digest.update([0]);
        }
        let revision = hex::encode(&digest.finalize()[..8]);
        Snapshot {
            revision,
            files,
            problems,
            root: None,
        }
    }

    /// Watches the directory until `shutdown`, publishing a snapshot on `publish` whenever the
    /// content read changes. The caller publishes the first snapshot (from `scan`).
    pub async fn run(
        self,
        publish: watch::Sender<Snapshot>,
        shutdown: CancellationToken,
    ) -> Result<(), DirError> {
        // Capacity 1: one pending trigger is enough, since a trigger means "read everything".
        let (trigger, mut triggered) = mpsc::channel::<()>(1);
        let excluded = self.excluded.clone();
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                let relevant = match &event {
                    // Reading files makes Access events; taking them as triggers would loop.
                    Ok(event) => {
                        !matches!(event.kind, EventKind::Access(_))
                            && !event
                                .paths
                                .iter()
                                .all(|path| excluded.iter().any(|ex| path.starts_with(ex)))
                    }
                    // An error (such as a queue overflow) may hide changes: read everything.
                    Err(_) => true,
                };
                if relevant {
                    let _ = trigger.try_send(());
                }
            })
            .map_err(|source| DirError::Watch {
                path: self.root.clone(),
                source,
            })?;
        watcher
            .watch(&self.root, RecursiveMode::Recursive)
            .map_err(|source| DirError::Watch {
                path: self.root.clone(),
                source,
            })?;

        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                received = triggered.recv() => if received.is_none() { return Ok(()) },
                () = tokio::time::sleep(RESYNC) => {}
            }
            let deadline = tokio::time::Instant::now() + MAX_DELAY;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    Some(()) = triggered.recv() => continue,
                    () = tokio::time::sleep(DEBOUNCE) => break,
                    () = tokio::time::sleep_until(deadline) => break,
                }
            }
            let source = self.clone();
            let Ok(snapshot) = tokio::task::spawn_blocking(move || source.scan()).await else {
                continue;
            };
            publish.send_if_modified(|current| {
                let changed = current.files != snapshot.files || current.problems != snapshot.problems;
                if changed {
                    tracing::debug!(revision = %snapshot.revision, files = snapshot.files.len(), "configuration changed");
                    *current = snapshot;
                }
                changed
            });
        }
    }

    fn walk(
        &self,
        dir: &Path,
        depth: usize,
        ignore: &GlobSet,
        visited: &mut HashSet<PathBuf>,
        files: &mut Vec<SourceFile>,
        problems: &mut Vec<Problem>,
    ) {
        let real = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
        if depth > MAX_DEPTH || !visited.insert(real) {
            return;
        }
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) => {
                problems.push(Problem::general(format!(
                    "failed to read directory {}: {error}",
                    self.relative(dir)
                )));
                return;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || self.excluded.iter().any(|ex| path.starts_with(ex)) {
                continue;
            }
            let relative = self.relative(&path);
            if ignore.is_match(&relative) {
                continue;
            }
            // Follows symlinks: a ConfigMap mount shows its files as links into `..data`.
            let Ok(metadata) = std::fs::metadata(&path) else {
                continue; // A dangling link, or a file removed while reading.
            };
            if metadata.is_dir() {
                self.walk(&path, depth + 1, ignore, visited, files, problems);
            } else if metadata.is_file() && (name.ends_with(".yaml") || name.ends_with(".yml")) {
                if metadata.len() > MAX_FILE_BYTES {
                    problems.push(Problem::general(format!(
                        "{relative} is {} bytes, more than the {MAX_FILE_BYTES} read as configuration; it was left out",
                        metadata.len()
                    )));
                    continue;
                }
                match std::fs::read(&path) {
                    Ok(bytes) => match String::from_utf8(bytes) {
                        Ok(text) => files.push(SourceFile {
                            path: relative,
                            text,
                        }),
                        Err(_) => problems.push(Problem {
                            file: Some(relative),
                            line: None,
                            object: None,
                            field: None,
                            message: "the file is not UTF-8 text; it was left out".into(),
                        }),
                    },
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => problems.push(Problem {
                        file: Some(relative),
                        line: None,
                        object: None,
                        field: None,
                        message: format!("failed to read the file: {error}"),
                    }),
                }
            }
        }
    }

    /// `path` relative to the root, with `/` separators.
    fn relative(&self, path: &Path) -> String {
        let relative = path.strip_prefix(&self.root).unwrap_or(path);
        relative
            .components()
            .map(|c| c.as_os_str().to_string_lossy())
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Patterns from `.tesseraignore`: one per line, `#` comments; a pattern without `/`
    /// matches a name at any depth, a trailing `/` means "this directory".
    fn ignore_patterns(&self, problems: &mut Vec<Problem>) -> GlobSet {
        let mut builder = GlobSetBuilder::new();
        let path = self.root.join(IGNORE_FILE);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (number, line) in text.lines().enumerate() {
            let pattern = line.trim();
            if pattern.is_empty() || pattern.starts_with('#') {
                continue;
            }
            let pattern = pattern.trim_start_matches('/').trim_end_matches('/');
            let mut add = |p: String| match Glob::new(&p) {
                Ok(glob) => {
                    builder.add(glob);
                }
                Err(error) => problems.push(Problem::at(
                    IGNORE_FILE,
                    u32::try_from(number + 1).unwrap_or(u32::MAX),
                    format!("`{pattern}` is not a valid pattern: {}", error.kind()),
                )),
            };
            if pattern.contains('/') {
                add(pattern.to_owned());
                add(format!("{pattern}/**"));
            } else {
                add(format!("**/{pattern}"));
                add(format!("**/{pattern}/**"));
                add(pattern.to_owned());
                add(format!("{pattern}/**"));
            }
        }
        builder.build().unwrap_or_else(|_| GlobSet::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, path: &str, text: &str) {
        let full = root.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, text).unwrap();
    }

    #[test]
    fn scan_reads_yaml_recursively_and_skips_hidden_ignored_and_excluded_paths() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "a.yaml", "a: 1\n");
        write(root, "sub/b.yml", "b: 1\n");
        write(root, "sub/notes.txt", "not yaml\n");
        write(root, ".git/config.yaml", "hidden\n");
        write(root, ".tessera/status/x.yaml", "state\n");
        write(root, "payload/config.yaml", "package content\n");
        write(root, IGNORE_FILE, "# package content\npayload/\n");
        let source = DirSource::new(root, vec![root.join(".tessera")]).unwrap();
        let snapshot = source.scan();
        let paths: Vec<&str> = snapshot.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, vec!["a.yaml", "sub/b.yml"]);
        assert!(snapshot.problems.is_empty());
    }

    #[test]
    fn the_revision_follows_content() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.yaml", "a: 1\n");
        let source = DirSource::new(dir.path(), vec![]).unwrap();
        let first = source.scan().revision;
        assert_eq!(first, source.scan().revision);
        write(dir.path(), "a.yaml", "a: 2\n");
        assert_ne!(first, source.scan().revision);
    }

    #[cfg(unix)]
    #[test]
    fn scan_follows_a_configmap_style_data_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(root, "..2026_01_01/pkg.yaml", "v: 1\n");
        std::os::unix::fs::symlink("..2026_01_01", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/pkg.yaml", root.join("pkg.yaml")).unwrap();
        let source = DirSource::new(root, vec![]).unwrap();
        let snapshot = source.scan();
        assert_eq!(snapshot.files.len(), 1, "{:?}", snapshot.files);
        assert_eq!(snapshot.files[0].path, "pkg.yaml");
        assert_eq!(snapshot.files[0].text, "v: 1\n");
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_loop_ends() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "d/a.yaml", "a: 1\n");
        std::os::unix::fs::symlink("..", dir.path().join("d/up")).unwrap();
        let snapshot = DirSource::new(dir.path(), vec![]).unwrap().scan();
        assert_eq!(snapshot.files.len(), 1);
    }
}
