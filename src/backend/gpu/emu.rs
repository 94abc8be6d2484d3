//! `EmuDevice`: the CPU execution harness as a [`KernelDevice`]. It runs the real
//! kernels/*.cu, compiled by the host C++ compiler (kernels/build/harness.rs), with every
//! CUDA thread of a block as a cooperative fiber (kernels/harness/runtime.cpp), so the GPU
//! backend's differential tests run without a GPU. What it checks and what only a real GPU
//! can is in kernels/harness/README.md.
//!
//! # Launch API
//! The same as every [`KernelDevice`]: `launch(name, cfg, args)` with `args` the raw bytes of
//! the kernel's one by-value argument struct (kernels/args.h; `bytemuck::bytes_of(&a)`).
//! Launches are synchronous. `launch` returns `Err(Error::Other)` instead of crashing when:
//! - no kernel has that name, or `args` is not `sizeof` the kernel's argument struct;
//! - the geometry is outside CUDA's limits (block <= 1024 threads, block.z <= 64,
//!   grid.y/z <= 65535, dynamic shared memory <= 227 KiB);
//! - a thread faults: reading or writing past either end of an allocation (guard pages),
//!   through a stale or bad pointer, past the launch's dynamic shared memory, or off its own
//!   stack; the message names the kernel, the block and thread, and the address relative to
//!   the nearest allocation;
//! - a thread divides an integer by zero, calls `__trap()`, or fails an `assert`;
//! - the block deadlocks (a warp collective whose lanes never all arrive, e.g. divergent
//!   `__syncthreads` around a shuffle);
//! - after the launch, the guard bytes around any allocation the arguments point into have
//!   changed (a write just outside it that did not reach a guard page).
//!
//! # Finding races: schedules
//! Between two barriers the fibers of a block run one after another, in thread order
//! ([`Schedule::Forward`]) or the reverse ([`Schedule::Reverse`], which also takes blocks
//! last-first). A kernel with a missing `__syncthreads` or another shared-memory race reads
//! different values under the two: run a deterministic kernel under both and require
//! bit-identical results. Shared memory (static and dynamic) and fresh allocations start
//! poisoned with 0xFF bytes (NaN as f32), so reading what nobody wrote shows up too.
//! Blocks run on several OS threads (rayon) unless [`EmuDevice::with_workers`]`(1)`; only
//! cross-block floating-point atomics make results depend on that.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::device::{DevicePtr, KernelDevice, LaunchConfig};
use crate::error::{Error, Result};

/// The order in which a block's fibers are resumed between barriers (and blocks are taken).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Schedule {
    #[default]
    Forward,
    Reverse,
}

// ---- the C ABI (kernels/harness/emu_abi.h; sizes are checked at startup) ----

#[repr(C)]
struct KernelInfo {
    name: *const c_char,
    entry: Option<unsafe extern "C" fn(*const c_void)>,
    args_size: u32,
    args_align: u32,
    file: *const c_char,
}

#[repr(C)]
struct Launch {
    kernel: *const KernelInfo,
    args: *const c_void,
    grid: [u32; 3],
    block: [u32; 3],
    shared_bytes: u32,
    reverse: u32,
    nblocks: u64,
    next: AtomicU64,
    abort: AtomicU32,
    pad: u32,
}

