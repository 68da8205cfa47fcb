//! Helpers shared by the subcommands: argument parsers, the error type, output, formatting,
//! and the segments in `/dev/shm` (told apart by `shmflow::segments`).

use std::error::Error;
use std::fmt::Write as _;
use std::io::{self, IsTerminal, Write};
use std::time::Duration;

use shmflow::{DType, Mode, OpenError, RingInfo, RingStatus};

pub use shmflow::segments::{Segment, SegmentKind, SHM_DIR};

// ---------------------------------------------------------------- errors and exit codes

/// Exit code for a failure at run time (unknown ring, mismatch, I/O error, ...).
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for bad command-line syntax (clap's errors and our value parsers).
pub const EXIT_USAGE: i32 = 2;
/// Exit code of `sub --timeout` when no frame arrived in time.
pub const EXIT_TIMEOUT: i32 = 3;
/// Exit code after Ctrl-C or SIGTERM (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Why a subcommand stopped. `main` prints `shmflow: <message>` (one line) and exits with
/// `code`; `message: None` exits quietly (stdout closed by the reader of a pipe).
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: Option<String>,
}

impl Failure {
    /// A run-time failure (exit code 1).
    pub fn new(message: impl Into<String>) -> Self {
        Failure {
            code: EXIT_FAILURE,
            message: Some(message.into()),
        }
    }

    /// A failure with a specific exit code.
    pub fn with_code(code: i32, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: Some(message.into()),
        }
    }

    /// Ends without a message.
    pub fn quiet(code: i32) -> Self {
        Failure {
            code,
            message: None,
        }
    }
}

pub type CliResult<T = ()> = Result<T, Failure>;

/// An error and its sources on one line: `could not create ring "x": No space left on device`.
pub fn describe(e: &(dyn Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !msg.contains(&part) {
            let _ = write!(msg, ": {part}");
        }
        source = s.source();
    }
    msg
}

/// Turns any library error into a [`Failure`].
pub fn fail<E: Error + 'static>(e: E) -> Failure {
    Failure::new(describe(&e))
}

/// A failure to write to stdout: a closed pipe (`shmflow sub --raw NAME | head -c 100`) ends
/// the command quietly and successfully, anything else is an error.
pub fn output_error(e: io::Error) -> Failure {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Failure::quiet(0)
    } else {
        Failure::new(format!("could not write to stdout: {e}"))
    }
}

/// Collapses a message to one line (error messages are one line on stderr).
pub fn one_line(s: &str) -> String {
    s.split('\n')
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

// ---------------------------------------------------------------- value parsers

/// A frame shape given on the command line (`1080,1920,3` or `1080x1920x3`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape(pub Vec<usize>);

/// Parses `--shape`: 1 to `MAX_DIMS` positive integers separated by `,` or `x`.
pub fn parse_shape(s: &str) -> Result<Shape, String> {
    let bad = || {
        format!(
            "bad shape {s:?}: expected positive integers separated by commas, such as 1080,1920,3"
        )
    };
    let dims: Vec<usize> = s
        .split([',', 'x'])
        .map(|d| d.trim().parse::<usize>().ok().filter(|&n| n > 0))
        .collect::<Option<_>>()
        .ok_or_else(bad)?;
    if dims.is_empty() || dims.len() > shmflow::MAX_DIMS {
        return Err(format!(
            "bad shape {s:?}: a shape has 1 to {} dimensions",
            shmflow::MAX_DIMS
        ));
    }
    Ok(Shape(dims))
}

/// Parses `--dtype`.
pub fn parse_dtype(s: &str) -> Result<DType, String> {
    DType::from_name(s).ok_or_else(|| {
        let names: Vec<_> = DType::ALL.iter().map(|d| d.name()).collect();
        format!("unknown dtype {s:?}: use one of {}", names.join(", "))
    })
}

/// Parses `--mode`.
pub fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::from_name(s)
        .ok_or_else(|| format!("unknown mode {s:?}: use one of block, drop-oldest, queue"))
}

/// Parses a duration in seconds (`2`, `0.5`).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    s.parse::<f64>()
        .ok()
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| format!("bad duration {s:?}: expected a number of seconds, such as 2.5"))
}

/// Parses a positive rate (`--fps`).
pub fn parse_rate(s: &str) -> Result<f64, String> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v > 0.0)
        .ok_or_else(|| format!("bad rate {s:?}: expected a positive number, such as 30"))
}

/// Parses an octal file mode (`600`, `0660`, `0o640`).
pub fn parse_octal(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    u32::from_str_radix(digits, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("bad permissions {s:?}: expected an octal mode such as 600 or 660"))
}

