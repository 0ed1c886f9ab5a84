//! The largest single allocation a piece of code makes, so a driver can
//! check that a decoder never believes a length it read from its input
//! (a header claiming 4 GiB must be refused, not allocated for).
//!
//! A binary that runs such a driver installs the allocator:
//! `#[global_allocator] static ALLOC: fuzz_support::peak_alloc::PeakAlloc = PeakAlloc;`
//! The count is per thread, so tests running side by side do not mix.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, remembering the largest size asked of it on each
/// thread since [`largest_allocation`] last reset the count.
pub struct PeakAlloc;

thread_local! {
    // `const` and without a destructor: reading it never allocates, so the
    // allocator may use it.
    static LARGEST_BYTES: Cell<usize> = const { Cell::new(0) };
}

fn note(bytes: usize) {
    // `try_with`: during thread teardown the slot may be gone; not counting
    // then is harmless.
    let _ = LARGEST_BYTES.try_with(|largest| {
        if bytes > largest.get() {
            largest.set(bytes);
        }
    });
}

// SAFETY: every call is passed unchanged to `System`, which upholds the
// contract; the wrapper only records sizes.
unsafe impl GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
}

/// Runs `work` and returns its result with the largest single allocation it
/// made on this thread. Panics if [`PeakAlloc`] is not the global allocator:
/// a check that cannot see allocations must not pass quietly.
pub fn largest_allocation<T>(work: impl FnOnce() -> T) -> (T, usize) {
    const PROBE_BYTES: usize = 4096;
    LARGEST_BYTES.with(|largest| largest.set(0));
    drop(std::hint::black_box(Vec::<u8>::with_capacity(PROBE_BYTES)));
    assert!(
        LARGEST_BYTES.with(Cell::get) >= PROBE_BYTES,
        "install fuzz_support::peak_alloc::PeakAlloc as the #[global_allocator]"
    );
    LARGEST_BYTES.with(|largest| largest.set(0));
    let result = work();
    (result, LARGEST_BYTES.with(Cell::get))
}
