//! Unpacks a verified package archive (tar.gz or zip) into a fresh directory without
//! letting a hostile or broken archive write outside it or exhaust the machine.
//!
//! Every entry name is parsed into plain components before anything touches the disk;
//! no entry is ever written through a symbolic link (each path component is checked);
//! links are kept only when their target stays inside the directory; bytes are counted
//! as they are written, so a decompression bomb stops at its allowance instead of
//! filling the disk. Each refusal has its own result code for the server.
//!
//! The target directory is created if missing and should be empty: a refusal leaves
//! what was unpacked so far, and the caller removes the directory. Nothing else runs in
//! it while unpacking, so the checks are not raced. Modification times, owners and
//! extended attributes are not restored.
//!
//! Long on purpose (about 1,500 lines): the code is about half; the rest is its tests, one
//! per kind of hostile or broken archive (traversal, links out, bombs, duplicates, devices),
//! kept next to the checks they pin down.

use std::cell::Cell;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use flate2::read::GzDecoder;
use tar::EntryType;
use zip::result::ZipError;

/// The first bytes unpacked are never held against the ratio: a small archive of very
/// compressible files (a tar.gz of a few empty files is mostly zero blocks and compresses
/// over 100:1) harms nothing, and a bomb is still stopped after this much.
const RATIO_FREE_BYTES: u64 = 1 << 20;
/// Bytes a tar entry may take in the stream beyond its data: a 512-byte header, up to
/// 511 bytes of padding, and room for a long-name or pax header, which the tar crate
/// reads into memory before handing the entry over.
const TAR_ENTRY_OVERHEAD: u64 = 8 << 10;
/// Longest symbolic link target read from a zip entry (Linux `PATH_MAX`).
const MAX_LINK_TARGET: u64 = 4096;
/// Read size when copying an entry's data.
const COPY_CHUNK: usize = 64 << 10;
/// Whether entry names get the extra Windows checks (alternate data streams, device
/// names, trailing dots and spaces).
const WINDOWS: bool = cfg!(windows);

/// Archive formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// gzip-compressed tar, for Linux and macOS.
    TarGz,
    /// zip, for Windows.
    Zip,
}

impl Format {
    /// The format a manifest names: `tar.gz` or `zip`.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "tar.gz" => Some(Self::TarGz),
            "zip" => Some(Self::Zip),
            _ => None,
        }
    }
}

/// Limits on what an archive may unpack to.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Most entries (files, directories, links) an archive may hold.
    pub max_entries: usize,
    /// Most bytes of file data it may unpack to, counted as written.
    pub max_bytes: u64,
    /// Most bytes unpacked per byte of archive (beyond the first MiB).
    pub max_ratio: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Large applications (an IDE, an SDK) hold tens of thousands of files; ten
            // times more is an inode-exhaustion attack, not a package.
            max_entries: 100_000,
            // Beyond the largest installers deployed this way (office suites, CAD are a
            // few GiB) while leaving room on a typical endpoint disk.
            max_bytes: 16 << 30,
            // Software compresses 2-10:1 and text-heavy packages rarely beyond 20:1;
            // deflate tops out near 1032:1, which only runs of one byte reach. 250 leaves
            // a wide margin for real packages and stops a bomb early.
            max_ratio: 250,
        }
    }
}