/// Parses a group: a number, or a name from the group database.
pub fn parse_group(s: &str) -> Result<u32, String> {
    if let Ok(gid) = s.parse::<u32>() {
        return Ok(gid);
    }
    match shmflow::group_id(s) {
        Ok(Some(gid)) => Ok(gid),
        Ok(None) => Err(format!("no group named {s:?}")),
        Err(e) => Err(format!("cannot look up group {s:?}: {e}")),
    }
}

// ---------------------------------------------------------------- dispatch on the dtype

/// Runs `$body` with the type alias `$t` set to the element type of `$dtype`.
macro_rules! with_dtype {
    ($dtype:expr, $t:ident => $body:expr) => {
        match $dtype {
            shmflow::DType::U8 => {
                type $t = u8;
                $body
            }
            shmflow::DType::I8 => {
                type $t = i8;
                $body
            }
            shmflow::DType::U16 => {
                type $t = u16;
                $body
            }
            shmflow::DType::I16 => {
                type $t = i16;
                $body
            }
            shmflow::DType::U32 => {
                type $t = u32;
                $body
            }
            shmflow::DType::I32 => {
                type $t = i32;
                $body
            }
            shmflow::DType::U64 => {
                type $t = u64;
                $body
            }
            shmflow::DType::I64 => {
                type $t = i64;
                $body
            }
            shmflow::DType::F32 => {
                type $t = f32;
                $body
            }
            shmflow::DType::F64 => {
                type $t = f64;
                $body
            }
        }
    };
}
pub(crate) use with_dtype;

// ---------------------------------------------------------------- output

/// Whether stdout is a terminal: human-friendly output there, plain parseable output otherwise.
pub fn stdout_is_tty() -> bool {
    io::stdout().is_terminal()
}

/// Whether stderr is a terminal (progress messages go there only then).
pub fn stderr_is_tty() -> bool {
    io::stderr().is_terminal()
}

/// Line output on stdout, with write errors turned into [`Failure`]s.
pub struct Out {
    w: io::StdoutLock<'static>,
    /// Stdout is a terminal.
    pub tty: bool,
}

impl Out {
    pub fn new() -> Self {
        Out {
            w: io::stdout().lock(),
            tty: stdout_is_tty(),
        }
    }

    /// Writes one line (stdout is line-buffered: it goes out at once).
    pub fn line(&mut self, s: impl std::fmt::Display) -> CliResult {
        writeln!(self.w, "{s}").map_err(output_error)
    }
}

/// `1080,1920,3`: the `--shape` syntax, so output can be pasted back.
pub fn fmt_shape(shape: &[usize]) -> String {
    shape
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `47.5 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

// ---------------------------------------------------------------- segments

/// Tells what the segment `name` is (see [`shmflow::segments::get`]).
pub fn classify(name: &str) -> Result<Segment, OpenError> {
    shmflow::segments::get(name)
}

/// Reads a ring's header and state, with a clear error for a segment that is not a ring.
pub fn inspect_ring(name: &str) -> CliResult<(RingInfo, RingStatus)> {
    into_ring(name, classify(name))
}

/// The ring in a [`classify`] result, or the failure to report.
pub fn into_ring(
    name: &str,
    segment: Result<Segment, OpenError>,
) -> CliResult<(RingInfo, RingStatus)> {
    match segment.map_err(fail)?.kind {
        SegmentKind::Ring(r) => Ok(*r),
        SegmentKind::PoolStatus { pid, .. } => Err(Failure::new(format!(
            "{name:?} is the status block of a worker pool (pid {pid}), not a ring"
        ))),
        SegmentKind::Unreadable(error) => Err(fail(error)),
        _ => Err(Failure::new(format!("{name:?} is not a ring"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        assert_eq!(parse_shape("1080,1920,3"), Ok(Shape(vec![1080, 1920, 3])));
        assert_eq!(parse_shape("4x5"), Ok(Shape(vec![4, 5])));
        assert_eq!(parse_shape("7"), Ok(Shape(vec![7])));
        for bad in ["", "1,,2", "0,3", "a,b", "-1", "1,2,3,4,5,6,7,8,9", "1.5"] {
            assert!(parse_shape(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn small_parsers() {
        assert_eq!(parse_octal("600"), Ok(0o600));
        assert_eq!(parse_octal("0o660"), Ok(0o660));
        assert!(parse_octal("800").is_err());
        assert!(parse_octal("1777").is_err());
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_rate("0").is_err());
        assert_eq!(parse_dtype("f32"), Ok(DType::F32));
        assert!(parse_dtype("float").is_err());
        assert!(parse_mode("fast").is_err());
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(one_line("a\n\n  b\n"), "a b");
    }
}
