//! `shmflow._shmflow`: the Python bindings of shmflow (the Python half of the package, with the
//! exception classes and the docs users read, is `python/shmflow/`).
//!
//! Rings are generic over their element type in Rust; here a ring's dtype is known only at run
//! time, so every handle is an enum with one variant per dtype (`Any*`), and `each!` runs the
//! same code on whichever variant it holds.
//!
//! The safety rule of the package: a numpy array never sees its memory reused while it is
//! alive. A reader's array is a view whose base object is a [`Lease`], which owns the frame's
//! [`ReadSlot`]: the slot stays held until the last array referencing it is gone. A writer's
//! array is writable only until its reservation is committed or discarded; at that moment it
//! is made read-only (arrays made by `PyArray::borrow_from_array` do not own their data, so
//! Python cannot make them writable again), and if anything else that could write to the slot
//! is alive (views, memoryviews, a second name: see `strays`) the frame is not published and
//! the slot stays reserved until they are gone.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ndarray::IxDyn;
use numpy::npyffi::flags::NPY_ARRAY_WRITEABLE;
use numpy::{PyArray, PyArrayDescrMethods, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple, PyType};
use shmflow::{
    AttachError, Backpressure, CreateError, DType, Mode, OpenError, ReadSlot, Reader,
    RecvTimeoutError, ReserveTimeoutError, Ring, TryRecvError, TryReserveError, WriteSlot, Writer,
};

/// How long a blocking call waits with the GIL released before it looks for signals
/// (Ctrl-C raises `KeyboardInterrupt` within about this time).
const SIGNAL_CHECK: Duration = Duration::from_millis(50);

// ------------------------------------------------------------------ dtype dispatch

macro_rules! any_enum {
    ($name:ident, $inner:ident) => {
        enum $name {
            U8($inner<u8>),
            I8($inner<i8>),
            U16($inner<u16>),
            I16($inner<i16>),
            U32($inner<u32>),
            I32($inner<i32>),
            U64($inner<u64>),
            I64($inner<i64>),
            F32($inner<f32>),
            F64($inner<f64>),
        }
    };
}

any_enum!(AnyRing, Ring);
any_enum!(AnyReader, Reader);
any_enum!(AnyWriter, Writer);
any_enum!(AnyReadSlot, ReadSlot);
any_enum!(AnyWriteSlot, WriteSlot);

/// Runs `$body` with `$v` bound to the typed value inside `$e` (one of the `Any*` enums).
macro_rules! each {
    ($e:expr, $enum:ident, $v:ident => $body:expr) => {
        match $e {
            $enum::U8($v) => $body,
            $enum::I8($v) => $body,
            $enum::U16($v) => $body,
            $enum::I16($v) => $body,
            $enum::U32($v) => $body,
            $enum::I32($v) => $body,
            $enum::U64($v) => $body,
            $enum::I64($v) => $body,
            $enum::F32($v) => $body,
            $enum::F64($v) => $body,
        }
    };
}

/// Like [`each!`], and wraps the result in the variant of another `Any*` enum of the same dtype.
macro_rules! map_each {
    ($e:expr, $enum:ident => $out:ident, $v:ident => $body:expr) => {
        match $e {
            $enum::U8($v) => $out::U8($body),
            $enum::I8($v) => $out::I8($body),
            $enum::U16($v) => $out::U16($body),
            $enum::I16($v) => $out::I16($body),
            $enum::U32($v) => $out::U32($body),
            $enum::I32($v) => $out::I32($body),
            $enum::U64($v) => $out::U64($body),
            $enum::I64($v) => $out::I64($body),
            $enum::F32($v) => $out::F32($body),
            $enum::F64($v) => $out::F64($body),
        }
    };
}

/// Like [`map_each!`] for a `$body` that returns a `Result`: wraps its `Ok` value.
macro_rules! try_map_each {
    ($e:expr, $enum:ident => $out:ident, $v:ident => $body:expr) => {
        match $e {
            $enum::U8($v) => $body.map($out::U8),
            $enum::I8($v) => $body.map($out::I8),
            $enum::U16($v) => $body.map($out::U16),
            $enum::I16($v) => $body.map($out::I16),
            $enum::U32($v) => $body.map($out::U32),
            $enum::I32($v) => $body.map($out::I32),
            $enum::U64($v) => $body.map($out::U64),
            $enum::I64($v) => $body.map($out::I64),
            $enum::F32($v) => $body.map($out::F32),
            $enum::F64($v) => $body.map($out::F64),
        }
    };
}

/// Runs `$body` with the type alias `$t` set to the element type of `$dtype`, wrapping its
/// result in the `$out` variant of that dtype.
macro_rules! with_dtype {
    ($dtype:expr, $out:ident, $t:ident => $body:expr) => {
        match $dtype {
            DType::U8 => {
                type $t = u8;
                $body.map($out::U8)
            }
            DType::I8 => {
                type $t = i8;
                $body.map($out::I8)
            }
            DType::U16 => {
                type $t = u16;
                $body.map($out::U16)
            }
            DType::I16 => {
                type $t = i16;
                $body.map($out::I16)
            }
            DType::U32 => {
                type $t = u32;
                $body.map($out::U32)
            }
            DType::I32 => {
                type $t = i32;
                $body.map($out::I32)
            }
            DType::U64 => {
                type $t = u64;
                $body.map($out::U64)
            }
            DType::I64 => {
                type $t = i64;
                $body.map($out::I64)
            }
            DType::F32 => {
                type $t = f32;
                $body.map($out::F32)
            }
            DType::F64 => {
                type $t = f64;
                $body.map($out::F64)
            }
        }
    };
}

/// numpy's name of a dtype.
fn numpy_name(d: DType) -> &'static str {
    match d {
        DType::U8 => "uint8",
        DType::I8 => "int8",
        DType::U16 => "uint16",
        DType::I16 => "int16",
        DType::U32 => "uint32",
        DType::I32 => "int32",
        DType::U64 => "uint64",
        DType::I64 => "int64",
        DType::F32 => "float32",
        DType::F64 => "float64",
    }
}

fn supported_names() -> String {
    DType::ALL.map(numpy_name).join(", ")
}

/// The ring dtype of anything `numpy.dtype()` accepts (`np.uint8`, `"float32"`, `"<u2"`, ...).
fn dtype_from_py(obj: &Bound<'_, PyAny>) -> PyResult<DType> {
    let py = obj.py();
    let np = py.import("numpy")?;
    let d = np
        .getattr("dtype")?
        .call1((obj,))
        .map_err(|e| PyTypeError::new_err(format!("not a numpy dtype: {obj}: {e}")))?;
    let name: String = d.getattr("name")?.extract()?;
    let native: bool = d.getattr("isnative")?.extract()?;
    let found = DType::ALL.into_iter().find(|&t| numpy_name(t) == name);
    match found {
        Some(_) if !native => Err(PyValueError::new_err(format!(
            "dtype {name} in non-native byte order is not supported: rings hold elements in \
             this machine's byte order"
        ))),
        Some(t) => Ok(t),
        None => Err(PyValueError::new_err(format!(
            "dtype {name} is not supported: rings hold {}",
            supported_names()
        ))),
    }
}