/// What was unpacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extracted {
    /// Archive entries processed (files, directories, links).
    pub entries: usize,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// Errors unpacking an archive; [`ExtractError::code`] is what the agent reports.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry name is absolute, has a `..` component, a Windows drive, UNC or
    /// backslash form, or is empty.
    #[error("refused entry {entry:?}: {reason}")]
    UnsafePath { entry: String, reason: &'static str },
    /// A link points outside the directory, or an entry would be written through a link.
    #[error("refused link in entry {entry:?}: {reason}")]
    UnsafeLink { entry: String, reason: String },
    /// A device file, fifo or other special entry.
    #[error("refused entry {entry:?}: {kind} are not unpacked")]
    UnsafeEntry { entry: String, kind: &'static str },
    /// The archive holds more entries than allowed.
    #[error("archive has more than {max} entries")]
    TooManyEntries { max: usize },
    /// The archive unpacks to more bytes than allowed.
    #[error("archive unpacks to more than {max} bytes")]
    TooLarge { max: u64 },
    /// The archive unpacks to too many times its own size: a decompression bomb.
    #[error("archive of {archive_bytes} bytes unpacks to more than {max_ratio} times its size")]
    CompressionRatio { archive_bytes: u64, max_ratio: u64 },
    /// The tar.gz archive is unreadable or corrupt.
    #[error("failed to read tar.gz archive {path}")]
    CorruptTarGz {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The zip archive is unreadable or corrupt.
    #[error("failed to read zip archive {path}")]
    CorruptZip {
        path: PathBuf,
        #[source]
        source: ZipError,
    },
    /// Writing into the target directory failed.
    #[error("failed to write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ExtractError {
    /// The stable result code reported to the server (the OCS agents' codes where one
    /// exists).
    pub fn code(&self) -> &'static str {
        match self {
            Self::UnsafePath { .. } => "ERR_UNSAFE_PATH",
            Self::UnsafeLink { .. } => "ERR_UNSAFE_LINK",
            Self::UnsafeEntry { .. } => "ERR_UNSAFE_ENTRY",
            Self::TooManyEntries { .. } => "ERR_TOO_MANY_ENTRIES",
            Self::TooLarge { .. } => "ERR_TOO_LARGE",
            Self::CompressionRatio { .. } => "ERR_COMPRESSION_RATIO",
            Self::CorruptTarGz { .. } => "ERR_BUILD",
            Self::CorruptZip { .. } => "ERR_UNZIP",
            Self::Io { .. } => "ERR_EXTRACT_IO",
        }
    }
}

/// Unpacks `archive` into `into` (created if missing; it should be empty) within
/// `limits`.
///
/// Files are written `0755` if the archive marks them executable for anyone, `0644`
/// otherwise; directories `0755`; never setuid, setgid or sticky, never chowned.
/// Symbolic links are kept when their target is relative and stays inside `into` (on
/// Windows they are refused); tar hard links when they name an earlier file. Later
/// entries replace earlier files and links of the same name, never write through them.
pub fn extract(
    archive: &Path,
    format: Format,
    into: &Path,
    limits: &Limits,
) -> Result<Extracted, ExtractError> {
    let unreadable = |source: io::Error| match format {
        Format::TarGz => ExtractError::CorruptTarGz {
            path: archive.to_path_buf(),
            source,
        },
        Format::Zip => ExtractError::CorruptZip {
            path: archive.to_path_buf(),
            source: ZipError::Io(source),
        },
    };
    let file = File::open(archive).map_err(unreadable)?;
    let archive_bytes = file.metadata().map_err(unreadable)?.len();
    fs::create_dir_all(into).map_err(write_error(into))?;
    let mut out = Output {
        root: into,
        budget: Budget::new(*limits, archive_bytes),
        chunk: vec![0; COPY_CHUNK],
    };
    match format {
        Format::TarGz => unpack_tar_gz(file, archive, &mut out)?,
        Format::Zip => unpack_zip(file, archive, &mut out)?,
    }
    Ok(Extracted {
        entries: out.budget.entries,
        bytes: out.budget.bytes,
    })
}

fn unpack_tar_gz(file: File, archive: &Path, out: &mut Output) -> Result<(), ExtractError> {
    let Budget {
        limits,
        archive_bytes,
        ratio_allowance,
        ..
    } = out.budget;
    let overrun = Rc::new(Cell::new(None));
    let stream = Bounded {
        inner: GzDecoder::new(BufReader::new(file)),
        read: 0,
        ratio_allowance,
        size_allowance: limits
            .max_bytes
            .saturating_add((limits.max_entries as u64).saturating_mul(TAR_ENTRY_OVERHEAD)),
        overrun: Rc::clone(&overrun),
    };
    // The stream guard surfaces as a read error from the tar crate: name it for what it is.
    let read_error = |source: io::Error| match overrun.get() {
        Some(Overrun::Ratio) => ExtractError::CompressionRatio {
            archive_bytes,
            max_ratio: limits.max_ratio,
        },
        Some(Overrun::Size) => ExtractError::TooLarge {
            max: limits.max_bytes,
        },
        None => ExtractError::CorruptTarGz {
            path: archive.to_path_buf(),
            source,
        },
    };
    let mut tar = tar::Archive::new(stream);
    for entry in tar.entries().map_err(read_error)? {
        let mut entry = entry.map_err(read_error)?;
        out.budget.count_entry()?;
        let name = String::from_utf8(entry.path_bytes().into_owned()).map_err(|bytes| {
            ExtractError::UnsafePath {
                entry: String::from_utf8_lossy(bytes.as_bytes()).into_owned(),
                reason: "name is not UTF-8",
            }
        })?;
        let link_target = || match entry.link_name_bytes() {
            Some(bytes) => {
                String::from_utf8(bytes.into_owned()).map_err(|_| ExtractError::UnsafeLink {
                    entry: name.clone(),
                    reason: "target is not UTF-8".to_owned(),
                })
            }
            None => Err(ExtractError::UnsafeLink {
                entry: name.clone(),
                reason: "link has no target".to_owned(),
            }),
        };
        match entry.header().entry_type() {
            EntryType::Directory => out.directory(&name)?,
            // Pre-POSIX archives mark directories only by the trailing slash.
            EntryType::Regular if name.ends_with('/') && entry.size() == 0 => {
                out.directory(&name)?;
            }
            EntryType::Regular | EntryType::Continuous => {
                let mode = entry.header().mode().map_err(read_error)?;
                out.file(&name, mode, &mut entry, &read_error)?;
            }
            EntryType::Symlink => {
                let target = link_target()?;
                out.symlink(&name, &target)?;
            }
            EntryType::Link => {
                let target = link_target()?;
                out.hard_link(&name, &target)?;
            }
            // Archive-wide pax metadata (`git archive` writes the commit): nothing to unpack.
            EntryType::XGlobalHeader => {}
            kind => {
                return Err(ExtractError::UnsafeEntry {
                    entry: name,
                    kind: special_kind(kind),
                });
            }
        }
    }
    Ok(())
}

fn special_kind(kind: EntryType) -> &'static str {
    match kind {
        EntryType::Char | EntryType::Block => "device files",
        EntryType::Fifo => "fifos",
        EntryType::GNUSparse => "sparse files",
        _ => "entries of unknown type",
    }
}

fn unpack_zip(file: File, archive: &Path, out: &mut Output) -> Result<(), ExtractError> {
    let corrupt = |source: ZipError| ExtractError::CorruptZip {
        path: archive.to_path_buf(),
        source,
    };
    let read_error = |source: io::Error| corrupt(ZipError::Io(source));
    let mut zip = zip::ZipArchive::new(BufReader::new(file)).map_err(corrupt)?;
    // The central directory gives the count up front: refuse before writing anything.
    if zip.len() > out.budget.limits.max_entries {
        return Err(ExtractError::TooManyEntries {
            max: out.budget.limits.max_entries,
        });
    }
    for index in 0..zip.len() {
        out.budget.count_entry()?;
        let mut entry = zip.by_index(index).map_err(corrupt)?;
        let name = entry.name().map_err(corrupt)?.into_owned();
        let mode = entry.unix_mode();
        match zip_kind(entry.is_dir(), mode) {
            ZipKind::Directory => out.directory(&name)?,
            ZipKind::File => out.file(&name, mode.unwrap_or(0o644), &mut entry, &read_error)?,
            ZipKind::Symlink => {
                let mut target = Vec::new();
                (&mut entry)
                    .take(MAX_LINK_TARGET + 1)
                    .read_to_end(&mut target)
                    .map_err(read_error)?;
                if target.len() as u64 > MAX_LINK_TARGET {
                    return Err(ExtractError::UnsafeLink {
                        entry: name,
                        reason: "target is too long".to_owned(),
                    });
                }
                let Ok(target) = String::from_utf8(target) else {
                    return Err(ExtractError::UnsafeLink {
                        entry: name,
                        reason: "target is not UTF-8".to_owned(),
                    });
                };
                out.symlink(&name, &target)?;
            }
            ZipKind::Special(kind) => return Err(ExtractError::UnsafeEntry { entry: name, kind }),
        }
    }
    Ok(())
}

