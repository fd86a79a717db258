//! The process's memory policy on a gateway: how many threads the agent
//! runs and how glibc's allocator keeps freed memory. It owns the tokio
//! runtime of the binary and the two allocator calls made at start.
//!
//! Measured with `scripts/agent-footprint.sh` (50 Modbus devices of 100
//! tags every second, every value sent, 5,000 events/s) on the default
//! `#[tokio::main]` runtime: 29.2 MiB resident, of which only about
//! 2.5 MiB was live heap (heaptrack). The rest was
//!
//! - 15.7 MiB in 15 glibc thread arenas: the queue's blocking work (each
//!   append, read and fsync) ran on up to 50 blocking-pool threads, one per
//!   device appending at the same moment, and glibc gives threads their own
//!   arena (up to 8 per core), each keeping the pages it once used;
//! - the main heap holding 6-9 MiB after the configuration was parsed: the
//!   TOML parse of 5,000 tags peaks at 8.5 MiB of heap and is freed at once,
//!   but glibc returns freed heap pages only from the top of the heap;
//! - 3.5-4 MiB of heap kept for zstd: tonic compresses each batch with a new
//!   zstd stream, whose 3.66 MB context is allocated and freed per batch
//!   (five times a second at this load). glibc serves the first one with
//!   mmap, then raises its mmap threshold above it and serves the next ones
//!   from the heap, whose touched pages stay resident.
//!
//! Hence one worker thread (the polls and the sender take 2 % of a core),
//! a small blocking pool (the queue serialises its work on one lock, so more
//! threads only wait), one arena, a fixed mmap threshold, and a trim once the
//! start's garbage is freed.

use std::io;

/// Blocking-pool threads: queue appends, reads, acks and fsyncs, file
/// reads, the dead-letter file. They all take the queue's lock or a file in
/// turn, so a few threads carry as much as fifty did.
const MAX_BLOCKING_THREADS: usize = 4;

/// glibc arenas. With one worker and a few blocking threads, contention on
/// one arena is negligible at 50 polls/s, and every thread reuses the same
/// free pages (13 MiB less resident than with per-thread arenas at this
/// load: 16.3 MiB with `MALLOC_ARENA_MAX=1`, 29.2 MiB without).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENAS: i32 = 1;

/// Blocks from this size on are mmap'ed and unmapped when freed: glibc's
/// initial threshold, kept fixed instead of growing with the largest block
/// freed. A zstd context then costs only the pages it touches while a batch
/// is compressed, and nothing after.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: i32 = 128 * 1024;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    /// `M_MMAP_THRESHOLD` and `M_ARENA_MAX` of glibc's `<malloc.h>`.
    pub const M_MMAP_THRESHOLD: i32 = -3;
    pub const M_ARENA_MAX: i32 = -8;
    extern "C" {
        pub fn mallopt(param: i32, value: i32) -> i32;
        pub fn malloc_trim(pad: usize) -> i32;
    }
}

/// Sets glibc's arenas ([`ARENAS`]) and mmap threshold ([`MMAP_THRESHOLD`]),
/// each unless the environment sets it (`MALLOC_ARENA_MAX`,
/// `MALLOC_MMAP_THRESHOLD_`: glibc then honours that). Call first thing in
/// `main`, before any thread starts.
pub fn configure_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (variable, param, value) in [
        ("MALLOC_ARENA_MAX", glibc::M_ARENA_MAX, ARENAS),
        (
            "MALLOC_MMAP_THRESHOLD_",
            glibc::M_MMAP_THRESHOLD,
            MMAP_THRESHOLD,
        ),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mallopt only sets an allocator parameter; no other
            // thread is running yet.
            unsafe {
                glibc::mallopt(param, value);
            }
        }
    }
}

/// Gives the free pages of the heap back to the system (glibc otherwise
/// keeps every page below the highest live allocation). Call after a burst
/// of memory that is freed, such as parsing the configuration.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; it is thread-safe.
    unsafe {
        glibc::malloc_trim(0);
    }
}

/// The agent's runtime: the main thread runs every task (sources, sender,
/// metrics endpoint), with [`MAX_BLOCKING_THREADS`] for blocking file work.
pub fn runtime() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()
}