#[repr(C)]
struct EmuError {
    kind: u32,
    access: u32,
    block: [u32; 3],
    thread: [u32; 3],
    addr: u64,
    msg: [c_char; 512],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Region {
    base: u64,
    total: u64,
    data: u64,
    bytes: u64,
}

const KIND_OK: u32 = 0;
const KIND_FAULT: u32 = 1;
const KIND_ABORTED: u32 = 7;

extern "C" {
    fn armsrace_emu_init() -> c_int;
    fn armsrace_emu_abi_size(which: c_int) -> usize;
    fn armsrace_emu_run(launch: *mut Launch, err: *mut EmuError) -> c_int;
    fn armsrace_emu_kernel_count() -> usize;
    fn armsrace_emu_kernel_get(i: usize) -> *const KernelInfo;
    fn armsrace_emu_map(bytes: u64, out: *mut Region) -> c_int;
    fn armsrace_emu_unmap(r: *const Region);
    fn armsrace_emu_check_guards(r: *const Region, first: *mut u64) -> u64;
}

/// A launchable kernel from the generated table.
#[derive(Clone, Copy)]
struct Kernel {
    info: &'static KernelInfo,
    name: &'static str,
    file: &'static str,
}

// SAFETY: KernelInfo is immutable static data emitted by the build step (string literals and
// function pointers); sharing it between threads is sound.
unsafe impl Sync for KernelInfo {}

struct Registry {
    kernels: HashMap<&'static str, Kernel>,
}

fn registry() -> Result<&'static Registry> {
    static REG: OnceLock<std::result::Result<Registry, String>> = OnceLock::new();
    REG.get_or_init(|| {
        let sizes = [
            std::mem::size_of::<KernelInfo>(),
            std::mem::size_of::<Launch>(),
            std::mem::size_of::<EmuError>(),
            std::mem::size_of::<Region>(),
        ];
        for (i, &want) in sizes.iter().enumerate() {
            // SAFETY: a pure function of its argument in runtime.cpp.
            let got = unsafe { armsrace_emu_abi_size(i as c_int) };
            if got != want {
                return Err(format!(
                    "emu: ABI mismatch between emu.rs and kernels/harness/emu_abi.h (struct {i}: \
                     {want} vs {got} bytes)"
                ));
            }
        }
        // SAFETY: installs the harness's fault handlers once (idempotent, thread-safe).
        let rc = unsafe { armsrace_emu_init() };
        if rc != 0 {
            return Err(format!(
                "emu: cannot install the harness's signal handlers ({rc})"
            ));
        }
        let mut kernels = HashMap::new();
        // SAFETY: reads the build step's static table; every entry is a valid descriptor with
        // NUL-terminated strings that live for the whole program.
        unsafe {
            for i in 0..armsrace_emu_kernel_count() {
                let info = &*armsrace_emu_kernel_get(i);
                let name = CStr::from_ptr(info.name).to_str().unwrap_or("?");
                let file = CStr::from_ptr(info.file).to_str().unwrap_or("?");
                kernels.insert(name, Kernel { info, name, file });
            }
        }
        Ok(Registry { kernels })
    })
    .as_ref()
    .map_err(|e| Error::Other(e.clone()))
}

/// Allocation bookkeeping. Handles are `slot | generation << 32`, so a stale `DevicePtr` is
/// told apart from the allocation that reused its slot.
#[derive(Default)]
struct Allocs {
    slots: Vec<(u32, Option<Region>)>,
    free_slots: Vec<usize>,
    /// Live regions by mmap base, for mapping a faulting address to its allocation.
    by_base: BTreeMap<u64, usize>,
    /// Recently freed regions (handle, region), to name a use after free.
    freed: VecDeque<(usize, Region)>,
}

const FREED_KEPT: usize = 1024;

impl Allocs {
    fn get(&self, ptr: &DevicePtr) -> Result<Region> {
        let slot = ptr.handle & 0xffff_ffff;
        let gen = (ptr.handle >> 32) as u32;
        match self.slots.get(slot) {
            Some((g, Some(r))) if *g == gen && r.data == ptr.addr => Ok(*r),
            _ => Err(Error::Other(format!(
                "emu: device pointer {:#x} (handle {}) is not a live allocation (freed, or from another device)",
                ptr.addr, ptr.handle
            ))),
        }
    }

    /// (handle, region, live) of the allocation whose mapping (guards included) holds `addr`.
    fn find(&self, addr: u64) -> Option<(usize, Region, bool)> {
        if let Some((_, &slot)) = self.by_base.range(..=addr).next_back() {
            let (gen, r) = self.slots[slot];
            if let Some(r) = r {
                if addr < r.base + r.total {
                    return Some((slot | (gen as usize) << 32, r, true));
                }
            }
        }
        self.freed
            .iter()
            .rev()
            .find(|(_, r)| addr >= r.base && addr < r.base + r.total)
            .map(|&(h, r)| (h, r, false))
    }
}

/// Where `addr` lies relative to the allocation around it, for error messages.
fn locate(allocs: &Allocs, addr: u64) -> String {
    if addr < 65536 {
        return " (a null or near-null pointer)".to_string();
    }
    match allocs.find(addr) {
        Some((h, r, live)) => {
            let what = format!(
                "allocation {h:#x} ({} bytes at {:#x}{})",
                r.bytes,
                r.data,
                if live { "" } else { ", freed" }
            );
            if !live {
                format!(", inside {what}: use after free")
            } else if addr >= r.data + r.bytes {
                format!(
                    ", {} bytes past the end of {what}",
                    addr - (r.data + r.bytes)
                )
            } else if addr < r.data {
                format!(", {} bytes before the start of {what}", r.data - addr)
            } else {
                format!(", inside {what}")
            }
        }
        None => ", not in or next to any device allocation".to_string(),
    }
}

