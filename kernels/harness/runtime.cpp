// The CPU execution harness runtime. A launch's blocks are shared out among workers (OS
// threads, driven from Rust); a worker runs one block at a time, each CUDA thread of it as a
// cooperative fiber with its own stack. The scheduler resumes every runnable fiber once per
// round, in forward or reverse thread order, and a fiber runs until it waits: at
// __syncthreads (released when every live thread of the block arrives), at a warp collective
// (released when every live lane named in the mask arrives; the values are exchanged at that
// moment), or at its end. Faults in kernel code (guard pages, bad pointers, stack overflow,
// integer division by zero) are caught with a signal handler and end the launch with an error
// naming the kernel, block and thread; so do deadlocks, __trap and failing asserts.
#undef _FORTIFY_SOURCE  // longjmp from a signal handler across stacks is intended here
#include "emu_abi.h"

#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

__thread uint3 threadIdx;
__thread uint3 blockIdx;
__thread dim3 blockDim;
__thread dim3 gridDim;
__thread unsigned long long armsrace_emu_block_gen;

namespace {

constexpr uint32_t kMaxThreads = 1024;
constexpr size_t kStackBytes = 256 * 1024;      // per fiber (local arrays live here)
constexpr size_t kStaticSharedMax = 48 * 1024;  // CUDA's static __shared__ limit
constexpr size_t kSharedMax = 227 * 1024;       // static + dynamic, per block (sm_90 opt-in)
constexpr size_t kAltStackBytes = 64 * 1024;
constexpr size_t kGuardBytes = 64 * 1024;  // PROT_NONE on each side of an allocation
constexpr uint64_t kPoison64 = ~0ull;

enum : uint8_t { kNew, kRunnable, kWaitBlock, kWaitWarp, kDone };
constexpr uint8_t kOpActivemask = 0xff;  // a wait in __activemask (not a collective with a mask)

size_t page_size() {
    static const size_t p = (size_t)sysconf(_SC_PAGESIZE);
    return p;
}
size_t round_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

// ---- execution contexts ----
#if defined(__x86_64__) && defined(__ELF__) && !defined(ARMSRACE_EMU_UCONTEXT)
// Hand-rolled switch: saves the System V callee-saved registers on the old stack, stores its
// stack pointer, loads the new one and pops. Far cheaper than swapcontext (no signal-mask
// system call), which matters: every barrier costs two switches per thread.
struct Ctx {
    void* sp;
};
extern "C" void armsrace_emu_switch(void** save_sp, void* new_sp);
extern "C" void armsrace_emu_fiber_start();
asm(R"(
    .text
    .p2align 4
    .globl armsrace_emu_switch
    .hidden armsrace_emu_switch
    .type armsrace_emu_switch,@function
armsrace_emu_switch:
    .cfi_startproc
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .cfi_endproc
    .size armsrace_emu_switch, .-armsrace_emu_switch

    .p2align 4
    .globl armsrace_emu_fiber_start
    .hidden armsrace_emu_fiber_start
    .type armsrace_emu_fiber_start,@function
armsrace_emu_fiber_start:
    .cfi_startproc
    .cfi_undefined rip
    call armsrace_emu_fiber_main
    ud2
    .cfi_endproc
    .size armsrace_emu_fiber_start, .-armsrace_emu_fiber_start
)");
inline void ctx_switch(Ctx* from, Ctx* to) { armsrace_emu_switch(&from->sp, to->sp); }
void ctx_init(Ctx* c, char* top) {
    // Six zeroed callee-saved registers, then the return address: the first switch "returns"
    // into armsrace_emu_fiber_start with a 16-byte aligned stack, as the ABI wants at a call.
    void** sp = reinterpret_cast<void**>(((uintptr_t)top & ~(uintptr_t)15) - 72);
    for (int i = 0; i < 6; i++) sp[i] = nullptr;
    sp[6] = reinterpret_cast<void*>(&armsrace_emu_fiber_start);
    sp[7] = sp[8] = nullptr;
    c->sp = sp;
}
#else
// Portable fallback (other architectures): ucontext.
struct Ctx {
    ucontext_t uc;
};
extern "C" void armsrace_emu_fiber_main();
inline void ctx_switch(Ctx* from, Ctx* to) { swapcontext(&from->uc, &to->uc); }
void ctx_init(Ctx* c, char* top) {
    getcontext(&c->uc);
    c->uc.uc_stack.ss_sp = top - kStackBytes;
    c->uc.uc_stack.ss_size = kStackBytes;
    c->uc.uc_link = nullptr;
    makecontext(&c->uc, armsrace_emu_fiber_main, 0);
}
#endif

struct Stack {
    char* map;  // [guard page | kStackBytes]
    size_t len;
    Stack* next_free;
    Stack* next_all;
};

struct Fiber {
    Ctx ctx;
    Stack* stack;
    uint3 tid;
    uint32_t index;
    uint8_t state;
    uint8_t op;  // warp collective in progress
    uint32_t mask;
    int32_t arg, width;
    uint64_t val, res;
};

struct Worker {
    Ctx sched;
    sigjmp_buf jmp;
    volatile sig_atomic_t in_kernel;
    const ArmsEmuLaunch* launch;
    const ArmsEmuKernel* kernel;
    ArmsEmuError* err;
    bool failed;
    uint3 block;
    uint32_t nthreads, live, waiting;
    uint32_t warp_live[kMaxThreads / 32], warp_wait[kMaxThreads / 32];
    uint32_t warp_am[kMaxThreads / 32];  // lanes waiting in __activemask
    int acc_count, acc_and, acc_or, res_count, res_and, res_or;
    Fiber* cur;
    Fiber* zombie;  // ended; its stack is released by the next context to run
    Fiber* fibers;
    uint32_t pos;  // position of `cur` in this round's order
    bool rev;      // reverse order
    Stack* free_stacks;
    Stack* all_stacks;
    // Dynamic shared memory: [pages | guard page], the buffer right-aligned against the guard.
    char* dyn_map;
    size_t dyn_map_len;
    char* dyn;
    size_t dyn_bytes;
    char* stat;  // static shared arena
    size_t stat_used;
    void* altstack;
};

__thread Worker* tls_worker ARMSRACE_EMU_TLS;
pthread_key_t g_worker_key;
pthread_once_t g_once = PTHREAD_ONCE_INIT;
int g_init_rc = 0;
const int kSignals[3] = {SIGSEGV, SIGBUS, SIGFPE};
struct sigaction g_old[3];

void format(ArmsEmuError* e, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void format(ArmsEmuError* e, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
}

void set_where(Worker* w) {
    ArmsEmuError* e = w->err;
    e->block[0] = w->block.x;
    e->block[1] = w->block.y;
    e->block[2] = w->block.z;
    const uint3 t = w->cur ? w->cur->tid : uint3{0, 0, 0};
    e->thread[0] = t.x;
    e->thread[1] = t.y;
    e->thread[2] = t.z;
}

// Ends the launch from inside a fiber: records the error and returns to the scheduler, which
// sees `failed` and stops; this fiber is never resumed (its stack is reclaimed).
[[noreturn]] void fiber_fail(Worker* w, int kind, const char* fmt, ...)
    __attribute__((format(printf, 3, 4)));
[[noreturn]] void fiber_fail(Worker* w, int kind, const char* fmt, ...) {
    ArmsEmuError* e = w->err;
    e->kind = (uint32_t)kind;
    set_where(w);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    w->failed = true;
    ctx_switch(&w->cur->ctx, &w->sched);
    __builtin_unreachable();
}

Worker* current_worker_or_die(const char* what) {
    Worker* w = tls_worker;
    if (!w || !w->cur) {
        fprintf(stderr, "armsrace harness: %s called outside a kernel launch\n", what);
        abort();
    }
    return w;
}

// ---- stacks ----
Stack* acquire_stack(Worker* w) {
    if (Stack* s = w->free_stacks) {
        w->free_stacks = s->next_free;
        return s;
    }
    const size_t g = page_size(), len = g + kStackBytes;
    void* m = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) return nullptr;
    if (mprotect(m, g, PROT_NONE) != 0) {
        munmap(m, len);
        return nullptr;
    }
    Stack* s = static_cast<Stack*>(malloc(sizeof(Stack)));
    if (!s) {
        munmap(m, len);
        return nullptr;
    }
    *s = Stack{static_cast<char*>(m), len, nullptr, w->all_stacks};
    w->all_stacks = s;
    return s;
}
void release_stack(Worker* w, Fiber* f) {
    if (f->stack) {
        f->stack->next_free = w->free_stacks;
        w->free_stacks = f->stack;
        f->stack = nullptr;
    }
}
void reclaim_stacks(Worker* w) {
    for (uint32_t i = 0; i < w->nthreads; i++) release_stack(w, &w->fibers[i]);
    w->zombie = nullptr;
}

void destroy_worker(void* p) {
    Worker* w = static_cast<Worker*>(p);
    for (Stack* s = w->all_stacks; s;) {
        Stack* next = s->next_all;
        munmap(s->map, s->len);
        free(s);
        s = next;
    }
    if (w->dyn_map) munmap(w->dyn_map, w->dyn_map_len);
    free(w->stat);
    if (w->altstack) {
        stack_t ss;
        memset(&ss, 0, sizeof ss);
        ss.ss_flags = SS_DISABLE;
        sigaltstack(&ss, nullptr);
        free(w->altstack);
    }
    free(w->fibers);
    free(w);
    tls_worker = nullptr;
}

Worker* get_worker() {
    if (Worker* w = tls_worker) return w;
    Worker* w = static_cast<Worker*>(calloc(1, sizeof(Worker)));
    if (!w) return nullptr;
    w->fibers = static_cast<Fiber*>(calloc(kMaxThreads, sizeof(Fiber)));
    w->stat = static_cast<char*>(aligned_alloc(128, kStaticSharedMax));
    if (!w->fibers || !w->stat) {
        free(w->fibers);
        free(w->stat);
        free(w);
        return nullptr;
    }
    // The fault handler must run on an alternate stack (a fiber may have overflowed its own).
    // Rust threads already have one; others get ours.
    stack_t ss;
    if (sigaltstack(nullptr, &ss) == 0 && (ss.ss_flags & SS_DISABLE)) {
        w->altstack = malloc(kAltStackBytes);
        if (w->altstack) {
            memset(&ss, 0, sizeof ss);
            ss.ss_sp = w->altstack;
            ss.ss_size = kAltStackBytes;
            if (sigaltstack(&ss, nullptr) != 0) {
                free(w->altstack);
                w->altstack = nullptr;
            }
        }
    }
    tls_worker = w;
    pthread_setspecific(g_worker_key, w);
    return w;
}

// Dynamic shared memory of `bytes`, ending right at a PROT_NONE page so that reading past
// the size the launch asked for faults.
bool prepare_dyn(Worker* w, size_t bytes) {
    const size_t g = page_size(), need = round_up(bytes, g) + g;
    if (need > w->dyn_map_len) {
        if (w->dyn_map) munmap(w->dyn_map, w->dyn_map_len);
        w->dyn_map = nullptr;
        w->dyn_map_len = 0;
        void* m = mmap(nullptr, need, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return false;
        w->dyn_map = static_cast<char*>(m);
        w->dyn_map_len = need;
        if (mprotect(w->dyn_map + need - g, g, PROT_NONE) != 0) return false;
    }
    w->dyn_bytes = bytes;
    w->dyn = w->dyn_map + w->dyn_map_len - g - round_up(bytes, 16);
    return true;
}

// ---- barriers ----
void release_block(Worker* w) {
    for (uint32_t i = 0; i < w->nthreads; i++)
        if (w->fibers[i].state == kWaitBlock) w->fibers[i].state = kRunnable;
    w->waiting = 0;
    w->res_count = w->acc_count;
    w->res_and = w->acc_and;
    w->res_or = w->acc_or;
    w->acc_count = 0;
    w->acc_and = 1;
    w->acc_or = 0;
}

// Lane `src`'s value for a shuffle by lane `lane` (CUDA's rules for width and out-of-range
// sources: the caller's own value); lanes outside the group read as poison.
uint64_t shuffle_value(const Fiber* base, uint32_t group, uint32_t lane, const Fiber& f) {
    const uint32_t width = (uint32_t)f.width, seg = lane & ~(width - 1);
    uint32_t src = lane;
    switch (f.op) {
        case ARMSRACE_WARP_SHFL:
            src = seg + ((uint32_t)f.arg & (width - 1));
            break;
        case ARMSRACE_WARP_SHFL_UP:
            src = (uint32_t)f.arg <= lane - seg ? lane - (uint32_t)f.arg : lane;
            break;
        case ARMSRACE_WARP_SHFL_DOWN:
            src = lane - seg + (uint32_t)f.arg < width ? lane + (uint32_t)f.arg : lane;
            break;
        default: {  // xor
            const uint32_t s = lane ^ (uint32_t)f.arg;
            src = s >= seg + width ? lane : s;
        }
    }
    if (src == lane) return f.val;
    return (group >> src) & 1u ? base[src].val : kPoison64;
}

void complete_warp(Worker* w, uint32_t warp, uint32_t group) {
    Fiber* base = &w->fibers[warp * 32];
    uint32_t ballot = 0;
    const uint8_t op0 = base[__builtin_ctz(group)].op;
    if (op0 == ARMSRACE_WARP_BALLOT || op0 == ARMSRACE_WARP_ANY || op0 == ARMSRACE_WARP_ALL) {
        for (uint32_t g = group; g; g &= g - 1) {
            const uint32_t l = (uint32_t)__builtin_ctz(g);
            if (base[l].val) ballot |= 1u << l;
        }
    }
    for (uint32_t g = group; g; g &= g - 1) {
        const uint32_t l = (uint32_t)__builtin_ctz(g);
        Fiber& f = base[l];
        uint64_t r = 0;
        switch (f.op) {
            case ARMSRACE_WARP_SYNC:
                break;
            case ARMSRACE_WARP_SHFL:
            case ARMSRACE_WARP_SHFL_UP:
            case ARMSRACE_WARP_SHFL_DOWN:
            case ARMSRACE_WARP_SHFL_XOR:
                r = shuffle_value(base, group, l, f);
                break;
            case ARMSRACE_WARP_BALLOT:
                r = ballot;
                break;
            case ARMSRACE_WARP_ANY:
                r = ballot != 0;
                break;
            case ARMSRACE_WARP_ALL:
                r = ballot == group;
                break;
            case ARMSRACE_WARP_MATCH_ANY:
            case ARMSRACE_WARP_MATCH_ALL: {
                uint32_t same = 0;
                for (uint32_t h = group; h; h &= h - 1) {
                    const uint32_t m = (uint32_t)__builtin_ctz(h);
                    if (base[m].val == f.val) same |= 1u << m;
                }
                r = f.op == ARMSRACE_WARP_MATCH_ANY ? same : (same == group ? group : 0);
                break;
            }
            default: {  // reductions over the group's 32-bit values
                uint32_t acc = 0;
                bool first = true;
                for (uint32_t h = group; h; h &= h - 1) {
                    const uint32_t v = (uint32_t)base[__builtin_ctz(h)].val;
                    if (first) {
                        acc = v;
                        first = false;
                        continue;
                    }
                    switch (f.op) {
                        case ARMSRACE_WARP_REDUCE_ADD: acc += v; break;
                        case ARMSRACE_WARP_REDUCE_MIN_U: acc = v < acc ? v : acc; break;
                        case ARMSRACE_WARP_REDUCE_MAX_U: acc = v > acc ? v : acc; break;
                        case ARMSRACE_WARP_REDUCE_MIN_S: acc = (int32_t)v < (int32_t)acc ? v : acc; break;
                        case ARMSRACE_WARP_REDUCE_MAX_S: acc = (int32_t)v > (int32_t)acc ? v : acc; break;
                        case ARMSRACE_WARP_REDUCE_AND: acc &= v; break;
                        case ARMSRACE_WARP_REDUCE_OR: acc |= v; break;
                        default: acc ^= v;
                    }
                }
                r = acc;
            }
        }
        f.res = r;
        f.state = kRunnable;
    }
    w->warp_wait[warp] &= ~group;
}

void try_complete_warp(Worker* w, uint32_t warp, uint32_t mask) {
    const uint32_t group = mask & w->warp_live[warp];
    if (group && (w->warp_wait[warp] & group) == group) complete_warp(w, warp, group);
}

// __activemask() is where lanes converge: it returns once every live lane of the warp waits
// somewhere (here, at a barrier, or in a collective), with the lanes that are here. Called
// whenever a lane of the warp stops running.
void check_activemask(Worker* w, uint32_t warp) {
    const uint32_t am = w->warp_am[warp];
    if (!am) return;
    uint32_t running = 0;
    for (uint32_t l = w->warp_live[warp]; l; l &= l - 1) {
        const uint32_t lane = (uint32_t)__builtin_ctz(l);
        const uint8_t st = w->fibers[warp * 32 + lane].state;
        if (st == kNew || st == kRunnable) running |= 1u << lane;
    }
    if (running & ~am) return;
    for (uint32_t l = am; l; l &= l - 1) {
        Fiber& f = w->fibers[warp * 32 + (uint32_t)__builtin_ctz(l)];
        f.res = am;
        f.state = kRunnable;
    }
    w->warp_am[warp] = 0;
}

const char* op_name(uint32_t op) {
    switch (op) {
        case ARMSRACE_WARP_SYNC: return "__syncwarp";
        case ARMSRACE_WARP_SHFL: return "__shfl_sync";
        case ARMSRACE_WARP_SHFL_UP: return "__shfl_up_sync";
        case ARMSRACE_WARP_SHFL_DOWN: return "__shfl_down_sync";
        case ARMSRACE_WARP_SHFL_XOR: return "__shfl_xor_sync";
        case ARMSRACE_WARP_BALLOT: return "__ballot_sync";
        case ARMSRACE_WARP_ANY: return "__any_sync";
        case ARMSRACE_WARP_ALL: return "__all_sync";
        case ARMSRACE_WARP_MATCH_ANY: return "__match_any_sync";
        case ARMSRACE_WARP_MATCH_ALL: return "__match_all_sync";
        case kOpActivemask: return "__activemask";
        default: return "__reduce_*_sync";
    }
}

// Bookkeeping for a thread that returned from the kernel.
void finish(Worker* w, Fiber* f) {
    f->state = kDone;
    w->live--;
    const uint32_t warp = f->index >> 5;
    w->warp_live[warp] &= ~(1u << (f->index & 31));
    // Exited threads count as arrived at __syncthreads (as on Volta and later) and drop out
    // of warp collectives; either may now be complete.
    if (w->waiting > 0 && w->waiting == w->live) release_block(w);
    const uint32_t pending = w->warp_wait[warp];
    for (uint32_t p = pending; p; p &= p - 1) {
        const uint32_t l = (uint32_t)__builtin_ctz(p);
        if ((w->warp_wait[warp] >> l) & 1u) try_complete_warp(w, warp, w->fibers[warp * 32 + l].mask);
    }
    check_activemask(w, warp);
}

void report_deadlock(Worker* w) {
    ArmsEmuError* e = w->err;
    e->kind = ARMSRACE_EMU_DEADLOCK;
    const Fiber* at_block = nullptr;
    const Fiber* at_warp = nullptr;
    for (uint32_t i = 0; i < w->nthreads; i++) {
        const Fiber* f = &w->fibers[i];
        if (f->state == kWaitBlock && !at_block) at_block = f;
        if (f->state == kWaitWarp && !at_warp) at_warp = f;
    }
    w->cur = const_cast<Fiber*>(at_warp ? at_warp : at_block);
    set_where(w);
    if (at_warp && at_block) {
        format(e,
               "deadlock: thread (%u,%u,%u) waits in %s (mask 0x%08x) for lanes that wait at "
               "__syncthreads, e.g. thread (%u,%u,%u) (divergent barrier)",
               at_warp->tid.x, at_warp->tid.y, at_warp->tid.z, op_name(at_warp->op), at_warp->mask,
               at_block->tid.x, at_block->tid.y, at_block->tid.z);
    } else if (at_warp) {
        format(e,
               "deadlock: thread (%u,%u,%u) waits in %s (mask 0x%08x) for lanes that never "
               "join it (masks disagree)",
               at_warp->tid.x, at_warp->tid.y, at_warp->tid.z, op_name(at_warp->op), at_warp->mask);
    } else {
        format(e, "deadlock: no thread can run");
    }
    w->cur = nullptr;
}

// ---- scheduling ----
// A round resumes every runnable fiber once, in thread order (or the reverse). A fiber that
// stops (waits, or ends) switches straight to the next runnable fiber of the round, and only
// the round's last one switches back to the scheduler: one switch per stop instead of two.
// A fiber that ended stays a "zombie" until the next context runs, since its stack cannot be
// released (and reused by a starting fiber) while it is still executing on it.
inline Fiber* at(Worker* w, uint32_t pos) { return &w->fibers[w->rev ? w->nthreads - 1 - pos : pos]; }
inline bool ready(const Fiber* f) { return f->state == kNew || f->state == kRunnable; }

inline void reap(Worker* w) {
    if (Fiber* z = w->zombie) {
        release_stack(w, z);
        w->zombie = nullptr;
    }
}

// Switches from `from` to fiber `g`, starting it if new; returns when `from` is resumed.
void enter(Worker* w, Ctx* from, Fiber* g) {
    if (g->state == kNew) {
        g->stack = acquire_stack(w);
        if (!g->stack) {
            w->cur = g;
            w->err->kind = ARMSRACE_EMU_TRAP;
            set_where(w);
            format(w->err, "cannot allocate a %zu KiB fiber stack", kStackBytes / 1024);
            w->failed = true;
            if (from != &w->sched) ctx_switch(from, &w->sched);  // never resumed
            return;
        }
        ctx_init(&g->ctx, g->stack->map + g->stack->len);
        g->state = kRunnable;
    }
    w->cur = g;
    threadIdx = g->tid;
    ctx_switch(from, &g->ctx);
    reap(w);
}

// The running fiber `f` stops (its state says why): run the round's next fiber.
void stop(Worker* w, Fiber* f) {
    for (uint32_t p = w->pos + 1; p < w->nthreads; p++) {
        Fiber* g = at(w, p);
        if (ready(g)) {
            w->pos = p;
            enter(w, &f->ctx, g);
            return;
        }
    }
    ctx_switch(&f->ctx, &w->sched);
    reap(w);
}

int run_block(Worker* w, uint64_t linear) {
    const ArmsEmuLaunch* L = w->launch;
    const uint64_t gx = L->grid[0], gy = L->grid[1];
    w->block = uint3{(uint32_t)(linear % gx), (uint32_t)(linear / gx % gy), (uint32_t)(linear / (gx * gy))};
    blockIdx = w->block;
    ++armsrace_emu_block_gen;
    w->stat_used = 0;
    if (w->dyn_bytes) memset(w->dyn, ARMSRACE_EMU_POISON_BYTE, w->dyn_bytes);
    const uint32_t bx = L->block[0], bxy = L->block[0] * L->block[1], n = w->nthreads;
    for (uint32_t i = 0; i < n; i++) {
        Fiber& f = w->fibers[i];
        f.state = kNew;
        f.stack = nullptr;
        f.index = i;
        f.tid = uint3{i % bx, i % bxy / bx, i / bxy};
    }
    const uint32_t nwarps = (n + 31) / 32;
    for (uint32_t i = 0; i < nwarps; i++) {
        const uint32_t lanes = n - i * 32 >= 32 ? 32 : n - i * 32;
        w->warp_live[i] = lanes == 32 ? ~0u : (1u << lanes) - 1;
        w->warp_wait[i] = 0;
        w->warp_am[i] = 0;
    }
    w->live = n;
    w->waiting = 0;
    w->acc_count = 0;
    w->acc_and = 1;
    w->acc_or = 0;
    w->rev = L->reverse != 0;
    while (w->live > 0) {
        uint32_t p = 0;
        while (p < n && !ready(at(w, p))) p++;
        if (p == n) {
            report_deadlock(w);
            reclaim_stacks(w);
            return ARMSRACE_EMU_DEADLOCK;
        }
        w->pos = p;
        enter(w, &w->sched, at(w, p));
        w->cur = nullptr;
        if (w->failed) {
            reclaim_stacks(w);
            return (int)w->err->kind;
        }
    }
    return ARMSRACE_EMU_OK;
}

// ---- signals ----
uint32_t access_kind(int sig, void* uctx) {
#if defined(__x86_64__) && defined(__linux__)
    if (sig == SIGSEGV && uctx) {
        const ucontext_t* uc = static_cast<const ucontext_t*>(uctx);
        return (uc->uc_mcontext.gregs[REG_ERR] & 2) ? ARMSRACE_EMU_ACCESS_WRITE : ARMSRACE_EMU_ACCESS_READ;
    }
#else
    (void)sig;
    (void)uctx;
#endif
    return ARMSRACE_EMU_ACCESS_UNKNOWN;
}

void on_signal(int sig, siginfo_t* si, void* uctx) {
    Worker* w = tls_worker;
    if (w && w->in_kernel) {
        // Only plain stores here (async-signal context); the message is written after the jump.
        ArmsEmuError* e = w->err;
        e->kind = sig == SIGFPE ? ARMSRACE_EMU_FPE : ARMSRACE_EMU_FAULT;
        e->addr = (uint64_t)(uintptr_t)si->si_addr;
        e->access = access_kind(sig, uctx);
        siglongjmp(w->jmp, 1);
    }
    // Not ours: hand over to whoever was installed before (Rust's stack-overflow reporter, or
    // the default action, which the faulting instruction re-raises once we return).
    for (int i = 0; i < 3; i++) {
        if (kSignals[i] != sig) continue;
        const struct sigaction& o = g_old[i];
        if ((o.sa_flags & SA_SIGINFO) && o.sa_sigaction) {
            o.sa_sigaction(sig, si, uctx);
        } else if (!(o.sa_flags & SA_SIGINFO) && o.sa_handler != SIG_DFL && o.sa_handler != SIG_IGN) {
            o.sa_handler(sig);
        } else {
            signal(sig, SIG_DFL);
        }
        return;
    }
}

void init_once() {
    if (pthread_key_create(&g_worker_key, destroy_worker) != 0) {
        g_init_rc = -1;
        return;
    }
    for (int i = 0; i < 3; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_sigaction = on_signal;
        sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_NODEFER;
        sigemptyset(&sa.sa_mask);
        if (sigaction(kSignals[i], &sa, &g_old[i]) != 0) g_init_rc = -2;
    }
}

// After a fault: say what the address was, where we can tell from here (the allocation it
// belongs to is worked out on the Rust side).
void describe_fault(Worker* w) {
    ArmsEmuError* e = w->err;
    const char* a = e->access == ARMSRACE_EMU_ACCESS_WRITE  ? "write"
                    : e->access == ARMSRACE_EMU_ACCESS_READ ? "read"
                                                            : "access";
    const char* addr = reinterpret_cast<const char*>((uintptr_t)e->addr);
    if (e->kind == ARMSRACE_EMU_FPE) {
        format(e, "integer division by zero (or INT_MIN / -1)");
        return;
    }
    if (w->cur && w->cur->stack && addr >= w->cur->stack->map && addr < w->cur->stack->map + page_size()) {
        e->kind = ARMSRACE_EMU_STACK;
        format(e, "stack overflow: a thread used more than the harness's %zu KiB stack (large local arrays or recursion)",
               kStackBytes / 1024);
        return;
    }
    if (w->dyn_map && addr >= w->dyn + w->dyn_bytes && addr < w->dyn_map + w->dyn_map_len) {
        format(e, "%s at %zu bytes past the end of dynamic shared memory (the launch gave shared_bytes = %zu)", a,
               (size_t)(addr - (w->dyn + w->dyn_bytes)), w->dyn_bytes);
        return;
    }
    format(e, "invalid %s", a);
}

// Takes blocks until none are left or some worker failed.
__attribute__((noinline)) int run_blocks(Worker* w) {
    ArmsEmuLaunch* L = const_cast<ArmsEmuLaunch*>(w->launch);
    w->in_kernel = 1;
    int rc = ARMSRACE_EMU_OK;
    for (;;) {
        if (__atomic_load_n(&L->abort, __ATOMIC_SEQ_CST)) {
            rc = ARMSRACE_EMU_ABORTED;
            w->err->kind = ARMSRACE_EMU_ABORTED;
            break;
        }
        const uint64_t k = __atomic_fetch_add(&L->next, 1, __ATOMIC_SEQ_CST);
        if (k >= L->nblocks) break;
        rc = run_block(w, L->reverse ? L->nblocks - 1 - k : k);
        if (rc != ARMSRACE_EMU_OK) {
            __atomic_store_n(&L->abort, 1u, __ATOMIC_SEQ_CST);
            break;
        }
    }
    w->in_kernel = 0;
    return rc;
}

// Back from the fault handler: the faulting fiber (w->cur) and its block are abandoned.
__attribute__((noinline)) int after_fault(Worker* w) {
    w->in_kernel = 0;
    sigset_t s;
    sigemptyset(&s);
    for (int sig : kSignals) sigaddset(&s, sig);
    pthread_sigmask(SIG_UNBLOCK, &s, nullptr);
    set_where(w);
    describe_fault(w);
    w->cur = nullptr;
    reclaim_stacks(w);
    __atomic_store_n(&const_cast<ArmsEmuLaunch*>(w->launch)->abort, 1u, __ATOMIC_SEQ_CST);
    return (int)w->err->kind;
}

// No local lives across sigsetjmp: both paths re-read the worker from thread-local storage.
__attribute__((noinline)) int run_guarded() {
    if (sigsetjmp(tls_worker->jmp, 0) != 0) return after_fault(tls_worker);
    return run_blocks(tls_worker);
}

}  // namespace

// ---- kernel-facing ----
extern "C" __attribute__((visibility("hidden"), used)) void armsrace_emu_fiber_main() {
    Worker* w = tls_worker;
    reap(w);
    for (;;) {
        w->kernel->entry(w->launch->args);
        Fiber* f = w->cur;
        finish(w, f);
        // If the round's next fiber has not started yet, it runs right here, on this stack:
        // a kernel without barriers then costs no switch per thread at all.
        uint32_t p = w->pos + 1;
        while (p < w->nthreads && !ready(at(w, p))) p++;
        if (p < w->nthreads && at(w, p)->state == kNew) {
            Fiber* g = at(w, p);
            w->pos = p;
            g->stack = f->stack;
            f->stack = nullptr;
            g->state = kRunnable;
            w->cur = g;
            threadIdx = g->tid;
            continue;
        }
        w->zombie = f;
        stop(w, f);  // never resumed
        __builtin_unreachable();
    }
}

extern "C" void armsrace_emu_syncthreads(void) { armsrace_emu_syncthreads_op(0, 0); }

extern "C" int armsrace_emu_syncthreads_op(int op, int pred) {
    Worker* w = current_worker_or_die("__syncthreads");
    Fiber* f = w->cur;
    if (op) {
        w->acc_count += pred != 0;
        w->acc_and &= pred != 0;
        w->acc_or |= pred != 0;
    }
    f->state = kWaitBlock;
    w->waiting++;
    if (w->waiting == w->live) release_block(w);
    check_activemask(w, f->index >> 5);
    stop(w, f);  // every thread yields, the last arriver too
    return op == 1 ? w->res_count : op == 2 ? w->res_and : op == 3 ? w->res_or : 0;
}

extern "C" uint64_t armsrace_emu_warp(uint32_t op, uint32_t mask, uint64_t value, int32_t arg, int32_t width) {
    Worker* w = current_worker_or_die("a warp intrinsic");
    Fiber* f = w->cur;
    const uint32_t lane = f->index & 31, warp = f->index >> 5;
    if (!((mask >> lane) & 1u))
        fiber_fail(w, ARMSRACE_EMU_TRAP, "%s called by lane %u with mask 0x%08x, which leaves the lane out", op_name(op),
                   lane, mask);
    if (width < 1 || width > 32 || (width & (width - 1)))
        fiber_fail(w, ARMSRACE_EMU_TRAP, "%s width %d is not a power of two in 1..32", op_name(op), width);
    f->op = (uint8_t)op;
    f->mask = mask;
    f->val = value;
    f->arg = arg;
    f->width = width;
    f->state = kWaitWarp;
    w->warp_wait[warp] |= 1u << lane;
    try_complete_warp(w, warp, mask);
    check_activemask(w, warp);
    stop(w, f);
    return f->res;
}

extern "C" uint32_t armsrace_emu_activemask(void) {
    Worker* w = current_worker_or_die("__activemask");
    Fiber* f = w->cur;
    const uint32_t warp = f->index >> 5;
    f->state = kWaitWarp;
    f->op = kOpActivemask;
    w->warp_am[warp] |= 1u << (f->index & 31);
    check_activemask(w, warp);
    stop(w, f);
    return (uint32_t)f->res;
}

extern "C" void* armsrace_emu_dynamic_shared(void) {
    Worker* w = current_worker_or_die("dynamic shared memory");
    return w->dyn;
}

extern "C" void* armsrace_emu_static_shared_alloc(size_t bytes, size_t align) {
    Worker* w = current_worker_or_die("__shared__");
    if (align < 16) align = 16;
    if (align > 128)
        fiber_fail(w, ARMSRACE_EMU_LIMIT, "__shared__ variable asks for %zu-byte alignment (at most 128)", align);
    const size_t off = round_up(w->stat_used, align);
    if (off + bytes > kStaticSharedMax)
        fiber_fail(w, ARMSRACE_EMU_LIMIT, "static __shared__ memory exceeds 48 KiB (at least %zu bytes)", off + bytes);
    if (off + bytes + w->dyn_bytes > kSharedMax)
        fiber_fail(w, ARMSRACE_EMU_LIMIT,
                   "static (%zu) plus dynamic (%zu) shared memory exceeds the 227 KiB a block can have", off + bytes,
                   w->dyn_bytes);
    w->stat_used = off + bytes;
    memset(w->stat + off, ARMSRACE_EMU_POISON_BYTE, bytes);
    return w->stat + off;
}

extern "C" uint64_t armsrace_emu_clock(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

extern "C" void armsrace_emu_trap(const char* what) {
    Worker* w = current_worker_or_die("__trap");
    fiber_fail(w, ARMSRACE_EMU_TRAP, "%s", what);
}

extern "C" void armsrace_emu_assert_fail(const char* expr, const char* file, unsigned line, const char* func) {
    Worker* w = current_worker_or_die("assert");
    fiber_fail(w, ARMSRACE_EMU_TRAP, "assertion `%s` failed in %s (%s:%u)", expr, func, file, line);
}

// ---- Rust-facing ----
extern "C" int armsrace_emu_init(void) {
    pthread_once(&g_once, init_once);
    return g_init_rc;
}

extern "C" size_t armsrace_emu_abi_size(int which) {
    switch (which) {
        case 0: return sizeof(ArmsEmuKernel);
        case 1: return sizeof(ArmsEmuLaunch);
        case 2: return sizeof(ArmsEmuError);
        case 3: return sizeof(ArmsEmuRegion);
        default: return 0;
    }
}

extern "C" int armsrace_emu_run(ArmsEmuLaunch* L, ArmsEmuError* err) {
    memset(err, 0, sizeof *err);
    Worker* w = get_worker();
    if (!w) {
        err->kind = ARMSRACE_EMU_TRAP;
        snprintf(err->msg, sizeof err->msg, "out of memory setting up a harness worker");
        __atomic_store_n(&L->abort, 1u, __ATOMIC_SEQ_CST);
        return ARMSRACE_EMU_TRAP;
    }
    w->launch = L;
    w->kernel = L->kernel;
    w->err = err;
    w->failed = false;
    w->cur = nullptr;
    w->nthreads = L->block[0] * L->block[1] * L->block[2];
    if (w->nthreads == 0 || w->nthreads > kMaxThreads) {
        err->kind = ARMSRACE_EMU_TRAP;
        snprintf(err->msg, sizeof err->msg, "block of %u threads (1..=1024 allowed)", w->nthreads);
        return ARMSRACE_EMU_TRAP;
    }
    if (!prepare_dyn(w, L->shared_bytes)) {
        err->kind = ARMSRACE_EMU_TRAP;
        snprintf(err->msg, sizeof err->msg, "cannot map %u bytes of dynamic shared memory", L->shared_bytes);
        return ARMSRACE_EMU_TRAP;
    }
    gridDim = dim3(L->grid[0], L->grid[1], L->grid[2]);
    blockDim = dim3(L->block[0], L->block[1], L->block[2]);
    return run_guarded();
}

extern "C" uint64_t armsrace_emu_guard_len(void) { return round_up(kGuardBytes, page_size()); }

extern "C" int armsrace_emu_map(uint64_t bytes, ArmsEmuRegion* out) {
    const size_t pg = page_size(), g = (size_t)armsrace_emu_guard_len();
    const size_t rounded = round_up((size_t)bytes, 16), pages = round_up(rounded, pg);
    const size_t total = 2 * g + pages;
    void* m = mmap(nullptr, total, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return errno ? errno : -1;
    char* base = static_cast<char*>(m);
    if (pages && mprotect(base + g, pages, PROT_READ | PROT_WRITE) != 0) {
        const int e = errno;
        munmap(m, total);
        return e ? e : -1;
    }
    char* data = base + g + pages - rounded;
    memset(base + g, ARMSRACE_EMU_GUARD_BYTE, (size_t)(data - (base + g)));
    memset(data, ARMSRACE_EMU_POISON_BYTE, (size_t)bytes);
    memset(data + bytes, ARMSRACE_EMU_GUARD_BYTE, rounded - (size_t)bytes);
    out->base = (uint64_t)(uintptr_t)base;
    out->total = total;
    out->data = (uint64_t)(uintptr_t)data;
    out->bytes = bytes;
    return 0;
}

extern "C" void armsrace_emu_unmap(const ArmsEmuRegion* r) {
    munmap(reinterpret_cast<void*>((uintptr_t)r->base), (size_t)r->total);
}

extern "C" uint64_t armsrace_emu_check_guards(const ArmsEmuRegion* r, uint64_t* first) {
    const size_t g = (size_t)armsrace_emu_guard_len();
    unsigned char* lo = reinterpret_cast<unsigned char*>((uintptr_t)r->base) + g;
    unsigned char* data = reinterpret_cast<unsigned char*>((uintptr_t)r->data);
    unsigned char* end = data + r->bytes;
    unsigned char* hi = data + round_up((size_t)r->bytes, 16);
    uint64_t bad = 0;
    *first = 0;
    const uint64_t pattern = 0x0101010101010101ull * ARMSRACE_EMU_GUARD_BYTE;
    unsigned char* const spans[2][2] = {{lo, data}, {end, hi}};
    for (const auto& s : spans) {
        unsigned char* p = s[0];
        // Whole words first (the usual, intact case), then the bytes of any that differ.
        for (; p + 8 <= s[1]; p += 8) {
            uint64_t word;
            memcpy(&word, p, 8);
            if (word == pattern) continue;
            for (unsigned char* q = p; q < p + 8; q++) {
                if (*q != ARMSRACE_EMU_GUARD_BYTE) {
                    if (!bad++) *first = (uint64_t)(uintptr_t)q;
                    *q = ARMSRACE_EMU_GUARD_BYTE;
                }
            }
        }
        for (; p < s[1]; p++) {
            if (*p != ARMSRACE_EMU_GUARD_BYTE) {
                if (!bad++) *first = (uint64_t)(uintptr_t)p;
                *p = ARMSRACE_EMU_GUARD_BYTE;
            }
        }
    }
    return bad;
}