/// What a zip entry is, from its name and Unix mode (absent in archives made on Windows).
#[derive(Debug, PartialEq, Eq)]
enum ZipKind {
    File,
    Directory,
    Symlink,
    Special(&'static str),
}

fn zip_kind(is_dir: bool, mode: Option<u32>) -> ZipKind {
    const S_IFMT: u32 = 0o170000;
    if is_dir {
        return ZipKind::Directory;
    }
    match mode.map_or(0, |mode| mode & S_IFMT) {
        0 | 0o100000 => ZipKind::File,
        0o040000 => ZipKind::Directory,
        0o120000 => ZipKind::Symlink,
        0o020000 | 0o060000 => ZipKind::Special("device files"),
        0o010000 => ZipKind::Special("fifos"),
        0o140000 => ZipKind::Special("sockets"),
        _ => ZipKind::Special("entries of unknown type"),
    }
}

/// Which allowance the decompressed tar stream ran past.
#[derive(Clone, Copy, Debug)]
enum Overrun {
    Ratio,
    Size,
}

/// The decompressed tar stream, cut off once it passes an allowance. File data is also
/// counted as written; this catches what the tar crate reads on its own (long names and
/// pax headers, into memory) and data it skips.
struct Bounded<R> {
    inner: R,
    read: u64,
    ratio_allowance: u64,
    size_allowance: u64,
    overrun: Rc<Cell<Option<Overrun>>>,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read = self.read.saturating_add(n as u64);
        let overrun = if self.read > self.ratio_allowance {
            Some(Overrun::Ratio)
        } else if self.read > self.size_allowance {
            Some(Overrun::Size)
        } else {
            None
        };
        if let Some(overrun) = overrun {
            self.overrun.set(Some(overrun));
            return Err(io::Error::other("archive unpacks beyond its allowance"));
        }
        Ok(n)
    }
}

/// Entries and bytes spent so far against the limits.
#[derive(Clone, Copy, Debug)]
struct Budget {
    limits: Limits,
    archive_bytes: u64,
    /// Bytes the archive may unpack to before the ratio is exceeded.
    ratio_allowance: u64,
    entries: usize,
    bytes: u64,
}

impl Budget {
    fn new(limits: Limits, archive_bytes: u64) -> Self {
        Self {
            limits,
            archive_bytes,
            ratio_allowance: archive_bytes
                .saturating_mul(limits.max_ratio)
                .max(RATIO_FREE_BYTES),
            entries: 0,
            bytes: 0,
        }
    }

    fn count_entry(&mut self) -> Result<(), ExtractError> {
        if self.entries >= self.limits.max_entries {
            return Err(ExtractError::TooManyEntries {
                max: self.limits.max_entries,
            });
        }
        self.entries += 1;
        Ok(())
    }

    /// Accounts for `n` more bytes about to be written; refuses them if they would pass
    /// an allowance, so nothing beyond it reaches the disk.
    fn spend(&mut self, n: u64) -> Result<(), ExtractError> {
        let total = self.bytes.saturating_add(n);
        if total > self.limits.max_bytes {
            return Err(ExtractError::TooLarge {
                max: self.limits.max_bytes,
            });
        }
        if total > self.ratio_allowance {
            return Err(ExtractError::CompressionRatio {
                archive_bytes: self.archive_bytes,
                max_ratio: self.limits.max_ratio,
            });
        }
        self.bytes = total;
        Ok(())
    }
}

/// The target directory and what has been spent writing into it.
struct Output<'a> {
    root: &'a Path,
    budget: Budget,
    chunk: Vec<u8>,
}

impl Output<'_> {
    fn directory(&mut self, name: &str) -> Result<(), ExtractError> {
        let path = EntryPath::parse(name, WINDOWS).map_err(unsafe_path(name))?;
        self.make_dirs(name, &path.components)?;
        Ok(())
    }

    fn file(
        &mut self,
        name: &str,
        mode: u32,
        data: &mut dyn Read,
        read_error: &dyn Fn(io::Error) -> ExtractError,
    ) -> Result<(), ExtractError> {
        let target = self.prepare(name)?;
        let mut options = OpenOptions::new();
        // `create_new` never opens an existing path, and never follows a symbolic link.
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(file_mode(mode));
        }
        #[cfg(not(unix))]
        let _ = mode; // Windows has no mode bits: the directory's ACL decides.
        let mut file = options.open(&target).map_err(write_error(&target))?;
        #[cfg(unix)]
        {
            // Exactly this mode, whatever the umask.
            use std::os::unix::fs::PermissionsExt;
            file.set_permissions(fs::Permissions::from_mode(file_mode(mode)))
                .map_err(write_error(&target))?;
        }
        loop {
            let n = match data.read(&mut self.chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(read_error(error)),
            };
            self.budget.spend(n as u64)?;
            file.write_all(&self.chunk[..n])
                .map_err(write_error(&target))?;
        }
        file.flush().map_err(write_error(&target))
    }

    fn symlink(&mut self, name: &str, target: &str) -> Result<(), ExtractError> {
        let path = EntryPath::parse(name, WINDOWS).map_err(unsafe_path(name))?;
        check_link_target(&path, target, WINDOWS).map_err(|reason| ExtractError::UnsafeLink {
            entry: name.to_owned(),
            reason: format!("target {target:?}: {reason}"),
        })?;
        let link = self.prepare(name)?;
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(target, &link).map_err(write_error(&link))
        }
        #[cfg(not(unix))]
        {
            // Creating them needs a privilege, and packages for Windows do not use them.
            let _ = link;
            Err(ExtractError::UnsafeLink {
                entry: name.to_owned(),
                reason: "symbolic links are not unpacked on this system".to_owned(),
            })
        }
    }

    fn hard_link(&mut self, name: &str, target: &str) -> Result<(), ExtractError> {
        let refused = |reason: String| ExtractError::UnsafeLink {
            entry: name.to_owned(),
            reason: format!("hard link target {target:?}: {reason}"),
        };
        let source = EntryPath::parse(target, WINDOWS).map_err(|reason| refused(reason.into()))?;
        let path = EntryPath::parse(name, WINDOWS).map_err(unsafe_path(name))?;
        if source == path {
            return Ok(());
        }
        if source.components.is_empty() {
            return Err(refused("is not an earlier file".to_owned()));
        }
        // The source must be a file already unpacked here, reached through directories only.
        let mut existing = self.root.to_path_buf();
        for (depth, component) in source.components.iter().enumerate() {
            existing.push(component);
            let last = depth + 1 == source.components.len();
            match fs::symlink_metadata(&existing) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(refused("goes through a symbolic link".to_owned()));
                }
                Ok(meta) if last && meta.is_file() => {}
                Ok(meta) if !last && meta.is_dir() => {}
                Ok(_) => return Err(refused("is not an earlier file".to_owned())),
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    return Err(refused("is not an earlier file".to_owned()));
                }
                Err(error) => return Err(write_error(&existing)(error)),
            }
        }
        let link = self.prepare(name)?;
        fs::hard_link(&existing, &link).map_err(write_error(&link))
    }

    /// Checks `name`, creates its parent directories and clears an earlier file or link of
    /// that name; returns where to write it.
    fn prepare(&mut self, name: &str) -> Result<PathBuf, ExtractError> {
        let path = EntryPath::parse(name, WINDOWS).map_err(unsafe_path(name))?;
        let Some((last, parents)) = path.components.split_last() else {
            return Err(ExtractError::UnsafePath {
                entry: name.to_owned(),
                reason: "names the target directory itself",
            });
        };
        let target = self.make_dirs(name, parents)?.join(last);
        match fs::symlink_metadata(&target) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(write_error(&target)(error)),
            Ok(meta) if meta.is_dir() => {
                return Err(write_error(&target)(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    "a directory of that name was unpacked earlier",
                )));
            }
            // Removing a link removes the link, never what it points to.
            Ok(_) => fs::remove_file(&target).map_err(write_error(&target))?,
        }
        Ok(target)
    }

    /// Creates the directories `components` under the root, refusing to go through a
    /// symbolic link; returns the last one.
    fn make_dirs(&mut self, name: &str, components: &[String]) -> Result<PathBuf, ExtractError> {
        let mut dir = self.root.to_path_buf();
        for (depth, component) in components.iter().enumerate() {
            dir.push(component);
            match fs::symlink_metadata(&dir) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ExtractError::UnsafeLink {
                        entry: name.to_owned(),
                        reason: format!(
                            "{:?} is a symbolic link, and nothing is written through one",
                            components[..=depth].join("/")
                        ),
                    });
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(_) => {
                    return Err(write_error(&dir)(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        "a file of that name was unpacked earlier",
                    )));
                }
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    let mut builder = fs::DirBuilder::new();
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::DirBuilderExt;
                        builder.mode(0o755);
                    }
                    builder.create(&dir).map_err(write_error(&dir))?;
                }
                Err(error) => return Err(write_error(&dir)(error)),
            }
        }
        Ok(dir)
    }
}