/// The CPU execution harness device. See the module documentation.
pub struct EmuDevice {
    schedule: Schedule,
    workers: usize,
    allocs: Mutex<Allocs>,
    /// Bytes the device may hand out (usize::MAX: no cap); see [`EmuDevice::set_mem_cap`].
    mem_cap: AtomicUsize,
    /// Bytes of live allocations (as requested, guards not counted).
    mem_used: AtomicUsize,
    /// Most bytes live at once since creation or [`EmuDevice::reset_mem_peak`].
    mem_peak: AtomicUsize,
    /// Allocations refused for the cap.
    ooms: AtomicUsize,
}

impl Default for EmuDevice {
    fn default() -> Self {
        Self::new()
    }
}

impl EmuDevice {
    /// Forward schedule, blocks spread over rayon's threads.
    pub fn new() -> Self {
        Self::with_schedule(Schedule::Forward)
    }

    pub fn with_schedule(schedule: Schedule) -> Self {
        EmuDevice {
            schedule,
            workers: 0,
            allocs: Mutex::new(Allocs::default()),
            mem_cap: AtomicUsize::new(usize::MAX),
            mem_used: AtomicUsize::new(0),
            mem_peak: AtomicUsize::new(0),
            ooms: AtomicUsize::new(0),
        }
    }

    /// A device with `bytes` of memory: see [`EmuDevice::set_mem_cap`].
    pub fn with_mem_cap(self, bytes: usize) -> Self {
        self.set_mem_cap(Some(bytes));
        self
    }

    /// Caps the memory the device hands out (`None`: no cap). An allocation that would take
    /// live allocations past the cap fails with `Error::OutOfMemory`, as cudaMalloc does
    /// on a full GPU, so out-of-memory handling is testable without one. Lowering the cap
    /// below what is in use frees nothing; it only refuses new allocations.
    pub fn set_mem_cap(&self, bytes: Option<usize>) {
        self.mem_cap
            .store(bytes.unwrap_or(usize::MAX), Ordering::SeqCst);
    }

    /// Bytes of live device allocations (the backend's cached free blocks included).
    pub fn mem_used(&self) -> usize {
        self.mem_used.load(Ordering::SeqCst)
    }

    /// Most bytes live at once since creation or the last [`EmuDevice::reset_mem_peak`].
    pub fn mem_peak(&self) -> usize {
        self.mem_peak.load(Ordering::SeqCst)
    }

    /// Starts a new peak measurement from what is live now.
    pub fn reset_mem_peak(&self) {
        self.mem_peak.store(self.mem_used(), Ordering::SeqCst);
    }

    /// How many allocations the memory cap has refused so far.
    pub fn oom_count(&self) -> usize {
        self.ooms.load(Ordering::SeqCst)
    }

    /// Run blocks on at most `n` OS threads (0 = rayon's pool). With 1, blocks run in a fixed
    /// order, which makes cross-block floating-point atomics reproducible.
    pub fn with_workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    pub fn schedule(&self) -> Schedule {
        self.schedule
    }