fn numpy_dtype(py: Python<'_>, d: DType) -> PyResult<Bound<'_, PyAny>> {
    py.import("numpy")?
        .getattr("dtype")?
        .call1((numpy_name(d),))
}

fn mode_name(m: Mode) -> &'static str {
    match m {
        Mode::Broadcast(Backpressure::Block) => "block",
        Mode::Broadcast(Backpressure::DropOldest) => "drop-oldest",
        Mode::Queue => "queue",
    }
}

// ------------------------------------------------------------------ errors

/// An exception of the class `class` defined in `shmflow._errors` (they derive from
/// `shmflow.Error`, and from the matching builtin where there is one: `NotFound` is a
/// `FileNotFoundError`, `Timeout` a `TimeoutError`, ...).
fn error(py: Python<'_>, class: &str, msg: impl std::fmt::Display) -> PyErr {
    let cls = py
        .import("shmflow._errors")
        .and_then(|m| m.getattr(class))
        .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
    match cls {
        Ok(cls) => PyErr::from_type(cls, msg.to_string()),
        Err(e) => e,
    }
}

const CHILD_HINT: &str =
    "; in Python: open the ring in the child (shmflow.open(name) after the fork, \
     e.g. in worker_init; a Ring pickles as its name)";

fn open_error(py: Python<'_>, e: OpenError) -> PyErr {
    let class = match &e {
        OpenError::InvalidName(_) => "InvalidName",
        OpenError::NotFound { .. } => "NotFound",
        OpenError::PermissionDenied { .. } => "PermissionDenied",
        OpenError::NotARing { .. } | OpenError::Truncated { .. } | OpenError::Corrupted { .. } => {
            "Corrupted"
        }
        OpenError::VersionMismatch { .. } => "VersionMismatch",
        OpenError::NotReady { .. } => "NotReady",
        OpenError::LayoutMismatch { .. } => "LayoutMismatch",
        OpenError::Timeout { .. } => "Timeout",
        _ => "Error",
    };
    error(py, class, full_message(&e))
}

fn create_error(py: Python<'_>, e: CreateError) -> PyErr {
    let class = match &e {
        CreateError::InvalidName(_) => "InvalidName",
        CreateError::Layout(_) => return PyValueError::new_err(full_message(&e)),
        CreateError::AlreadyExists { .. } => "AlreadyExists",
        CreateError::PermissionDenied { .. } | CreateError::GroupDenied { .. } => {
            "PermissionDenied"
        }
        CreateError::NoSpace { .. } => "NoSpace",
        _ => "Error",
    };
    error(py, class, full_message(&e))
}

fn attach_error(py: Python<'_>, e: AttachError) -> PyErr {
    let class = match &e {
        AttachError::TooManyReaders { .. } | AttachError::TooManyWriters { .. } => "TooManyPeers",
        AttachError::WrongProcess { .. } => {
            return error(py, "WrongProcess", format!("{e}{CHILD_HINT}"));
        }
        AttachError::MaxHeld { .. } => return PyValueError::new_err(e.to_string()),
        _ => "Error",
    };
    error(py, class, full_message(&e))
}

fn reserve_error(py: Python<'_>, e: ReserveTimeoutError) -> PyErr {
    match e {
        ReserveTimeoutError::Timeout => error(py, "Timeout", "timed out waiting for a free slot"),
        ReserveTimeoutError::AlreadyReserved => error(
            py,
            "AlreadyReserved",
            "this writer already has a reserved slot: commit or discard it first (leave its \
             with block); a reservation that failed with SlotInUse keeps its slot until the \
             views of its array are gone",
        ),
        ReserveTimeoutError::WrongProcess { .. } => {
            error(py, "WrongProcess", format!("{e}{CHILD_HINT}"))
        }
        _ => error(py, "Error", e),
    }
}

fn try_reserve_error(py: Python<'_>, e: TryReserveError) -> PyErr {
    match e {
        TryReserveError::Full => error(py, "Timeout", "the ring is full (no slot is free now)"),
        TryReserveError::AlreadyReserved => reserve_error(py, ReserveTimeoutError::AlreadyReserved),
        TryReserveError::WrongProcess { owner } => {
            reserve_error(py, ReserveTimeoutError::WrongProcess { owner })
        }
        _ => error(py, "Error", e),
    }
}

fn recv_error(py: Python<'_>, e: TryRecvError) -> PyErr {
    match e {
        TryRecvError::Empty => error(py, "Timeout", "no frame arrived in time"),
        TryRecvError::Disconnected => error(py, "Disconnected", e),
        TryRecvError::WriterDied { .. } => error(py, "WriterDied", e),
        TryRecvError::Corrupted { .. } => error(py, "Corrupted", e),
        TryRecvError::TooManyHeld { max_held } => error(
            py,
            "TooManyHeld",
            format!(
                "this reader already holds {max_held} frame(s), its max_held: a frame is held \
                 while its Frame or any array of it is alive. Release one (leave its with block, \
                 or del the arrays), copy data you keep with np.array(f.array), or make the \
                 reader with a larger max_held"
            ),
        ),
        TryRecvError::WrongProcess { .. } => error(py, "WrongProcess", format!("{e}{CHILD_HINT}")),
        _ => error(py, "Error", e),
    }
}

/// The error's message with its sources (`: cause: cause`).
fn full_message(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        src = c.source();
    }
    s
}

// ------------------------------------------------------------------ waiting

/// A timeout in seconds from Python: `None` waits for ever, `0` tries once.
fn deadline(timeout: Option<f64>) -> PyResult<Option<Instant>> {
    match timeout {
        None => Ok(None),
        Some(t) if t.is_nan() || t < 0.0 => Err(PyValueError::new_err(format!(
            "timeout must be None or a number of seconds >= 0, not {t}"
        ))),
        Some(t) => Ok(Instant::now().checked_add(Duration::from_secs_f64(t.min(1e9)))),
    }
}

/// What one slice of a blocking wait returned.
enum Slice<R, E> {
    Done(R),
    Failed(E),
    /// An error this binding does not know (the library's error enums are non-exhaustive).
    Other(String),
    TimedOut,
}

/// Runs `attempt(slice)` with the GIL released, in slices of at most [`SIGNAL_CHECK`], until
/// it returns something other than `TimedOut` or `deadline` passes; between slices it runs the
/// Python signal handlers (Ctrl-C raises `KeyboardInterrupt`). Callers try once without
/// waiting themselves when the deadline is already past (timeout 0).
fn blocking<R: Send, E: Send>(
    py: Python<'_>,
    deadline: Option<Instant>,
    mut attempt: impl FnMut(Duration) -> Slice<R, E> + Send,
) -> PyResult<Slice<R, E>> {
    loop {
        let slice = deadline.map_or(SIGNAL_CHECK, |d| {
            d.saturating_duration_since(Instant::now())
                .min(SIGNAL_CHECK)
        });
        match py.detach(|| attempt(slice)) {
            Slice::TimedOut => {}
            other => return Ok(other),
        }
        py.check_signals()?;
        if deadline.is_some_and(|d| d <= Instant::now()) {
            return Ok(Slice::TimedOut);
        }
    }
}

// ------------------------------------------------------------------ numpy views

