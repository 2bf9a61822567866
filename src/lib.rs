//! moth: MOTH model orthogonalisation for image classifiers.
//!
//! The crate is built in floors, each using only the ones below it (see
//! `ARCHITECTURE.md`):
//!
//! - [`ffi`]: the C ABI, a thin shell over the floors below;
//! - [`runner`]: moth's own training loop around a session;
//! - [`session`]: the resumable hardening state machine;
//! - [`algo`]: the paper's concepts (triggers, inversion, scheduler, ...);
//! - [`torch`]: libtorch glue (models, devices, streams, optimisers);
//! - [`io`]: files and formats (checkpoint container, tensor codec, datasets);
//! - [`config`] and [`error`]: settings and errors that every floor shares.
#![deny(missing_docs)]
#![deny(unsafe_code)]

pub mod algo;
pub mod config;
pub mod error;
pub mod ffi;
pub mod io;
pub mod labels;
pub mod runner;
pub mod session;
pub mod torch;

pub use error::{Error, Result};
