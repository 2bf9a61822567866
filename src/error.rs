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
    /// Input data (a batch, labels, a tensor) does not fit what was expected;
    /// [`InputError::kind`] says in which way.
    #[error("invalid input: {0}")]
    Input(InputError),
    /// The call is not allowed in the session's current phase;
    /// [`PhaseError::kind`] says what the session waits for.
    #[error("wrong phase: {0}")]
    Phase(PhaseError),
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
    /// libtorch reported an error (shown without its C++ backtrace).
    #[error("libtorch: {}", torch_message(.0))]
    Torch(#[from] tch::TchError),
    /// A caller-supplied callback (a forward pass or train/eval switch of a
    /// model behind the C ABI) failed; the message says which callback,
    /// its status and the reason it left, if any.
    #[error("{0}")]
    Callback(String),
    /// The model's outputs cannot be used: an inversion diverged on
    /// non-finite logits, or a step would have put non-finite values into
    /// the session. Not [`Error::Input`]: the caller's data was fine.
    #[error("unusable model output: {0}")]
    Model(String),
    /// The caller asked a long computation to stop (a progress callback
    /// answered "cancel"); nothing it would have produced was kept.
    #[error("cancelled: {0}")]
    Cancelled(String),
    /// The data-parallel ranks could not agree: the trainer's collective
    /// hook failed or timed out, the ranks are out of step, or a session
    /// hardened by N ranks was asked to continue with another number.
    #[error("data-parallel: {0}")]
    Collective(String),
    /// A value could not be serialised (to JSON, to a checkpoint payload):
    /// not the caller's input, so not [`Error::Input`].
    #[error("cannot serialise {what}: {message}")]
    Encode {
        /// What was being serialised ("the configuration").
        what: String,
        /// The serialiser's message.
        message: String,
    },
}

/// In which way input data was wrong, for callers that react differently
/// (the C ABI gives each its own status code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// A tensor has the wrong shape (or the batch is empty).
    WrongShape,
    /// A tensor has the wrong element type.
    WrongDtype,
    /// A label is outside `[0, num_classes)`.
    LabelOutOfRange,
    /// Values outside their domain: NaN or infinite, pixels outside
    /// `[0, 1]`, an accuracy outside `[0, 1]`.
    InvalidValue,
    /// Anything else.
    Other,
}

/// The payload of [`Error::Input`]: what kind of problem, and a message
/// that names the values concerned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InputError {
    /// In which way the input was wrong.
    pub kind: InputKind,
    /// What was wrong, with the offending values.
    pub message: String,
}

/// Why a call does not fit the session's phase, for callers that react
/// differently (a trainer stops on `Done` and reports accuracy on
/// `AccuracyReportDue`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PhaseKind {
    /// The session finished; nothing is left to harden.
    Done,
    /// A clean-accuracy report is due before the next step.
    AccuracyReportDue,
    /// Anything else (e.g. an accuracy report that nobody asked for).
    Other,
}

/// The payload of [`Error::Phase`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PhaseError {
    /// What the session waits for.
    pub kind: PhaseKind,
    /// The explanation shown to the user.
    pub message: String,
}

/// The longest libtorch message moth passes on, in bytes.
pub const TORCH_MESSAGE_MAX: usize = 1024;

/// libtorch's message without the C++ backtrace (`Exception raised from
/// ...`, one `frame #N` line per stack frame) it appends, without tch's
/// "Internal torch error" label (most such errors are the caller's
/// tensors or model, not a fault inside libtorch), and at most
/// [`TORCH_MESSAGE_MAX`] bytes: kilobytes of C++ tell a user nothing.
pub fn torch_message(e: &tch::TchError) -> String {
    let full = match e {
        tch::TchError::Torch(m) => m.clone(),
        other => other.to_string(),
    };
    let end = full.find("Exception raised from").unwrap_or(full.len());
    bounded(full[..end].trim_end(), TORCH_MESSAGE_MAX)
}

/// `text` cut to at most `max` bytes, at a character boundary, with a mark
/// where it was cut.
fn bounded(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mark = " [...]";
    let mut cut = max.saturating_sub(mark.len());
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{mark}", &text[..cut])
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

    /// An input error of no more precise kind.
    pub fn input(message: impl Into<String>) -> Self {
        Self::input_of(InputKind::Other, message)
    }

    /// An input error of the given kind.
    pub fn input_of(kind: InputKind, message: impl Into<String>) -> Self {
        Error::Input(InputError {
            kind,
            message: message.into(),
        })
    }

    /// A phase error of the given kind.
    pub fn phase(kind: PhaseKind, message: impl Into<String>) -> Self {
        Error::Phase(PhaseError {
            kind,
            message: message.into(),
        })
    }

    /// A serialisation failure of `what` (serde_json's or bincode's error
    /// as `err`).
    pub fn encode(what: impl Into<String>, err: impl std::fmt::Display) -> Self {
        Error::Encode {
            what: what.into(),
            message: err.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_messages_lose_their_backtrace() {
        let e = tch::TchError::Torch(
            "open file failed: No such file\nException raised from RAIIFile at x.cpp:1\n\
             frame #0: c10::Error::Error() + 0x1\nframe #1: f + 0x2"
                .into(),
        );
        assert_eq!(torch_message(&e), "open file failed: No such file");
        assert_eq!(
            Error::Torch(e).to_string(),
            "libtorch: open file failed: No such file"
        );
        let plain = tch::TchError::Torch("shape mismatch".into());
        assert_eq!(torch_message(&plain), "shape mismatch");
    }

    #[test]
    fn long_torch_messages_are_cut() {
        let e = tch::TchError::Torch("é".repeat(3000));
        let m = torch_message(&e);
        assert!(
            m.len() <= TORCH_MESSAGE_MAX && m.ends_with(" [...]"),
            "{}",
            m.len()
        );
    }
}
