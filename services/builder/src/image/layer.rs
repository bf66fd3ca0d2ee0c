//! The layer built from the spec's `add` entries: the workspace's files, refused when they
//! leave the workspace or (for symlinks) the added tree, written as a reproducible gzipped tar
//! (see "Reproducibility" in the `image` module's docs) and hashed in the same pass.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use baton_schemas::pipeline::AddEntry;
use bytes::Bytes;
use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};

use super::config::parse_mode;
use super::error::ImageError;
use super::{Descriptor, LAYER_MEDIA_TYPE, sha256_digest};

/// Mode of directories the spec does not give one (implicit parents, walked directories).
const DIR_MODE: u32 = 0o755;
/// Mode of symlinks (ignored by Linux, written as tar tools do).
const SYMLINK_MODE: u32 = 0o777;
/// gzip level of the layer: part of the reproducibility contract, do not change lightly.
const GZIP_LEVEL: u32 = 6;

/// The layer built from the spec's `add` entries.
#[derive(Clone)]
pub struct Layer {
    /// The compressed tar, as uploaded.
    pub blob: Bytes,
    /// `sha256:<hex>` of [`blob`](Self::blob): the layer's digest in the manifest.
    pub digest: String,
    /// `sha256:<hex>` of the uncompressed tar: its entry in the config's `rootfs.diff_ids`.
    pub diff_id: String,
    /// The archive's paths in order (no leading `/`, directories end with `/`), for logs and
    /// tests.
    pub paths: Vec<String>,
}

impl fmt::Debug for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("digest", &self.digest)
            .field("diff_id", &self.diff_id)
            .field("size", &self.blob.len())
            .field("paths", &self.paths)
            .finish()
    }
}

impl Layer {
    /// The layer's descriptor in the manifest.
    pub fn descriptor(&self) -> Descriptor {
        Descriptor {
            media_type: LAYER_MEDIA_TYPE.to_owned(),
            digest: self.digest.clone(),
            size: self.blob.len() as u64,
            urls: Vec::new(),
        }
    }
}

/// Builds the reproducible layer holding the `add` entries (see the [`image`](super) module docs for what
/// "reproducible" covers). Blocking: call it from `spawn_blocking`.
///
/// A `from` naming a file is written at `to` (inside `to` if `to` ends with `/`); a `from`
/// naming a directory has its content written under `to`. `mode` applies to every file and
/// directory the entry adds (like Docker's `COPY --chmod`). When two entries write the same file,
/// the later one wins; a file and a directory at one path is an error.
///
/// # Errors
/// A `from` that is absolute, climbs out with `..` or resolves through a symlink outside the
/// workspace; a missing `from`; a `to` that is relative or has `..`; a symlink in an added
/// directory pointing outside it; a special file; I/O failures.
pub fn build_layer(workspace: &Path, add: &[AddEntry]) -> Result<Layer, ImageError> {
    let root = fs::canonicalize(workspace).map_err(|source| ImageError::Workspace {
        path: workspace.to_owned(),
        source,
    })?;
    let mut tree = Tree {
        root,
        nodes: BTreeMap::new(),
    };
    for (index, entry) in add.iter().enumerate() {
        tree.add(index, entry)?;
    }
    tree.write()
}

/// One entry of the layer.
#[derive(Debug)]
enum Node {
    Dir { mode: u32, implicit: bool },
    File { source: PathBuf, mode: u32 },
    Symlink { target: PathBuf },
}

/// The layer's entries, keyed by their path in the image (relative, no leading `/`); the
/// `BTreeMap` order (component by component) writes every parent before its children.
struct Tree {
    /// The canonical workspace.
    root: PathBuf,
    nodes: BTreeMap<PathBuf, Node>,
}

