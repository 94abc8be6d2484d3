//! Device buffers and the caching allocator under them.
//!
//! Buffers come from a size-bucketed free list, so a loop that allocates the same shapes
//! every iteration (every GCG step) stops calling the device allocator after the first one;
//! dropping a buffer returns its memory to the list. Reuse is safe without events because
//! every device op is issued in order on one stream: a later op that reuses the memory runs
//! after the earlier op that read it.
//!
//! Errors are sticky, as in CUDA: the Backend trait's ops cannot return a Result, so the
//! first failure (out of memory, a failed launch) is recorded, later ops are skipped, and
//! `GpuBackend::check` hands it to the caller as an `Err`.
//!
//! Device faults name the device and the kernel or call: a failed launch names its kernel
//! and geometry; an error that surfaces later (CUDA reports a kernel's fault asynchronously,
//! at the next synchronize or copy) names the call it surfaced in and the last kernel
//! launched before it, which is the culprit or ran after it.

use super::device::{DType, DevicePtr, KernelDevice};
use crate::error::Error;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Allocation granularity: keeps bucket counts low and every buffer 256-byte aligned in size.
const GRANULE: usize = 256;

pub(crate) struct Inner<D: KernelDevice> {
    pub(crate) dev: D,
    free: Mutex<HashMap<usize, Vec<DevicePtr>>>,
    error: Mutex<Option<Error>>,
    /// The last kernel (or library call) issued to the device, for errors that surface
    /// after it; empty before the first.
    last_launch: Mutex<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent (plain maps/options).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl<D: KernelDevice> Inner<D> {
    pub(crate) fn new(dev: D) -> Self {
        Inner {
            dev,
            free: Mutex::new(HashMap::new()),
            error: Mutex::new(None),
            last_launch: Mutex::new(String::new()),
        }
    }

    /// Records the first error; later ones are consequences and are dropped.
    pub(crate) fn fail(&self, e: Error) {
        let mut slot = lock(&self.error);
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// Records the last work issued to the device ("kernel `NAME`", or a library call), for
    /// errors that surface after it.
    pub(crate) fn issued(&self, what: std::fmt::Arguments<'_>) {
        use std::fmt::Write;
        let mut last = lock(&self.last_launch);
        // Reuses the string's buffer: no allocation per launch once it is long enough.
        last.clear();
        let _ = last.write_fmt(what);
    }

    /// What [`Inner::issued`] recorded last (empty before the first launch).
    pub(crate) fn last_issued(&self) -> String {
        lock(&self.last_launch).clone()
    }

    /// A launch of `what` the device refused or that failed (the harness runs launches
    /// synchronously, so its faults land here): names the device and the kernel.
    pub(crate) fn launch_error(&self, what: &str, e: Error) -> Error {
        if e.is_out_of_memory() {
            return e; // keeps its kind (callers retry in smaller pieces); it names the device
        }
        Error::Other(format!("{}: {what} failed: {e}", self.dev.name()))
    }

    /// An error from `call` (a synchronize, a copy) that was not a launch: names the device
    /// and, since faults of asynchronous kernels surface at the next such call, the last
    /// kernel launched before it.
    pub(crate) fn call_error(&self, call: &str, e: Error) -> Error {
        if e.is_out_of_memory() {
            return e;
        }
        let last = self.last_issued();
        let after = if last.is_empty() {
            " (no kernel had been launched on this device)".to_string()
        } else {
            format!(
                "; the last launched before it was {last} (a kernel's fault surfaces \
                 late, at the next synchronize or copy: it came from that kernel or an earlier \
                 one; rerun with CUDA_LAUNCH_BLOCKING=1 to have the launch that faulted report it)"
            )
        };
        Error::Other(format!("{}: {call} failed: {e}{after}", self.dev.name()))
    }

    pub(crate) fn failed(&self) -> bool {
        lock(&self.error).is_some()
    }

    pub(crate) fn take_error(&self) -> Option<Error> {
        lock(&self.error).take()
    }

    /// Memory for `bytes`, from the free list or the device; on failure the free list is
    /// released and the allocation retried once before the error is recorded (as
    /// `Error::OutOfMemory` when the device ran out; `check` hands it over and clears it).
    pub(crate) fn alloc(&self, bytes: usize) -> Option<DevicePtr> {
        let bytes = bytes.max(1).div_ceil(GRANULE) * GRANULE;
        if let Some(p) = lock(&self.free).get_mut(&bytes).and_then(Vec::pop) {
            return Some(p);
        }
        match self.dev.alloc(bytes) {
            Ok(p) => Some(p),
            Err(_) => {
                self.trim();
                match self.dev.alloc(bytes) {
                    Ok(p) => Some(p),
                    // Out of memory keeps its kind, so callers can retry in smaller pieces.
                    Err(e) if e.is_out_of_memory() => {
                        self.fail(e);
                        None
                    }
                    Err(e) => {
                        self.fail(Error::Other(format!(
                            "{}: allocating {bytes} bytes failed: {e}",
                            self.dev.name()
                        )));
                        None
                    }
                }
            }
        }
    }

    fn release(&self, p: DevicePtr) {
        lock(&self.free).entry(p.bytes).or_default().push(p);
    }

    /// Returns every cached block to the device.
    pub(crate) fn trim(&self) {
        let blocks: Vec<DevicePtr> = lock(&self.free).drain().flat_map(|(_, v)| v).collect();
        for p in &blocks {
            self.dev.free(p);
        }
    }
}

impl<D: KernelDevice> Drop for Inner<D> {
    fn drop(&mut self) {
        self.trim();
    }
}

/// A device buffer of `len` elements of `dtype`. Memory is absent only after a failed
/// allocation (the backend has recorded the error and skips ops that touch it).
pub struct GpuBuf<D: KernelDevice> {
    pub(crate) mem: Option<DevicePtr>,
    pub(crate) len: usize,
    pub(crate) dtype: DType,
    pub(crate) inner: Arc<Inner<D>>,
}

impl<D: KernelDevice> GpuBuf<D> {
    pub(crate) fn new(inner: &Arc<Inner<D>>, len: usize, dtype: DType) -> Self {
        let mem = inner.alloc(len * dtype.size());
        GpuBuf {
            mem,
            len,
            dtype,
            inner: inner.clone(),
        }
    }

    /// Device address as kernels see it (0 when the allocation failed).
    pub fn addr(&self) -> u64 {
        self.mem.as_ref().map_or(0, |m| m.addr)
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size()
    }
}

impl<D: KernelDevice> std::fmt::Debug for GpuBuf<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "GpuBuf({} x {:?} @ {:#x})",
            self.len,
            self.dtype,
            self.addr()
        )
    }
}

impl<D: KernelDevice> Drop for GpuBuf<D> {
    fn drop(&mut self) {
        if let Some(p) = self.mem.take() {
            self.inner.release(p);
        }
    }
}
