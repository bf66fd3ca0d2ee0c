//! The workspace as a tar archive, both ways. Packing is plain (symlinks stored as symlinks, never
//! followed). Unpacking reads HOSTILE input: the archive comes back from a pod that ran
//! untrusted code, so it is unpacked into a fresh directory under a byte cap and an entry cap;
//! absolute paths, `..`, device files, FIFOs and hard links to anything but a file already
//! unpacked are refused; no path is ever written through a symlink (every parent is checked to be
//! a real directory, files are created exclusively); modes lose setuid, setgid and sticky bits.
//! Only an archive unpacked whole replaces the workspace's contents.
//!
//! The outputs travel as base64 of the archive ([`Base64Reader`] decodes them as they are
//! unpacked): the pod sends them with busybox `wget --post-file`, which sends its file as a
//! string and so stops at the first NUL byte, and a tar archive is full of them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, SystemTime};

use tar::EntryType;

/// Bytes of a long name or PAX header an archive may give one entry (a path is at most 4 KiB).
const MAX_LONG_NAMES: u64 = 64 << 10;

/// Bytes of file content and number of entries an archive may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Caps {
    /// Sum of the sizes of its files.
    pub(super) bytes: u64,
    /// Number of entries (files, directories, links).
    pub(super) entries: u64,
}

/// Why an archive was refused.
#[derive(Debug, thiserror::Error)]
pub(super) enum ArchiveError {
    /// An entry's path leaves the directory or is not plain.
    #[error("entry {path:?} is refused: {why}")]
    Path {
        /// The path as the archive names it.
        path: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An entry of a kind a workspace never holds.
    #[error("entry {path:?} is refused: a {kind} has no place in a workspace")]
    Kind {
        /// The path.
        path: String,
        /// The kind, e.g. `character device`.
        kind: &'static str,
    },
    /// More bytes than the cap.
    #[error("the outputs hold more than {cap} bytes")]
    TooLarge {
        /// The cap.
        cap: u64,
    },
    /// More entries than the cap.
    #[error("the outputs hold more than {cap} entries")]
    TooManyEntries {
        /// The cap.
        cap: u64,
    },
    /// Reading the archive or writing the files failed.
    #[error("cannot unpack the outputs: {0}")]
    Io(#[from] io::Error),
}

/// Writes `workspace`'s contents as a tar archive to `out`, paths relative (`./src/main.rs`),
/// symlinks stored as symlinks.
///
/// # Errors
/// When a file cannot be read or the archive written.
pub(super) fn pack(workspace: &Path, out: impl Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.mode(tar::HeaderMode::Complete);
    builder.append_dir_all(".", workspace)?;
    builder.into_inner()?.flush()
}

/// Bytes of file content and number of entries under `root` (symlinks not followed).
///
/// # Errors
/// When a directory cannot be read.
pub(super) fn measure(root: &Path) -> io::Result<(u64, u64)> {
    let (mut bytes, mut entries) = (0_u64, 0_u64);
    let mut pending = vec![root.to_owned()];
    while let Some(directory) = pending.pop() {
        for entry in fs::read_dir(&directory)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            entries += 1;
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() {
                bytes = bytes.saturating_add(meta.len());
            }
        }
    }
    Ok((bytes, entries))
}

/// Decodes base64 (standard alphabet, `=` padding, line breaks and spaces ignored, as `base64`
/// writes it) from `inner` as it is read. Anything else in the text is an error.
#[derive(Debug)]
pub(super) struct Base64Reader<R> {
    inner: R,
    /// Decoded bytes not handed out yet.
    pending: [u8; 3],
    pending_len: usize,
    pending_at: usize,
    /// Whether the padding (the end of the data) was read.
    ended: bool,
}

impl<R: io::BufRead> Base64Reader<R> {
    pub(super) fn new(inner: R) -> Self {
        Self {
            inner,
            pending: [0; 3],
            pending_len: 0,
            pending_at: 0,
            ended: false,
        }
    }

