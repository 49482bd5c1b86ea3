//! The inputs of a package build: which directory, archive or download a Package is built
//! from, a cheap fingerprint of them, and the checks of them that need only the disk.
//!
//! One place decides this for everyone: the directory and git sources fold the fingerprints
//! into their snapshot's revision (so a content-only edit is a new snapshot and a pass, like
//! a YAML edit), reconcile compares them with what it last built (so it rebuilds exactly
//! then), `tessera plan` builds through reconcile, and `tessera validate` runs [`check`].

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::resources::package::PackageSpec;
use crate::resources::parse::parse_file;
use crate::resources::{Resource, SourceFile};

/// Why the inputs of a build could not be read. Each message names the path; the I/O error
/// underneath is the source.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("failed to read content directory {path}")]
    ContentDirectory {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("content directory {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("{path} is a symbolic link: package content must be plain files")]
    Symlink { path: PathBuf },
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where a package's files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A directory, archived deterministically.
    Directory(PathBuf),
    /// A ready-made archive, served as it is.
    Archive(PathBuf),
    /// Downloaded once, kept by its digest.
    Url { url: String, sha256: String },
}

/// The input of a package built from `spec`, declared in `file` (relative to `root`; `None`
/// when the object has no file, as in Kubernetes): relative paths resolve from the
/// declaring file's directory. `None` for a package without content.
pub fn of(spec: &PackageSpec, root: &Path, file: Option<&str>) -> Option<Input> {
    let base = file
        .and_then(|file| root.join(file).parent().map(Path::to_path_buf))
        .unwrap_or_else(|| root.to_path_buf());
    let content = spec.content.as_ref()?;
    content
        .directory
        .as_ref()
        .map(|d| Input::Directory(base.join(d)))
        .or_else(|| {
            content
                .archive
                .as_ref()
                .map(|a| Input::Archive(base.join(a)))
        })
        .or_else(|| {
            content.url.as_ref().map(|u| Input::Url {
                url: u.clone(),
                sha256: content.sha256.clone().unwrap_or_default(),
            })
        })
}

impl Input {
    /// A digest of what the content is made of, cheap to compute: paths, sizes, times and
    /// modes of every file (an archive: its own; a download: its address and digest).
    pub fn fingerprint(&self) -> Result<String, InputError> {
        let mut digest = Sha256::new();
        match self {
            Self::Url { url, sha256 } => {
                // The digest names the content: nothing else to look at.
                digest.update(format!("{url}\n{}", sha256.to_ascii_lowercase()));
            }
            Self::Archive(path) => {
                let meta = std::fs::metadata(path).map_err(|source| InputError::Read {
                    path: path.clone(),
                    source,
                })?;
                digest.update(format!(
                    "{}:{}:{:?}",
                    path.display(),
                    meta.len(),
                    meta.modified().ok()
                ));
            }
            Self::Directory(path) => {
                for entry in walk(path)? {
                    let meta =
                        std::fs::metadata(&entry.path).map_err(|source| InputError::Read {
                            path: entry.path.clone(),
                            source,
                        })?;
                    digest.update(format!(
                        "{}:{}:{:?}:{}\n",
                        entry.name,
                        meta.len(),
                        meta.modified().ok(),
                        entry.mode
                    ));
                }
            }
        }
        Ok(hex::encode(digest.finalize()))
    }

    /// The path to watch for changes, if the input is on disk.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Self::Directory(path) | Self::Archive(path) => Some(path),
            Self::Url { .. } => None,
        }
    }
}

/// The inputs of every Package declared in `files` (read below `root`), with their
/// fingerprints: what a source folds into its revision. An input that cannot be read
/// counts by its error, so its appearance later is a change too. Documents that do not
/// parse are left out here; validation reports them.
pub fn of_files(root: &Path, files: &[SourceFile]) -> Vec<(Input, String)> {
    let mut found = Vec::new();
    for file in files {
        for object in parse_file(&file.path, &file.text).objects {
            let Resource::Package(package) = &object.resource else {
                continue;
            };
            if let Some(input) = of(&package.spec, root, Some(&file.path)) {
                let fingerprint = input
                    .fingerprint()
                    .unwrap_or_else(|error| format!("unreadable: {}", chain(&error)));
                found.push((input, fingerprint));
            }
        }
    }
    found
}

