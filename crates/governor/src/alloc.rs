//! A counting global allocator: current and peak heap bytes.
//!
//! Install it as the global allocator of a test, a benchmark or the binary:
//!
//! ```
//! use headroom_governor::CountingAlloc;
//!
//! #[global_allocator]
//! static ALLOC: CountingAlloc = CountingAlloc::system();
//!
//! let (_v, peak) = headroom_governor::alloc::measure_peak(|| vec![0u8; 1 << 20]);
//! assert!(peak >= 1 << 20);
//! ```
//!
//! The counters are process-wide: a measurement counts every thread's
//! allocations while it runs. That is what a memory claim needs (a path must
//! stay within its reservation however many tasks it spawns), and it means
//! measurements in one process must not overlap.

use std::alloc::{GlobalAlloc, Layout, System};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

static CURRENT: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// A `GlobalAlloc` that counts live and peak bytes, delegating to `A`.
#[derive(Debug, Default)]
pub struct CountingAlloc<A = System> {
    inner: A,
}

impl CountingAlloc<System> {
    /// Counts on top of the system allocator.
    pub const fn system() -> Self {
        CountingAlloc { inner: System }
    }
}

impl<A> CountingAlloc<A> {
    /// Counts on top of `inner`.
    pub const fn new(inner: A) -> Self {
        CountingAlloc { inner }
    }
}

#[inline]
fn added(bytes: usize) {
    if !ACTIVE.load(Ordering::Relaxed) {
        ACTIVE.store(true, Ordering::Relaxed);
    }
    let now = CURRENT.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

#[inline]
fn removed(bytes: usize) {
    CURRENT.fetch_sub(bytes as u64, Ordering::Relaxed);
}

// SAFETY: every method forwards to `inner` with the caller's arguments
// unchanged; the counting only touches atomics.
unsafe impl<A: GlobalAlloc> GlobalAlloc for CountingAlloc<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { self.inner.alloc(layout) };
        if !p.is_null() {
            added(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { self.inner.alloc_zeroed(layout) };
        if !p.is_null() {
            added(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { self.inner.dealloc(ptr, layout) };
        removed(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            // Count the grow before the shrink, so a realloc's peak is the
            // larger size, not both.
            if new_size >= layout.size() {
                added(new_size - layout.size());
            } else {
                removed(layout.size() - new_size);
            }
        }
        p
    }
}

/// Live heap bytes, or `None` when the counting allocator is not installed.
pub fn heap_bytes() -> Option<u64> {
    ACTIVE
        .load(Ordering::Relaxed)
        .then(|| CURRENT.load(Ordering::Relaxed))
}

/// The highest live heap bytes since the process started or the last
/// [`reset_peak`]; 0 if the counting allocator is not installed.
pub fn peak_bytes() -> u64 {
    PEAK.load(Ordering::Relaxed)
}

/// Sets the peak to the current live bytes, starting a new measurement.
pub fn reset_peak() {
    PEAK.store(CURRENT.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Runs `f` and returns its result with the peak heap growth above the
/// live bytes at the start (what `f` needed at most, on all threads).
pub fn measure_peak<R>(f: impl FnOnce() -> R) -> (R, u64) {
    let base = CURRENT.load(Ordering::Relaxed);
    reset_peak();
    let out = f();
    (out, peak_bytes().saturating_sub(base))
}

/// Awaits `fut` and returns its output with its peak heap growth, as
/// [`measure_peak`].
pub async fn measure_peak_async<F: Future>(fut: F) -> (F::Output, u64) {
    let base = CURRENT.load(Ordering::Relaxed);
    reset_peak();
    let out = fut.await;
    (out, peak_bytes().saturating_sub(base))
}
