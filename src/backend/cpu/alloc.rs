//! Allocator policy for the CPU backend's many short-lived large buffers.
//!
//! Every op returns fresh `Vec`s (the backend owns its buffers; a scoring call allocates a
//! few MB per op and layer). glibc returns freed memory at the top of the heap to the OS
//! and serves big requests with fresh `mmap`s, so each such buffer was page-faulted in and
//! zeroed by the kernel again: ~11% of a GCG iteration in the profile. Keeping freed memory
//! in the process makes the next buffer of the same size come from the heap.

/// Makes glibc keep freed memory for reuse (no-op on other platforms). Call once at
/// start-up; affects the whole process, so it is the program's choice, not the library's.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::os::raw::c_int;
        extern "C" {
            fn mallopt(param: c_int, value: c_int) -> c_int;
        }
        const M_TRIM_THRESHOLD: c_int = -1;
        const M_MMAP_THRESHOLD: c_int = -3;
        // SAFETY: mallopt only sets allocator parameters; glibc documents both and rejects
        // out-of-range values by returning 0, which leaves the defaults (harmless).
        unsafe {
            // Largest value glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit): bigger buffers are
            // rare and still mmapped.
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 1 << 30);
        }
    }
}
