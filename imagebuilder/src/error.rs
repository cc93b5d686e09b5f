use kiln_rootfs::RootfsError;

/// A spec problem: names the spec file and the field.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{file}: {}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
pub struct SpecError {
    pub file: String,
    pub field: String,
    pub message: String,
}

/// Anything that stops a build.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl BuildError {
    pub fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BuildError {
        let context = context.into();
        move |source| BuildError::Io { context, source }
    }
}