impl Tree {
    fn add(&mut self, index: usize, entry: &AddEntry) -> Result<(), ImageError> {
        let from_field = format!("image.add[{index}].from");
        let mode = match &entry.mode {
            Some(mode) => Some(parse_mode(mode).map_err(|message| ImageError::InvalidSpec {
                field: format!("image.add[{index}].mode"),
                message,
            })?),
            None => None,
        };
        let (to, into_dir) = image_path(&entry.to).map_err(|message| ImageError::InvalidSpec {
            field: format!("image.add[{index}].to"),
            message,
        })?;
        let outside = |reason: String| ImageError::PathOutsideWorkspace {
            field: from_field.clone(),
            path: entry.from.clone(),
            reason,
        };
        let relative = workspace_relative(&entry.from).map_err(outside)?;
        let source = self.root.join(&relative);
        let missing = || ImageError::SourceMissing {
            field: from_field.clone(),
            path: entry.from.clone(),
        };
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source: io::Error| match source.kind() {
                io::ErrorKind::NotFound => missing(),
                _ => ImageError::Workspace { path, source },
            }
        };
        fs::symlink_metadata(&source).map_err(io_error(&source))?;
        let resolved = fs::canonicalize(&source).map_err(io_error(&source))?;
        if !resolved.starts_with(&self.root) {
            return Err(outside(format!(
                "it resolves through a symlink to {}",
                resolved.display()
            )));
        }
        let metadata = fs::metadata(&resolved).map_err(io_error(&resolved))?;
        if metadata.is_dir() {
            if !to.as_os_str().is_empty() {
                self.insert(
                    to.clone(),
                    Node::Dir {
                        mode: mode.unwrap_or(DIR_MODE),
                        implicit: false,
                    },
                )?;
            }
            self.walk(&resolved, &resolved, &to, mode)
        } else if metadata.is_file() {
            let to = if into_dir {
                let name = resolved.file_name().ok_or_else(missing)?;
                to.join(name)
            } else {
                to
            };
            let mode = mode.unwrap_or_else(|| normalised_mode(metadata.permissions().mode()));
            self.insert(to, Node::File { source: resolved, mode })
        } else {
            Err(ImageError::UnsupportedFileType {
                path: entry.from.clone(),
                kind: file_kind(&metadata.file_type()),
            })
        }
    }

    /// Adds the content of `dir` (inside the added tree `tree`) under `image_dir`.
    fn walk(&mut self, tree: &Path, dir: &Path, image_dir: &Path, mode: Option<u32>) -> Result<(), ImageError> {
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| ImageError::Workspace { path, source }
        };
        let mut names = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_error(dir))? {
            names.push(entry.map_err(io_error(dir))?.file_name());
        }
        names.sort();
        for name in names {
            let path = dir.join(&name);
            let image_path = image_dir.join(&name);
            let metadata = fs::symlink_metadata(&path).map_err(io_error(&path))?;
            let kind = metadata.file_type();
            if kind.is_symlink() {
                let target = fs::read_link(&path).map_err(io_error(&path))?;
                self.check_symlink(tree, &path, &target)?;
                self.insert(image_path, Node::Symlink { target })?;
            } else if kind.is_dir() {
                self.insert(
                    image_path.clone(),
                    Node::Dir {
                        mode: mode.unwrap_or(DIR_MODE),
                        implicit: false,
                    },
                )?;
                self.walk(tree, &path, &image_path, mode)?;
            } else if kind.is_file() {
                let mode = mode.unwrap_or_else(|| normalised_mode(metadata.permissions().mode()));
                self.insert(image_path, Node::File { source: path, mode })?;
            } else {
                return Err(ImageError::UnsupportedFileType {
                    path: self.display(&path),
                    kind: file_kind(&kind),
                });
            }
        }
        Ok(())
    }

    /// A symlink at `link` (inside `tree`) may stay only if its target is relative and,
    /// resolved from the link's directory, does not leave `tree`.
    fn check_symlink(&self, tree: &Path, link: &Path, target: &Path) -> Result<(), ImageError> {
        let outside = || ImageError::SymlinkOutsideTree {
            link: self.display(link),
            target: target.display().to_string(),
            tree: self.display(tree),
        };
        if target.is_absolute() {
            return Err(outside());
        }
        let parent = link
            .parent()
            .and_then(|parent| parent.strip_prefix(tree).ok())
            .ok_or_else(outside)?;
        let mut depth: Vec<Component<'_>> = parent.components().collect();
        for component in target.components() {
            match component {
                Component::CurDir => {}
                Component::ParentDir => {
                    depth.pop().ok_or_else(outside)?;
                }
                Component::Normal(_) => depth.push(component),
                Component::RootDir | Component::Prefix(_) => return Err(outside()),
            }
        }
        Ok(())
    }

    /// Inserts `node` at `path`, creating missing parents as 0755 directories.
    fn insert(&mut self, path: PathBuf, node: Node) -> Result<(), ImageError> {
        for ancestor in path.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()) {
            match self.nodes.get(ancestor) {
                None => {
                    self.nodes.insert(
                        ancestor.to_owned(),
                        Node::Dir {
                            mode: DIR_MODE,
                            implicit: true,
                        },
                    );
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => {
                    return Err(ImageError::PathConflict {
                        path: format!("/{}", ancestor.display()),
                        reason: format!("is a file or symlink, yet `/{}` is added inside it", path.display()),
                    });
                }
            }
        }
        match (self.nodes.get(&path), &node) {
            // An implicit parent never overrides a directory already there.
            (Some(Node::Dir { .. }), Node::Dir { implicit: true, .. }) => {}
            (Some(Node::Dir { .. }), Node::File { .. } | Node::Symlink { .. })
            | (Some(Node::File { .. } | Node::Symlink { .. }), Node::Dir { .. }) => {
                return Err(ImageError::PathConflict {
                    path: format!("/{}", path.display()),
                    reason: "is added both as a directory and as a file".to_owned(),
                });
            }
            _ => {
                self.nodes.insert(path, node);
            }
        }
        Ok(())
    }

    /// Writes the tar through gzip, hashing the uncompressed stream on the way.
    fn write(self) -> Result<Layer, ImageError> {
        let gzip = GzBuilder::new()
            .mtime(0)
            .write(Vec::new(), Compression::new(GZIP_LEVEL));
        let mut archive = tar::Builder::new(HashingWriter {
            inner: gzip,
            hasher: Sha256::new(),
        });
        let mut paths = Vec::with_capacity(self.nodes.len());
        for (path, node) in &self.nodes {
            let failed = |source| ImageError::Workspace {
                path: path.clone(),
                source,
            };
            let mut header = tar::Header::new_gnu();
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            header.set_size(0);
            match node {
                Node::Dir { mode, .. } => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    let mut name = path.as_os_str().to_owned();
                    name.push("/");
                    archive.append_data(&mut header, &name, io::empty()).map_err(failed)?;
                    paths.push(name.to_string_lossy().into_owned());
                }
                Node::File { source, mode } => {
                    let data = fs::read(source).map_err(|source_error| ImageError::Workspace {
                        path: source.clone(),
                        source: source_error,
                    })?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(data.len() as u64);
                    archive
                        .append_data(&mut header, path, data.as_slice())
                        .map_err(failed)?;
                    paths.push(path.to_string_lossy().into_owned());
                }
                Node::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_mode(SYMLINK_MODE);
                    archive.append_link(&mut header, path, target).map_err(failed)?;
                    paths.push(path.to_string_lossy().into_owned());
                }
            }
        }
        let finished = |source| ImageError::Workspace {
            path: PathBuf::from("<layer>"),
            source,
        };
        let HashingWriter { inner, hasher } = archive.into_inner().map_err(finished)?;
        let blob = Bytes::from(inner.finish().map_err(finished)?);
        Ok(Layer {
            digest: sha256_digest(&blob),
            diff_id: format!("sha256:{}", hex::encode(hasher.finalize())),
            blob,
            paths,
        })
    }

    /// `path` relative to the workspace, for messages.
    fn display(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
    }
}