/// The mode a file is written with: executable for everyone if the archive marks it
/// executable for anyone; never setuid, setgid or sticky.
fn file_mode(archived: u32) -> u32 {
    if archived & 0o111 != 0 { 0o755 } else { 0o644 }
}

/// An entry name parsed into plain components: no root, drive, `.`, `..` or separator.
/// No components at all means the target directory itself (a tar's `./`).
#[derive(Debug, PartialEq, Eq)]
struct EntryPath {
    components: Vec<String>,
}

impl EntryPath {
    /// Parses an archive entry name (`/`-separated); `windows` adds the checks for names
    /// Windows would read differently.
    fn parse(name: &str, windows: bool) -> Result<Self, &'static str> {
        check_name(name)?;
        let mut components = Vec::new();
        for part in name.split('/') {
            match part {
                "" | "." => {}
                ".." => return Err("`..` component"),
                part => {
                    check_component(part, windows)?;
                    components.push(part.to_owned());
                }
            }
        }
        Ok(Self { components })
    }
}

/// Refusals shared by entry names and link targets.
fn check_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.contains('\0') {
        return Err("NUL byte in name");
    }
    // Windows reads `\` as a separator: `..\x`, `\\server\share`, `C:\x` all hide here.
    if name.contains('\\') {
        return Err("backslash in name");
    }
    if name.starts_with('/') {
        return Err("absolute path");
    }
    let mut first = name.chars();
    if first.next().is_some_and(|c| c.is_ascii_alphabetic()) && first.next() == Some(':') {
        return Err("Windows drive prefix");
    }
    Ok(())
}

fn check_component(part: &str, windows: bool) -> Result<(), &'static str> {
    if !windows {
        return Ok(());
    }
    if part.contains(':') {
        return Err("`:` in name (a drive or alternate data stream on Windows)");
    }
    // Windows drops trailing dots and spaces: `.. ` would become `..`.
    if part.ends_with('.') || part.ends_with(' ') {
        return Err("name ends with a dot or space");
    }
    let stem = part.split('.').next().unwrap_or(part).trim_end();
    let reserved = ["CON", "PRN", "AUX", "NUL"]
        .iter()
        .any(|device| stem.eq_ignore_ascii_case(device))
        || (stem.len() == 4
            && ["COM", "LPT"]
                .iter()
                .any(|device| stem[..3].eq_ignore_ascii_case(device))
            && stem.as_bytes()[3].is_ascii_digit());
    if reserved {
        return Err("Windows device name");
    }
    Ok(())
}

/// Whether a symbolic link at `link` may point to `target`: relative, and inside the
/// target directory. `..` may only lead the target (`../lib/x`): after a name, it would
/// climb from wherever that name points if it is itself a link (`d -> .`, then
/// `e -> d/..` escapes although it reads as staying inside).
fn check_link_target(link: &EntryPath, target: &str, windows: bool) -> Result<(), &'static str> {
    check_name(target)?;
    // Directories between the root and the link: how far `..` may climb.
    let depth = link.components.len().saturating_sub(1);
    let mut climbs = 0;
    let mut descended = false;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." if descended => return Err("`..` after a name"),
            ".." => {
                climbs += 1;
                if climbs > depth {
                    return Err("points outside the directory");
                }
            }
            part => {
                check_component(part, windows)?;
                descended = true;
            }
        }
    }
    Ok(())
}

