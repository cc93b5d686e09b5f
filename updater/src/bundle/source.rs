//! Where a bundle's files come from: a directory, or a `.kbundle` tar file. Every read has a
//! size cap, checked before the bytes are kept.

use std::collections::HashMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("{name}: not found in {bundle}")]
    NotFound { name: String, bundle: String },
    #[error("{name}: larger than the {cap}-byte limit")]
    TooLarge { name: String, cap: u64 },
    #[error("{name}")]
    Io {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// A bundle's files, by name (`manifest.json`, `chunks/ab/….zst`).
pub trait BundleSource: Send + Sync {
    /// Reads the whole file, refusing more than `cap` bytes.
    fn read(&self, name: &str, cap: u64) -> Result<Vec<u8>, SourceError>;
    /// `len` bytes of `name` from `offset`: a reader that yields exactly those bytes or fails
    /// (a short file is an error from the reader). Sources without ranges refuse: a packed
    /// bundle cannot be read from them.
    fn read_range(
        &self,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        Err(SourceError::Io {
            name: format!("{name} bytes {offset}+{len}"),
            source: std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                format!("{} cannot read ranges", self.describe()),
            ),
        })
    }
    /// Whether the bundle has `name`.
    fn exists(&self, name: &str) -> Result<bool, SourceError> {
        match self.read(name, 0) {
            Ok(_) | Err(SourceError::TooLarge { .. }) => Ok(true),
            Err(SourceError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }
    /// For messages.
    fn describe(&self) -> String;
    /// Extra attempts for a chunk whose bytes arrived but did not verify (a network source may
    /// have handed out a damaged body; a local file will not change by asking again).
    fn corrupt_retries(&self) -> u32 {
        0
    }
}

/// `len` bytes of `f` from `offset`, reading no more than `avail` of them: an error if the
/// file (or `avail`) ended first.
fn range_of(
    mut f: fs::File,
    name: &str,
    offset: u64,
    avail: u64,
    len: u64,
) -> Result<Box<dyn Read + Send>, SourceError> {
    f.seek(SeekFrom::Start(offset))
        .map_err(|source| SourceError::Io {
            name: name.into(),
            source,
        })?;
    Ok(Box::new(Exact {
        r: f.take(avail),
        left: len,
    }))
}

/// Exactly `left` bytes of `r`: an end before them is an error.
struct Exact<R> {
    r: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// [`kiln_io::read_capped`] with the file's name in the error.
pub(crate) fn read_capped(r: impl Read, name: &str, cap: u64) -> Result<Vec<u8>, SourceError> {
    kiln_io::read_capped(r, cap).map_err(|e| match e {
        kiln_io::CappedError::TooLarge { cap } => SourceError::TooLarge {
            name: name.into(),
            cap,
        },
        kiln_io::CappedError::Io(source) => SourceError::Io {
            name: name.into(),
            source,
        },
    })
}

/// A bundle directory.
pub struct DirSource(pub PathBuf);

impl DirSource {
    fn open(&self, name: &str) -> Result<fs::File, SourceError> {
        fs::File::open(self.0.join(name)).map_err(|source| match source.kind() {
            std::io::ErrorKind::NotFound => SourceError::NotFound {
                name: name.into(),
                bundle: self.describe(),
            },
            _ => SourceError::Io {
                name: name.into(),
                source,
            },
        })
    }
}

impl BundleSource for DirSource {
    fn read(&self, name: &str, cap: u64) -> Result<Vec<u8>, SourceError> {
        let f = self.open(name)?;
        read_capped(f, name, cap)
    }
    fn read_range(
        &self,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let f = self.open(name)?;
        range_of(f, name, offset, len, len)
    }
    fn exists(&self, name: &str) -> Result<bool, SourceError> {
        match fs::metadata(self.0.join(name)) {
            Ok(m) => Ok(m.is_file()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(SourceError::Io {
                name: name.into(),
                source,
            }),
        }
    }
    fn describe(&self) -> String {
        self.0.display().to_string()
    }
}

/// A `.kbundle` file: an uncompressed tar of the bundle directory, indexed once on open.
pub struct KbundleSource {
    path: PathBuf,
    file: Mutex<fs::File>,
    index: HashMap<String, (u64, u64)>,
}

impl KbundleSource {
    pub fn open(path: &Path) -> Result<KbundleSource, SourceError> {
        let io = |source| SourceError::Io {
            name: path.display().to_string(),
            source,
        };
        let mut archive = tar::Archive::new(fs::File::open(path).map_err(io)?);
        let mut index = HashMap::new();
        for e in archive.entries().map_err(io)? {
            let e = e.map_err(io)?;
            let name = e
                .path()
                .map_err(io)?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            index.insert(name, (e.raw_file_position(), e.size()));
        }
        Ok(KbundleSource {
            path: path.into(),
            file: Mutex::new(fs::File::open(path).map_err(io)?),
            index,
        })
    }
}

impl BundleSource for KbundleSource {
    fn read(&self, name: &str, cap: u64) -> Result<Vec<u8>, SourceError> {
        let &(off, size) = self.index.get(name).ok_or_else(|| SourceError::NotFound {
            name: name.into(),
            bundle: self.describe(),
        })?;
        if size > cap {
            return Err(SourceError::TooLarge {
                name: name.into(),
                cap,
            });
        }
        let mut f = self.file.lock().expect("kbundle lock");
        f.seek(SeekFrom::Start(off))
            .map_err(|source| SourceError::Io {
                name: name.into(),
                source,
            })?;
        read_capped((&mut *f).take(size), name, cap)
    }
    fn read_range(
        &self,
        name: &str,
        offset: u64,
        len: u64,
    ) -> Result<Box<dyn Read + Send + '_>, SourceError> {
        let &(off, size) = self.index.get(name).ok_or_else(|| SourceError::NotFound {
            name: name.into(),
            bundle: self.describe(),
        })?;
        // Inside the member only: past its end the reader fails, it never reads the next one.
        let f = fs::File::open(&self.path).map_err(|source| SourceError::Io {
            name: name.into(),
            source,
        })?;
        let avail = size.saturating_sub(offset);
        range_of(f, name, off + offset.min(size), len.min(avail), len)
    }
    fn exists(&self, name: &str) -> Result<bool, SourceError> {
        Ok(self.index.contains_key(name))
    }
    fn describe(&self) -> String {
        self.path.display().to_string()
    }
}
