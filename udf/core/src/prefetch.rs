//! Memory hints: asking for a cache line before it is read, so that a
//! batch's lookups wait for memory together instead of one after another.
//! Hints change no result.

/// Asks the memory system for the line holding `p`; a hint only.
#[inline]
pub(crate) fn prefetch_line<T>(p: *const T) {
    #[cfg(all(target_arch = "x86_64", target_feature = "sse"))]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(all(target_arch = "x86_64", target_feature = "sse")))]
    // A load (WebAssembly has no prefetch). The CPU retires nothing behind
    // it until its line arrives, so callers issue their hints close
    // together, where the misses overlap (see `Engine::prefetch`).
    // SAFETY: callers pass a valid, aligned element of a live vector.
    unsafe {
        core::hint::black_box(core::ptr::read_volatile(p.cast::<u8>()));
    }
}
