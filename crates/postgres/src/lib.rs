//! PostgreSQL for Portcullis: the wire codec (`codec`, bytes ⇄ messages, no
//! I/O), upstream authentication math (`auth`), and the session driver
//! (`proxy`) that admits clients by token, decides every statement through
//! the policy crate and records it before forwarding.

pub mod auth;
pub mod codec;
pub mod proxy;

pub use proxy::{run_session, CancelRegistry, LevelRoles, PgGateway, UpstreamAddr, UpstreamTarget};