    /// The next 4 significant characters decoded into `pending`; `false` at the end.
    fn fill(&mut self) -> io::Result<bool> {
        let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
        let mut quad = [0_u8; 4];
        let mut count = 0;
        let mut padding = 0;
        while count < 4 {
            let mut byte = [0_u8; 1];
            if self.inner.read(&mut byte)? == 0 {
                if count == 0 {
                    return Ok(false);
                }
                return Err(invalid("the base64 text ends in the middle of a group".to_owned()));
            }
            let value = match byte[0] {
                b'A'..=b'Z' => byte[0] - b'A',
                b'a'..=b'z' => byte[0] - b'a' + 26,
                b'0'..=b'9' => byte[0] - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                b'=' if count >= 2 => {
                    padding += 1;
                    0
                }
                b'\n' | b'\r' | b' ' | b'\t' => continue,
                other => return Err(invalid(format!("byte {other:#04x} is not base64"))),
            };
            if self.ended || (padding > 0 && byte[0] != b'=') {
                return Err(invalid("base64 text goes on after its padding".to_owned()));
            }
            quad[count] = value;
            count += 1;
        }
        let bits =
            (u32::from(quad[0]) << 18) | (u32::from(quad[1]) << 12) | (u32::from(quad[2]) << 6) | u32::from(quad[3]);
        let [_, high, middle, low] = bits.to_be_bytes();
        self.pending = [high, middle, low];
        self.pending_len = 3 - padding;
        self.pending_at = 0;
        self.ended = padding > 0;
        Ok(true)
    }
}

impl<R: io::BufRead> Read for Base64Reader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut written = 0;
        while written < buf.len() {
            if self.pending_at == self.pending_len && !self.fill()? {
                break;
            }
            let available = &self.pending[self.pending_at..self.pending_len];
            let n = available.len().min(buf.len() - written);
            buf[written..written + n].copy_from_slice(&available[..n]);
            self.pending_at += n;
            written += n;
        }
        Ok(written)
    }
}

/// What an unpacked archive held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Unpacked {
    /// Bytes of file content.
    pub(super) bytes: u64,
    /// Entries.
    pub(super) entries: u64,
}

