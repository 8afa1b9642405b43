//! Opening a qcow2 image and its chain without letting imago follow a
//! single header name: imago parses each header, we read the backing and
//! data-file names it found, resolve them with [`Resolver`] (or, for
//! `--format auto`, refuse any), open the files ourselves and hand imago
//! the open storage objects (`set_backing`, `set_data_file`). Nothing goes
//! through an implicit-open gate.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use imago::qcow2::Qcow2;
use imago::raw::Raw;
use imago::{DenyImplicitOpenGate, FormatAccess, FormatDriverBuilder, StorageOpenOptions};

use crate::chain::{ChainError, ChainFile, Resolver};
use crate::config::CacheMode;

/// First four bytes of every qcow2 image.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// Longest backing chain followed.
pub const MAX_DEPTH: usize = 16;

/// Storage objects: files we opened.
pub type Storage = imago::file::File;

/// The synchronous qcow2 driver over files we opened.
pub type Qcow2Access = FormatAccess<Storage>;

/// Why a qcow2 image (or its chain) cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2ChainError {
    /// imago refused the image.
    #[error("cannot open qcow2 image {0}")]
    Open(PathBuf, #[source] std::io::Error),
    /// A name in a header is not allowed, or an allowed file is unusable.
    #[error(transparent)]
    Chain(#[from] ChainError),
    /// `--format auto` found a header that names another file.
    #[error(
        "--format auto refuses {image}: its qcow2 header names {what} {name:?}. \
         A guest can write its own sector 0, so auto never follows a name: \
         use --format raw, or --format qcow2 with --backing-dir/--backing/--data-file"
    )]
    AutoRefused {
        /// The image.
        image: PathBuf,
        /// "backing file" or "external data file".
        what: &'static str,
        /// The name (empty if the header only sets the data-file bit).
        name: String,
    },
    /// The header's backing format is neither qcow2 nor raw.
    #[error("{image}: backing format {format:?} is not supported (qcow2 or raw)")]
    BackingFormat {
        /// The image naming it.
        image: PathBuf,
        /// The format name.
        format: String,
    },
    /// A backing image with its own external data file.
    #[error("backing image {0} has an external data file, which is not supported")]
    BackingDataFile(PathBuf),
    /// The chain is too long (or loops).
    #[error("{0}: backing chain longer than {MAX_DEPTH} images")]
    TooDeep(PathBuf),
}

/// An open qcow2 image and every file it uses.
#[derive(Debug)]
pub struct OpenedQcow2 {
    /// The driver.
    pub access: Qcow2Access,
    /// The image, its data file and its backing chain, for Landlock.
    pub files: Vec<ChainFile>,
}

/// Whether `file` starts with the qcow2 magic (read through an aligned
/// buffer, so O_DIRECT descriptors work too).
pub fn has_qcow2_magic(file: &File) -> bool {
    #[repr(align(4096))]
    struct Block([u8; 4096]);
    let mut buf = Box::new(Block([0; 4096]));
    matches!(file.read_at(&mut buf.0, 0), Ok(n) if n >= 4) && buf.0[..4] == QCOW2_MAGIC
}

/// Opens `file`, the image at `path` (opened by the caller read-only or
/// read-write and with the cache mode's flags), as qcow2. With `resolver`
/// `None` (`--format auto`) any header naming another file is refused.
pub fn open(
    path: &Path,
    file: File,
    read_only: bool,
    cache: CacheMode,
    resolver: Option<&Resolver>,
) -> Result<OpenedQcow2, Qcow2ChainError> {
    let open_err = |e| Qcow2ChainError::Open(path.to_owned(), e);
    let mut files = vec![ChainFile::of(path, &file, !read_only)?];
    let storage = wrap(file, !read_only, cache).map_err(open_err)?;
    let mut qcow2 = Qcow2::<Storage>::open_image(storage, !read_only).map_err(open_err)?;
    match resolver {
        None => {
            refuse_names(path, &qcow2)?;
            qcow2.set_data_file(None);
            qcow2.set_backing(None);
        }
        Some(resolver) => {
            if qcow2.requires_external_data_file() {
                let name = qcow2.implicit_external_data_file().map(String::as_str);
                let dsync = if cache.dsync() { libc::O_DSYNC } else { 0 };
                let data = resolver.data_file(path, name, read_only, dsync)?;
                files.push(ChainFile::of(&data.path, &data.file, !read_only)?);
                let data_storage = wrap(data.file, !read_only, cache)
                    .map_err(|e| Qcow2ChainError::Open(data.path.clone(), e))?;
                qcow2.set_data_file(Some(data_storage));
            } else {
                resolver.no_data_file(path)?;
                qcow2.set_data_file(None);
            }
            let backing = backing_of(path, &qcow2, resolver, cache, &mut files, 1)?;
            qcow2.set_backing(backing);
        }
    }
    Ok(OpenedQcow2 {
        access: FormatAccess::new(qcow2),
        files,
    })
}

