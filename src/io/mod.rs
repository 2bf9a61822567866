//! Files and formats: the checkpoint container with its atomic writes, the
//! tensor codec, and labelled image datasets (IDX, image folder trees,
//! NumPy arrays) with the detection of which one a path holds.

pub mod container;
pub mod data_source;
pub mod dataset;
pub mod idx;
pub mod image_folder;
pub mod numpy;
pub mod tensor_codec;
