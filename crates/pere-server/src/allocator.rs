//! The server's memory allocator: jemalloc on Linux, set for a server that holds many idle
//! connections and frees on one core what another allocated.
//!
//! Measured against glibc's allocator, same build otherwise (`bench/OPTIMISATIONS.md`, *The
//! server's allocator*): less memory per idle feed and less CPU per push. SQLite's own memory
//! (its page caches) stays with the C library's `malloc`, which `server::trim_heap` trims.

#[cfg(all(target_os = "linux", not(target_env = "musl")))]
mod jemalloc {
    use std::ffi::{c_char, CStr};

    #[global_allocator]
    static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

    /// jemalloc's settings, read when it starts; `_RJEM_MALLOC_CONF` in the environment
    /// overrides any of them.
    /// - `background_thread`: freed memory goes back to the system from a thread of jemalloc's,
    ///   not from whichever request allocates next, and an idle server still gives it back;
    /// - `percpu_arena`: one arena per core, not four: fewer half-empty pages kept;
    /// - `dirty_decay_ms:1000`, `muzzy_decay_ms:0`: pages left free for a second go back to the
    ///   system (`MADV_DONTNEED`), so what a closed burst used leaves the resident size within
    ///   seconds, not jemalloc's default ten.
    const SETTINGS: &CStr =
        c"background_thread:true,percpu_arena:percpu,dirty_decay_ms:1000,muzzy_decay_ms:0";

    /// A C string's address, as jemalloc reads its `malloc_conf` symbol.
    #[repr(transparent)]
    pub struct Settings(*const c_char);

    // Safety: the pointer is to a string in the binary's read-only data, never written.
    #[allow(unsafe_code)]
    unsafe impl Sync for Settings {}

    #[allow(unsafe_code)]
    #[export_name = "_rjem_malloc_conf"]
    pub static MALLOC_CONF: Settings = Settings(SETTINGS.as_ptr());
}