/// Clears the WRITEABLE flag of `arr`.
fn make_readonly(arr: &Bound<'_, PyUntypedArray>) {
    // SAFETY: `as_array_ptr` is a valid PyArrayObject for as long as `arr` is bound (we hold
    // the GIL). Clearing WRITEABLE only forbids later writes; numpy checks the flag before it
    // writes, and lets Python set it again only for arrays that own their data, which ours
    // (made by `borrow_from_array`) do not.
    unsafe {
        (*numpy::npyffi::objects::_PyArray_GET_ITEM_DATA(arr.as_array_ptr())).flags &=
            !NPY_ARRAY_WRITEABLE;
    }
}

/// A numpy array of `view`'s memory, whose base object is `owner` (which must keep that memory
/// valid and not reused while it lives).
///
/// # Safety
/// `owner` keeps the memory `view` points at mapped, and its contents unchanged by anyone
/// else, for as long as `owner` is alive.
unsafe fn array_of<'py, T: numpy::Element>(
    view: ndarray::ArrayView<'_, T, IxDyn>,
    owner: Bound<'py, PyAny>,
    writable: bool,
) -> Bound<'py, PyAny> {
    // SAFETY: forwarded from the caller: `owner`, set as the array's base, keeps the memory
    // valid for the array's whole life (the array holds a reference to it).
    let arr = unsafe { PyArray::<T, IxDyn>::borrow_from_array(&view, owner) };
    if !writable {
        make_readonly(arr.as_untyped());
    }
    arr.into_any()
}

// ------------------------------------------------------------------ Ring

/// A handle to a ring. Made by `shmflow.create` or `shmflow.open`; pickles as its name.
#[pyclass(module = "shmflow", name = "Ring", frozen)]
struct PyRing {
    ring: AnyRing,
}

#[pymethods]
impl PyRing {
    /// The ring's name.
    #[getter]
    fn name(&self) -> String {
        each!(&self.ring, AnyRing, r => r.name().to_owned())
    }

    /// The element type, a `numpy.dtype`.
    #[getter]
    fn dtype<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        numpy_dtype(py, self.info().dtype)
    }

    /// The largest frame shape (every slot holds one of this shape).
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.info().max_shape)
    }

    /// Number of slots.
    #[getter]
    fn slots(&self) -> u32 {
        self.info().slots
    }

    /// `"block"`, `"drop-oldest"` or `"queue"`.
    #[getter]
    fn mode(&self) -> &'static str {
        mode_name(self.info().mode)
    }

    /// Bytes of a frame of the ring's full shape.
    #[getter]
    fn frame_bytes(&self) -> u64 {
        self.info().slot_bytes
    }

    /// Whether dropping this handle (and the writers and readers made from it) removes the
    /// ring's name: true for the handle that created it, unless `keep=True` was given.
    #[getter]
    fn is_owner(&self) -> bool {
        each!(&self.ring, AnyRing, r => r.is_owner())
    }

    /// What the ring's header and peer table say now: a dict with `write_seq`, `backlog`,
    /// `readers` and `writers` (lists of dicts with `pid`, `alive`, `frames`, `held`,
    /// `missed`), `writer_died` (None, or a dict with `pid` and `frames`).
    fn status<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let s = each!(&self.ring, AnyRing, r => r.status());
        let d = PyDict::new(py);
        d.set_item("write_seq", s.write_seq)?;
        d.set_item("read_seq", s.read_seq)?;
        d.set_item("backlog", s.backlog)?;
        d.set_item("lost", s.lost)?;
        let peers = |list: &[shmflow::PeerStatus]| -> PyResult<Bound<'py, PyList>> {
            let out = PyList::empty(py);
            for p in list {
                let e = PyDict::new(py);
                e.set_item("pid", p.pid)?;
                e.set_item("alive", p.alive)?;
                e.set_item("frames", p.frames)?;
                e.set_item("held", p.held)?;
                e.set_item("max_held", p.max_held)?;
                e.set_item("missed", p.missed)?;
                out.append(e)?;
            }
            Ok(out)
        };
        d.set_item("readers", peers(&s.readers)?)?;
        d.set_item("writers", peers(&s.writers)?)?;
        match s.writer_died {
            Some(w) => {
                let e = PyDict::new(py);
                e.set_item("pid", w.pid)?;
                e.set_item("frames", w.frames)?;
                d.set_item("writer_died", e)?;
            }
            None => d.set_item("writer_died", py.None())?,
        }
        Ok(d)
    }

    /// Attaches a writer (a broadcast ring has one at a time; a queue ring up to
    /// `max_writers`).
    #[pyo3(signature = (*, spin = None))]
    fn writer(&self, py: Python<'_>, spin: Option<&Bound<'_, PyAny>>) -> PyResult<PyWriter> {
        let strategy = wait_strategy(spin)?;
        let mut w = try_map_each!(&self.ring, AnyRing => AnyWriter, r => r.writer())
            .map_err(|e| attach_error(py, e))?;
        each!(&mut w, AnyWriter, w => w.set_wait_strategy(strategy));
        Ok(PyWriter {
            writer: Some(w),
            quarantine: Arc::default(),
        })
    }

    /// Attaches a reader. A broadcast reader sees the frames committed after it attached;
    /// `lossy=True` makes a reader of a lossless ring that the writer never waits for (it
    /// skips ahead, counting `missed`); `max_held` frames may be held at once (1 to
    /// slots - 1; default 2, or 1 where the ring allows no more). `spin`: how blocking calls
    /// wait (None: spin 50 µs, then sleep; seconds to spin; "busy": never sleep).
    #[pyo3(signature = (*, lossy = false, max_held = None, spin = None))]
    fn reader(
        &self,
        py: Python<'_>,
        lossy: bool,
        max_held: Option<u32>,
        spin: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyReader> {
        let strategy = wait_strategy(spin)?;
        let Some(max_held) = max_held else {
            // The default: 2, so that `for f in r: img = f.array` (whose `img` still holds
            // the previous frame when the next is taken) works; 1 where a ring allows no more.
            return match self.reader(py, lossy, Some(2), spin) {
                Err(e) if e.is_instance_of::<PyValueError>(py) => {
                    self.reader(py, lossy, Some(1), spin)
                }
                other => other,
            };
        };
        let mut r = try_map_each!(&self.ring, AnyRing => AnyReader, r => r
            .attach_reader()
            .lossy(lossy)
            .max_held(max_held)
            .attach())
        .map_err(|e| attach_error(py, e))?;
        each!(&mut r, AnyReader, r => r.set_wait_strategy(strategy));
        Ok(PyReader {
            reader: Some(r),
            lossy,
            last: None,
        })
    }

    /// Removes the ring's name now (processes that have it open keep using it).
    fn remove(&self, py: Python<'_>) -> PyResult<()> {
        remove(py, &self.name())
    }

    /// Readers of the ring whose process died are reclaimed (their held frames freed).
    /// Returns how many entries were reclaimed. Writers and readers do this themselves when
    /// they wait; this is for tools.
    fn reclaim_dead_peers(&self) -> usize {
        each!(&self.ring, AnyRing, r => r.reclaim_dead_peers())
    }

    fn __reduce__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        let open = py.import("shmflow")?.getattr("open")?;
        PyTuple::new(py, [open, PyTuple::new(py, [self.name()])?.into_any()])
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// Leaving a `with` block of the handle that created the ring removes its name.
    fn __exit__(
        &self,
        py: Python<'_>,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if self.is_owner() {
            match remove(py, &self.name()) {
                Ok(()) => {}
                Err(e) if e.is_instance(py, error_class(py, "NotFound")?.as_any()) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        let i = self.info();
        let shape: Vec<String> = i.max_shape.iter().map(|d| d.to_string()).collect();
        format!(
            "shmflow.Ring({:?}, shape=({}{}), dtype={}, slots={}, mode={:?})",
            i.name,
            shape.join(", "),
            if shape.len() == 1 { "," } else { "" },
            numpy_name(i.dtype),
            i.slots,
            mode_name(i.mode)
        )
    }
}

impl PyRing {
    fn info(&self) -> shmflow::RingInfo {
        each!(&self.ring, AnyRing, r => r.info())
    }
}

fn error_class<'py>(py: Python<'py>, class: &str) -> PyResult<Bound<'py, PyType>> {
    Ok(py
        .import("shmflow._errors")?
        .getattr(class)?
        .cast_into::<PyType>()?)
}

