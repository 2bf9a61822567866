//! Files and formats: the checkpoint container with its atomic writes, the
//! tensor codec, and labelled image datasets (IDX).

pub mod container;
pub mod dataset;
pub mod idx;
pub mod tensor_codec;
