//! What PERE's command-line programs share: `pere-server`, `pere-pub`, `pere-sub` and
//! `pere-bench` all depend on it. It depends on nothing, so that `pere-bench` still builds no
//! PERE engine or client and the server no client: text in, text out.
//!
//! Layout:
//! - [`usage`]: clap's usage error, rendered in several lines, in one line.
#![deny(missing_docs, missing_debug_implementations)]
#![forbid(unsafe_code)]

pub mod usage;

pub use usage::usage_line;
