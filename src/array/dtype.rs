//! Element types that may live in a ring.

use std::fmt;
use std::marker::PhantomData;

/// The element type of a ring, as stored in its header.
///
/// The numeric codes are part of the segment layout (see `docs/PROTOCOL.md`) and never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum DType {
    /// `u8`
    U8 = 1,
    /// `i8`
    I8 = 2,
    /// `u16`
    U16 = 3,
    /// `i16`
    I16 = 4,
    /// `u32`
    U32 = 5,
    /// `i32`
    I32 = 6,
    /// `u64`
    U64 = 7,
    /// `i64`
    I64 = 8,
    /// `f32`
    F32 = 9,
    /// `f64`
    F64 = 10,
}

impl DType {
    /// Every dtype, in code order.
    pub const ALL: [DType; 10] = [
        DType::U8,
        DType::I8,
        DType::U16,
        DType::I16,
        DType::U32,
        DType::I32,
        DType::U64,
        DType::I64,
        DType::F32,
        DType::F64,
    ];

    /// The dtype with this header code, if any.
    pub fn from_code(code: u32) -> Option<DType> {
        DType::ALL.into_iter().find(|d| *d as u32 == code)
    }

    /// The header code.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::U8 | DType::I8 => 1,
            DType::U16 | DType::I16 => 2,
            DType::U32 | DType::I32 | DType::F32 => 4,
            DType::U64 | DType::I64 | DType::F64 => 8,
        }
    }

    /// Alignment of one element in bytes on this target (that of the primitive type the dtype
    /// names, e.g. `align_of::<f64>()`).
    pub const fn align(self) -> usize {
        match self {
            DType::U8 => align_of::<u8>(),
            DType::I8 => align_of::<i8>(),
            DType::U16 => align_of::<u16>(),
            DType::I16 => align_of::<i16>(),
            DType::U32 => align_of::<u32>(),
            DType::I32 => align_of::<i32>(),
            DType::U64 => align_of::<u64>(),
            DType::I64 => align_of::<i64>(),
            DType::F32 => align_of::<f32>(),
            DType::F64 => align_of::<f64>(),
        }
    }

    /// The lower-case name used on the command line and in `numpy` (`"u8"`, `"f32"`, ...).
    pub fn name(self) -> &'static str {
        match self {
            DType::U8 => "u8",
            DType::I8 => "i8",
            DType::U16 => "u16",
            DType::I16 => "i16",
            DType::U32 => "u32",
            DType::I32 => "i32",
            DType::U64 => "u64",
            DType::I64 => "i64",
            DType::F32 => "f32",
            DType::F64 => "f64",
        }
    }

    /// Parses a name as printed by [`DType::name`].
    pub fn from_name(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A plain numeric type that can be read from and written to shared memory.
///
/// # Safety
///
/// Implementors must guarantee all of the following, because a reader interprets bytes that
/// another process wrote, and that process may be buggy or hostile:
///
/// - every bit pattern of `size_of::<Self>()` bytes is a valid value (no niche, no invalid
///   states: `bool`, `char`, enums and references are excluded);
/// - the type has no padding bytes and no interior mutability;
/// - the type holds no pointers or references (an address is meaningless in another process);
/// - `Self` has the layout of the primitive type `Self::DTYPE` names:
///   `size_of::<Self>() == Self::DTYPE.size()` and `align_of::<Self>() == Self::DTYPE.align()`
///   (a reader that opens the ring with that primitive, in this process or another, sees the
///   same bytes as the same number of elements).
///
/// The size and alignment rule is also checked at compile time, for every built-in
/// implementation and for the element type of every ring shmflow creates or opens: a wrong
/// implementation is then a build error, not views over the wrong number of bytes. Like
/// every error found while evaluating a constant of a generic item, it appears when the code
/// using the type is compiled (`cargo build`, `cargo test`), not under `cargo check`. The
/// other rules cannot be checked, hence the `unsafe`.
///
/// The implementations for `u8`…`u64`, `i8`…`i64`, `f32` and `f64` are the only ones shmflow
/// needs; implementing it for other types is allowed when they meet the contract above.
///
/// # Examples
///
/// A wrapper with the layout of its dtype's primitive qualifies:
///
/// ```
/// use shmflow::{DType, Element};
///
/// #[derive(Clone, Copy)]
/// #[repr(transparent)]
/// struct Celsius(f32);
///
/// // SAFETY: a transparent wrapper of f32: every bit pattern is valid, no padding, no
/// // pointers, the size and alignment of f32.
/// unsafe impl Element for Celsius {
///     const DTYPE: DType = DType::F32;
/// }
/// # let () = <Celsius as Element>::LAYOUT_OK;
/// ```
///
/// An implementation whose size differs from its dtype's does not compile once the check is
/// evaluated (here two bytes claimed to be one `u8`):
///
/// ```compile_fail,E0080
/// use shmflow::{DType, Element};
///
/// #[derive(Clone, Copy)]
/// struct Pair([u8; 2]);
///
/// // Wrong: Pair is two bytes, DType::U8 one.
/// unsafe impl Element for Pair {
///     const DTYPE: DType = DType::U8;
/// }
///
/// // What shmflow does for every element type it builds a ring of.
/// let () = <Pair as Element>::LAYOUT_OK;
/// ```
pub unsafe trait Element: Copy + Send + Sync + 'static {
    /// The dtype recorded in the header of rings of this element type.
    const DTYPE: DType;

    /// Fails to evaluate (a compile-time error) unless `Self` has the size and alignment of
    /// `Self::DTYPE`. It forwards to a crate-private check, which is what shmflow itself
    /// evaluates, so overriding it disables nothing.
    #[doc(hidden)]
    const LAYOUT_OK: () = Layout::<Self>::OK;
}

/// The layout check of [`Element`], as an inherent const so that no implementation can replace
/// it.
struct Layout<T>(PhantomData<T>);

impl<T: Element> Layout<T> {
    const OK: () = assert!(
        size_of::<T>() == T::DTYPE.size() && align_of::<T>() == T::DTYPE.align(),
        "Element implementation is wrong: size_of::<Self>() and align_of::<Self>() must equal \
         Self::DTYPE.size() and Self::DTYPE.align()"
    );
}

/// Checks at compile time that `T`'s size and alignment are those of `T::DTYPE` (see
/// [`Element`]): a call makes the build fail for a wrong implementation. Call it wherever a
/// ring of `T` is created or opened, before any view of `T` can be built.
pub(crate) const fn check_element<T: Element>() {
    let () = Layout::<T>::OK;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {
        $(
            // SAFETY: a primitive integer or float: every bit pattern is valid, no padding, no
            // pointers, size and alignment match the dtype (checked below).
            unsafe impl Element for $t {
                const DTYPE: DType = DType::$d;
            }
        )*
        // Every built-in implementation passes the layout check.
        const _: () = {
            $(check_element::<$t>();)*
        };
    };
}

element!(u8 => U8, i8 => I8, u16 => U16, i16 => I16, u32 => U32, i32 => I32, u64 => U64,
    i64 => I64, f32 => F32, f64 => F64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_code(d.code()), Some(d));
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_code(0), None);
        assert_eq!(DType::from_code(11), None);
        assert_eq!(<f64 as Element>::DTYPE.size(), std::mem::size_of::<f64>());
        assert_eq!(<u16 as Element>::DTYPE.size(), std::mem::size_of::<u16>());
    }
}