/// Unpacks `archive` into `into` (an empty directory), within `caps`.
///
/// # Errors
/// The first entry refused, or a cap exceeded. `into` then holds part of the archive: the
/// caller throws it away.
pub(super) fn unpack(archive: impl Read, into: &Path, caps: Caps) -> Result<Unpacked, ArchiveError> {
    let mut archive = tar::Archive::new(archive);
    let mut unpacked = Unpacked { bytes: 0, entries: 0 };
    // Directory modes and times are set once everything inside them is written.
    let mut directories: Vec<(PathBuf, u32, Option<SystemTime>)> = Vec::new();
    // Raw: the tar crate would read a long name or PAX header of any size into memory.
    let mut long = LongNames::default();
    for entry in archive.entries()?.raw(true) {
        let mut entry = entry?;
        let kind = entry.header().entry_type();
        if long.read(kind, &mut entry)? {
            continue;
        }
        let (path_bytes, link_bytes) = long.take(&entry);
        let raw = String::from_utf8_lossy(&path_bytes).into_owned();
        let Some(relative) = plain_path(&raw)? else {
            // `.` itself: the directory unpacked into.
            continue;
        };
        unpacked.entries += 1;
        if unpacked.entries > caps.entries {
            return Err(ArchiveError::TooManyEntries { cap: caps.entries });
        }
        let target = into.join(&relative);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let mtime = entry
            .header()
            .mtime()
            .ok()
            .map(|seconds| SystemTime::UNIX_EPOCH + Duration::from_secs(seconds));
        ensure_parents(into, &relative, &raw)?;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                if kind == EntryType::GNUSparse {
                    return Err(ArchiveError::Kind {
                        path: raw,
                        kind: "sparse file",
                    });
                }
                let size = entry.header().size()?;
                if unpacked.bytes.saturating_add(size) > caps.bytes {
                    return Err(ArchiveError::TooLarge { cap: caps.bytes });
                }
                let mut file = create_exclusive(&target, mode, &raw)?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut file)?;
                unpacked.bytes += copied;
                if let Some(mtime) = mtime {
                    file.set_modified(mtime)?;
                }
            }
            EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(meta) if meta.is_dir() => {}
                    Ok(_) => {
                        return Err(ArchiveError::Path {
                            path: raw,
                            why: "it would replace another entry",
                        });
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&target)?,
                    Err(e) => return Err(e.into()),
                }
                directories.push((target, mode, mtime));
            }
            EntryType::Symlink => {
                let link = link_bytes.ok_or(ArchiveError::Path {
                    path: raw.clone(),
                    why: "a symlink without a target",
                })?;
                let link = PathBuf::from(String::from_utf8_lossy(&link).into_owned());
                // Written as is and never followed here: where it points is the step's business,
                // inside the workspace it is unpacked into.
                std::os::unix::fs::symlink(&link, &target).map_err(|e| exists_refused(e, &raw))?;
            }
            EntryType::Link => {
                let link = link_bytes.ok_or(ArchiveError::Path {
                    path: raw.clone(),
                    why: "a hard link without a target",
                })?;
                let link = String::from_utf8_lossy(&link).into_owned();
                let Some(source) = plain_path(&link)? else {
                    return Err(ArchiveError::Path {
                        path: raw,
                        why: "a hard link to the directory itself",
                    });
                };
                // Only to a regular file unpacked before, reached without symlinks.
                ensure_parents(into, &source, &raw).map_err(|_| ArchiveError::Path {
                    path: raw.clone(),
                    why: "a hard link to something outside the outputs",
                })?;
                let source = into.join(source);
                match fs::symlink_metadata(&source) {
                    Ok(meta) if meta.file_type().is_file() => {
                        fs::hard_link(&source, &target).map_err(|e| exists_refused(e, &raw))?;
                    }
                    _ => {
                        return Err(ArchiveError::Path {
                            path: raw,
                            why: "a hard link to something that is not a file of the outputs",
                        });
                    }
                }
            }
            EntryType::Char => {
                return Err(ArchiveError::Kind {
                    path: raw,
                    kind: "character device",
                });
            }
            EntryType::Block => {
                return Err(ArchiveError::Kind {
                    path: raw,
                    kind: "block device",
                });
            }
            EntryType::Fifo => {
                return Err(ArchiveError::Kind {
                    path: raw,
                    kind: "FIFO",
                });
            }
            _ => {
                return Err(ArchiveError::Kind {
                    path: raw,
                    kind: "entry of an unknown type",
                });
            }
        }
    }
    for (directory, mode, mtime) in directories.into_iter().rev() {
        fs::set_permissions(&directory, fs::Permissions::from_mode(mode | 0o700))?;
        if let Some(mtime) = mtime {
            File::open(&directory)?.set_modified(mtime)?;
        }
    }
    Ok(unpacked)
}

