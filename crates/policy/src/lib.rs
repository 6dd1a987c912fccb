//! Statement classification and policy decisions, as pure functions.
//!
//! Two halves, both free of I/O so they can be tested exhaustively and
//! called from any protocol driver:
//! - [`classify`](mod@classify): what a SQL query does (PostgreSQL's own parser, plus a
//!   cache keyed by a literal-stripping lexer);
//! - [`decide`](mod@decide): whether the policies that apply to a principal on a
//!   connection allow it, hold it for approval, or deny it. This is where
//!   the decision is made.

pub mod classify;
pub mod decide;

pub use classify::{
    classify, normalize, Classification, Classifier, ClassifyError, Statement, StatementClass,
};
pub use decide::{Applicable, Decision, PolicyError, PolicySet, Verdict};
