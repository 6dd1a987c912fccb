//! PostgreSQL's parser, called so that no statement can take the gateway down.
//!
//! Three things recurse once per level of the parse tree: libpg_query's C
//! code, prost's decoding of the tree into Rust, and the Rust code that
//! serializes, walks and drops it. A 20 KB `SELECT 1 + 1 + ... + 1` is 5,000
//! levels, and every level costs prost tens of kilobytes of stack, so on a
//! 2 MB runtime thread it aborted the whole process.
//!
//! - The C side bounds itself: libpg_query measures the calling thread's
//!   stack and raises `stack depth limit exceeded` (at most 2 MB of C stack,
//!   as PostgreSQL's default `max_stack_depth`), and it refuses to serialize a
//!   tree more than 10,000 messages deep. Both become
//!   [`ClassifyError::TooComplex`](super::ClassifyError::TooComplex).
//! - The Rust side gets a stack sized to the tree: a tree of `n` bytes is at
//!   most `n / 2` messages deep (each level needs a tag and a length byte) and
//!   never deeper than the 10,000 libpg_query lets through, so the analysis runs
//!   on a fresh thread whose stack covers that depth. A fresh thread unmaps its
//!   stack when it ends, so memory returns to where it was; small trees run
//!   where they are called. At most [`LARGE_AT_ONCE`] large analyses run at
//!   once, so many sessions sending huge statements cannot exhaust memory.
//!
//! The C call is made directly (not through `pg_query::parse`) because the
//! crate keeps the error's cursor position to itself, and PostgreSQL's clients
//! need it to point at the error.

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::{Condvar, Mutex, PoisonError};

use prost::Message;

use super::ClassifyError;

/// libpg_query's `PG_QUERY_PROTOBUF_MAX_DEPTH`: deeper trees are refused by the C side.
const MAX_TREE_DEPTH: usize = 10_000;

/// Stack one level of the tree may take on the Rust side: prost decodes a `Node` (an enum of
/// some 270 message types) in one frame. Measured as the smallest stack that decodes, serializes
/// and drops a chain of `+` (two levels a term): about 48 KB a term unoptimized, and this much in
/// release; doubled for margin.
const STACK_PER_LEVEL: usize = if cfg!(debug_assertions) {
    56 * 1024
} else {
    8 * 1024
};

/// Stack for everything that does not grow with depth.
const STACK_BASE: usize = 1 << 20;

/// Trees needing no more stack than this are analysed on the calling thread, which has at least
/// the 2 MB of a runtime or test thread and uses little of it before this point.
const INLINE_STACK: usize = 512 * 1024;

/// Analyses whose stack exceeds this wait for one of [`LARGE_AT_ONCE`] turns.
const LARGE_STACK: usize = 64 << 20;

/// How many large analyses may run at once.
pub(crate) const LARGE_AT_ONCE: usize = 2;

/// A statement PostgreSQL's grammar rejects, as the server would report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    /// PostgreSQL's message: `syntax error at or near "x"`.
    pub message: String,
    /// 1-based character (not byte) position of the error in the query, as in the `P` field of
    /// an ErrorResponse; `None` when the parser gave none.
    pub position: Option<u32>,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)?;
        match self.position {
            Some(p) => write!(f, " (at character {p})"),
            None => Ok(()),
        }
    }
}

/// Parses `sql` and hands its decoded tree to `analyse` on a stack deep enough for it.
pub(crate) fn with_tree<T: Send>(
    sql: &str,
    analyse: impl FnOnce(&pg_query::protobuf::ParseResult) -> T + Send,
) -> Result<T, ClassifyError> {
    let bytes = parse_to_protobuf(sql)?;
    let deep = depth_stack(bytes.len());
    let decode_and_analyse = move || -> Result<T, ClassifyError> {
        let run = std::panic::AssertUnwindSafe(|| {
            let tree = pg_query::protobuf::ParseResult::decode(bytes.as_slice()).map_err(|e| {
                ClassifyError::Internal(format!("cannot decode the parse tree: {e}"))
            })?;
            // The tree is dropped here too: dropping recurses as deeply as decoding.
            Ok(analyse(&tree))
        });
        std::panic::catch_unwind(run)
            .unwrap_or_else(|_| Err(ClassifyError::Internal("the analysis panicked".into())))
    };
    if deep <= INLINE_STACK {
        return decode_and_analyse();
    }
    let _turn = (deep > LARGE_STACK).then(|| LARGE_TURNS.take());
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("sql-analysis".into())
            .stack_size(STACK_BASE + deep)
            .spawn_scoped(scope, decode_and_analyse)
            .map_err(|e| ClassifyError::Internal(format!("cannot start the analysis: {e}")))?
            .join()
            .unwrap_or_else(|_| Err(ClassifyError::Internal("the analysis panicked".into())))
    })
}