/// The long path and link name an archive gives its next entry in entries of their own (GNU
/// `././@LongLink`, PAX `path` and `linkpath`), read only up to [`MAX_LONG_NAMES`] bytes.
#[derive(Debug, Default)]
struct LongNames {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

impl LongNames {
    /// Reads `entry` when it only names the next one (or is a PAX global header, ignored):
    /// `true` then.
    fn read(&mut self, kind: EntryType, entry: &mut impl Read) -> Result<bool, ArchiveError> {
        if !matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            return Ok(false);
        }
        let mut data = Vec::new();
        entry.take(MAX_LONG_NAMES + 1).read_to_end(&mut data)?;
        if data.len() as u64 > MAX_LONG_NAMES {
            return Err(ArchiveError::Path {
                path: format!("{kind:?}"),
                why: "a long name or extended header of more than 64 KiB",
            });
        }
        let trimmed = |mut name: Vec<u8>| {
            while name.last() == Some(&0) {
                name.pop();
            }
            name
        };
        match kind {
            EntryType::GNULongName => self.path = Some(trimmed(data)),
            EntryType::GNULongLink => self.link = Some(trimmed(data)),
            EntryType::XHeader => {
                for extension in tar::PaxExtensions::new(&data) {
                    let extension = extension?;
                    match extension.key_bytes() {
                        b"path" => self.path = Some(extension.value_bytes().to_vec()),
                        b"linkpath" => self.link = Some(extension.value_bytes().to_vec()),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        Ok(true)
    }

    /// The path and link name of `entry`: the long ones read before it, else its header's.
    fn take<R: Read>(&mut self, entry: &tar::Entry<'_, R>) -> (Vec<u8>, Option<Vec<u8>>) {
        let path = self.path.take().unwrap_or_else(|| entry.path_bytes().into_owned());
        let link = self
            .link
            .take()
            .or_else(|| entry.link_name_bytes().map(std::borrow::Cow::into_owned));
        (path, link)
    }
}

/// Replaces everything in `workspace` with everything in `fresh` (on the same filesystem), then
/// removes `fresh`. Nothing is followed: symlinks are removed or moved as links.
///
/// # Errors
/// When an entry cannot be removed or moved.
pub(super) fn replace_contents(workspace: &Path, fresh: &Path) -> io::Result<()> {
    for entry in fs::read_dir(workspace)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            fs::remove_dir_all(entry.path())?;
        } else {
            fs::remove_file(entry.path())?;
        }
    }
    for entry in fs::read_dir(fresh)? {
        let entry = entry?;
        fs::rename(entry.path(), workspace.join(entry.file_name()))?;
    }
    fs::remove_dir(fresh)
}

/// `raw` as a plain relative path (`None` for `.` itself).
///
/// # Errors
/// An absolute path, a `..`, or nothing at all.
fn plain_path(raw: &str) -> Result<Option<PathBuf>, ArchiveError> {
    let refuse = |why| ArchiveError::Path {
        path: raw.to_owned(),
        why,
    };
    if raw.is_empty() || raw.contains('\0') {
        return Err(refuse("an empty path"));
    }
    let mut plain = PathBuf::new();
    for component in Path::new(raw).components() {
        match component {
            Component::Normal(part) => plain.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("`..` would leave the workspace")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("an absolute path")),
        }
    }
    Ok((!plain.as_os_str().is_empty()).then_some(plain))
}

/// Makes sure every parent of `relative` under `root` is a real directory (creating missing
/// ones), never a symlink: nothing is ever written through one.
fn ensure_parents(root: &Path, relative: &Path, raw: &str) -> Result<(), ArchiveError> {
    let mut at = root.to_owned();
    let Some(parent) = relative.parent() else {
        return Ok(());
    };
    for part in parent.components() {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_dir() => {}
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(ArchiveError::Path {
                    path: raw.to_owned(),
                    why: "it would be written through a symlink",
                });
            }
            Ok(_) => {
                return Err(ArchiveError::Path {
                    path: raw.to_owned(),
                    why: "its parent is not a directory",
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir(&at)?,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// A new file at `path`, never an existing one and never through a symlink.
fn create_exclusive(path: &Path, mode: u32, raw: &str) -> Result<File, ArchiveError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode | 0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| exists_refused(e, raw))
        .and_then(|file| {
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            Ok(file)
        })
}

/// An entry whose path is taken: refused (an archive never names one path twice).
fn exists_refused(error: io::Error, raw: &str) -> ArchiveError {
    if error.kind() == io::ErrorKind::AlreadyExists {
        ArchiveError::Path {
            path: raw.to_owned(),
            why: "the archive names this path twice",
        }
    } else {
        error.into()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        bytes: 1 << 20,
        entries: 1000,
    };

    /// A tar archive written entry by entry with raw headers, so every hostile shape can be made.
    struct Crafted(tar::Builder<Vec<u8>>);

    impl Crafted {
        fn new() -> Self {
            Self(tar::Builder::new(Vec::new()))
        }

        fn header(kind: EntryType, path: &str, size: u64) -> tar::Header {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(kind);
            header.set_size(size);
            header.set_mode(0o644);
            // Written into the raw name field: `set_path` itself refuses `..` and absolute paths.
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            header.set_cksum();
            header
        }

        fn file(mut self, path: &str, content: &[u8]) -> Self {
            let header = Self::header(EntryType::Regular, path, content.len() as u64);
            self.0.append(&header, content).unwrap();
            self
        }

        fn dir(mut self, path: &str) -> Self {
            let header = Self::header(EntryType::Directory, path, 0);
            self.0.append(&header, io::empty()).unwrap();
            self
        }

        fn link(mut self, kind: EntryType, path: &str, target: &str) -> Self {
            let mut header = Self::header(kind, path, 0);
            let link = &mut header.as_old_mut().linkname;
            link[..target.len()].copy_from_slice(target.as_bytes());
            header.set_cksum();
            self.0.append(&header, io::empty()).unwrap();
            self
        }

        fn special(mut self, kind: EntryType, path: &str) -> Self {
            let header = Self::header(kind, path, 0);
            self.0.append(&header, io::empty()).unwrap();
            self
        }

        fn bytes(self) -> Vec<u8> {
            self.0.into_inner().unwrap()
        }
    }

    fn unpack_crafted(archive: Crafted, caps: Caps) -> (tempfile::TempDir, Result<Unpacked, ArchiveError>) {
        let outer = tempfile::tempdir().unwrap();
        let into = outer.path().join("fresh");
        fs::create_dir(&into).unwrap();
        let result = unpack(archive.bytes().as_slice(), &into, caps);
        (outer, result)
    }

    fn refusal(archive: Crafted, caps: Caps) -> String {
        let (outer, result) = unpack_crafted(archive, caps);
        let error = result.expect_err("the archive was unpacked").to_string();
        // Nothing was written beside the fresh directory.
        let beside: Vec<_> = fs::read_dir(outer.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(beside, ["fresh"], "{error}");
        error
    }

    #[test]
    fn a_workspace_comes_back_whole() {
        let workspace = tempfile::tempdir().unwrap();
        fs::create_dir_all(workspace.path().join("src/nested")).unwrap();
        fs::write(workspace.path().join("src/nested/main.rs"), "fn main() {}\n").unwrap();
        fs::write(workspace.path().join("run.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(workspace.path().join("run.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("src/nested/main.rs", workspace.path().join("link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", workspace.path().join("outside")).unwrap();
        let mut archive = Vec::new();
        pack(workspace.path(), &mut archive).unwrap();

        let target = tempfile::tempdir().unwrap();
        fs::write(target.path().join("stale"), "old").unwrap();
        let fresh = target.path().join(".fresh");
        let parent = tempfile::tempdir().unwrap();
        let fresh_dir = parent.path().join("fresh");
        fs::create_dir(&fresh_dir).unwrap();
        let unpacked = unpack(archive.as_slice(), &fresh_dir, CAPS).unwrap();
        assert_eq!(unpacked.bytes, 23);
        assert_eq!(unpacked.entries, 6);
        assert!(!fresh.exists());
        replace_contents(target.path(), &fresh_dir).unwrap();
        assert!(!fresh_dir.exists());
        assert!(!target.path().join("stale").exists());
        assert_eq!(
            fs::read_to_string(target.path().join("src/nested/main.rs")).unwrap(),
            "fn main() {}\n"
        );
        let mode = fs::metadata(target.path().join("run.sh")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        // Symlinks come back as symlinks, never as what they point at.
        assert_eq!(
            fs::read_link(target.path().join("link")).unwrap(),
            Path::new("src/nested/main.rs")
        );
        assert_eq!(
            fs::read_link(target.path().join("outside")).unwrap(),
            Path::new("/etc/passwd")
        );
    }

    #[test]
    fn paths_leaving_the_directory_are_refused() {
        for path in [
            "/etc/passwd",
            "../escape",
            "a/../../escape",
            "./../escape",
            "a/b/../../../x",
        ] {
            let error = refusal(Crafted::new().file(path, b"x"), CAPS);
            assert!(error.contains("is refused"), "{path}: {error}");
        }
    }

    #[test]
    fn nothing_is_written_through_a_symlink() {
        // A symlink to the outside, then a file "inside" it.
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().to_str().unwrap().to_owned();
        let error = refusal(
            Crafted::new()
                .link(EntryType::Symlink, "out", &target)
                .file("out/planted", b"x"),
            CAPS,
        );
        assert!(error.contains("through a symlink"), "{error}");
        assert!(!outside.path().join("planted").exists());
        // A symlink, then a file of the same name (which would write where it points).
        let error = refusal(
            Crafted::new()
                .link(EntryType::Symlink, "f", &format!("{target}/planted"))
                .file("f", b"x"),
            CAPS,
        );
        assert!(error.contains("twice"), "{error}");
        assert!(!outside.path().join("planted").exists());
        // A symlinked directory named again as a directory, then written into.
        let error = refusal(
            Crafted::new()
                .link(EntryType::Symlink, "d", &target)
                .dir("d")
                .file("d/x", b"x"),
            CAPS,
        );
        assert!(error.contains("replace another entry"), "{error}");
    }

    #[test]
    fn hard_links_reach_only_files_unpacked_before() {
        let outside = tempfile::NamedTempFile::new().unwrap();
        let error = refusal(
            Crafted::new().link(EntryType::Link, "l", outside.path().to_str().unwrap()),
            CAPS,
        );
        assert!(error.contains("absolute"), "{error}");
        let error = refusal(Crafted::new().link(EntryType::Link, "l", "../x"), CAPS);
        assert!(error.contains(".."), "{error}");
        let error = refusal(
            Crafted::new()
                .link(EntryType::Symlink, "s", "/etc")
                .link(EntryType::Link, "l", "s/passwd"),
            CAPS,
        );
        assert!(error.contains("outside the outputs"), "{error}");
        let error = refusal(
            Crafted::new()
                .link(EntryType::Symlink, "s", "/etc/passwd")
                .link(EntryType::Link, "l", "s"),
            CAPS,
        );
        assert!(error.contains("not a file"), "{error}");
        let (dir, result) = unpack_crafted(Crafted::new().file("a", b"same").link(EntryType::Link, "b", "a"), CAPS);
        result.unwrap();
        assert_eq!(fs::read(dir.path().join("fresh/b")).unwrap(), b"same");
    }

    #[test]
    fn devices_and_fifos_are_refused() {
        for (kind, name) in [
            (EntryType::Char, "character device"),
            (EntryType::Block, "block device"),
            (EntryType::Fifo, "FIFO"),
        ] {
            let error = refusal(Crafted::new().special(kind, "dev"), CAPS);
            assert!(error.contains(name), "{error}");
        }
    }

    #[test]
    fn caps_bound_bytes_and_entries() {
        let big = Crafted::new().file("a", &[7; 600]).file("b", &[7; 600]);
        let error = refusal(
            big,
            Caps {
                bytes: 1000,
                entries: 10,
            },
        );
        assert!(error.contains("more than 1000 bytes"), "{error}");
        let mut many = Crafted::new();
        for i in 0..11 {
            many = many.file(&format!("f{i}"), b"");
        }
        let error = refusal(
            many,
            Caps {
                bytes: 1000,
                entries: 10,
            },
        );
        assert!(error.contains("more than 10 entries"), "{error}");
    }

    #[test]
    fn long_names_are_read_within_a_cap() {
        // Names longer than a header holds come in entries of their own: GNU and PAX both.
        let deep = format!("{}/file", "d".repeat(150));
        let target = format!("{}/target", "t".repeat(150));
        let mut gnu = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(2);
        header.set_mode(0o644);
        gnu.append_data(&mut header, &deep, &b"ok"[..]).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(EntryType::Symlink);
        header.set_size(0);
        gnu.append_link(&mut header, "link", &target).unwrap();
        let mut pax = tar::Builder::new(Vec::new());
        pax.append_pax_extensions([("path", "pax/named/by/its/extension".as_bytes())])
            .unwrap();
        let mut header = tar::Header::new_ustar();
        header.set_path("short").unwrap();
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        pax.append(&header, &b"pax"[..]).unwrap();
        for (archive, path, content) in [
            (gnu, deep.as_str(), &b"ok"[..]),
            (pax, "pax/named/by/its/extension", b"pax"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            unpack(archive.into_inner().unwrap().as_slice(), dir.path(), CAPS).unwrap();
            assert_eq!(fs::read(dir.path().join(path)).unwrap(), content);
            if content == b"ok" {
                assert_eq!(fs::read_link(dir.path().join("link")).unwrap(), Path::new(&target));
            }
        }

        // A long name or extended header of a gigabyte would be read into memory whole: refused
        // once past the cap, before the rest is read.
        for kind in [EntryType::GNULongName, EntryType::GNULongLink, EntryType::XHeader] {
            // The entry claims 4 MiB of name, and they follow.
            let header = Crafted::header(kind, "././@LongLink", 4 << 20);
            let mut bytes = header.as_bytes().to_vec();
            bytes.extend(std::iter::repeat_n(b'a', 4 << 20));
            let outer = tempfile::tempdir().unwrap();
            let error = unpack(bytes.as_slice(), outer.path(), CAPS)
                .expect_err("a 4 MiB name was read")
                .to_string();
            assert!(error.contains("more than 64 KiB"), "{kind:?}: {error}");
        }
    }

    /// Base64 as busybox `base64` writes it: lines of 76 characters.
    pub(in crate::steps::kubernetes) fn base64(bytes: &[u8]) -> Vec<u8> {
        const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = Vec::new();
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let bits = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    text.push(ALPHABET[((bits >> (18 - 6 * i)) & 63) as usize]);
                } else {
                    text.push(b'=');
                }
            }
            if text.len() % 77 == 76 {
                text.push(b'\n');
            }
        }
        text.push(b'\n');
        text
    }

    #[test]
    fn base64_is_decoded_as_it_is_read() {
        for length in [0, 1, 2, 3, 4, 5, 57, 58, 1000] {
            let bytes: Vec<u8> = (0..length).map(|i: u32| i.wrapping_mul(7).to_le_bytes()[0]).collect();
            let mut decoded = Vec::new();
            Base64Reader::new(base64(&bytes).as_slice())
                .read_to_end(&mut decoded)
                .unwrap();
            assert_eq!(decoded, bytes, "{length}");
        }
        let mut decoded = Vec::new();
        Base64Reader::new(&b"aGVsbG8=\n"[..]).read_to_end(&mut decoded).unwrap();
        assert_eq!(decoded, b"hello");
        for bad in [&b"aGVs*G8="[..], b"aGVsbG8", b"aGVsbG8=aGVs", b"a==="] {
            let mut sink = Vec::new();
            assert!(
                Base64Reader::new(bad).read_to_end(&mut sink).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn special_bits_are_dropped() {
        let mut archive = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_path("suid").unwrap();
        header.set_size(1);
        header.set_mode(0o4755);
        header.set_cksum();
        archive.append(&header, &b"x"[..]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        unpack(archive.into_inner().unwrap().as_slice(), dir.path(), CAPS).unwrap();
        let mode = fs::metadata(dir.path().join("suid")).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o755);
    }
}
