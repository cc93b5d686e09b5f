use std::path::PathBuf;

/// Everything that can go wrong while assembling a root tree or making its image.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("{source_name}: member {member:?} escapes the root ({why})")]
    Escape {
        source_name: String,
        member: String,
        why: &'static str,
    },
    #[error("{source_name}: whiteout {member:?} refused ({why})")]
    Whiteout {
        source_name: String,
        member: String,
        why: &'static str,
    },
    #[error("{source_name}: {member:?} takes the extracted root past {cap} bytes (the root partition's size: raise partitions.root)")]
    ExtractCap {
        source_name: String,
        member: String,
        cap: u64,
    },
    #[error("{source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {stderr}")]
    Tool {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("root tree needs {needed} bytes but the root slot holds {slot} bytes (raise partitions.root)")]
    TooLarge { needed: u64, slot: u64 },
    #[error("{0}: not found")]
    Missing(PathBuf),
    #[error("dm-verity tree of {path}: {reason}")]
    Verity { path: PathBuf, reason: String },
}

impl RootfsError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RootfsError {
        let context = context.into();
        move |source| RootfsError::Io { context, source }
    }
}
