//! What the user sees: the shared output helpers of `pere-client`.

pub use pere_client::output::*;
pub(crate) use pere_client::say;
