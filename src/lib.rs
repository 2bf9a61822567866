//! moth: MOTH model orthogonalisation for image classifiers.
#![deny(missing_docs)]

pub mod bounds;
pub mod cache;
pub mod checkpoint;
pub mod config;
pub mod data;
pub mod device;
pub mod distance;
pub mod error;
pub mod ffi;
pub mod heatmap;
pub mod inversion;
pub mod model;
pub mod runner;
pub mod scheduler;
pub mod session;
pub mod session_checkpoint;
pub mod stream;
pub mod train;
pub mod trigger;
pub mod two_sided;
pub mod warmup;

pub use error::{Error, Result};
