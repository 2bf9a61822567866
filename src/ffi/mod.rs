//! The C ABI of moth (`include/moth.h`, generated from this module tree by
//! cbindgen; see `cbindgen.toml` and `scripts/gen-header.sh`). It is a thin
//! layer over the Rust API and holds no algorithm: each function checks its
//! pointers, locks the object it works on, calls one Rust method and maps
//! the outcome to a [`status::moth_status`].
//!
//! Rules every function follows (DESIGN.md "C ABI rules", STYLE.md):
//! - its body runs inside [`ffi_boundary!`](boundary), which catches panics;
//!   a panic while a session or classifier was held poisons that object;
//! - every pointer is checked (`MOTH_STATUS_NULL_POINTER`), every string is
//!   checked for UTF-8 (`MOTH_STATUS_INVALID_UTF8`), every input enumeration
//!   value is checked (they are plain `int32_t` in C);
//! - out-parameters are zeroed on entry and written only on success (the
//!   `needed` size of buffer functions is also written on
//!   `MOTH_STATUS_BUFFER_TOO_SMALL`);
//! - failures store a message on this thread and, for session calls, on the
//!   session; handles are `Box`es freed only by their `_free` function.

// The C names (`moth_session`, `moth_status`) are the Rust names, so that
// cbindgen emits them unchanged.
#![allow(non_camel_case_types)]
// The safety contract of every exported function is the same C contract
// (valid, aligned, live pointers of the documented types; buffers of the
// stated sizes), stated once in the header's preamble rather than in a
// `# Safety` section per function.
#![allow(clippy::missing_safety_doc)]
#![deny(unsafe_op_in_unsafe_fn)]
// The C ABI is made of raw pointers: unsafe is allowed here, and each block
// says why it is sound.
#![allow(unsafe_code)]

#[macro_use]
pub(crate) mod boundary;
pub mod buffer;
pub mod checkpoint;
pub mod classifier;
pub mod collective;
pub mod config;
pub mod distance;
pub(crate) mod handle;
pub mod host_classifier;
pub mod log;
pub mod report;
pub mod session;
pub mod status;
pub mod tensor;
pub mod trainer;
pub mod version;