// ------------------------------------------------------------------ module functions

/// `spin=`: `None` (the default: spin 50 µs, then sleep), a number of seconds to spin before
/// sleeping, or `"busy"` (never sleep: lowest latency, burns a core while waiting).
fn wait_strategy(spin: Option<&Bound<'_, PyAny>>) -> PyResult<shmflow::WaitStrategy> {
    let Some(spin) = spin else {
        return Ok(shmflow::WaitStrategy::default());
    };
    if let Ok(s) = spin.extract::<String>() {
        return match s.as_str() {
            "busy" => Ok(shmflow::WaitStrategy::BusyPoll),
            _ => Err(PyValueError::new_err(format!(
                "spin must be None, a number of seconds, or \"busy\", not {s:?}"
            ))),
        };
    }
    let secs: f64 = spin
        .extract()
        .map_err(|_| PyTypeError::new_err("spin must be None, a number of seconds, or \"busy\""))?;
    if !(0.0..=60.0).contains(&secs) {
        return Err(PyValueError::new_err(format!(
            "spin must be between 0 and 60 seconds, not {secs}"
        )));
    }
    Ok(shmflow::WaitStrategy::SpinThenBlock {
        spin: Duration::from_secs_f64(secs),
    })
}

fn parse_mode(mode: &str) -> PyResult<Mode> {
    match mode {
        "block" => Ok(Mode::Broadcast(Backpressure::Block)),
        "drop-oldest" | "drop_oldest" => Ok(Mode::Broadcast(Backpressure::DropOldest)),
        "queue" => Ok(Mode::Queue),
        other => Err(PyValueError::new_err(format!(
            "mode must be \"block\", \"drop-oldest\" or \"queue\", not {other:?}"
        ))),
    }
}

fn parse_group(group: Option<&Bound<'_, PyAny>>) -> PyResult<Option<u32>> {
    let Some(g) = group else { return Ok(None) };
    if let Ok(gid) = g.extract::<u32>() {
        return Ok(Some(gid));
    }
    let name: String = g
        .extract()
        .map_err(|_| PyTypeError::new_err("group must be a group name or a numeric gid"))?;
    match shmflow::group_id(&name) {
        Ok(Some(gid)) => Ok(Some(gid)),
        Ok(None) => Err(PyValueError::new_err(format!("no group named {name:?}"))),
        Err(e) => Err(PyValueError::new_err(format!(
            "cannot look up group {name:?}: {e}"
        ))),
    }
}

/// Creates a ring. See the package docs (`help(shmflow.create)`).
#[pyfunction]
#[pyo3(signature = (name, shape, dtype, *, slots = 8, mode = "block", max_readers = 4,
                    max_writers = None, permissions = 0o600, group = None, keep = false))]
#[allow(clippy::too_many_arguments)]
fn create(
    py: Python<'_>,
    name: &str,
    shape: Vec<usize>,
    dtype: &Bound<'_, PyAny>,
    slots: u32,
    mode: &str,
    max_readers: u32,
    max_writers: Option<u32>,
    permissions: u32,
    group: Option<&Bound<'_, PyAny>>,
    keep: bool,
) -> PyResult<PyRing> {
    let dt = dtype_from_py(dtype)?;
    let mode = parse_mode(mode)?;
    let group = parse_group(group)?;
    let ring = with_dtype!(dt, AnyRing, T => {
        let mut b = Ring::<T>::create(name)
            .shape(&shape)
            .slots(slots)
            .mode(mode)
            .max_readers(max_readers)
            .permissions(permissions);
        if let Some(w) = max_writers {
            b = b.max_writers(w);
        }
        if let Some(g) = group {
            b = b.group(g);
        }
        b.build()
    })
    .map_err(|e| create_error(py, e))?;
    let ring = PyRing { ring };
    if keep {
        each!(&ring.ring, AnyRing, r => r.release_ownership());
    }
    Ok(ring)
}

/// Opens an existing ring, waiting up to `timeout` seconds for it to appear (`None`: for
/// ever, `0`: not at all). The dtype and shape come from the ring.
#[pyfunction]
#[pyo3(signature = (name, timeout = 0.0))]
fn open(py: Python<'_>, name: &str, timeout: Option<f64>) -> PyResult<PyRing> {
    let start = Instant::now();
    let until = deadline(timeout)?;
    let name_owned = name.to_owned();
    let attempt = move |slice: Duration| -> Slice<AnyRing, OpenError> {
        let t0 = Instant::now();
        loop {
            match open_any(&name_owned) {
                Ok(r) => return Slice::Done(r),
                Err(OpenError::NotFound { .. } | OpenError::NotReady { .. }) => {}
                Err(e) => return Slice::Failed(e),
            }
            if t0.elapsed() >= slice {
                return Slice::TimedOut;
            }
            std::thread::sleep(Duration::from_millis(2).min(slice));
        }
    };
    let got = if until.is_some_and(|d| d <= Instant::now()) {
        match open_any(name) {
            Ok(r) => Slice::Done(r),
            Err(e) => Slice::Failed(e),
        }
    } else {
        blocking(py, until, attempt)?
    };
    match got {
        Slice::Done(ring) => Ok(PyRing { ring }),
        Slice::Failed(e) => Err(open_error(py, e)),
        Slice::Other(msg) => Err(error(py, "Error", msg)),
        Slice::TimedOut => Err(error(
            py,
            "Timeout",
            format!(
                "ring {name:?} did not appear within {:.3} s",
                start.elapsed().as_secs_f64()
            ),
        )),
    }
}

/// Opens ring `name` with the dtype its header records.
fn open_any(name: &str) -> Result<AnyRing, OpenError> {
    let (info, _) = shmflow::inspect(name)?;
    with_dtype!(info.dtype, AnyRing, T => Ring::<T>::open(name))
}

/// Removes ring `name` (processes that have it open keep using it).
#[pyfunction]
fn remove(py: Python<'_>, name: &str) -> PyResult<()> {
    Ring::<u8>::remove(name).map_err(|e| open_error(py, e))
}

/// The names of the rings on this machine (`/dev/shm/shmflow.*`), sorted.
#[pyfunction]
#[pyo3(name = "list")]
fn list_rings(py: Python<'_>) -> PyResult<Vec<String>> {
    shmflow::list().map_err(|e| error(py, "Error", format!("cannot list /dev/shm: {e}")))
}

// ------------------------------------------------------------------ Reader and frames

/// The owner of a received frame's slot, and the base object of the frame's arrays: the
/// slot is released when the last reference to it goes.
#[pyclass(module = "shmflow", name = "_Lease", frozen)]
struct Lease {
    slot: AnyReadSlot,
}

