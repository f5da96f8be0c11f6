//! Go-style duration strings (`1m30s`, `500ms`, `2h`), as used by
//! `MaskProvider.spec.verify.timeout` and `.interval`. The grammar is the one
//! every `--*-interval` and `--*-timeout` flag of the binary uses; it lives in
//! `vpno-sys` (its pure part, no I/O) and is re-exported here beside the CRD
//! types whose schema pattern it must agree with.

pub use vpno_sys::duration::{DURATION_PATTERN, DurationError, format_duration, parse_duration};