/// `--format auto`: the header must name no other file.
fn refuse_names(path: &Path, qcow2: &Qcow2<Storage>) -> Result<(), Qcow2ChainError> {
    let refused = |what, name: Option<&String>| Qcow2ChainError::AutoRefused {
        image: path.to_owned(),
        what,
        name: name.cloned().unwrap_or_default(),
    };
    if let Some(name) = qcow2.implicit_backing_file() {
        return Err(refused("backing file", Some(name)));
    }
    if qcow2.requires_external_data_file() || qcow2.implicit_external_data_file().is_some() {
        return Err(refused(
            "external data file",
            qcow2.implicit_external_data_file(),
        ));
    }
    Ok(())
}

/// The backing image `qcow2` (at `path`) names, opened read-only under
/// `resolver`, with its own chain; `None` if it names none.
fn backing_of(
    path: &Path,
    qcow2: &Qcow2<Storage>,
    resolver: &Resolver,
    cache: CacheMode,
    files: &mut Vec<ChainFile>,
    depth: usize,
) -> Result<Option<Qcow2Access>, Qcow2ChainError> {
    let Some(name) = qcow2.implicit_backing_file() else {
        return Ok(None);
    };
    if depth > MAX_DEPTH {
        return Err(Qcow2ChainError::TooDeep(path.to_owned()));
    }
    let opened = resolver.backing(path, name)?;
    files.push(ChainFile::of(&opened.path, &opened.file, false)?);
    let is_qcow2 = match qcow2.implicit_backing_format().map(String::as_str) {
        Some("qcow2") => true,
        Some("raw") | Some("file") => false,
        // Backing files are read-only to every user of the chain; an
        // allowed file that turns out to be qcow2 has its own names checked
        // under the same policy.
        None => has_qcow2_magic(&opened.file),
        Some(other) => {
            return Err(Qcow2ChainError::BackingFormat {
                image: path.to_owned(),
                format: other.to_owned(),
            });
        }
    };
    let open_err = |e| Qcow2ChainError::Open(opened.path.clone(), e);
    let backing_storage = wrap(opened.file, false, cache).map_err(open_err)?;
    let access = if is_qcow2 {
        let mut inner = Qcow2::<Storage>::open_image(backing_storage, false).map_err(open_err)?;
        if inner.requires_external_data_file() {
            return Err(Qcow2ChainError::BackingDataFile(opened.path));
        }
        inner.set_data_file(None);
        let next = backing_of(&opened.path, &inner, resolver, cache, files, depth + 1)?;
        inner.set_backing(next);
        FormatAccess::new(inner)
    } else {
        let raw = Raw::builder(backing_storage)
            .write(false)
            .open(DenyImplicitOpenGate::default())
            .map_err(open_err)?;
        FormatAccess::new(raw)
    };
    Ok(Some(access))
}

/// Wraps a file we opened as an imago storage object (no file name: imago
/// cannot resolve anything relative to it).
fn wrap(file: File, writable: bool, cache: CacheMode) -> std::io::Result<Storage> {
    Storage::from_open_file(
        file,
        StorageOpenOptions::new()
            .write(writable)
            .direct(cache.direct()),
    )
}