/// A received frame: `array` is a read-only numpy view of the slot, in place.
///
/// The frame's slot stays held while the Frame (until `release()` or the end of its `with`
/// block) or any array of it is alive, and is released when the last one goes.
#[pyclass(module = "shmflow", name = "Frame")]
struct PyFrame {
    lease: Option<Py<Lease>>,
    array: Option<Py<PyAny>>,
    seq: u64,
    tag: u64,
    timestamp_ns: u64,
    missed: u64,
    shape: Vec<usize>,
}

impl PyFrame {
    fn new(py: Python<'_>, slot: AnyReadSlot) -> PyResult<PyFrame> {
        let (seq, tag, timestamp_ns, missed, shape) = each!(&slot, AnyReadSlot, s => (
            s.seq(), s.tag(), s.timestamp_ns(), s.missed(), s.shape().to_vec()
        ));
        Ok(PyFrame {
            lease: Some(Py::new(py, Lease { slot })?),
            array: None,
            seq,
            tag,
            timestamp_ns,
            missed,
            shape,
        })
    }
}

#[pymethods]
impl PyFrame {
    /// The frame as a read-only numpy array (the slot's memory, no copy). It keeps the frame
    /// held while it is alive; copy what you keep past that with `np.array(f.array)`.
    #[getter]
    fn array(&mut self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(a) = &self.array {
            return Ok(a.clone_ref(py));
        }
        let Some(lease) = &self.lease else {
            return Err(PyRuntimeError::new_err(
                "this frame was released (its with block ended, or release() was called); \
                 keep the array itself, or a copy (np.array(f.array)), to use the data later",
            ));
        };
        let owner = lease.bind(py).clone();
        let slot = &lease.get().slot;
        // SAFETY: the array's base is the Lease, which owns the ReadSlot: the slot stays held
        // (the writer does not reuse it) and the mapping stays mapped while the Lease lives,
        // and the array keeps the Lease alive. The array is read-only.
        let arr =
            each!(slot, AnyReadSlot, s => unsafe { array_of(s.view(), owner.into_any(), false) });
        let arr = arr.unbind();
        self.array = Some(arr.clone_ref(py));
        Ok(arr)
    }

    /// The frame's sequence number in the ring (0 for its first frame).
    #[getter]
    fn seq(&self) -> u64 {
        self.seq
    }

    /// The writer's tag (an integer the writer chose, 0 by default).
    #[getter]
    fn tag(&self) -> u64 {
        self.tag
    }

    /// The writer's timestamp, ns since the Unix epoch unless the writer set another.
    #[getter]
    fn timestamp_ns(&self) -> u64 {
        self.timestamp_ns
    }

    /// Frames this reader missed just before this one (drop-oldest rings, lossy readers,
    /// `recv_latest`).
    #[getter]
    fn missed(&self) -> u64 {
        self.missed
    }

    /// The frame's shape.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, &self.shape)
    }

    /// Whether the Frame still holds its slot (its arrays may hold it after `release()`).
    #[getter]
    fn held(&self) -> bool {
        self.lease.is_some()
    }

    /// Drops the Frame's hold on its slot: the slot is released now unless an array of the
    /// frame is still alive (then when the last one goes).
    fn release(&mut self) {
        self.array = None;
        self.lease = None;
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> bool {
        self.release();
        false
    }

    fn __repr__(&self) -> String {
        format!(
            "shmflow.Frame(seq={}, shape={:?}, tag={}, missed={}{})",
            self.seq,
            self.shape,
            self.tag,
            self.missed,
            if self.lease.is_some() {
                ""
            } else {
                ", released"
            }
        )
    }
}

/// A reader attached to a ring. Iterate over it (`for f in reader`) to take frames until the
/// writer leaves.
#[pyclass(module = "shmflow", name = "Reader")]
struct PyReader {
    /// None once closed.
    reader: Option<AnyReader>,
    lossy: bool,
    /// The frame the iterator handed out last: released when it takes the next one, so the
    /// natural loop holds one frame at a time.
    last: Option<Py<PyFrame>>,
}

fn closed(what: &str) -> PyErr {
    PyRuntimeError::new_err(format!("this {what} was closed"))
}

impl PyReader {
    fn r(&self) -> PyResult<&AnyReader> {
        self.reader.as_ref().ok_or_else(|| closed("reader"))
    }

    fn max_held_now(&self) -> PyResult<u32> {
        Ok(each!(self.r()?, AnyReader, r => r.max_held()))
    }

    fn release_last(&mut self, py: Python<'_>) {
        if let Some(prev) = self.last.take() {
            if let Ok(mut f) = prev.try_borrow_mut(py) {
                f.release();
            }
        }
    }

    fn take(&mut self, py: Python<'_>, timeout: Option<f64>, latest: bool) -> PyResult<PyFrame> {
        let until = deadline(timeout)?;
        // The frame the iterator handed out last goes first, whoever takes the next one.
        self.release_last(py);
        let reader = self.reader.as_mut().ok_or_else(|| closed("reader"))?;
        let got = if until.is_some_and(|d| d <= Instant::now()) {
            try_recv_now(reader, latest)
        } else {
            blocking(py, until, |slice| recv_slice(reader, slice, latest))?
        };
        match got {
            Slice::Done(slot) => PyFrame::new(py, slot),
            Slice::Failed(e) => Err(recv_error(py, e)),
            Slice::Other(msg) => Err(error(py, "Error", msg)),
            Slice::TimedOut => Err(recv_error(py, TryRecvError::Empty)),
        }
    }
}

fn recv_slice(
    r: &mut AnyReader,
    slice: Duration,
    latest: bool,
) -> Slice<AnyReadSlot, TryRecvError> {
    let res = try_map_each!(r, AnyReader => AnyReadSlot, r => if latest {
        r.recv_latest_timeout(slice)
    } else {
        r.recv_timeout(slice)
    });
    match res {
        Ok(s) => Slice::Done(s),
        Err(RecvTimeoutError::Timeout) => Slice::TimedOut,
        Err(e) => match timeout_to_try(e) {
            Some(t) => Slice::Failed(t),
            None => Slice::Other(full_message(&e)),
        },
    }
}

fn try_recv_now(r: &mut AnyReader, latest: bool) -> Slice<AnyReadSlot, TryRecvError> {
    let res = try_map_each!(r, AnyReader => AnyReadSlot, r => if latest {
        r.try_recv_latest()
    } else {
        r.try_recv()
    });
    match res {
        Ok(s) => Slice::Done(s),
        Err(TryRecvError::Empty) => Slice::TimedOut,
        Err(e) => Slice::Failed(e),
    }
}

fn timeout_to_try(e: RecvTimeoutError) -> Option<TryRecvError> {
    Some(match e {
        RecvTimeoutError::Timeout => TryRecvError::Empty,
        RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
        RecvTimeoutError::WriterDied { pid, frames } => TryRecvError::WriterDied { pid, frames },
        RecvTimeoutError::Corrupted { seq } => TryRecvError::Corrupted { seq },
        RecvTimeoutError::TooManyHeld { max_held } => TryRecvError::TooManyHeld { max_held },
        RecvTimeoutError::WrongProcess { owner } => TryRecvError::WrongProcess { owner },
        // RecvTimeoutError is non_exhaustive: a variant added later is reported as it is.
        _ => return None,
    })
}

