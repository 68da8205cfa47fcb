//! Element types and the views over slots.
//!
//! [`view`] is the one place a granted slot becomes a slice and then a view, with the safe
//! `ArrayView::from_shape`, never `from_shape_ptr`.

mod dtype;
pub(crate) mod view;

pub use dtype::{DType, Element};
pub(crate) use view::{as_bytes, as_bytes_mut};
