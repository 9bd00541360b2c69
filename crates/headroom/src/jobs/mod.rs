//! The jobs: each a pipeline from a source through byte-bounded channels.

pub mod copy;
pub mod filter;
pub mod ingest;
pub mod purge;