#[pymethods]
impl PyReader {
    /// Takes the next frame, waiting up to `timeout` seconds (`None`: for ever, `0`: not at
    /// all). Raises `Timeout`, `Disconnected` (the writer left and every frame was read),
    /// `WriterDied`, `TooManyHeld`, `WrongProcess`.
    #[pyo3(signature = (timeout = None))]
    fn recv(&mut self, py: Python<'_>, timeout: Option<f64>) -> PyResult<PyFrame> {
        self.take(py, timeout, false)
    }

    /// Takes the newest committed frame, skipping older ones (counted in `missed`); waits
    /// like `recv` when there is none.
    #[pyo3(signature = (timeout = None))]
    fn recv_latest(&mut self, py: Python<'_>, timeout: Option<f64>) -> PyResult<PyFrame> {
        self.take(py, timeout, true)
    }

    /// A file descriptor that becomes readable when a frame may be ready (for `selectors`,
    /// `select` and asyncio's `loop.add_reader`). It is armed by a `recv(timeout=0)` that
    /// raised `Timeout`: call `recv(timeout=0)` until it does, before waiting on the fd, and
    /// again each time the fd fires. After `Disconnected`, `WriterDied` or `TooManyHeld` the
    /// fd stays readable: stop watching it (or release a frame) then. The reader owns the fd:
    /// do not close it. A reader is used by one thread at a time.
    fn fileno(&self) -> PyResult<i32> {
        use std::os::fd::{AsFd, AsRawFd};
        Ok(each!(self.r()?, AnyReader, r => r.as_fd().as_raw_fd()))
    }

    /// Frames this reader holds now.
    #[getter]
    fn held(&self) -> PyResult<u32> {
        Ok(each!(self.r()?, AnyReader, r => r.held()))
    }

    /// Frames this reader may hold at once.
    #[getter]
    fn max_held(&self) -> PyResult<u32> {
        self.max_held_now()
    }

    /// Whether the writer of a lossless ring never waits for this reader.
    #[getter]
    fn lossy(&self) -> bool {
        self.lossy
    }

    /// Frames this reader missed so far.
    #[getter]
    fn missed(&self) -> PyResult<u64> {
        Ok(each!(self.r()?, AnyReader, r => r.missed()))
    }

    /// Frames this reader received so far.
    #[getter]
    fn frames_read(&self) -> PyResult<u64> {
        Ok(each!(self.r()?, AnyReader, r => r.frames_read()))
    }

    /// The ring, as a new handle.
    #[getter]
    fn ring(&self) -> PyResult<PyRing> {
        Ok(PyRing {
            ring: map_each!(self.r()?, AnyReader => AnyRing, r => r.ring().clone()),
        })
    }

    fn __iter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// The next frame: waits for ever; ends when the writer left cleanly, raises
    /// `WriterDied` if it died. The frame handed out before is released first (its arrays,
    /// if kept, keep holding it).
    fn __next__(&mut self, py: Python<'_>) -> PyResult<Option<Py<PyFrame>>> {
        match self.take(py, None, false) {
            Ok(f) => {
                let f = Py::new(py, f)?;
                self.last = Some(f.clone_ref(py));
                Ok(Some(f))
            }
            Err(e) if e.is_instance(py, error_class(py, "Disconnected")?.as_any()) => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "a Reader cannot be pickled: pickle its Ring (it pickles as its name) and make the \
             reader in the process that uses it",
        ))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        py: Python<'_>,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> bool {
        self.close(py);
        false
    }

    /// Detaches the reader (the end of its `with` block does too). Frames still held (by a
    /// Frame or an array) stay valid; the reader's entry is freed when the last is released.
    fn close(&mut self, py: Python<'_>) {
        self.release_last(py);
        self.reader = None;
    }

    fn __repr__(&self) -> String {
        match &self.reader {
            None => "shmflow.Reader(closed)".to_owned(),
            Some(r) => format!(
                "shmflow.Reader(ring={:?}, lossy={}, max_held={}, held={}, frames_read={})",
                each!(r, AnyReader, r => r.ring().name().to_owned()),
                if self.lossy { "True" } else { "False" },
                each!(r, AnyReader, r => r.max_held()),
                each!(r, AnyReader, r => r.held()),
                each!(r, AnyReader, r => r.frames_read()),
            ),
        }
    }
}

// ------------------------------------------------------------------ Writer and reservations

/// The base object of a reservation's array: it keeps the ring mapped while the array lives
/// (after the commit too), and holds the slot of a reservation that could not be committed
/// because other references to its array were alive (see `PyReservation::seal`); that slot
/// is given back, unpublished, when the last of them goes.
#[pyclass(module = "shmflow", name = "_WriteLease", frozen)]
struct WriteLease {
    _ring: AnyRing,
    held: Mutex<Option<AnyWriteSlot>>,
}

/// A reserved slot. As a context manager (`with w.reserve() as a:`) it gives its writable
/// numpy array and commits the frame when the block ends, or discards it if the block raised.
#[pyclass(module = "shmflow", name = "Reservation")]
struct PyReservation {
    slot: Option<AnyWriteSlot>,
    /// The array handed out: a view of `root`.
    array: Option<Py<PyAny>>,
    /// The array made over the slot, whose base is the lease. numpy collapses the base of a
    /// view of `array` (and of views of views) to `root`, the first array that does not look
    /// through to another array. Objects that stop the collapse (views of another type,
    /// memoryviews, `as_strided`) refer to `array` instead. See [`strays`].
    root: Option<Py<PyAny>>,
    lease: Py<WriteLease>,
    quarantine: Quarantine,
    seq: u64,
    tag: u64,
    timestamp_ns: Option<u64>,
}

/// The exact reference count of `obj`.
fn refcnt(obj: &Bound<'_, PyAny>) -> isize {
    // SAFETY: `obj` is a live object (bound, so we hold the GIL and a reference to it);
    // reading its reference count has no other requirement.
    unsafe { pyo3::ffi::Py_REFCNT(obj.as_ptr()) }
}

/// References to a reservation's arrays that could still write to the slot, given `root` and
/// `array`, each held once by the caller: views whose base is `root` (its count less the
/// caller's and `array`'s base), and references to `array` beyond the caller's and one name
/// (the `as a` variable). So aliases of the array count too: only one name may outlive the
/// block, and it is read-only by then.
fn strays(root: &Bound<'_, PyAny>, array: &Bound<'_, PyAny>) -> isize {
    (refcnt(root) - 2).max(0) + (refcnt(array) - 2).max(0)
}

/// A reservation whose commit failed with `SlotInUse` (or that was dropped with views
/// alive): its slot is in the lease until the views of its array are gone. The writer checks
/// at its next reserve, and gives the slot back then (if the writer goes first, the slot goes
/// back when the lease does).
struct Quarantined {
    root: Py<PyAny>,
    array: Py<PyAny>,
    lease: Py<WriteLease>,
}

type Quarantine = Arc<Mutex<Option<Quarantined>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Gives back the slot of a quarantined reservation whose views are gone.
fn release_quarantined(py: Python<'_>, q: &Quarantine) {
    let mut g = lock(q);
    let Some(held) = g.as_ref() else {
        return;
    };
    if strays(held.root.bind(py), held.array.bind(py)) == 0 {
        let held = g.take().expect("checked above");
        let slot = lock(&held.lease.get().held).take();
        drop(slot);
    }
}