/// Why a command launched from `input` would fail on every agent, if it would: agents run
/// `./<first word>` inside the unpacked content, so it must be a file of a directory input.
pub fn launch_problem(command: &str, input: &Input) -> Result<Option<String>, InputError> {
    let Input::Directory(dir) = input else {
        return Ok(None);
    };
    let program = command.split_whitespace().next().unwrap_or_default();
    if walk(dir)?.iter().any(|e| !e.directory && e.name == program) {
        return Ok(None);
    }
    Ok(Some(format!(
        "agents run {program:?} from the package content, but {} has no such file (use execute for a command such as `sh script.sh`)",
        dir.display()
    )))
}

/// Every problem the build of `spec` would meet on disk, without building or downloading:
/// content present and readable, a launched file present, an archive's digest, a download
/// address that can be fetched. As (field path, reason).
pub fn check(spec: &PackageSpec, root: &Path, file: Option<&str>) -> Vec<(String, String)> {
    let mut found = Vec::new();
    let Some(input) = of(spec, root, file) else {
        return found;
    };
    match &input {
        Input::Directory(_) => {
            if let Err(error) = input.fingerprint() {
                found.push(("spec.content.directory".to_owned(), chain(&error)));
            } else if let Some(launch) = &spec.action.launch {
                match launch_problem(&launch.command, &input) {
                    Ok(Some(reason)) => found.push(("spec.action.launch.command".into(), reason)),
                    Ok(None) => {}
                    Err(error) => found.push(("spec.content.directory".into(), chain(&error))),
                }
            }
        }
        Input::Archive(path) => match std::fs::read(path) {
            Err(source) => found.push((
                "spec.content.archive".into(),
                chain(&InputError::Read {
                    path: path.clone(),
                    source,
                }),
            )),
            Ok(bytes) => {
                let sha = hex::encode(Sha256::digest(bytes));
                if let Some(expected) = spec.content.as_ref().and_then(|c| c.sha256.as_ref())
                    && !expected.eq_ignore_ascii_case(&sha)
                {
                    found.push((
                        "spec.content.sha256".into(),
                        format!(
                            "the archive's SHA-256 is {sha}, but spec.content.sha256 says {expected}"
                        ),
                    ));
                }
            }
        },
        Input::Url { url, .. } => {
            if let Some(reason) = url_problem(url) {
                found.push(("spec.content.url".into(), reason));
            }
        }
    }
    found
}

/// Why `url` cannot be downloaded from, judged by its shape alone: a scheme the fetcher
/// speaks and a host, no spaces.
fn url_problem(url: &str) -> Option<String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    if host.is_empty() {
        return Some(format!("`{url}` names no host"));
    }
    if let Some((_, port)) = authority.rsplit_once(':')
        && !authority.ends_with(']')
        && port.parse::<u16>().is_err()
    {
        return Some(format!("`{url}` has an invalid port `{port}`"));
    }
    if url.chars().any(char::is_whitespace) {
        return Some(format!(
            "`{url}` contains a space: write it percent-encoded (%20)"
        ));
    }
    None
}

/// The message of `error` with every cause, once each.
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// One entry of a content directory, in archive order.
pub struct Entry {
    /// Path inside the archive, `/`-separated.
    pub name: String,
    pub path: PathBuf,
    pub directory: bool,
    /// 0o755 or 0o644.
    pub mode: u32,
}

