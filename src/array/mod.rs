//! Element types and the views over slots.
//!
//! Views are built in [`crate::ring`] from the one slice a slot grant yields, with the safe
//! `ArrayView::from_shape`, never `from_shape_ptr`.

mod dtype;

pub use dtype::{DType, Element};