impl PyReservation {
    /// Ends the arrays' writable life before the slot is committed or given back: both become
    /// read-only, and `Ok(slot)` hands the slot on. If views or other references that could
    /// still write are alive (see [`strays`]; nothing can reach them to make them read-only),
    /// the slot moves into the lease instead, to be given back unpublished when they are
    /// gone, and the answer is `Err(count)`. `None` if the reservation is over already.
    fn seal(&mut self, py: Python<'_>) -> Option<Result<AnyWriteSlot, isize>> {
        let slot = self.slot.take()?;
        let (Some(array), Some(root)) = (self.array.take(), self.root.take()) else {
            return Some(Ok(slot));
        };
        let (array, root) = (array.into_bound(py), root.into_bound(py));
        for a in [&array, &root] {
            if let Ok(a) = a.cast::<PyUntypedArray>() {
                make_readonly(a);
            }
        }
        let n = strays(&root, &array);
        if n > 0 {
            *lock(&self.lease.get().held) = Some(slot);
            *lock(&self.quarantine) = Some(Quarantined {
                root: root.unbind(),
                array: array.unbind(),
                lease: self.lease.clone_ref(py),
            });
            return Some(Err(n));
        }
        Some(Ok(slot))
    }
}

impl Drop for PyReservation {
    /// A reservation dropped open is discarded, as at the end of a block that raised: never
    /// with a writable array left over the slot.
    fn drop(&mut self) {
        if self.slot.is_some() {
            Python::attach(|py| {
                if let Some(Ok(slot)) = self.seal(py) {
                    drop(slot);
                }
            });
        }
    }
}

const RESERVATION_OVER: &str =
    "this reservation is over (committed, discarded, or refused with SlotInUse)";

#[pymethods]
impl PyReservation {
    /// The writable numpy array of the slot (the slot's memory itself). Writable until the
    /// reservation is committed or discarded; read-only after.
    #[getter]
    fn array(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        match &self.array {
            Some(a) => Ok(a.clone_ref(py)),
            None => Err(PyRuntimeError::new_err(RESERVATION_OVER)),
        }
    }

    /// The sequence number the frame gets when committed.
    #[getter]
    fn seq(&self) -> u64 {
        self.seq
    }

    /// The tag readers see (`Frame.tag`).
    #[getter]
    fn get_tag(&self) -> u64 {
        self.tag
    }

    #[setter]
    fn set_tag(&mut self, tag: u64) {
        self.tag = tag;
    }

    /// The timestamp readers see (default: the time of the commit, ns since the epoch).
    #[getter]
    fn get_timestamp_ns(&self) -> Option<u64> {
        self.timestamp_ns
    }

    #[setter]
    fn set_timestamp_ns(&mut self, ns: Option<u64>) {
        self.timestamp_ns = ns;
    }

    /// Publishes the frame to the readers; returns its sequence number. The array becomes
    /// read-only first.
    fn commit(&mut self, py: Python<'_>) -> PyResult<u64> {
        let slot = match self.seal(py) {
            None => return Err(PyRuntimeError::new_err(RESERVATION_OVER)),
            Some(Ok(slot)) => slot,
            Some(Err(n)) => {
                return Err(error(
                    py,
                    "SlotInUse",
                    format!(
                        "frame {} was not published: {n} view(s) or other reference(s) to its \
                         array (a[0], a.reshape(...), memoryview(a), a second name) are alive \
                         at the commit, and could write to it while readers read it. Drop them \
                         before the end of the block (copy what you keep with np.array(v)); \
                         the slot is given back unpublished when they are gone",
                        self.seq
                    ),
                ))
            }
        };
        let (tag, ts) = (self.tag, self.timestamp_ns);
        Ok(each!(slot, AnyWriteSlot, s => {
            let mut s = s;
            s.set_tag(tag);
            if let Some(ts) = ts {
                s.set_timestamp_ns(ts);
            }
            s.commit()
        }))
    }

    /// Gives the slot back without publishing anything. The array becomes read-only.
    fn discard(&mut self, py: Python<'_>) -> PyResult<()> {
        // With views alive the slot stays reserved until they are gone (see `seal`).
        match self.seal(py) {
            None => Err(PyRuntimeError::new_err(RESERVATION_OVER)),
            Some(Ok(slot)) => {
                drop(slot);
                Ok(())
            }
            Some(Err(_)) => Ok(()),
        }
    }

    fn __enter__(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.array(py)
    }

    fn __exit__(
        &mut self,
        py: Python<'_>,
        t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<bool> {
        if self.slot.is_some() {
            if t.is_some() {
                self.discard(py)?;
            } else {
                self.commit(py)?;
            }
        }
        Ok(false)
    }

    fn __repr__(&self) -> String {
        format!(
            "shmflow.Reservation(seq={}, {})",
            self.seq,
            if self.slot.is_some() { "open" } else { "done" }
        )
    }
}

/// A writer attached to a ring.
#[pyclass(module = "shmflow", name = "Writer")]
struct PyWriter {
    /// None once closed.
    writer: Option<AnyWriter>,
    quarantine: Quarantine,
}

fn reserve_slice(w: &mut AnyWriter, slice: Duration) -> Slice<AnyWriteSlot, ReserveTimeoutError> {
    let res = try_map_each!(w, AnyWriter => AnyWriteSlot, w => w.reserve_timeout(slice));
    match res {
        Ok(s) => Slice::Done(s),
        Err(ReserveTimeoutError::Timeout) => Slice::TimedOut,
        Err(e) => Slice::Failed(e),
    }
}

fn try_reserve_now(w: &mut AnyWriter) -> Result<AnyWriteSlot, TryReserveError> {
    try_map_each!(w, AnyWriter => AnyWriteSlot, w => w.try_reserve())
}

impl PyWriter {
    fn w(&self) -> PyResult<&AnyWriter> {
        self.writer.as_ref().ok_or_else(|| closed("writer"))
    }