/// Every entry below `root`, sorted by name; symlinks are refused (they could point
/// anywhere on the build machine).
pub fn walk(root: &Path) -> Result<Vec<Entry>, InputError> {
    let mut out = Vec::new();
    let meta = std::fs::metadata(root).map_err(|source| InputError::ContentDirectory {
        path: root.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(InputError::NotADirectory {
            path: root.to_owned(),
        });
    }
    walk_into(root, "", &mut out)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn walk_into(dir: &Path, prefix: &str, out: &mut Vec<Entry>) -> Result<(), InputError> {
    let entries = std::fs::read_dir(dir).map_err(|source| InputError::Read {
        path: dir.to_owned(),
        source,
    })?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let relative = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = std::fs::symlink_metadata(&path).map_err(|source| InputError::Read {
            path: path.clone(),
            source,
        })?;
        if meta.file_type().is_symlink() {
            return Err(InputError::Symlink { path });
        }
        let executable = {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                meta.permissions().mode() & 0o111 != 0
            }
            #[cfg(not(unix))]
            {
                false
            }
        };
        if meta.is_dir() {
            out.push(Entry {
                name: relative.clone(),
                path: path.clone(),
                directory: true,
                mode: 0o755,
            });
            walk_into(&path, &relative, out)?;
        } else if meta.is_file() {
            out.push(Entry {
                name: relative,
                path,
                directory: false,
                mode: if executable { 0o755 } else { 0o644 },
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACKAGE: &str = "apiVersion: tessera.dev/v1alpha1\nkind: Package\nmetadata:\n  name: hello\nspec:\n  os: linux\n  content:\n    directory: payload\n  action:\n    launch:\n      command: hello.sh\n";

    #[test]
    fn a_missing_content_directory_is_named_with_its_cause_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("payload");
        let error = walk(&missing).err().unwrap();
        let text = chain(&error);
        assert!(
            text.starts_with(&format!(
                "failed to read content directory {}: ",
                missing.display()
            )),
            "{text}"
        );
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert_eq!(text.matches(&source).count(), 1, "{text}");
    }

    #[cfg(unix)]
    #[test]
    fn a_symbolic_link_in_the_content_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("real"), b"x").unwrap();
        std::os::unix::fs::symlink(dir.path().join("real"), dir.path().join("link")).unwrap();
        let error = walk(dir.path()).err().unwrap();
        assert!(matches!(error, InputError::Symlink { .. }), "{error:?}");
        assert!(chain(&error).contains("link is a symbolic link"), "{error}");
    }

    #[test]
    fn the_inputs_of_files_resolve_from_the_declaring_file_and_follow_content() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("packages/payload")).unwrap();
        std::fs::write(root.join("packages/payload/hello.sh"), "echo 1\n").unwrap();
        let files = [SourceFile {
            path: "packages/hello.yaml".into(),
            text: PACKAGE.into(),
        }];
        let first = of_files(root, &files);
        assert_eq!(
            first[0].0,
            Input::Directory(root.join("packages/payload")),
            "relative to the declaring file"
        );
        std::fs::write(root.join("packages/payload/hello.sh"), "echo 22\n").unwrap();
        let second = of_files(root, &files);
        assert_ne!(
            first[0].1, second[0].1,
            "a content edit changes the fingerprint"
        );
    }

    #[test]
    fn check_finds_a_missing_launch_file_and_a_wrong_archive_digest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("payload")).unwrap();
        std::fs::write(root.join("payload/other.sh"), "true\n").unwrap();
        let spec = |yaml: &str| match &parse_file("p.yaml", yaml).objects[0].resource {
            Resource::Package(p) => p.spec.clone(),
            other => panic!("{other:?}"),
        };
        let found = check(&spec(PACKAGE), root, Some("p.yaml"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "spec.action.launch.command");
        assert!(found[0].1.contains("\"hello.sh\""), "{found:?}");

        std::fs::write(root.join("a.tar.gz"), b"not really").unwrap();
        let archive = PACKAGE.replace(
            "directory: payload",
            &format!("archive: a.tar.gz\n    sha256: {}", "0".repeat(64)),
        );
        let found = check(&spec(&archive), root, Some("p.yaml"));
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "spec.content.sha256");
    }

    #[test]
    fn url_shapes_that_cannot_be_fetched_are_named() {
        assert_eq!(url_problem("https://example.com/a.tar.gz"), None);
        assert_eq!(url_problem("http://[::1]:8080/a"), None);
        assert!(
            url_problem("https:///a.tar.gz")
                .unwrap()
                .contains("no host")
        );
        assert!(
            url_problem("https://host:99999/a")
                .unwrap()
                .contains("port")
        );
        assert!(url_problem("https://host/a b").unwrap().contains("space"));
    }
}
