//! The one place a slot's memory becomes an `ndarray` view.
//!
//! The ring hands out a payload pointer only for a slot the protocol has granted (a writer's
//! WRITING slot, a reader's held frame); these functions turn it into a slice of exactly the
//! frame's elements and build the view with the safe `from_shape`, never `from_shape_ptr`.

use ndarray::{ArrayView, ArrayViewMut, Dimension};

use super::Element;

/// A dimension value of type `D` with the given extents.
///
/// # Panics
///
/// If `D` is a fixed dimensionality other than `shape.len()` (rings check the rank at open).
pub(crate) fn dim_of<D: Dimension>(shape: &[usize]) -> D {
    let mut d = D::zeros(shape.len());
    d.slice_mut().copy_from_slice(shape);
    d
}

/// A read-only view of `shape` elements starting at `ptr`.
///
/// # Safety
///
/// `ptr` is aligned for `T` and valid for reads of `shape.iter().product()` elements for
/// `'a`, and nothing writes that memory during `'a` (the protocol granted the slot for
/// reading and keeps it until the guard that owns the view releases it).
pub(crate) unsafe fn frame<'a, T: Element, D: Dimension>(
    ptr: *const T,
    shape: &[usize],
) -> ArrayView<'a, T, D> {
    let len: usize = shape.iter().product();
    // SAFETY: the caller guarantees `ptr` is valid, aligned and unaliased by writers for `len`
    // elements during 'a; every bit pattern is a valid T (Element contract).
    let data: &'a [T] = unsafe { std::slice::from_raw_parts(ptr, len) };
    ArrayView::from_shape(dim_of::<D>(shape), data)
        .expect("the slice holds exactly the shape's element count")
}

/// A mutable view of `shape` elements starting at `ptr`.
///
/// # Safety
///
/// `ptr` is aligned for `T` and valid for reads and writes of `shape.iter().product()`
/// elements for `'a`, and nothing else reads or writes that memory during `'a` (the slot is
/// WRITING and owned by the caller's guard, which the returned view borrows).
pub(crate) unsafe fn frame_mut<'a, T: Element, D: Dimension>(
    ptr: *mut T,
    shape: &[usize],
) -> ArrayViewMut<'a, T, D> {
    let len: usize = shape.iter().product();
    // SAFETY: as above, and the memory is exclusively ours during 'a.
    let data: &'a mut [T] = unsafe { std::slice::from_raw_parts_mut(ptr, len) };
    ArrayViewMut::from_shape(dim_of::<D>(shape), data)
        .expect("the slice holds exactly the shape's element count")
}

/// The bytes of a slice of elements.
pub(crate) fn as_bytes<T: Element>(s: &[T]) -> &[u8] {
    // SAFETY: elements are plain numbers without padding (Element contract), so every byte is
    // initialised; same length in bytes, alignment 1, and the result borrows `s`.
    unsafe { std::slice::from_raw_parts(s.as_ptr() as *const u8, std::mem::size_of_val(s)) }
}

/// The bytes of a mutable slice of elements.
pub(crate) fn as_bytes_mut<T: Element>(s: &mut [T]) -> &mut [u8] {
    let len = std::mem::size_of_val(s);
    // SAFETY: as for `as_bytes`; every byte pattern is a valid element (Element contract), so
    // writes through the bytes cannot make an invalid T; the result borrows `s` mutably.
    unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr() as *mut u8, len) }
}