    /// Reserves a slot (GIL released while waiting).
    fn reserve_slot(&mut self, py: Python<'_>, timeout: Option<f64>) -> PyResult<AnyWriteSlot> {
        let until = deadline(timeout)?;
        release_quarantined(py, &self.quarantine);
        if until.is_some_and(|d| d <= Instant::now()) {
            let writer = self.writer.as_mut().ok_or_else(|| closed("writer"))?;
            return try_reserve_now(writer).map_err(|e| try_reserve_error(py, e));
        }
        let writer = self.writer.as_mut().ok_or_else(|| closed("writer"))?;
        let got = blocking(py, until, |slice| reserve_slice(writer, slice))?;
        match got {
            Slice::Done(s) => Ok(s),
            Slice::Failed(e) => Err(reserve_error(py, e)),
            Slice::Other(msg) => Err(error(py, "Error", msg)),
            Slice::TimedOut => Err(reserve_error(py, ReserveTimeoutError::Timeout)),
        }
    }
}

#[pymethods]
impl PyWriter {
    /// Reserves a slot, waiting up to `timeout` seconds for one (`None`: for ever, `0`: not
    /// at all). `shape` makes the frame smaller than the ring's shape (same rank). Use it as
    /// `with w.reserve() as a: a[...] = ...` (committed at the end of the block, discarded if
    /// it raised), or call `commit()` / `discard()` on it.
    #[pyo3(signature = (timeout = None, *, shape = None, tag = 0))]
    fn reserve(
        &mut self,
        py: Python<'_>,
        timeout: Option<f64>,
        shape: Option<Vec<usize>>,
        tag: u64,
    ) -> PyResult<PyReservation> {
        let mut slot = self.reserve_slot(py, timeout)?;
        if let Some(shape) = &shape {
            let r = each!(&mut slot, AnyWriteSlot, s => s.set_shape(shape));
            r.map_err(|e| PyValueError::new_err(e.to_string()))?;
        }
        let ring = map_each!(self.w()?, AnyWriter => AnyRing, w => w.ring().clone());
        let lease = Bound::new(
            py,
            WriteLease {
                _ring: ring,
                held: Mutex::new(None),
            },
        )?;
        // SAFETY: the slot is reserved by this writer until the reservation commits or
        // discards it, and nothing else writes to it meanwhile. Before either, `seal` makes
        // the arrays read-only and, if views or other references are still alive, keeps the
        // slot reserved (in the lease) instead, so no writable array outlives the
        // reservation's hold on the slot. The lease (the array's base) keeps the ring mapped
        // for as long as the array lives.
        let root = each!(&mut slot, AnyWriteSlot, s => unsafe {
            array_of(s.view(), lease.clone().into_any(), true)
        });
        let arr = root.call_method0("view")?;
        let seq = each!(&slot, AnyWriteSlot, s => s.seq());
        Ok(PyReservation {
            slot: Some(slot),
            array: Some(arr.unbind()),
            root: Some(root.unbind()),
            lease: lease.unbind(),
            quarantine: Arc::clone(&self.quarantine),
            seq,
            tag,
            timestamp_ns: None,
        })
    }

    /// Copies `array` into a new slot and commits it (one copy); returns its sequence number.
    /// The array must have the ring's dtype and rank, fit its shape, and be C-contiguous.
    #[pyo3(signature = (array, timeout = None, *, tag = 0))]
    fn send(
        &mut self,
        py: Python<'_>,
        array: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        tag: u64,
    ) -> PyResult<u64> {
        let arr = array.cast::<PyUntypedArray>().map_err(|_| {
            PyTypeError::new_err(format!(
                "send takes a numpy array, not {}",
                array
                    .get_type()
                    .name()
                    .map_or("?".into(), |n| n.to_string())
            ))
        })?;
        let info = each!(self.w()?, AnyWriter, w => w.ring().info());
        let want = numpy_name(info.dtype);
        let got: String = arr.dtype().getattr("name")?.extract()?;
        if got != want || !arr.dtype().is_native_byteorder().unwrap_or(true) {
            return Err(PyTypeError::new_err(format!(
                "the ring holds {want}, the array is {got}{}: convert it first (a.astype(np.{want}))",
                if got == want { " in non-native byte order" } else { "" }
            )));
        }
        if !arr.is_c_contiguous() {
            return Err(PyValueError::new_err(
                "send needs a C-contiguous array: use np.ascontiguousarray(a), or fill a slot \
                 in place with reserve()",
            ));
        }
        let shape = arr.shape().to_vec();
        if shape.len() != info.max_shape.len()
            || shape.iter().zip(&info.max_shape).any(|(s, m)| s > m)
        {
            return Err(PyValueError::new_err(format!(
                "the array's shape {shape:?} does not fit the ring's shape {:?} (same number of \
                 dimensions, each at most the ring's)",
                info.max_shape
            )));
        }
        let mut slot = self.reserve_slot(py, timeout)?;
        each!(&mut slot, AnyWriteSlot, s => {
            s.set_shape(&shape)
                .map_err(|e| PyValueError::new_err(e.to_string()))?;
            let src = array.cast::<PyArray<_, IxDyn>>()?.readonly();
            let src = src.as_slice().map_err(|e| PyValueError::new_err(e.to_string()))?;
            s.as_mut_slice().copy_from_slice(src);
            s.set_tag(tag);
            Ok::<(), PyErr>(())
        })?;
        Ok(each!(slot, AnyWriteSlot, s => s.commit()))
    }

    /// Waits until at least `n` readers have attached (a lossless stream that must lose
    /// nothing at its start waits for its readers first), at most `timeout` seconds.
    /// Returns how many are attached; raises `Timeout`.
    #[pyo3(signature = (n, timeout = None))]
    fn wait_for_readers(&self, py: Python<'_>, n: usize, timeout: Option<f64>) -> PyResult<usize> {
        let until = deadline(timeout)?;
        let writer = self.w()?;
        let mut attached = 0;
        let mut wait = |slice: Duration| -> Slice<usize, ()> {
            match each!(writer, AnyWriter, w => w.wait_for_readers(n, slice)) {
                Ok(k) => Slice::Done(k),
                Err(e) => {
                    attached = e.attached;
                    Slice::TimedOut
                }
            }
        };
        let got = if until.is_some_and(|d| d <= Instant::now()) {
            wait(Duration::ZERO)
        } else {
            blocking(py, until, wait)?
        };
        match got {
            Slice::Done(k) => Ok(k),
            _ => Err(error(
                py,
                "Timeout",
                format!("{attached} of {n} readers attached in time"),
            )),
        }
    }

    /// Frames this writer committed.
    #[getter]
    fn frames_written(&self) -> PyResult<u64> {
        Ok(each!(self.w()?, AnyWriter, w => w.frames_written()))
    }

    /// The ring, as a new handle.
    #[getter]
    fn ring(&self) -> PyResult<PyRing> {
        Ok(PyRing {
            ring: map_each!(self.w()?, AnyWriter => AnyRing, w => w.ring().clone()),
        })
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(PyTypeError::new_err(
            "a Writer cannot be pickled: pickle its Ring (it pickles as its name) and make the \
             writer in the process that uses it",
        ))
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    fn __exit__(
        &mut self,
        _t: Option<Bound<'_, PyAny>>,
        _v: Option<Bound<'_, PyAny>>,
        _tb: Option<Bound<'_, PyAny>>,
    ) -> bool {
        self.close();
        false
    }

    /// Detaches the writer (the end of its `with` block does too): once every frame is read,
    /// readers see the stream end (`Disconnected`, the end of `for f in reader`).
    fn close(&mut self) {
        self.writer = None;
    }

    fn __repr__(&self) -> String {
        match &self.writer {
            None => "shmflow.Writer(closed)".to_owned(),
            Some(w) => format!(
                "shmflow.Writer(ring={:?}, frames_written={})",
                each!(w, AnyWriter, w => w.ring().name().to_owned()),
                each!(w, AnyWriter, w => w.frames_written()),
            ),
        }
    }
}

// ------------------------------------------------------------------ module

#[pymodule]
fn _shmflow(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyRing>()?;
    m.add_class::<PyReader>()?;
    m.add_class::<PyWriter>()?;
    m.add_class::<PyFrame>()?;
    m.add_class::<PyReservation>()?;
    m.add_function(wrap_pyfunction!(create, m)?)?;
    m.add_function(wrap_pyfunction!(open, m)?)?;
    m.add_function(wrap_pyfunction!(remove, m)?)?;
    m.add_function(wrap_pyfunction!(list_rings, m)?)?;
    m.add("DTYPES", DType::ALL.map(numpy_name).to_vec())?;
    m.add("MAX_DIMS", shmflow::MAX_DIMS)?;
    Ok(())
}