    /// Names of every kernel the harness can launch (kernels/*.cu and the harness's tests).
    pub fn kernel_names() -> Result<Vec<&'static str>> {
        let mut v: Vec<&'static str> = registry()?.kernels.keys().copied().collect();
        v.sort_unstable();
        Ok(v)
    }

    pub fn has_kernel(name: &str) -> bool {
        registry().is_ok_and(|r| r.kernels.contains_key(name))
    }

    fn allocs(&self) -> MutexGuard<'_, Allocs> {
        // A panic while holding the lock cannot leave the table inconsistent (every update is a
        // single push/insert), so a poisoned lock is still usable.
        self.allocs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn describe(&self, k: &Kernel, e: &EmuError) -> String {
        // SAFETY: the runtime always NUL-terminates msg (vsnprintf/snprintf into the buffer, or
        // the zeroed buffer itself).
        let msg = unsafe { CStr::from_ptr(e.msg.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let at = format!(
            "emu: kernel `{}` ({}) block ({},{},{}) thread ({},{},{})",
            k.name,
            k.file,
            e.block[0],
            e.block[1],
            e.block[2],
            e.thread[0],
            e.thread[1],
            e.thread[2]
        );
        if e.kind == KIND_FAULT && msg.starts_with("invalid") {
            let place = locate(&self.allocs(), e.addr);
            format!("{at}: {msg} at {:#x}{place}", e.addr)
        } else {
            format!("{at}: {msg}")
        }
    }

    /// Guard bytes of the allocations `args` points into (every 8-byte-aligned word that is
    /// an address inside one), or of all allocations.
    fn check_guards(&self, args: Option<&[u8]>, who: &str) -> Result<()> {
        let allocs = self.allocs();
        let mut handles: Vec<usize> = match args {
            Some(args) => args
                .chunks_exact(8)
                .filter_map(|w| {
                    let a = u64::from_ne_bytes(w.try_into().expect("8 bytes"));
                    allocs
                        .find(a)
                        .filter(|&(_, _, live)| live)
                        .map(|(h, _, _)| h)
                })
                .collect(),
            None => (0..allocs.slots.len())
                .filter_map(|s| {
                    allocs.slots[s]
                        .1
                        .map(|_| s | (allocs.slots[s].0 as usize) << 32)
                })
                .collect(),
        };
        handles.sort_unstable();
        handles.dedup();
        for h in handles {
            let Some(r) = allocs.slots[h & 0xffff_ffff].1 else {
                continue;
            };
            let mut first = 0u64;
            // SAFETY: r is a live region from armsrace_emu_map; the check reads and restores
            // only its own slack and gap bytes (mapped read-write).
            let bad = unsafe { armsrace_emu_check_guards(&r, &mut first) };
            if bad > 0 {
                let place = if first >= r.data + r.bytes {
                    format!("{} bytes past its end", first - (r.data + r.bytes))
                } else {
                    format!("{} bytes before its start", r.data - first)
                };
                return Err(Error::Other(format!(
                    "emu: {who} wrote outside allocation {h:#x} ({} bytes at {:#x}): {bad} guard \
                     byte(s) changed, the first {place}",
                    r.bytes, r.data
                )));
            }
        }
        Ok(())
    }
}

impl Drop for EmuDevice {
    fn drop(&mut self) {
        let allocs = self.allocs.get_mut().unwrap_or_else(|p| p.into_inner());
        for (_, r) in allocs.slots.iter_mut() {
            if let Some(r) = r.take() {
                // SAFETY: r came from armsrace_emu_map and is unmapped exactly once (taken here).
                unsafe { armsrace_emu_unmap(&r) };
            }
        }
    }
}

/// One launch, shared by the calling thread and its helpers. Helpers own an `Arc` of it, so
/// one that wakes up after the launch returned finds no block left and touches nothing else.
struct LaunchBox {
    launch: Launch,
    /// Aligned copy of the argument struct; `launch.args` points into it.
    _args: Vec<u128>,
    /// Helpers inside the runtime right now; the caller waits for zero before returning.
    inflight: AtomicUsize,
    errors: Mutex<Vec<EmuError>>,
}

// SAFETY: the raw pointers in `launch` are the kernel descriptor (immutable static data) and
// `_args` (owned by the box, never mutated after construction); workers update only the
// atomics `next` and `abort` (through the runtime, with atomic operations) and `errors`
// (behind its mutex).
unsafe impl Send for LaunchBox {}
// SAFETY: as above.
unsafe impl Sync for LaunchBox {}

impl LaunchBox {
    /// Runs blocks until none is left (or one failed); keeps the first real error.
    fn work(&self) {
        let mut err = EmuError {
            kind: 0,
            access: 0,
            block: [0; 3],
            thread: [0; 3],
            addr: 0,
            msg: [0; 512],
        };
        // SAFETY: `launch` lives as long as self; its descriptor and argument buffer are valid
        // for the whole call; the runtime writes only `err` and the launch's atomic counters
        // (AtomicU64/AtomicU32 in the Rust struct, so shared mutation is allowed).
        unsafe { armsrace_emu_run(&self.launch as *const Launch as *mut Launch, &mut err) };
        if err.kind != KIND_OK && err.kind != KIND_ABORTED {
            self.errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(err);
        }
    }
}

impl KernelDevice for EmuDevice {
    fn name(&self) -> String {
        format!("emu (CPU execution harness, {:?} schedule)", self.schedule)
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        let cap = self.mem_cap.load(Ordering::SeqCst);
        let reserved = self
            .mem_used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                used.checked_add(bytes).filter(|&total| total <= cap)
            });
        if let Ok(used) = reserved {
            self.mem_peak.fetch_max(used + bytes, Ordering::SeqCst);
        }
        if let Err(used) = reserved {
            self.ooms.fetch_add(1, Ordering::SeqCst);
            return Err(Error::out_of_memory(
                self.name(),
                bytes,
                format!(
                    ", {} bytes free of a {cap}-byte cap",
                    cap.saturating_sub(used)
                ),
            ));
        }
        let mut r = Region::default();
        // SAFETY: armsrace_emu_map writes only *out.
        let rc = unsafe { armsrace_emu_map(bytes as u64, &mut r) };
        if rc != 0 {
            self.mem_used.fetch_sub(bytes, Ordering::SeqCst);
            return Err(Error::Other(format!(
                "emu: cannot allocate {bytes} bytes (errno {rc})"
            )));
        }
        let mut a = self.allocs();
        let slot = match a.free_slots.pop() {
            Some(s) => {
                a.slots[s].0 = a.slots[s].0.wrapping_add(1);
                a.slots[s].1 = Some(r);
                s
            }
            None => {
                a.slots.push((0, Some(r)));
                a.slots.len() - 1
            }
        };
        a.by_base.insert(r.base, slot);
        let handle = slot | (a.slots[slot].0 as usize) << 32;
        Ok(DevicePtr {
            addr: r.data,
            bytes,
            handle,
        })
    }

    fn free(&self, ptr: &DevicePtr) {
        let mut a = self.allocs();
        let Ok(r) = a.get(ptr) else { return };
        self.mem_used.fetch_sub(ptr.bytes, Ordering::SeqCst);
        let slot = ptr.handle & 0xffff_ffff;
        a.slots[slot].1 = None;
        a.free_slots.push(slot);
        a.by_base.remove(&r.base);
        if a.freed.len() == FREED_KEPT {
            a.freed.pop_front();
        }
        a.freed.push_back((ptr.handle, r));
        // SAFETY: r was live (checked by get) and is now removed from the table, so it is
        // unmapped exactly once; no launch is running on this device's memory from here on
        // unless the caller frees memory a concurrent launch uses, which CUDA forbids too.
        unsafe { armsrace_emu_unmap(&r) };
    }

    fn upload(&self, dst: &DevicePtr, offset: usize, src: &[u8]) -> Result<()> {
        let r = self.allocs().get(dst)?;
        if offset
            .checked_add(src.len())
            .is_none_or(|end| end as u64 > r.bytes)
        {
            return Err(Error::Other(format!(
                "emu: upload of {} bytes at offset {offset} overflows a {}-byte allocation",
                src.len(),
                r.bytes
            )));
        }
        // SAFETY: [data + offset, + len) is inside the live, read-write data region (checked
        // above), and src is a distinct host slice.
        unsafe {
            std::ptr::copy_nonoverlapping(
                src.as_ptr(),
                (r.data as usize + offset) as *mut u8,
                src.len(),
            )
        };
        Ok(())
    }

    fn download(&self, src: &DevicePtr, offset: usize, dst: &mut [u8]) -> Result<()> {
        let r = self.allocs().get(src)?;
        if offset
            .checked_add(dst.len())
            .is_none_or(|end| end as u64 > r.bytes)
        {
            return Err(Error::Other(format!(
                "emu: download of {} bytes at offset {offset} overflows a {}-byte allocation",
                dst.len(),
                r.bytes
            )));
        }
        // SAFETY: as in upload, with the roles swapped.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (r.data as usize + offset) as *const u8,
                dst.as_mut_ptr(),
                dst.len(),
            )
        };
        Ok(())
    }

    fn memset_zero(&self, dst: &DevicePtr) -> Result<()> {
        let r = self.allocs().get(dst)?;
        // SAFETY: the whole data region of a live allocation is mapped read-write.
        unsafe { std::ptr::write_bytes(r.data as usize as *mut u8, 0, r.bytes as usize) };
        Ok(())
    }

    fn launch(&self, kernel: &str, cfg: LaunchConfig, args: &[u8]) -> Result<()> {
        let reg = registry()?;
        let Some(&k) = reg.kernels.get(kernel) else {
            return Err(Error::Other(format!(
                "emu: no kernel `{kernel}` in the CPU harness (it compiles every \
                 `extern \"C\" __global__` function of kernels/*.cu)"
            )));
        };
        let bad = |msg: String| {
            Err(Error::Other(format!(
                "emu: kernel `{kernel}` ({}): {msg}",
                k.file
            )))
        };
        if k.info.args_size == u32::MAX {
            return bad("takes more than one argument; kernels take one struct by value".into());
        }
        if args.len() != k.info.args_size as usize {
            return bad(format!(
                "argument struct is {} bytes, but the kernel's parameter is {} bytes (kernels/args.h)",
                args.len(),
                k.info.args_size
            ));
        }
        if k.info.args_align > 16 {
            return bad(format!(
                "argument alignment {} > 16 is not supported",
                k.info.args_align
            ));
        }
        let [bx, by, bz] = cfg.block;
        let [gx, gy, gz] = cfg.grid;
        let threads = bx as u64 * by as u64 * bz as u64;
        if bx == 0 || by == 0 || bz == 0 || threads > 1024 || bz > 64 {
            return bad(format!(
                "block ({bx},{by},{bz}): need 1..=1024 threads and z <= 64"
            ));
        }
        if gx == 0 || gy == 0 || gz == 0 || gx > i32::MAX as u32 || gy > 65535 || gz > 65535 {
            return bad(format!("grid ({gx},{gy},{gz}) outside CUDA's limits"));
        }
        if cfg.shared_bytes > 227 * 1024 {
            return bad(format!(
                "{} bytes of dynamic shared memory (at most 227 KiB)",
                cfg.shared_bytes
            ));
        }
        // An aligned copy of the argument bytes: entries read the struct in place.
        let mut buf = vec![0u128; args.len().div_ceil(16).max(1)];
        bytemuck::cast_slice_mut::<u128, u8>(&mut buf)[..args.len()].copy_from_slice(args);
        let nblocks = gx as u64 * gy as u64 * gz as u64;
        let launch = Launch {
            kernel: k.info,
            args: buf.as_ptr() as *const c_void, // the heap buffer does not move with the Vec
            grid: cfg.grid,
            block: cfg.block,
            shared_bytes: cfg.shared_bytes,
            reverse: (self.schedule == Schedule::Reverse) as u32,
            nblocks,
            next: AtomicU64::new(0),
            abort: AtomicU32::new(0),
            pad: 0,
        };
        let b = Arc::new(LaunchBox {
            launch,
            _args: buf,
            inflight: AtomicUsize::new(0),
            errors: Mutex::new(Vec::new()),
        });
        // The caller starts on the blocks at once; rayon helpers join as they wake up (waiting
        // for them to start would cost more than a small launch takes).
        let pool = if self.workers == 0 {
            rayon::current_num_threads()
        } else {
            self.workers
        };
        let workers = (pool as u64).min(nblocks).max(1) as usize;
        for _ in 1..workers {
            let h = Arc::clone(&b);
            rayon::spawn(move || {
                h.inflight.fetch_add(1, Ordering::SeqCst);
                h.work();
                h.inflight.fetch_sub(1, Ordering::SeqCst);
            });
        }
        b.work();
        // Blocks are all taken (or the launch failed): wait for helpers still running one.
        while b.inflight.load(Ordering::SeqCst) != 0 {
            std::thread::yield_now();
        }
        let first = b
            .errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .map(|e| self.describe(&k, e));
        if let Some(msg) = first {
            // The guard check also restores the pattern for the next launch.
            let _ = self.check_guards(Some(args), "");
            return Err(Error::Other(msg));
        }
        self.check_guards(Some(args), &format!("kernel `{kernel}` ({})", k.file))
    }

    fn synchronize(&self) -> Result<()> {
        self.check_guards(None, "a kernel")
    }

    /// Only under a memory cap (host memory is not device memory).
    fn mem_info(&self) -> Option<(usize, usize)> {
        let cap = self.mem_cap.load(Ordering::SeqCst);
        (cap != usize::MAX).then(|| (cap.saturating_sub(self.mem_used()), cap))
    }
}