/// The stack that the levels of a tree of `bytes` protobuf bytes need at most.
fn depth_stack(bytes: usize) -> usize {
    (bytes / 2).min(MAX_TREE_DEPTH) * STACK_PER_LEVEL
}

#[repr(C)]
struct PgQueryError {
    message: *mut c_char,
    funcname: *mut c_char,
    filename: *mut c_char,
    lineno: c_int,
    cursorpos: c_int,
    context: *mut c_char,
}

#[repr(C)]
struct PgQueryProtobuf {
    len: usize,
    data: *mut c_char,
}

#[repr(C)]
struct PgQueryProtobufParseResult {
    parse_tree: PgQueryProtobuf,
    stderr_buffer: *mut c_char,
    error: *mut PgQueryError,
}

// Linked from the static libpg_query that the `pg_query` crate builds; the declarations
// follow its `pg_query.h`.
extern "C" {
    fn pg_query_parse_protobuf_opts(
        input: *const c_char,
        options: c_int,
    ) -> PgQueryProtobufParseResult;
    fn pg_query_free_protobuf_parse_result(result: PgQueryProtobufParseResult);
}

/// Messages of libpg_query's own limits; the statement is well-formed but too deep.
const TOO_DEEP: &[&str] = &[
    "stack depth limit exceeded",
    "parse tree is nested too deeply",
];

fn parse_to_protobuf(sql: &str) -> Result<Vec<u8>, ClassifyError> {
    let input = CString::new(sql)
        .map_err(|_| ClassifyError::Unreadable("the query contains a NUL byte".into()))?;
    let options = c_int::from(pg_query::ParserOptions::DEFAULT.bits());
    // SAFETY: `input` is a NUL-terminated string that outlives the call; the result is read
    // only before it is freed, once, below.
    let result = unsafe { pg_query_parse_protobuf_opts(input.as_ptr(), options) };
    let outcome = if result.error.is_null() {
        // SAFETY: without an error, `data` points to `len` bytes owned by `result`.
        let tree = unsafe {
            std::slice::from_raw_parts(result.parse_tree.data.cast::<u8>(), result.parse_tree.len)
        };
        Ok(tree.to_vec())
    } else {
        // SAFETY: a non-null error has a NUL-terminated message owned by `result`.
        let error = unsafe { &*result.error };
        let message = unsafe { CStr::from_ptr(error.message) }
            .to_string_lossy()
            .into_owned();
        Err(parse_error(message, error.cursorpos))
    };
    // SAFETY: `result` came from the parse above and is freed exactly once.
    unsafe { pg_query_free_protobuf_parse_result(result) };
    outcome
}

fn parse_error(message: String, cursorpos: c_int) -> ClassifyError {
    if TOO_DEEP.iter().any(|m| message.starts_with(m)) {
        return ClassifyError::TooComplex(message);
    }
    ClassifyError::Syntax(SyntaxError {
        message,
        position: u32::try_from(cursorpos).ok().filter(|p| *p > 0),
    })
}

/// Turns for large analyses: a counting semaphore (the crate has no async runtime).
struct Turns {
    free: Mutex<usize>,
    freed: Condvar,
}

static LARGE_TURNS: Turns = Turns {
    free: Mutex::new(LARGE_AT_ONCE),
    freed: Condvar::new(),
};

struct Turn(&'static Turns);

impl Turns {
    fn take(&'static self) -> Turn {
        let mut free = self.free.lock().unwrap_or_else(PoisonError::into_inner);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *free -= 1;
        Turn(self)
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(PoisonError::into_inner) += 1;
        self.0.freed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stack_grows_with_the_tree_up_to_the_parser_limit() {
        assert!(depth_stack(16) <= INLINE_STACK);
        assert!(depth_stack(10_000) > depth_stack(1_000));
        assert_eq!(depth_stack(usize::MAX), depth_stack(2 * MAX_TREE_DEPTH));
    }

    #[test]
    fn syntax_errors_keep_postgres_message_and_position() {
        let Err(ClassifyError::Syntax(e)) = parse_to_protobuf("SELECT 1 FROMM t") else {
            panic!("not a syntax error");
        };
        assert_eq!(e.message, "syntax error at or near \"t\"");
        assert_eq!(e.position, Some(16));
    }

    #[test]
    fn positions_count_characters_not_bytes() {
        let Err(ClassifyError::Syntax(e)) = parse_to_protobuf("SELECT 'ééé' FROMM t") else {
            panic!("not a syntax error");
        };
        assert_eq!(e.position, Some(20));
    }
}