fn unsafe_path(name: &str) -> impl Fn(&'static str) -> ExtractError + '_ {
    move |reason| ExtractError::UnsafePath {
        entry: name.to_owned(),
        reason,
    }
}

fn write_error(path: &Path) -> impl Fn(io::Error) -> ExtractError + '_ {
    move |source| ExtractError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::error::Error;
    use std::io::Cursor;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use zip::write::SimpleFileOptions;

    type TestResult = Result<(), Box<dyn Error>>;

    /// One archive member, written as given (hostile names included).
    enum Member<'a> {
        File(&'a str, u32, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        HardLink(&'a str, &'a str),
        Special(&'a str, EntryType),
    }

    /// A tar.gz with raw header names: `Header::set_path` would refuse the hostile ones.
    fn tar_gz(members: &[Member]) -> Result<Vec<u8>, Box<dyn Error>> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
        for member in members {
            let mut header = tar::Header::new_gnu();
            let (name, data, kind, mode, link): (&str, &[u8], _, _, &str) = match *member {
                Member::File(name, mode, data) => (name, data, EntryType::Regular, mode, ""),
                Member::Dir(name) => (name, b"", EntryType::Directory, 0o755, ""),
                Member::Symlink(name, target) => (name, b"", EntryType::Symlink, 0o777, target),
                Member::HardLink(name, target) => (name, b"", EntryType::Link, 0o644, target),
                Member::Special(name, kind) => (name, b"", kind, 0o644, ""),
            };
            header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, data)?;
        }
        Ok(builder.into_inner()?.finish()?)
    }

    fn zip(members: &[Member]) -> Result<Vec<u8>, Box<dyn Error>> {
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let options = SimpleFileOptions::default();
        for member in members {
            match *member {
                Member::File(name, mode, data) => {
                    writer.start_file(name, options.unix_permissions(mode))?;
                    writer.write_all(data)?;
                }
                Member::Dir(name) => writer.add_directory(name, options)?,
                Member::Symlink(name, target) => writer.add_symlink(name, target, options)?,
                Member::Special(name, _) => {
                    // A fifo: the file type travels in the high bits of the attributes.
                    writer.start_file(name, options.external_attributes(0o010644 << 16))?;
                }
                Member::HardLink(..) => return Err("zip has no hard links".into()),
            }
        }
        Ok(writer.finish()?.into_inner())
    }

    /// Bytes that do not compress.
    fn noise(len: usize) -> Vec<u8> {
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    }

    /// A scratch area: the archive at `box/archive`, unpacked into `box/work`, and
    /// `outside/` holding what a hostile archive aims for.
    struct Scratch {
        dir: tempfile::TempDir,
        into: PathBuf,
    }

    impl Scratch {
        fn new() -> Result<Self, Box<dyn Error>> {
            let dir = tempfile::tempdir()?;
            fs::create_dir_all(dir.path().join("outside"))?;
            let into = dir.path().join("box").join("work");
            Ok(Self { dir, into })
        }

        fn outside(&self) -> PathBuf {
            self.dir.path().join("outside")
        }

        fn extract(
            &self,
            format: Format,
            archive: &[u8],
            limits: &Limits,
        ) -> Result<Result<Extracted, ExtractError>, Box<dyn Error>> {
            let path = self.dir.path().join("box").join("archive");
            fs::create_dir_all(self.dir.path().join("box"))?;
            fs::write(&path, archive)?;
            Ok(extract(&path, format, &self.into, limits))
        }

        /// Everything under the scratch area but outside `box/work`, besides the archive,
        /// the boxes and what the test put there itself.
        fn strays(&self, expected: &[&str]) -> Result<Vec<PathBuf>, Box<dyn Error>> {
            let mut strays = Vec::new();
            let mut pending = vec![self.dir.path().to_path_buf()];
            while let Some(dir) = pending.pop() {
                for entry in fs::read_dir(&dir)? {
                    let path = entry?.path();
                    if path == self.into {
                        continue;
                    }
                    let relative = path.strip_prefix(self.dir.path())?;
                    let known = ["box", "box/archive", "outside"]
                        .iter()
                        .chain(expected)
                        .any(|known| relative == Path::new(known));
                    if !known {
                        strays.push(relative.to_path_buf());
                    }
                    if fs::symlink_metadata(&path)?.is_dir() {
                        pending.push(path);
                    }
                }
            }
            Ok(strays)
        }
    }

    fn no_limits() -> Limits {
        Limits {
            max_entries: usize::MAX,
            max_bytes: u64::MAX,
            max_ratio: u64::MAX,
        }
    }

    #[cfg(unix)]
    fn mode_of(path: &Path) -> Result<u32, Box<dyn Error>> {
        use std::os::unix::fs::PermissionsExt;
        Ok(fs::symlink_metadata(path)?.permissions().mode() & 0o7777)
    }

    #[test]
    fn tar_gz_unpacks_files_links_and_the_exec_bit() -> TestResult {
        let scratch = Scratch::new()?;
        let archive = tar_gz(&[
            Member::Dir("./"),
            Member::Dir("./bin/"),
            Member::File("./bin/run.sh", 0o4750, b"#!/bin/sh\necho hi\n"),
            Member::File("etc/app/app.conf", 0o600, b"key=value\n"),
            Member::Symlink("bin/current", "run.sh"),
            Member::Symlink("etc/app/bin", "../../bin"),
            Member::HardLink("bin/again.sh", "bin/run.sh"),
        ])?;
        let extracted = scratch.extract(Format::TarGz, &archive, &Limits::default())??;
        assert_eq!(
            extracted,
            Extracted {
                entries: 7,
                bytes: 28
            }
        );
        let into = &scratch.into;
        assert_eq!(fs::read(into.join("bin/run.sh"))?, b"#!/bin/sh\necho hi\n");
        assert_eq!(fs::read(into.join("etc/app/app.conf"))?, b"key=value\n");
        assert_eq!(
            fs::read(into.join("bin/again.sh"))?,
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(
            fs::read_link(into.join("bin/current"))?,
            Path::new("run.sh")
        );
        assert_eq!(
            fs::read(into.join("etc/app/bin/run.sh"))?,
            b"#!/bin/sh\necho hi\n"
        );
        #[cfg(unix)]
        {
            assert_eq!(mode_of(&into.join("bin/run.sh"))?, 0o755, "setuid dropped");
            assert_eq!(mode_of(&into.join("etc/app/app.conf"))?, 0o644);
        }
        Ok(())
    }

    #[test]
    fn zip_unpacks_files_links_and_the_exec_bit() -> TestResult {
        let scratch = Scratch::new()?;
        let archive = zip(&[
            Member::Dir("docs/"),
            Member::File("setup.sh", 0o755, b"#!/bin/sh\ntrue\n"),
            Member::File("docs/readme.txt", 0o640, b"read me"),
            Member::File("a/b/c.txt", 0o644, b"nested"),
            Member::Symlink("latest", "setup.sh"),
        ])?;
        let extracted = scratch.extract(Format::Zip, &archive, &Limits::default())??;
        assert_eq!(
            extracted,
            Extracted {
                entries: 5,
                bytes: 28
            }
        );
        let into = &scratch.into;
        assert_eq!(fs::read(into.join("setup.sh"))?, b"#!/bin/sh\ntrue\n");
        assert_eq!(fs::read(into.join("docs/readme.txt"))?, b"read me");
        assert_eq!(fs::read(into.join("a/b/c.txt"))?, b"nested");
        assert_eq!(fs::read_link(into.join("latest"))?, Path::new("setup.sh"));
        #[cfg(unix)]
        {
            assert_eq!(mode_of(&into.join("setup.sh"))?, 0o755);
            assert_eq!(mode_of(&into.join("docs/readme.txt"))?, 0o644);
        }
        Ok(())
    }

    #[test]
    fn tar_gz_paths_escaping_the_directory_are_refused() -> TestResult {
        for name in ["../evil.txt", "./sub/../../evil.txt", "..\\evil.txt"] {
            let scratch = Scratch::new()?;
            let archive = tar_gz(&[Member::File(name, 0o644, b"pwned")])?;
            let error = scratch
                .extract(Format::TarGz, &archive, &no_limits())?
                .expect_err(name);
            assert_eq!(error.code(), "ERR_UNSAFE_PATH", "{name}: {error}");
            assert!(error.to_string().contains(&format!("{name:?}")), "{error}");
            assert_eq!(scratch.strays(&[])?, Vec::<PathBuf>::new(), "{name}");
        }
        // Absolute: aimed at the scratch area (not /etc) so a failure harms nothing.
        let scratch = Scratch::new()?;
        let absolute = format!("{}/evil.txt", scratch.outside().display());
        let archive = tar_gz(&[Member::File(&absolute, 0o644, b"pwned")])?;
        let error = scratch
            .extract(Format::TarGz, &archive, &no_limits())?
            .expect_err("absolute");
        assert_eq!(error.code(), "ERR_UNSAFE_PATH");
        assert!(!scratch.outside().join("evil.txt").exists());
        Ok(())
    }

    #[test]
    fn zip_slip_is_refused() -> TestResult {
        let scratch = Scratch::new()?;
        let absolute = format!("{}/evil.txt", scratch.outside().display());
        for name in [
            "../evil.txt",
            "../outside/evil.txt",
            absolute.as_str(),
            "..\\evil.txt",
            "C:\\evil.txt",
            "C:/evil.txt",
            "\\\\server\\share\\evil.txt",
            "",
        ] {
            let scratch = Scratch::new()?;
            let archive = zip(&[
                Member::File("fine.txt", 0o644, b"fine"),
                Member::File(name, 0o644, b"pwned"),
            ])?;
            let error = scratch
                .extract(Format::Zip, &archive, &no_limits())?
                .expect_err(name);
            assert_eq!(error.code(), "ERR_UNSAFE_PATH", "{name:?}: {error}");
            assert_eq!(scratch.strays(&[])?, Vec::<PathBuf>::new(), "{name:?}");
            assert!(!scratch.outside().join("evil.txt").exists(), "{name:?}");
        }
        Ok(())
    }

    #[test]
    fn symlink_out_and_a_file_through_it_are_refused() -> TestResult {
        for format in [Format::TarGz, Format::Zip] {
            let scratch = Scratch::new()?;
            let absolute = scratch.outside().display().to_string();
            for target in ["../../outside", "../outside", absolute.as_str()] {
                let members = [
                    Member::Symlink("escape", target),
                    Member::File("escape/evil.txt", 0o644, b"pwned"),
                ];
                let archive = match format {
                    Format::TarGz => tar_gz(&members)?,
                    Format::Zip => zip(&members)?,
                };
                let error = scratch
                    .extract(format, &archive, &no_limits())?
                    .expect_err(target);
                assert_eq!(error.code(), "ERR_UNSAFE_LINK", "{target}: {error}");
                assert!(!scratch.outside().join("evil.txt").exists(), "{target}");
                assert!(fs::symlink_metadata(scratch.into.join("escape")).is_err());
            }
        }
        Ok(())
    }

    #[test]
    fn links_chained_to_climb_out_are_refused() -> TestResult {
        let scratch = Scratch::new()?;
        // `sub/d -> ..` is the root, allowed; `sub/e -> d/..` reads as `sub` but is the
        // root's parent.
        let archive = tar_gz(&[
            Member::Dir("sub/"),
            Member::Symlink("sub/d", ".."),
            Member::Symlink("sub/e", "d/.."),
        ])?;
        let error = scratch
            .extract(Format::TarGz, &archive, &no_limits())?
            .expect_err("chain");
        assert_eq!(error.code(), "ERR_UNSAFE_LINK", "{error}");
        assert!(fs::symlink_metadata(scratch.into.join("sub/d"))?.is_symlink());
        assert!(fs::symlink_metadata(scratch.into.join("sub/e")).is_err());
        Ok(())
    }

    #[test]
    fn nothing_is_written_through_a_symlink_even_one_pointing_inside() -> TestResult {
        let scratch = Scratch::new()?;
        let archive = tar_gz(&[
            Member::Dir("real/"),
            Member::Symlink("inside", "real"),
            Member::File("inside/file.txt", 0o644, b"through"),
        ])?;
        let error = scratch
            .extract(Format::TarGz, &archive, &no_limits())?
            .expect_err("through");
        assert_eq!(error.code(), "ERR_UNSAFE_LINK", "{error}");
        assert!(!scratch.into.join("real/file.txt").exists());
        Ok(())
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_already_in_the_directory_is_not_written_through() -> TestResult {
        let scratch = Scratch::new()?;
        fs::create_dir_all(&scratch.into)?;
        std::os::unix::fs::symlink(scratch.outside(), scratch.into.join("pre"))?;
        let archive = zip(&[Member::File("pre/evil.txt", 0o644, b"pwned")])?;
        let error = scratch
            .extract(Format::Zip, &archive, &no_limits())?
            .expect_err("pre-existing link");
        assert_eq!(error.code(), "ERR_UNSAFE_LINK", "{error}");
        assert!(!scratch.outside().join("evil.txt").exists());
        Ok(())
    }

    #[test]
    fn a_later_entry_replaces_a_symlink_instead_of_writing_through_it() -> TestResult {
        let scratch = Scratch::new()?;
        fs::write(scratch.outside().join("target.txt"), b"untouched")?;
        // A link allowed inside, then a file of the same name.
        let archive = tar_gz(&[
            Member::Symlink("name", "other"),
            Member::File("other", 0o644, b"other"),
            Member::File("name", 0o644, b"replaced"),
        ])?;
        scratch.extract(Format::TarGz, &archive, &no_limits())??;
        assert!(
            !fs::symlink_metadata(scratch.into.join("name"))?
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(scratch.into.join("name"))?, b"replaced");
        assert_eq!(fs::read(scratch.into.join("other"))?, b"other");
        Ok(())
    }

    #[test]
    fn hard_link_to_a_file_outside_is_refused() -> TestResult {
        let scratch = Scratch::new()?;
        let secret = scratch.outside().join("secret");
        fs::write(&secret, b"secret")?;
        let absolute = secret.display().to_string();
        for target in ["../../outside/secret", absolute.as_str()] {
            let archive = tar_gz(&[
                Member::HardLink("grab", target),
                Member::File("grab", 0o644, b"pwned"),
            ])?;
            let error = scratch
                .extract(Format::TarGz, &archive, &no_limits())?
                .expect_err(target);
            assert_eq!(error.code(), "ERR_UNSAFE_LINK", "{target}: {error}");
            assert!(!scratch.into.join("grab").exists());
            assert_eq!(fs::read(&secret)?, b"secret");
        }
        // Through a symbolic link (inside or not): `link` could follow it on some systems.
        let archive = tar_gz(&[
            Member::Symlink("inside", "real.txt"),
            Member::File("real.txt", 0o644, b"real"),
            Member::HardLink("grab", "inside"),
        ])?;
        let error = scratch
            .extract(Format::TarGz, &archive, &no_limits())?
            .expect_err("through a link");
        assert_eq!(error.code(), "ERR_UNSAFE_LINK", "{error}");
        assert!(!scratch.into.join("grab").exists());
        Ok(())
    }

    #[test]
    fn device_files_and_fifos_are_refused() -> TestResult {
        for kind in [EntryType::Char, EntryType::Block, EntryType::Fifo] {
            let scratch = Scratch::new()?;
            let archive = tar_gz(&[Member::Special("dev", kind)])?;
            let error = scratch
                .extract(Format::TarGz, &archive, &no_limits())?
                .expect_err("special");
            assert_eq!(error.code(), "ERR_UNSAFE_ENTRY", "{kind:?}: {error}");
            assert!(fs::symlink_metadata(scratch.into.join("dev")).is_err());
        }
        let scratch = Scratch::new()?;
        let archive = zip(&[Member::Special("fifo", EntryType::Fifo)])?;
        let error = scratch
            .extract(Format::Zip, &archive, &no_limits())?
            .expect_err("zip fifo");
        assert_eq!(error.code(), "ERR_UNSAFE_ENTRY", "{error}");
        assert!(fs::symlink_metadata(scratch.into.join("fifo")).is_err());
        Ok(())
    }

    #[test]
    fn decompression_bomb_is_stopped_before_it_is_written() -> TestResult {
        let zeros = vec![0; 5 << 20];
        let limits = Limits {
            max_ratio: 10,
            ..no_limits()
        };
        for format in [Format::TarGz, Format::Zip] {
            let scratch = Scratch::new()?;
            let members = [Member::File("zeros", 0o644, &zeros)];
            let archive = match format {
                Format::TarGz => tar_gz(&members)?,
                Format::Zip => zip(&members)?,
            };
            assert!(archive.len() < 64 << 10, "{} bytes", archive.len());
            let error = scratch
                .extract(format, &archive, &limits)?
                .expect_err("bomb");
            assert_eq!(error.code(), "ERR_COMPRESSION_RATIO", "{format:?}: {error}");
            let written = fs::metadata(scratch.into.join("zeros")).map_or(0, |meta| meta.len());
            assert!(
                written <= RATIO_FREE_BYTES,
                "{format:?}: {written} bytes written"
            );
        }
        Ok(())
    }

    #[test]
    fn tar_headers_the_tar_crate_buffers_count_against_the_limits() -> TestResult {
        // A GNU long name is read whole into memory before the entry reaches us.
        let long_name = |len: usize| -> Result<Vec<u8>, Box<dyn Error>> {
            let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::default()));
            let mut header = tar::Header::new_gnu();
            header.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
            header.set_entry_type(EntryType::GNULongName);
            header.set_size(len as u64);
            header.set_cksum();
            builder.append(&header, &*vec![b'a'; len])?;
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(EntryType::Regular);
            header.set_size(0);
            header.set_cksum();
            builder.append(&header, &b""[..])?;
            Ok(builder.into_inner()?.finish()?)
        };
        let scratch = Scratch::new()?;
        let limits = Limits {
            max_ratio: 10,
            ..no_limits()
        };
        let error = scratch
            .extract(Format::TarGz, &long_name(5 << 20)?, &limits)?
            .expect_err("long-name bomb");
        assert_eq!(error.code(), "ERR_COMPRESSION_RATIO", "{error}");

        let scratch = Scratch::new()?;
        let limits = Limits {
            max_entries: 1,
            max_bytes: 1000,
            ..no_limits()
        };
        let error = scratch
            .extract(Format::TarGz, &long_name(100_000)?, &limits)?
            .expect_err("long name beyond the size allowance");
        assert_eq!(error.code(), "ERR_TOO_LARGE", "{error}");
        Ok(())
    }

    #[test]
    fn too_many_entries_are_refused() -> TestResult {
        let names: Vec<String> = (0..11).map(|n| format!("file{n}")).collect();
        let members: Vec<Member> = names
            .iter()
            .map(|name| Member::File(name, 0o644, b"x"))
            .collect();
        let limits = Limits {
            max_entries: 10,
            ..no_limits()
        };
        for format in [Format::TarGz, Format::Zip] {
            let build = |members: &[Member]| match format {
                Format::TarGz => tar_gz(members),
                Format::Zip => zip(members),
            };
            let scratch = Scratch::new()?;
            let extracted = scratch.extract(format, &build(&members[..10])?, &limits)??;
            assert_eq!(extracted.entries, 10);

            let scratch = Scratch::new()?;
            let error = scratch
                .extract(format, &build(&members)?, &limits)?
                .expect_err("eleven");
            assert_eq!(error.code(), "ERR_TOO_MANY_ENTRIES", "{format:?}: {error}");
            assert!(!scratch.into.join("file10").exists());
        }
        Ok(())
    }

    #[test]
    fn too_many_bytes_are_refused_as_they_are_written() -> TestResult {
        let data = noise(60_000);
        let limits = Limits {
            max_bytes: 100_000,
            ..no_limits()
        };
        for format in [Format::TarGz, Format::Zip] {
            let build = |members: &[Member]| match format {
                Format::TarGz => tar_gz(members),
                Format::Zip => zip(members),
            };
            let one = [Member::File("one", 0o644, &data)];
            let scratch = Scratch::new()?;
            assert_eq!(
                scratch.extract(format, &build(&one)?, &limits)??.bytes,
                60_000
            );

            let two = [
                Member::File("one", 0o644, &data),
                Member::File("two", 0o644, &data),
            ];
            let scratch = Scratch::new()?;
            let error = scratch
                .extract(format, &build(&two)?, &limits)?
                .expect_err("two");
            assert_eq!(error.code(), "ERR_TOO_LARGE", "{format:?}: {error}");
            let written = fs::metadata(scratch.into.join("two")).map_or(0, |meta| meta.len());
            assert!(
                60_000 + written <= 100_000,
                "{written} bytes of the second file"
            );
        }
        Ok(())
    }

    #[test]
    fn corrupt_archives_get_the_ocs_codes() -> TestResult {
        let garbage = noise(4096);
        let scratch = Scratch::new()?;
        let error = scratch
            .extract(Format::TarGz, &garbage, &no_limits())?
            .expect_err("garbage tar.gz");
        assert_eq!(error.code(), "ERR_BUILD", "{error}");
        let error = scratch
            .extract(Format::Zip, &garbage, &no_limits())?
            .expect_err("garbage zip");
        assert_eq!(error.code(), "ERR_UNZIP", "{error}");

        // Cut short in the middle of a file's data.
        let whole = tar_gz(&[Member::File("data", 0o644, &noise(200_000))])?;
        let error = Scratch::new()?
            .extract(Format::TarGz, &whole[..whole.len() / 2], &no_limits())?
            .expect_err("truncated tar.gz");
        assert_eq!(error.code(), "ERR_BUILD", "{error}");

        // One flipped byte in stored data: the CRC catches it.
        let mut writer = zip::ZipWriter::new(Cursor::new(Vec::new()));
        writer.start_file(
            "data",
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
        )?;
        writer.write_all(b"the quick brown fox")?;
        let mut archive = writer.finish()?.into_inner();
        let at = archive
            .windows(5)
            .position(|window| window == b"quick")
            .ok_or("data not found")?;
        archive[at] ^= 0xff;
        let error = Scratch::new()?
            .extract(Format::Zip, &archive, &no_limits())?
            .expect_err("flipped zip");
        assert_eq!(error.code(), "ERR_UNZIP", "{error}");

        let missing = extract(
            &scratch.dir.path().join("missing"),
            Format::TarGz,
            &scratch.into,
            &no_limits(),
        )
        .expect_err("missing archive");
        assert_eq!(missing.code(), "ERR_BUILD");
        Ok(())
    }

    #[test]
    fn entry_names_are_parsed_into_plain_components() {
        let parse = |name| EntryPath::parse(name, false).map(|path| path.components.join("|"));
        assert_eq!(parse("a/b.txt"), Ok("a|b.txt".to_owned()));
        assert_eq!(parse("./a//b/"), Ok("a|b".to_owned()));
        assert_eq!(parse("./"), Ok(String::new()));
        assert_eq!(parse("Foo::Bar.3pm"), Ok("Foo::Bar.3pm".to_owned()));
        for name in [
            "",
            "..",
            "a/../b",
            "/etc/passwd",
            "..\\x",
            "a\\b",
            "C:\\x",
            "c:x",
            "\\\\srv\\s",
            "a\0b",
        ] {
            assert!(parse(name).is_err(), "{name:?} accepted");
        }
        for name in [
            "a/b:c", "CON", "nul.txt", "lpt1", "com9.log", "x.", ".. /x", "a ",
        ] {
            assert!(
                EntryPath::parse(name, false).is_ok(),
                "{name:?} refused off Windows"
            );
            assert!(
                EntryPath::parse(name, true).is_err(),
                "{name:?} accepted on Windows"
            );
        }
        assert!(EntryPath::parse("console.txt", true).is_ok());
    }

    #[test]
    fn link_targets_stay_inside_and_climb_only_first() -> Result<(), &'static str> {
        let at = |name| EntryPath::parse(name, false);
        check_link_target(&at("a")?, "b", false)?;
        check_link_target(&at("a")?, ".", false)?;
        check_link_target(&at("lib/x.so")?, "../lib64/x.so.1", false)?;
        check_link_target(&at("a/b/c")?, "../../d/./e", false)?;
        let refused = [
            ("a", ".."),
            ("a/b", "../.."),
            ("a", "/etc/passwd"),
            ("a/b", "d/.."),
            ("a/b", "x/../../y"),
            ("a", "C:\\x"),
            ("a", ""),
        ];
        for (link, target) in refused {
            assert!(
                check_link_target(&at(link)?, target, false).is_err(),
                "{link} -> {target:?} accepted"
            );
        }
        Ok(())
    }

    #[test]
    fn modes_keep_only_the_exec_bit() {
        assert_eq!(file_mode(0o4755), 0o755);
        assert_eq!(file_mode(0o700), 0o755);
        assert_eq!(file_mode(0o001), 0o755);
        assert_eq!(file_mode(0o666), 0o644);
        assert_eq!(file_mode(0o7666), 0o644);
    }

    #[test]
    fn zip_kinds_come_from_the_mode() {
        assert_eq!(zip_kind(false, None), ZipKind::File);
        assert_eq!(zip_kind(false, Some(0o100755)), ZipKind::File);
        assert_eq!(zip_kind(true, None), ZipKind::Directory);
        assert_eq!(zip_kind(false, Some(0o120777)), ZipKind::Symlink);
        assert_eq!(
            zip_kind(false, Some(0o020644)),
            ZipKind::Special("device files")
        );
        assert_eq!(zip_kind(false, Some(0o010644)), ZipKind::Special("fifos"));
    }

    #[test]
    fn formats_and_codes_are_stable() {
        assert_eq!(Format::from_name("tar.gz"), Some(Format::TarGz));
        assert_eq!(Format::from_name("zip"), Some(Format::Zip));
        assert_eq!(Format::from_name("tgz"), None);
        let error = ExtractError::CompressionRatio {
            archive_bytes: 1,
            max_ratio: 2,
        };
        assert_eq!(error.code(), "ERR_COMPRESSION_RATIO");
        assert_eq!(ExtractError::TooLarge { max: 1 }.code(), "ERR_TOO_LARGE");
    }

    #[test]
    fn the_target_directory_is_created() -> TestResult {
        let scratch = Scratch::new()?;
        assert!(!scratch.into.exists());
        let archive = tar_gz(&[Member::File("f", 0o644, b"x")])?;
        scratch.extract(Format::TarGz, &archive, &Limits::default())??;
        assert!(scratch.into.join("f").is_file());
        Ok(())
    }
}
