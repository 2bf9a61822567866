//! The crate's error type. Every fallible call in moth returns [`Result`];
//! libtorch failures arrive as [`Error::Torch`] because moth only uses tch's
//! `f_*` methods, which report instead of panicking.

use std::path::PathBuf;

/// Everything that can go wrong in moth, grouped by who has to act on it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of its allowed range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Input data (a batch, labels, a tensor) does not fit what was expected.
    #[error("invalid input: {0}")]
    Input(String),
    /// The call is not allowed in the session's current phase.
    #[error("wrong phase: {0}")]
    Phase(String),
    /// A file could not be parsed (IDX dataset, checkpoint, model).
    #[error("{path}: {message}")]
    Format {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A checkpoint was refused; the message says why.
    #[error("checkpoint rejected: {0}")]
    Checkpoint(String),
    /// The requested device is not available.
    #[error("device: {0}")]
    Device(String),
    /// The operation needs something this build or machine lacks (CUDA
    /// streams without CUDA).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// An operating-system I/O error, with the path when there is one.
    #[error("{context}: {source}")]
    Io {
        /// What moth was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// libtorch reported an error.
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Result alias used across moth.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with a short description of what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A parse error located in a file.
    pub fn format(path: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            message: message.into(),
        }
    }
}