/// `from` as a normalised path inside the workspace; `Err` says how it leaves it.
fn workspace_relative(from: &str) -> Result<PathBuf, String> {
    let path = Path::new(from);
    if path.is_absolute() {
        return Err("it is an absolute path".to_owned());
    }
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !relative.pop() {
                    return Err("its `..` climbs above the repository root".to_owned());
                }
            }
            Component::Normal(part) => relative.push(part),
            Component::RootDir | Component::Prefix(_) => return Err("it is an absolute path".to_owned()),
        }
    }
    Ok(relative)
}

/// `to` as a relative path in the image (empty for `/`), and whether it ends with `/`.
fn image_path(to: &str) -> Result<(PathBuf, bool), String> {
    if !to.starts_with('/') {
        return Err(format!("`{to}` must be an absolute path in the image, e.g. `/{to}`"));
    }
    let mut relative = PathBuf::new();
    for component in Path::new(to).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => relative.push(part),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("`{to}` must not contain `..`; write the normalised path"));
            }
        }
    }
    Ok((relative, to.ends_with('/')))
}

/// The mode git would record: executable or not, nothing else of the checkout's umask.
fn normalised_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

fn file_kind(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "named pipe"
    } else if kind.is_socket() {
        "socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "device"
    } else {
        "special file"
    }
}

