//! libtorch glue: the classifier abstraction, devices, CUDA streams and
//! moth's own optimisers. `sys` holds every call into C libraries
//! (`dlopen`, `dlsym`), the only `unsafe` code outside the C ABI.

pub mod device;
pub mod grad;
pub mod gradient;
pub mod model;
pub mod stream;
pub(crate) mod sys;
pub mod train;
pub mod trainer;
