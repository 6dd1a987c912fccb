//! End-to-end tests: the real `portcullis` binary between real clients
//! (psql, pgbench, psycopg, raw sockets; OpenSSH ssh and scp) and real
//! servers (PostgreSQL, sshd).
//! One test binary, so the workspace links it once.

mod config_cli;
mod env;
mod jit_api;
mod jit_approvals;
mod jit_attacks;
mod jit_grants;
mod jit_http;
mod jit_spec;
mod jit_support;
mod postgres_access;
mod postgres_audit_integrity;
mod postgres_clients;
mod postgres_complex;
mod postgres_differential;
mod postgres_fidelity;
mod postgres_login_limit;
mod postgres_masking;
mod postgres_meaning;
mod postgres_robustness;
mod postgres_roles;
mod postgres_session_state;
mod postgres_state;
mod postgres_unix;
mod postgres_upstream_auth;
mod records_cli;
mod ssh_access;
mod ssh_env;
mod ssh_jit;
mod ssh_stock_clients;
mod third_party_issuer;
