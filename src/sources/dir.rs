//! The directory source: every `.yaml`/`.yml` file below a directory.
//!
//! File events are only a trigger. A burst of events (an editor's write-rename, a
//! `git checkout`, a Kubernetes ConfigMap's `..data` symlink swap) is debounced, then the
//! whole tree is read again and a snapshot is published only when its content changed.
//! Hidden files and directories (`.git`, `..data`, the `.tessera` state directory) are not
//! read as configuration, but symlinks are followed, so a ConfigMap mount reads as the files
//! it shows. A `.tesseraignore` file at the root lists patterns of paths to leave out, like
//! Flux's `.sourceignore`, with git's rules (`!` re-includes, a leading `/` anchors, a
//! trailing `/` means a directory, `**` spans directories).
//!
//! The inputs of every Package (its content directory or archive, or its download address,
//! as [`super::inputs`] decides) are part of what is read: their fingerprints go into the
//! revision, so a content-only edit publishes a new snapshot as quickly as a YAML edit, and
//! content outside the directory is watched too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use notify::{EventKind, RecursiveMode, Watcher};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::inputs::{self, Input};
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

    /// Reads every configuration file, and fingerprints the inputs of its packages, now.
    pub fn scan(&self) -> Snapshot {
        self.read().0
    }

    /// Reads everything now: the snapshot, and the package inputs outside the directory,
    /// which need watches of their own.
    fn read(&self) -> (Snapshot, Vec<Input>) {
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
        let mut outside = Vec::new();
        for (input, fingerprint) in inputs::of_files(&self.root, &files) {
            digest.update(format!("{input:?}\0{fingerprint}\0").as_bytes());
            let real = input.path().and_then(|p| p.canonicalize().ok());
            if real.is_some_and(|p| !p.starts_with(&self.root)) {
                outside.push(input);
            }
        }
        let revision = hex::encode(&digest.finalize()[..8]);
        let snapshot = Snapshot {
            revision,
            files,
            problems,
            root: None,
        };
        (snapshot, outside)
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
        // Package content outside the directory: watched as well, and kept in step with
        // what the configuration names after each read.
        let mut outside = Watched::default();
        let source = self.clone();
        if let Ok((_, found)) = tokio::task::spawn_blocking(move || source.read()).await {
            outside.update(&mut watcher, &found);
        }

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
            let Ok((snapshot, found)) = tokio::task::spawn_blocking(move || source.read()).await
            else {
                continue;
            };
            outside.update(&mut watcher, &found);
            publish.send_if_modified(|current| {
                // The revision holds the fingerprints of package content: a content-only
                // edit changes it and nothing else.
                let changed = current.revision != snapshot.revision
                    || current.files != snapshot.files
                    || current.problems != snapshot.problems;
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
        ignore: &Gitignore,
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
            // Follows symlinks: a ConfigMap mount shows its files as links into `..data`.
            let Ok(metadata) = std::fs::metadata(&path) else {
                continue; // A dangling link, or a file removed while reading.
            };
            // Checked level by level, as git does: a directory left out is not entered, so
            // nothing below it can be re-included.
            if ignore.matched(&path, metadata.is_dir()).is_ignore() {
                continue;
            }
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

    /// Patterns from `.tesseraignore`, with gitignore's rules; a line that is not a valid
    /// pattern is reported and left out.
    fn ignore_patterns(&self, problems: &mut Vec<Problem>) -> Gitignore {
        let path = self.root.join(IGNORE_FILE);
        let mut builder = GitignoreBuilder::new(&self.root);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (number, line) in text.lines().enumerate() {
            if let Err(error) = builder.add_line(Some(path.clone()), line) {
                problems.push(Problem::at(
                    IGNORE_FILE,
                    u32::try_from(number + 1).unwrap_or(u32::MAX),
                    format!("`{}` is not a valid pattern: {error}", line.trim()),
                ));
            }
        }
        builder.build().unwrap_or_else(|_| Gitignore::empty())
    }
}

/// Paths watched besides the directory itself.
#[derive(Default)]
struct Watched(HashSet<(PathBuf, bool)>);

impl Watched {
    /// Watches what `inputs` name and stops watching what they no longer do: a content
    /// directory recursively, an archive through its folder (editors replace files by
    /// renaming, which a watch on the file itself would lose).
    fn update(&mut self, watcher: &mut impl Watcher, inputs: &[Input]) {
        let wanted: HashSet<(PathBuf, bool)> = inputs
            .iter()
            .filter_map(|input| match input {
                Input::Directory(path) => Some((path.clone(), true)),
                Input::Archive(path) => path.parent().map(|p| (p.to_path_buf(), false)),
                Input::Url { .. } => None,
            })
            .collect();
        for (path, recursive) in self.0.difference(&wanted) {
            let _ = watcher.unwatch(path);
            tracing::debug!(path = %path.display(), recursive, "no longer watching package content");
        }
        self.0.retain(|w| wanted.contains(w));
        for (path, recursive) in wanted {
            if self.0.contains(&(path.clone(), recursive)) {
                continue;
            }
            let mode = if recursive {
                RecursiveMode::Recursive
            } else {
                RecursiveMode::NonRecursive
            };
            match watcher.watch(&path, mode) {
                Ok(()) => {
                    self.0.insert((path, recursive));
                }
                // Read again at the next event or resync, and watched then.
                Err(error) => {
                    tracing::debug!(path = %path.display(), %error, "failed to watch package content")
                }
            }
        }
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

    #[test]
    fn a_content_only_edit_changes_the_revision() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(
            root,
            "packages/hello.yaml",
            "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: hello\nspec:\n  os: linux\n  content:\n    directory: hello\n  action:\n    launch:\n      command: hello.sh\n",
        );
        write(root, "packages/hello/hello.sh", "echo one\n");
        let source = DirSource::new(root, vec![]).unwrap();
        let first = source.scan();
        write(root, "packages/hello/hello.sh", "echo two, longer\n");
        let second = source.scan();
        assert_eq!(first.files, second.files, "no YAML changed");
        assert_ne!(first.revision, second.revision);
    }

    #[tokio::test]
    async fn content_outside_the_directory_is_watched() {
        // Well under the resync: only a watch on the content explains a publish.
        const BOUND: Duration = Duration::from_secs(10);
        let config = tempfile::tempdir().unwrap();
        let content = tempfile::tempdir().unwrap();
        write(content.path(), "run.sh", "0\n");
        write(
            config.path(),
            "p.yaml",
            &format!(
                "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: p\nspec:\n  os: linux\n  content:\n    directory: {}\n  action:\n    execute:\n      command: sh run.sh\n",
                content.path().display()
            ),
        );
        let source = DirSource::new(config.path(), vec![]).unwrap();
        let (publish, mut published) = watch::channel(source.scan());
        let shutdown = CancellationToken::new();
        let _stop = shutdown.clone().drop_guard();
        tokio::spawn(source.run(publish, shutdown));
        let started = tokio::time::Instant::now();
        // Edited until noticed: the watches are set up once `run` has read.
        for round in 1.. {
            write(content.path(), "run.sh", &format!("{round}\n"));
            if tokio::time::timeout(Duration::from_millis(200), published.changed())
                .await
                .is_ok()
            {
                break;
            }
            assert!(started.elapsed() < BOUND, "no snapshot after {BOUND:?}");
        }
    }

    /// What git leaves untracked and not ignored, with `patterns` as `.gitignore`: the
    /// reference `.tesseraignore` must agree with.
    fn git_reads(root: &Path, patterns: &str) -> Vec<String> {
        let git = |args: &[&str]| {
            let output = std::process::Command::new("git")
                .args(args)
                .current_dir(root)
                .env("GIT_CONFIG_GLOBAL", "/dev/null")
                .env("GIT_CONFIG_NOSYSTEM", "1")
                .output()
                .expect("git runs");
            assert!(output.status.success(), "git {args:?}: {output:?}");
            String::from_utf8(output.stdout).unwrap()
        };
        git(&["init", "--quiet"]);
        std::fs::write(root.join(".gitignore"), patterns).unwrap();
        let listed = git(&["ls-files", "--others", "--exclude-standard"]);
        std::fs::remove_file(root.join(".gitignore")).unwrap();
        let mut found: Vec<String> = listed
            .lines()
            .filter(|l| l.ends_with(".yaml"))
            .map(str::to_owned)
            .collect();
        found.sort();
        found
    }

    #[test]
    fn tesseraignore_reads_what_git_reads_with_the_same_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for path in [
            "top.yaml",
            "sub/top.yaml",
            "content/keep.yaml",
            "content/drop.yaml",
            "build/x.yaml",
            "sub/build/y.yaml",
            "deep/a/b/scratch.yaml",
            "scratch.yaml",
            "docs/guide.yaml",
            "docs/keep/also.yaml",
            "notes.tmp.yaml",
        ] {
            write(root, path, "a: 1\n");
        }
        let patterns = "# comment\n/top.yaml\ncontent/*\n!content/keep.yaml\nbuild/\n**/a/**/scratch.yaml\ndocs/**\n!docs/keep/\n*.tmp.yaml\n";
        let expected = git_reads(root, patterns);
        assert!(
            expected.contains(&"content/keep.yaml".to_owned()),
            "{expected:?}"
        );
        write(root, IGNORE_FILE, patterns);
        let snapshot = DirSource::new(root, vec![]).unwrap().scan();
        let read: Vec<String> = snapshot.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(read, expected);
        assert!(snapshot.problems.is_empty(), "{:?}", snapshot.problems);
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
