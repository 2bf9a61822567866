//! The paper's concepts, on tensors only: no file, dataset or C ABI is
//! touched on this floor.

pub mod bounds;
pub mod cache;
pub mod collective;
pub mod cost_schedule;
pub mod distance;
pub mod inversion;
pub mod scheduler;
pub mod stamped_accuracy;
pub mod trigger;
pub mod two_sided;
pub mod warmup;
