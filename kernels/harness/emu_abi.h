/* The CPU execution harness's C ABI: what Rust (src/backend/gpu/emu.rs, which mirrors these
 * structs by hand), the runtime (runtime.cpp) and the kernel-side shim (cuda_shim.h) share.
 * Plain C so both sides read it the same way; change a struct here and in emu.rs together
 * (emu.rs checks the sizes at startup). */
#ifndef ARMSRACE_EMU_ABI_H
#define ARMSRACE_EMU_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* One launchable kernel, emitted by the build step (kernels/build/harness.rs) for every
 * `extern "C" __global__` function it finds. `entry` runs the kernel body for the current
 * fiber with `args` pointing at an aligned copy of the argument struct. */
typedef struct ArmsEmuKernel {
    const char* name;
    void (*entry)(const void* args);
    uint32_t args_size;  /* sizeof the by-value argument; UINT32_MAX: not one argument */
    uint32_t args_align;
    const char* file;
} ArmsEmuKernel;

/* One launch, shared by every worker (OS thread) that runs its blocks. */
typedef struct ArmsEmuLaunch {
    const ArmsEmuKernel* kernel;
    const void* args;
    uint32_t grid[3];
    uint32_t block[3];
    uint32_t shared_bytes;
    uint32_t reverse; /* 1: fibers resumed in reverse order, blocks taken last first */
    uint64_t nblocks;
    uint64_t next;  /* next block to take (atomic) */
    uint32_t abort; /* set by the first worker that fails (atomic) */
    uint32_t pad;
} ArmsEmuLaunch;

enum {
    ARMSRACE_EMU_OK = 0,
    ARMSRACE_EMU_FAULT = 1,    /* SIGSEGV / SIGBUS: `addr`, `access` */
    ARMSRACE_EMU_FPE = 2,      /* SIGFPE (integer division by zero) */
    ARMSRACE_EMU_TRAP = 3,     /* __trap(), assert(), misuse of an intrinsic: `msg` */
    ARMSRACE_EMU_DEADLOCK = 4, /* no fiber can run: `msg` */
    ARMSRACE_EMU_STACK = 5,    /* a fiber overflowed its stack */
    ARMSRACE_EMU_LIMIT = 6,    /* shared memory over the device limit: `msg` */
    ARMSRACE_EMU_ABORTED = 7   /* another worker failed first (no details) */
};
enum { ARMSRACE_EMU_ACCESS_UNKNOWN = 0, ARMSRACE_EMU_ACCESS_READ = 1, ARMSRACE_EMU_ACCESS_WRITE = 2 };

typedef struct ArmsEmuError {
    uint32_t kind;
    uint32_t access;
    uint32_t block[3];
    uint32_t thread[3];
    uint64_t addr;
    char msg[512];
} ArmsEmuError;

/* A device allocation: [guard | slack | data | gap | guard]; guards are PROT_NONE, slack and
 * gap hold ARMSRACE_EMU_GUARD_BYTE, data starts 16-byte aligned and ends within 15 bytes of
 * the trailing guard, so reading one element past the end of most buffers faults. */
typedef struct ArmsEmuRegion {
    uint64_t base;  /* mmap base */
    uint64_t total; /* mmap length */
    uint64_t data;  /* first data byte (what kernels see) */
    uint64_t bytes; /* requested size */
} ArmsEmuRegion;

#define ARMSRACE_EMU_GUARD_BYTE 0xA5
#define ARMSRACE_EMU_POISON_BYTE 0xFF

/* ---- Rust-facing ---- */
int armsrace_emu_init(void);
size_t armsrace_emu_abi_size(int which); /* 0: Kernel, 1: Launch, 2: Error, 3: Region */
int armsrace_emu_run(ArmsEmuLaunch* launch, ArmsEmuError* err);
size_t armsrace_emu_kernel_count(void);
const ArmsEmuKernel* armsrace_emu_kernel_get(size_t i);
int armsrace_emu_map(uint64_t bytes, ArmsEmuRegion* out);
void armsrace_emu_unmap(const ArmsEmuRegion* r);
/* Number of guard bytes (slack / gap) that no longer hold the pattern; the first one's address
 * goes to *first. Restores the pattern. */
uint64_t armsrace_emu_check_guards(const ArmsEmuRegion* r, uint64_t* first);
uint64_t armsrace_emu_guard_len(void);

/* ---- kernel-facing (called by cuda_shim.h) ---- */
void armsrace_emu_syncthreads(void);
int armsrace_emu_syncthreads_op(int op, int pred); /* op 1: count, 2: and, 3: or */
uint64_t armsrace_emu_warp(uint32_t op, uint32_t mask, uint64_t value, int32_t arg, int32_t width);
uint32_t armsrace_emu_activemask(void);
void* armsrace_emu_dynamic_shared(void);
void* armsrace_emu_static_shared_alloc(size_t bytes, size_t align);
uint64_t armsrace_emu_clock(void);
#ifdef __cplusplus
[[noreturn]]
#endif
void armsrace_emu_trap(const char* what);
#ifdef __cplusplus
[[noreturn]]
#endif
void armsrace_emu_assert_fail(const char* expr, const char* file, unsigned line, const char* func);

/* Warp collective opcodes (armsrace_emu_warp). */
enum {
    ARMSRACE_WARP_SYNC = 0,
    ARMSRACE_WARP_SHFL = 1,
    ARMSRACE_WARP_SHFL_UP = 2,
    ARMSRACE_WARP_SHFL_DOWN = 3,
    ARMSRACE_WARP_SHFL_XOR = 4,
    ARMSRACE_WARP_BALLOT = 5,
    ARMSRACE_WARP_ANY = 6,
    ARMSRACE_WARP_ALL = 7,
    ARMSRACE_WARP_MATCH_ANY = 8,
    ARMSRACE_WARP_MATCH_ALL = 9, /* result: mask if all equal else 0 */
    ARMSRACE_WARP_REDUCE_ADD = 10,
    ARMSRACE_WARP_REDUCE_MIN_U = 11,
    ARMSRACE_WARP_REDUCE_MAX_U = 12,
    ARMSRACE_WARP_REDUCE_MIN_S = 13,
    ARMSRACE_WARP_REDUCE_MAX_S = 14,
    ARMSRACE_WARP_REDUCE_AND = 15,
    ARMSRACE_WARP_REDUCE_OR = 16,
    ARMSRACE_WARP_REDUCE_XOR = 17
};

#ifdef __cplusplus
} /* extern "C" */

/* CUDA's built-in index types and variables. Per fiber (threadIdx) and per block (blockIdx):
 * the runtime rewrites these thread-locals whenever it switches fibers or blocks. */
struct uint3 {
    unsigned int x, y, z;
};
struct dim3 {
    unsigned int x, y, z;
    constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1)
        : x(vx), y(vy), z(vz) {}
    constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
    constexpr operator uint3() const { return uint3{x, y, z}; }
};
#define ARMSRACE_EMU_TLS __attribute__((tls_model("initial-exec")))
extern __thread uint3 threadIdx ARMSRACE_EMU_TLS;
extern __thread uint3 blockIdx ARMSRACE_EMU_TLS;
extern __thread dim3 blockDim ARMSRACE_EMU_TLS;
extern __thread dim3 gridDim ARMSRACE_EMU_TLS;
/* Bumped at every block start on this OS thread: static __shared__ slots compare against it. */
extern __thread unsigned long long armsrace_emu_block_gen ARMSRACE_EMU_TLS;
#endif

#endif /* ARMSRACE_EMU_ABI_H */