/// Passes bytes on to `inner` and hashes them: the tar's uncompressed digest, computed in the
/// same pass that compresses it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let written = self.inner.write(buf)?;
        self.hasher.update(&buf[..written]);
        Ok(written)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, SystemTime};

    fn add(from: &str, to: &str, mode: Option<&str>) -> AddEntry {
        AddEntry {
            from: from.into(),
            to: to.into(),
            mode: mode.map(Into::into),
        }
    }

    fn write(dir: &Path, path: &str, content: &str, mode: u32) {
        let path = dir.join(path);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, content).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// One entry of a layer, read back with the `tar` crate.
    #[derive(Debug)]
    struct Entry {
        path: String,
        kind: tar::EntryType,
        mode: u32,
        /// `(mtime, uid, gid, user name)`: what must never vary.
        fixed: (u64, u64, u64, String),
        /// File content or symlink target.
        content: String,
    }

    /// The layer's entries, after checking its `diff_id` is the uncompressed tar's digest.
    fn entries(layer: &Layer) -> Vec<Entry> {
        let mut raw = Vec::new();
        flate2::read::GzDecoder::new(&layer.blob[..])
            .read_to_end(&mut raw)
            .unwrap();
        assert_eq!(layer.diff_id, sha256_digest(&raw));
        let mut archive = tar::Archive::new(&raw[..]);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let header = entry.header().clone();
                let mut content = String::new();
                entry.read_to_string(&mut content).unwrap();
                if let Some(link) = entry.link_name().unwrap() {
                    content = link.display().to_string();
                }
                Entry {
                    path: entry.path().unwrap().display().to_string(),
                    kind: header.entry_type(),
                    mode: header.mode().unwrap(),
                    fixed: (
                        header.mtime().unwrap(),
                        header.uid().unwrap(),
                        header.gid().unwrap(),
                        header.username().unwrap().unwrap_or_default().to_owned(),
                    ),
                    content,
                }
            })
            .collect()
    }

    fn sample_workspace(dir: &Path, file_mode: u32, exec_mode: u32) {
        write(dir, "target/release/shop", "#!binary", exec_mode);
        write(dir, "static/index.html", "<h1>shop</h1>", file_mode);
        write(dir, "static/css/site.css", "body{}", file_mode);
        symlink("index.html", dir.join("static/home.html")).unwrap();
        symlink("../index.html", dir.join("static/css/up.html")).unwrap();
    }

    fn sample_add() -> Vec<AddEntry> {
        vec![
            add("target/release/shop", "/app/bin/shop", None),
            add("./static", "/app/static", None),
        ]
    }

    #[test]
    fn layer_has_sorted_entries_parents_and_fixed_metadata() {
        let dir = tempfile::tempdir().unwrap();
        sample_workspace(dir.path(), 0o644, 0o755);

        let layer = build_layer(dir.path(), &sample_add()).unwrap();

        let entries = entries(&layer);
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "app/",
                "app/bin/",
                "app/bin/shop",
                "app/static/",
                "app/static/css/",
                "app/static/css/site.css",
                "app/static/css/up.html",
                "app/static/home.html",
                "app/static/index.html",
            ]
        );
        assert_eq!(layer.paths, names);
        for entry in &entries {
            assert_eq!(entry.fixed, (0, 0, 0, String::new()), "{entry:?}");
        }
        let by_name = |name: &str| entries.iter().find(|e| e.path == name).unwrap();
        assert_eq!(
            (by_name("app/").kind, by_name("app/").mode),
            (tar::EntryType::Directory, 0o755)
        );
        let shop = by_name("app/bin/shop");
        assert_eq!(
            (shop.kind, shop.mode, shop.content.as_str()),
            (tar::EntryType::Regular, 0o755, "#!binary")
        );
        assert_eq!(by_name("app/static/index.html").mode, 0o644);
        let home = by_name("app/static/home.html");
        assert_eq!(
            (home.kind, home.content.as_str()),
            (tar::EntryType::Symlink, "index.html")
        );
        assert_eq!(by_name("app/static/css/up.html").content, "../index.html");
        assert!(layer.blob.starts_with(&[0x1f, 0x8b]), "gzip");
    }

    #[test]
    fn same_contents_give_the_same_digest_whatever_the_checkout() {
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        sample_workspace(first.path(), 0o644, 0o755);
        // Another checkout: another umask (group-writable), other mtimes.
        sample_workspace(second.path(), 0o664, 0o775);
        let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        fs::File::options()
            .write(true)
            .open(second.path().join("static/index.html"))
            .unwrap()
            .set_modified(old)
            .unwrap();

        let a = build_layer(first.path(), &sample_add()).unwrap();
        let b = build_layer(second.path(), &sample_add()).unwrap();
        let again = build_layer(first.path(), &sample_add()).unwrap();

        assert_eq!(a.blob, b.blob, "byte-identical layers");
        assert_eq!((&a.digest, &a.diff_id), (&b.digest, &b.diff_id));
        assert_eq!(a.digest, again.digest);

        write(second.path(), "static/index.html", "<h1>changed</h1>", 0o644);
        let changed = build_layer(second.path(), &sample_add()).unwrap();
        assert_ne!(changed.digest, a.digest);
    }

    #[test]
    fn spec_mode_applies_to_what_the_entry_adds() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "run.sh", "echo", 0o644);
        write(dir.path(), "conf/a.yaml", "a: 1", 0o644);
        let layer = build_layer(
            dir.path(),
            &[
                add("run.sh", "/usr/local/bin/", Some("0750")),
                add("conf", "/etc/app", Some("0700")),
            ],
        )
        .unwrap();
        let entries = entries(&layer);
        let mode = |name: &str| entries.iter().find(|e| e.path == name).unwrap().mode;
        assert_eq!(
            mode("usr/local/bin/run.sh"),
            0o750,
            "a `to` ending in / receives the file"
        );
        assert_eq!(mode("usr/local/bin/"), 0o755, "implicit parents");
        assert_eq!(mode("etc/app/"), 0o700);
        assert_eq!(mode("etc/app/a.yaml"), 0o700);
    }

    #[test]
    fn paths_leaving_the_workspace_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let workspace = dir.path().join("ws");
        write(&workspace, "app", "x", 0o755);
        write(dir.path(), "secret", "s", 0o644);
        symlink("../secret", workspace.join("link-out")).unwrap();
        symlink("app", workspace.join("link-in")).unwrap();

        let error = |from: &str| build_layer(&workspace, &[add(from, "/x", None)]).unwrap_err();

        let e = error("../secret");
        assert!(matches!(e, ImageError::PathOutsideWorkspace { .. }), "{e}");
        assert!(
            e.to_string().contains("image.add[0].from") && e.to_string().contains(".."),
            "{e}"
        );
        let e = error("sub/../../secret");
        assert!(matches!(e, ImageError::PathOutsideWorkspace { .. }), "{e}");
        let e = error("/etc/passwd");
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = error("link-out");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(!e.is_transient());
        let e = error("missing/file");
        assert!(matches!(e, ImageError::SourceMissing { .. }), "{e}");
        assert!(e.to_string().contains("`missing/file` does not exist"), "{e}");

        build_layer(&workspace, &[add("link-in", "/x", None)]).expect("a symlink inside the workspace is followed");
        build_layer(&workspace, &[add("sub/../app", "/x", None)]).expect("`..` that stays inside is fine");
    }

    #[test]
    fn symlinks_leaving_the_added_tree_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "site/index.html", "x", 0o644);
        write(dir.path(), "other.txt", "x", 0o644);
        symlink("../other.txt", dir.path().join("site/escape")).unwrap();
        let e = build_layer(dir.path(), &[add("site", "/srv", None)]).unwrap_err();
        assert!(matches!(e, ImageError::SymlinkOutsideTree { .. }), "{e}");
        assert!(
            e.to_string().contains("site/escape") && e.to_string().contains("../other.txt"),
            "{e}"
        );

        fs::remove_file(dir.path().join("site/escape")).unwrap();
        symlink("/etc/passwd", dir.path().join("site/absolute")).unwrap();
        let e = build_layer(dir.path(), &[add("site", "/srv", None)]).unwrap_err();
        assert!(matches!(e, ImageError::SymlinkOutsideTree { .. }), "{e}");
    }

    #[test]
    fn bad_targets_and_conflicts_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a", "x", 0o644);
        write(dir.path(), "d/b", "x", 0o644);
        let error = |entries: &[AddEntry]| build_layer(dir.path(), entries).unwrap_err().to_string();
        assert!(error(&[add("a", "relative", None)]).contains("image.add[0].to"));
        assert!(error(&[add("a", "/app/../etc/x", None)]).contains("`..`"));
        assert!(error(&[add("a", "/x", Some("999"))]).contains("image.add[0].mode"));
        assert!(error(&[add("a", "/x", None), add("d", "/x", None)]).contains("both as a directory and as a file"));
        assert!(error(&[add("a", "/x", None), add("a", "/x/y", None)]).contains("is added inside it"));
        // The later file wins over the earlier.
        build_layer(dir.path(), &[add("a", "/x", None), add("d/b", "/x", None)]).unwrap();
    }
}
