//! The PNG figures moth writes: class-distance heatmaps (the paper's Fig. 7)
//! and trigger-size curves of one pair over training (its Fig. 6).

mod canvas;
pub mod curves;
mod font;
pub mod heatmap;
