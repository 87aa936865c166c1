//! What the user sees: the shared line printer of `pere-client`.

pub(crate) use pere_client::say;
