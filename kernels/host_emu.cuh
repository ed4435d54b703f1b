// host_emu.cuh: the subset of CUDA these kernels use, emulated on the CPU, so that
// the very same kernel sources can be tested where there is no GPU (CI, dev boxes).
// Compiled with a host C++ compiler and -DDGATE_HOST_EMU (see
// kernels::build_emulator); never seen by NVRTC.
//
// Execution model: a launch runs its blocks one after another; the threads of a block
// are fibers (ucontext) on one OS thread, switched only at barriers, so shared memory
// is simply `static` storage. __syncthreads() releases when every thread of the block
// that has not returned is waiting; warp-level operations (shuffles, the m16n8k16
// MMA) use a warp barrier the same way. A barrier nobody can release aborts with a
// message (a real GPU would hang). The MMA follows the PTX ISA fragment layout, so a
// layout mistake in conv.cu shows up as wrong numbers here too; rounding differs from
// the hardware's (products are summed in f32 in a fixed order).
//
// A GPU gives no order between the threads of a barrier phase, nor a time at which an
// asynchronous copy lands before its wait; code that depends on either passes on one
// schedule and fails on another. So the emulator varies both, deterministically:
// - between barriers, the runnable threads run in ascending order on even scheduling
//   rounds and descending order on odd ones, so a read-after-write or write-after-read
//   between two threads of one phase sees both outcomes across a launch;
// - on alternate blocks, cp.async copies land at once (the earliest a GPU may) or only
//   when the issuing thread's cp.async.wait_group retires their group (the latest), so
//   reading a stage before waiting for it, or overwriting a stage still in use, gives
//   wrong numbers;
// - wgmma (Hopper's asynchronous warpgroup MMA, read from shared memory through
//   descriptors) runs when issued on the blocks whose copies are deferred, and only at
//   its wgmma.wait_group on the others, so a stage refilled while an MMA may still read
//   it, or multiplied before it landed, gives wrong numbers too;
// - TMA copies (cp.async.bulk.tensor) land at issue on the blocks whose cp.async copies
//   land at once, and otherwise only when a thread waits on their mbarrier and would
//   not pass without them, so a stage read before its barrier's phase completed reads
//   NaN; an mbarrier wait that cannot pass yields to the other threads (a GPU spins);
// - every block's shared memory, static and dynamic, starts as NaN bytes (0xff), as a
//   GPU's starts as garbage (and not as what the previous block left);
// - alternate launches run their blocks in reverse order.
#pragma once
#include <ucontext.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

using std::max;
using std::min;

#define __device__
#define __global__
#define __forceinline__ inline
// Static shared arrays live in one linker section, so that each block can start
// with them poisoned (see dgate_emu_launch), as a GPU's shared memory starts as garbage.
#define __shared__ static __attribute__((section("dgate_emu_shared")))
#define __align__(n) __attribute__((aligned(n)))

struct EmuDim3 {
    unsigned x, y, z;
};
inline EmuDim3 threadIdx, blockIdx, blockDim, gridDim;

struct __half {
    unsigned short x;
};
inline __half __float2half_rn(float f) {
    _Float16 h = (_Float16)f;
    __half r;
    std::memcpy(&r.x, &h, 2);
    return r;
}
inline float __half2float(__half h) {
    _Float16 v;
    std::memcpy(&v, &h.x, 2);
    return (float)v;
}
inline unsigned short __half_as_ushort(__half h) { return h.x; }
inline __half __ushort_as_half(unsigned short x) {
    __half h;
    h.x = x;
    return h;
}

inline unsigned __float_as_uint(float f) {
    unsigned u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}

struct alignas(16) uint4 {
    unsigned x, y, z, w;
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
struct alignas(8) uint2 {
    unsigned x, y;
};
inline uint2 make_uint2(unsigned x, unsigned y) { return uint2{x, y}; }
inline uint4 make_uint4(unsigned x, unsigned y, unsigned z, unsigned w) { return uint4{x, y, z, w}; }

// The GPU faults on misaligned vector accesses; x86 does not, so check here.
inline void emu_check_align(const void* p, unsigned bytes) {
    if (reinterpret_cast<uintptr_t>(p) % bytes != 0) {
        std::fprintf(stderr, "host_emu: misaligned %u-byte access at %p\n", bytes, p);
        std::abort();
    }
}

// The GPU's global timer: the host's monotonic clock, in nanoseconds.
inline unsigned long long dgate_now_ns() {
    return (unsigned long long)std::chrono::duration_cast<std::chrono::nanoseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

// Fibers never run concurrently, so a plain add is atomic here, every access is
// coherent and fences have nothing to order.
inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}
inline int atomicAdd(int* p, int v) {
    const int old = *p;
    *p = old + v;
    return old;
}
inline void __threadfence() {}
inline float __ldcg(const float* p) { return *p; }
inline void __stcg(float* p, float v) { *p = v; }
inline float4 __ldcg(const float4* p) {
    emu_check_align(p, 16);
    return *p;
}
inline void __stcg(float4* p, float4 v) {
    emu_check_align(p, 16);
    *p = v;
}

inline unsigned atomicMax(unsigned* p, unsigned v) {
    const unsigned old = *p;
    if (v > old) *p = v;
    return old;
}

namespace emu {
enum State { RUNNABLE, WAIT_BLOCK, WAIT_WARP, WAIT_SPIN, WAIT_NAMED, WAIT_CLUSTER, DONE };
constexpr size_t STACK_BYTES = 64 * 1024;
struct Fiber {
    ucontext_t ctx;
    char* stack = nullptr;
    State state = DONE;
    unsigned bar = 0, bar_threads = 0;  // WAIT_NAMED: bar.sync bar, bar_threads
};
inline std::vector<Fiber> fibers;
inline ucontext_t scheduler;
inline unsigned current = 0;
inline void (*kernel)(const void*) = nullptr;
inline const void* params = nullptr;
inline std::vector<unsigned char> dynamic_smem;
inline float xchg_f[1024];
// All emulator state (and every kernel's `__shared__` statics) is process-wide, shared
// even between two loaded copies of the emulator (vague linkage): one launch at a time.
inline std::mutex launch_lock;
inline unsigned xchg_u[1024][6];
inline const unsigned short* xchg_p[1024];
inline unsigned long long rounds = 0;  // scheduling rounds, for the alternating order

// One thread's asynchronous operations in commit groups (cp.async, wgmma): issued
// into `open`, committed as a group, retired oldest first by a wait_group N.
template <typename T>
struct Groups {
    std::vector<std::vector<T>> committed;  // oldest first
    std::vector<T> open;                    // issued, not yet committed
    void commit() {
        committed.push_back(std::move(open));
        open.clear();
    }
    // Completes (`done`) every group but the newest `pending`.
    template <typename F>
    void retire(size_t pending, F done) {
        while (committed.size() > pending) {
            for (const T& x : committed.front()) done(x);
            committed.erase(committed.begin());
        }
    }
};

// cp.async: copies a thread has issued, landing at the latest allowed moment when
// `defer_copies` (alternate blocks), at once otherwise.
struct Copy {
    void* dst;
    unsigned char bytes[16];
};
inline bool defer_copies = false;
inline Groups<Copy> copies[1024];
inline void land(const Copy& c) { std::memcpy(c.dst, c.bytes, 16); }
inline void land_all(unsigned t) {
    Groups<Copy>& q = copies[t];
    q.commit();
    q.retire(0, land);
}

inline void wait(State s) {
    fibers[current].state = s;
    swapcontext(&fibers[current].ctx, &scheduler);
}

// wgmma: the MMAs a thread has issued, in commit groups, run when issued or only when
// wgmma.wait_group retires their group: the tensor cores read shared memory at any
// moment in between. They are deferred on the blocks whose copies land at once, so a
// kernel that refills a stage (with a copy that lands at once) before the MMAs reading
// it are waited for reads the wrong operands here; and run at once where copies are
// deferred, so one that multiplies a stage before its copies were waited for does too.
struct Wgmma {
    float* d;
    int n;
    unsigned long long da, db;
};
inline Groups<Wgmma> wgmmas[1024];

// mbarrier: arrivals expected per phase, those still pending, transaction bytes still
// expected, and the phase (its parity is what a wait tests). Kept beside shared memory,
// by address, and dropped at each block's start.
struct Mbar {
    const void* at;
    unsigned count, pending, phase;
    long long tx;
};
inline std::vector<Mbar> mbars;
// TMA copies issued and not landed (only where their landing is deferred).
struct TmaCopy {
    const void* bar;
    unsigned char* dst;
    std::vector<unsigned char> bytes;
};
inline std::vector<TmaCopy> tma_pending;
// Rounds in which only spinning waits ran since a wait last passed: a bound on a hang.
inline unsigned long long idle_spins = 0;
constexpr unsigned long long MAX_IDLE_SPINS = 100000;

// Thread-block clusters (1 x 1 x cluster_z, __cluster_dims__; conv_tc_cluster,
// conv_dense). A cluster's blocks exchange shared memory between cluster barriers,
// which blocks run one after another cannot do; so a cluster's blocks are replayed.
// Every block, at each cluster barrier b it passes, keeps a copy of its dynamic shared
// memory as it is there (`cluster_snap[b][rank]`). A read of a peer's shared memory
// after barrier b (emu_cluster_ld4) sees that peer's copy from barrier b; where the
// peer has not reached barrier b yet, the reading block is abandoned (`abandon`) and
// run again from the start in the next round, when the peer's copy exists. Rounds go
// on until every block of the cluster has run to its end. This is exact for kernels
// that read a peer's memory only as it was at the barrier before (what a correct
// kernel relies on anyway) and whose global writes before their last read of a peer
// are plain stores, which a replay repeats with the same values. A read before the
// first barrier aborts, as does a round in which no block gets further (a peer that
// never reaches a barrier the reader waits for).
inline bool cluster_on = false;
inline unsigned cluster_z = 1;
inline unsigned cluster_barriers = 0;  // passed by the running block
inline std::vector<std::vector<std::vector<unsigned char>>> cluster_snap;  // [barrier][rank], empty: not yet
inline unsigned cluster_snaps = 0;                                          // copies kept, for progress
inline bool abandon = false;                                                // the running block stops

inline void trampoline() {
    kernel(params);
    wgmmas[current] = Groups<Wgmma>{};
    land_all(current);  // copies still in flight at exit land all the same
    fibers[current].state = DONE;
}

inline void run_block(unsigned threads) {
    for (unsigned i = 0; i < threads; ++i) {
        Fiber& f = fibers[i];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack;
        f.ctx.uc_stack.ss_size = STACK_BYTES;
        f.ctx.uc_link = &scheduler;
        makecontext(&f.ctx, trampoline, 0);
        f.state = RUNNABLE;
    }
    for (;;) {
        bool ran = false;
        const bool descending = (rounds++ & 1) != 0;
        for (unsigned k = 0; k < threads; ++k) {
            const unsigned i = descending ? threads - 1 - k : k;
            if (fibers[i].state != RUNNABLE) continue;
            current = i;
            threadIdx = {i, 0, 0};
            swapcontext(&scheduler, &fibers[i].ctx);
            ran = true;
            if (abandon) {  // a peer's shared memory not there yet: replayed later (see above)
                for (unsigned j = 0; j < threads; ++j) {
                    copies[j] = Groups<Copy>{};
                    wgmmas[j] = Groups<Wgmma>{};
                    fibers[j].state = DONE;
                }
                return;
            }
        }
        if (ran) continue;
        unsigned live = 0, at_block = 0;
        for (unsigned i = 0; i < threads; ++i) {
            live += fibers[i].state != DONE;
            at_block += fibers[i].state == WAIT_BLOCK;
        }
        if (live == 0) return;
        bool released = false;
        for (unsigned w = 0; w * 32 < threads; ++w) {
            unsigned wl = 0, ww = 0;
            for (unsigned i = w * 32; i < std::min(threads, w * 32 + 32); ++i) {
                wl += fibers[i].state != DONE;
                ww += fibers[i].state == WAIT_WARP;
            }
            if (wl > 0 && ww == wl) {
                for (unsigned i = w * 32; i < std::min(threads, w * 32 + 32); ++i) fibers[i].state = RUNNABLE;
                released = true;
            }
        }
        // bar.sync id, n: released once n threads wait on id.
        for (unsigned id = 1; id < 16 && !released; ++id) {
            unsigned waiting = 0, need = 0;
            for (unsigned i = 0; i < threads; ++i)
                if (fibers[i].state == WAIT_NAMED && fibers[i].bar == id) {
                    ++waiting;
                    need = fibers[i].bar_threads;
                }
            if (waiting > 0 && waiting == need) {
                for (unsigned i = 0; i < threads; ++i)
                    if (fibers[i].state == WAIT_NAMED && fibers[i].bar == id) fibers[i].state = RUNNABLE;
                released = true;
            }
        }
        unsigned at_cluster = 0;
        for (unsigned i = 0; i < threads; ++i) at_cluster += fibers[i].state == WAIT_CLUSTER;
        if (!released && at_cluster == live) {
            if (!cluster_on) {
                std::fprintf(stderr, "host_emu: cluster barrier in a launch without a cluster\n");
                std::abort();
            }
            // This block's shared memory as at barrier b, for its peers (see above).
            const unsigned b = ++cluster_barriers;
            const unsigned rank = blockIdx.z % cluster_z;
            if (cluster_snap.size() <= b) cluster_snap.resize(b + 1, std::vector<std::vector<unsigned char>>(cluster_z));
            if (cluster_snap[b][rank].empty()) {
                cluster_snap[b][rank] = dynamic_smem;
                ++cluster_snaps;
            }
            for (unsigned i = 0; i < threads; ++i)
                if (fibers[i].state == WAIT_CLUSTER) fibers[i].state = RUNNABLE;
            released = true;
        }
        if (!released && at_block == live) {
            for (unsigned i = 0; i < threads; ++i)
                if (fibers[i].state == WAIT_BLOCK) fibers[i].state = RUNNABLE;
            released = true;
        }
        // Nothing else can move: the threads spinning on an mbarrier try again.
        if (!released && ++idle_spins < MAX_IDLE_SPINS) {
            for (unsigned i = 0; i < threads; ++i)
                if (fibers[i].state == WAIT_SPIN) {
                    fibers[i].state = RUNNABLE;
                    released = true;
                }
        }
        if (!released) {
            std::fprintf(stderr,
                         "host_emu: deadlock in block (%u, %u): %u live threads, %u at __syncthreads%s\n",
                         blockIdx.x, blockIdx.y, live, at_block,
                         idle_spins >= MAX_IDLE_SPINS ? ", the rest spinning on mbarriers" : "");
            std::abort();
        }
    }
}
}  // namespace emu

inline void __syncthreads() { emu::wait(emu::WAIT_BLOCK); }
// barrier.cluster.arrive + wait (all threads of every block of the cluster).
inline void emu_cluster_sync() { emu::wait(emu::WAIT_CLUSTER); }
// A cluster kernel (DGATE_KERNEL_CLUSTER) checks the launch's cluster size against its own.
inline void emu_cluster_check(unsigned cz) {
    if (emu::cluster_z != cz || gridDim.z % cz != 0) {
        std::fprintf(stderr, "host_emu: a kernel of cluster size %u launched with cluster size %u, grid z %u\n", cz,
                     emu::cluster_z, gridDim.z);
        std::abort();
    }
}
// ld.shared::cluster.v4.f32 of the 16 bytes at `local` (dynamic shared memory) in block
// `rank` of the cluster: after a cluster barrier, as the peer's memory was there.
inline float4 emu_cluster_ld4(const float* local, unsigned rank) {
    const unsigned me = blockIdx.z % emu::cluster_z;
    const unsigned char* b = emu::dynamic_smem.data();
    const unsigned char* q = reinterpret_cast<const unsigned char*>(local);
    emu_check_align(local, 16);
    if (rank >= emu::cluster_z || q < b || q + 16 > b + emu::dynamic_smem.size()) {
        std::fprintf(stderr, "host_emu: cluster read of rank %u (cluster size %u) at %p\n", rank, emu::cluster_z,
                     (const void*)local);
        std::abort();
    }
    const unsigned bar = emu::cluster_barriers;
    if (bar == 0) {
        std::fprintf(stderr, "host_emu: a peer's shared memory read before the first cluster barrier\n");
        std::abort();
    }
    float4 v;
    if (rank == me) {
        std::memcpy(&v, q, 16);
    } else if (emu::cluster_snap.size() <= bar || emu::cluster_snap[bar][rank].empty()) {
        // The peer has not reached barrier `bar` yet: this block runs again later.
        emu::abandon = true;
        emu::fibers[emu::current].state = emu::DONE;
        swapcontext(&emu::fibers[emu::current].ctx, &emu::scheduler);
        std::abort();  // never resumed
    } else {
        std::memcpy(&v, emu::cluster_snap[bar][rank].data() + (q - b), 16);
    }
    return v;
}
inline void emu_named_barrier(int id, int threads) {
    if (id < 1 || id > 15 || threads <= 0 || threads % 32 != 0) {
        std::fprintf(stderr, "host_emu: bar.sync %d, %d: ids 1-15, a multiple of 32 threads\n", id, threads);
        std::abort();
    }
    emu::fibers[emu::current].bar = (unsigned)id;
    emu::fibers[emu::current].bar_threads = (unsigned)threads;
    emu::wait(emu::WAIT_NAMED);
}

// cp.async.cg.shared.global (16 bytes, zero-filled when !valid), commit_group and
// wait_group N, with the landing time varied as described at the top.
inline void emu_cp_async16(void* smem, const void* gmem, bool valid) {
    emu_check_align(smem, 16);
    emu::Copy c;
    c.dst = smem;
    if (valid) {
        emu_check_align(gmem, 16);
        std::memcpy(c.bytes, gmem, 16);
    } else {
        std::memset(c.bytes, 0, 16);
    }
    if (emu::defer_copies) {
        emu::copies[threadIdx.x].open.push_back(c);
    } else {
        std::memcpy(smem, c.bytes, 16);
    }
}
inline void emu_cp_async_commit() { emu::copies[threadIdx.x].commit(); }
inline void emu_cp_async_wait(unsigned pending) { emu::copies[threadIdx.x].retire(pending, emu::land); }
inline void emu_syncwarp() { emu::wait(emu::WAIT_WARP); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const unsigned t = threadIdx.x;
    emu::xchg_f[t] = v;
    emu_syncwarp();
    const float r = emu::xchg_f[(t & ~31u) | ((t & 31u) ^ (unsigned)lane_mask)];
    emu_syncwarp();
    return r;
}

inline float emu_half_bits(unsigned bits) {
    __half h;
    h.x = (unsigned short)bits;
    return __half2float(h);
}

// d += A(16x16, row) * B(16x8, col) for the warp, fragments as in the PTX ISA.
inline void emu_mma_16816(float* d, const unsigned* a, const unsigned* b) {
    const unsigned t = threadIdx.x;
    std::memcpy(emu::xchg_u[t], a, 16);
    std::memcpy(emu::xchg_u[t] + 4, b, 8);
    emu_syncwarp();
    const unsigned base = t & ~31u;
    float A[16][16], B[16][8];
    for (unsigned l = 0; l < 32; ++l) {
        const unsigned* r = emu::xchg_u[base + l];
        const unsigned g = l / 4, q = l % 4;
        for (unsigned h = 0; h < 2; ++h) {
            A[g][2 * q + h] = emu_half_bits(r[0] >> (16 * h));
            A[g + 8][2 * q + h] = emu_half_bits(r[1] >> (16 * h));
            A[g][2 * q + 8 + h] = emu_half_bits(r[2] >> (16 * h));
            A[g + 8][2 * q + 8 + h] = emu_half_bits(r[3] >> (16 * h));
            B[2 * q + h][g] = emu_half_bits(r[4] >> (16 * h));
            B[2 * q + 8 + h][g] = emu_half_bits(r[5] >> (16 * h));
        }
    }
    emu_syncwarp();
    const unsigned lane = t & 31u, g = lane / 4, q = lane % 4;
    for (unsigned k = 0; k < 16; ++k) {
        d[0] += A[g][k] * B[k][2 * q];
        d[1] += A[g][k] * B[k][2 * q + 1];
        d[2] += A[g + 8][k] * B[k][2 * q];
        d[3] += A[g + 8][k] * B[k][2 * q + 1];
    }
}

// The dynamic shared memory the launch asked for (%dynamic_smem_size).
inline unsigned emu_dynamic_smem_bytes() { return (unsigned)emu::dynamic_smem.size() - 16; }
// A generic access of `bytes` at `p` must lie inside the launch's dynamic shared memory.
inline void emu_check_dynamic_smem(const void* p, unsigned bytes) {
    const unsigned char* b = emu::dynamic_smem.data();
    const unsigned char* q = static_cast<const unsigned char*>(p);
    if (q < b || q + bytes > b + emu_dynamic_smem_bytes()) {
        std::fprintf(stderr, "host_emu: %u bytes at %p outside the launch's dynamic shared memory\n", bytes, p);
        std::abort();
    }
}

// A shared address as the kernel sees it: the offset in the block's dynamic shared
// memory (the only shared memory a wgmma operand lives in).
inline unsigned emu_smem_addr(const void* p) {
    const unsigned char* b = emu::dynamic_smem.data();
    const unsigned char* q = static_cast<const unsigned char*>(p);
    if (q < b || q >= b + emu::dynamic_smem.size()) {
        std::fprintf(stderr, "host_emu: shared address of %p outside dynamic shared memory\n", p);
        std::abort();
    }
    return (unsigned)(q - b);
}

// Element (row, k) of a wgmma operand from its descriptor: K-major without swizzling,
// 8 x 8 core matrices of 8 rows x 16 contiguous bytes, LBO bytes between core matrices
// adjacent in k, SBO between those adjacent in rows (PTX ISA, matrix descriptor).
inline float emu_wgmma_elem(unsigned long long desc, unsigned row, unsigned k) {
    const unsigned start = (unsigned)(desc & 0x3fff) << 4;
    const unsigned lbo = (unsigned)((desc >> 16) & 0x3fff) << 4;
    const unsigned sbo = (unsigned)((desc >> 32) & 0x3fff) << 4;
    const unsigned layout = (unsigned)(desc >> 62);
    if ((layout != 0 && layout != 1) || ((desc >> 49) & 7) != 0) {
        std::fprintf(stderr, "host_emu: wgmma descriptor %llx: only unswizzled and 128-byte swizzled operands\n",
                     desc);
        std::abort();
    }
    size_t at;
    if (layout == 1) {
        // 128-byte swizzle: rows of 128 bytes in 8-row atoms SBO apart; the 16-byte
        // unit of a row is XORed with the row's place in its 1024-byte atom, taken from
        // the address itself (bits 7-9 into bits 4-6).
        at = (size_t)start + (row / 8) * sbo + (row % 8) * 128 + k * 2;
        at ^= ((at >> 7) & 7) << 4;
    } else {
        at = (size_t)start + (row / 8) * sbo + (k / 8) * lbo + (row % 8) * 16 + (k % 8) * 2;
    }
    if (at + 2 > emu::dynamic_smem.size()) {
        std::fprintf(stderr, "host_emu: wgmma operand byte %zu past shared memory (%zu)\n", at,
                     emu::dynamic_smem.size());
        std::abort();
    }
    unsigned short bits;
    std::memcpy(&bits, emu::dynamic_smem.data() + at, 2);
    return emu_half_bits(bits);
}

// wgmma.mma_async m64nNk16, f32 += f16 x f16, A and B K-major in shared memory: this
// thread's accumulators, as the PTX ISA lays them out (warp w of the warpgroup holds
// rows 16w..16w+15; per n8 block j, d[4j..4j+3] as mma.m16n8's C fragment).
inline void emu_wgmma_run(const emu::Wgmma& m) {
    const unsigned t = threadIdx.x, w = (t / 32) % 4, lane = t % 32, g = lane / 4, q = lane % 4;
    for (int j = 0; j < m.n / 8; ++j) {
        for (unsigned r = 0; r < 4; ++r) {
            const unsigned row = 16 * w + g + 8 * (r / 2), col = 8 * (unsigned)j + 2 * q + (r % 2);
            float s = 0.0f;
            for (unsigned k = 0; k < 16; ++k) s += emu_wgmma_elem(m.da, row, k) * emu_wgmma_elem(m.db, col, k);
            m.d[4 * j + r] += s;
        }
    }
}
inline void emu_wgmma(float* d, int n, unsigned long long da, unsigned long long db) {
    const emu::Wgmma m{d, n, da, db};
    if (!emu::defer_copies) {
        emu::wgmmas[threadIdx.x].open.push_back(m);
    } else {
        emu_wgmma_run(m);
    }
}
inline void emu_wgmma_fence() {}
inline void emu_wgmma_commit() { emu::wgmmas[threadIdx.x].commit(); }
inline void emu_wgmma_wait(unsigned pending) { emu::wgmmas[threadIdx.x].retire(pending, emu_wgmma_run); }

// mbarrier.init / arrive (with expect_tx: `tx` bytes more expected) / try_wait.parity
// in a loop, and TMA's complete_tx.
inline emu::Mbar& emu_mbar(const void* bar) {
    for (emu::Mbar& b : emu::mbars)
        if (b.at == bar) return b;
    std::fprintf(stderr, "host_emu: mbarrier at %p used before mbarrier.init\n", bar);
    std::abort();
}
inline void emu_mbar_init(unsigned long long* bar, unsigned count) {
    emu_check_dynamic_smem(bar, 8);
    emu_check_align(bar, 8);
    for (emu::Mbar& b : emu::mbars)
        if (b.at == bar) {
            b = emu::Mbar{bar, count, count, 0, 0};
            return;
        }
    emu::mbars.push_back(emu::Mbar{bar, count, count, 0, 0});
}
inline void emu_mbar_complete(emu::Mbar& b) {
    if (b.pending == 0 && b.tx == 0) {
        b.phase += 1;
        b.pending = b.count;
    }
}
inline void emu_mbar_arrive(unsigned long long* bar, unsigned tx) {
    emu::Mbar& b = emu_mbar(bar);
    if (b.pending == 0) {
        std::fprintf(stderr, "host_emu: more arrivals on the mbarrier at %p than its count (%u)\n", (void*)bar,
                     b.count);
        std::abort();
    }
    b.tx += tx;
    b.pending -= 1;
    emu_mbar_complete(b);
}
inline void emu_tma_land(const emu::TmaCopy& c) {
    std::memcpy(c.dst, c.bytes.data(), c.bytes.size());
    emu::Mbar& b = emu_mbar(c.bar);
    b.tx -= (long long)c.bytes.size();
    if (b.tx < 0) {
        std::fprintf(stderr, "host_emu: TMA completed more bytes than the mbarrier at %p expected\n", c.bar);
        std::abort();
    }
    emu_mbar_complete(b);
}
inline void emu_mbar_wait(unsigned long long* bar, unsigned parity) {
    for (;;) {
        if ((emu_mbar(bar).phase & 1) != parity) break;
        // The latest a deferred TMA copy may land: when it is all that is missing.
        bool landed = false;
        for (size_t i = 0; i < emu::tma_pending.size();) {
            if (emu::tma_pending[i].bar == bar) {
                const emu::TmaCopy c = emu::tma_pending[i];
                emu::tma_pending.erase(emu::tma_pending.begin() + (long)i);
                emu_tma_land(c);
                landed = true;
            } else {
                ++i;
            }
        }
        if (landed) continue;
        emu::wait(emu::WAIT_SPIN);
    }
    emu::idle_spins = 0;
}

// cp.async.bulk.tensor (tile mode, f16, rank 2-4) of the box at element `at` (innermost
// first) of a tensor map in the layout the host writes for the emulator
// (Device::tma_map_f16): address, rank, 4 dimensions, 3 pitches in bytes, 4 box extents,
// swizzle span. Past the edges (coordinates may be negative) the box is zero. The box's
// elements go to shared memory in order, innermost first, in 128-byte rows of 64
// channels; with the 128-byte swizzle each 16-byte unit of a row moves by the row's
// place in its 1024-byte atom (`dst` must be 1024-aligned).
inline void emu_tma_load(void* dst, const void* map, const int* at, int rank, unsigned long long* bar) {
    unsigned long long m[16];
    std::memcpy(m, map, sizeof m);
    const long long dim[4] = {(long long)m[2], (long long)m[3], (long long)m[4], (long long)m[5]};
    const unsigned long long pitch[4] = {2, m[6], m[7], m[8]};
    unsigned box[4] = {(unsigned)m[9], (unsigned)m[10], (unsigned)m[11], (unsigned)m[12]};
    if ((int)m[1] != rank || m[13] != 128 || box[0] != 64 || emu_smem_addr(dst) % 1024 != 0) {
        std::fprintf(stderr,
                     "host_emu: TMA load of rank %d from a map of rank %llu into %p: only 64-channel boxes in "
                     "128-byte swizzled rows, 1024-aligned\n",
                     rank, m[1], dst);
        std::abort();
    }
    for (int i = rank; i < 4; ++i) box[i] = 1;
    const size_t rows = (size_t)box[1] * box[2] * box[3];
    emu_check_dynamic_smem(dst, (unsigned)(rows * 128));
    emu::TmaCopy c{bar, static_cast<unsigned char*>(dst), std::vector<unsigned char>(rows * 128, 0)};
    size_t row = 0;
    for (unsigned i3 = 0; i3 < box[3]; ++i3)
        for (unsigned i2 = 0; i2 < box[2]; ++i2)
            for (unsigned i1 = 0; i1 < box[1]; ++i1, ++row) {
                const long long g[4] = {0, (long long)at[1] + i1, rank > 2 ? (long long)at[2] + i2 : 0,
                                        rank > 3 ? (long long)at[3] + i3 : 0};
                bool inside = true;
                unsigned long long base = m[0];
                for (int d = 1; d < rank; ++d) {
                    inside = inside && g[d] >= 0 && g[d] < dim[d];
                    base += (unsigned long long)g[d] * pitch[d];
                }
                if (!inside) continue;
                for (unsigned col = 0; col < 64; ++col) {
                    const long long gc = (long long)at[0] + col;
                    if (gc < 0 || gc >= dim[0]) continue;
                    size_t o = row * 128 + col * 2;
                    o ^= ((o >> 7) & 7) << 4;
                    std::memcpy(&c.bytes[o], reinterpret_cast<const unsigned char*>(base + gc * 2), 2);
                }
            }
    emu_mbar(bar);  // it must exist
    if (emu::defer_copies) {
        emu::tma_pending.push_back(std::move(c));
    } else {
        emu_tma_land(c);
    }
}
inline void emu_tma_load_2d(void* dst, const void* map, int c0, int c1, unsigned long long* bar) {
    const int at[4] = {c0, c1, 0, 0};
    emu_tma_load(dst, map, at, 2, bar);
}
inline void emu_tma_load_4d(void* dst, const void* map, int c0, int c1, int c2, int c3, unsigned long long* bar) {
    const int at[4] = {c0, c1, c2, c3};
    emu_tma_load(dst, map, at, 4, bar);
}

// ldmatrix.sync.aligned.m8n8.x4.b16: lane l supplies the address of row l % 8 of
// matrix l / 8 (16-byte aligned) and receives from matrix j the b16 pair at row
// l / 4, columns 2 (l % 4) and 2 (l % 4) + 1.
inline void emu_ldmatrix_x4(unsigned* r, const unsigned short* addr) {
    const unsigned t = threadIdx.x;
    emu_check_align(addr, 16);
    emu::xchg_p[t] = addr;
    emu_syncwarp();
    const unsigned base = t & ~31u, lane = t & 31u;
    for (unsigned j = 0; j < 4; ++j) std::memcpy(&r[j], emu::xchg_p[base + j * 8 + lane / 4] + 2 * (lane % 4), 4);
    emu_syncwarp();
}

#define DGATE_KERNEL(name, Params, threads)                                                   \
    inline void name##_body(const Params& p);                                                 \
    extern "C" void name(const void* raw) { name##_body(*static_cast<const Params*>(raw)); } \
    inline void name##_body(const Params& p)

#define DGATE_KERNEL_OCC(name, Params, threads, min_blocks) DGATE_KERNEL(name, Params, threads)

#define DGATE_KERNEL_CLUSTER(name, Params, threads, cz)                  \
    inline void name##_body(const Params& p);                            \
    extern "C" void name(const void* raw) {                              \
        emu_cluster_check(cz);                                           \
        name##_body(*static_cast<const Params*>(raw));                   \
    }                                                                    \
    inline void name##_body(const Params& p)

#define DGATE_DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::dynamic_smem.data())

// Runs `k` over a grid of (gx, gy) blocks of `threads` threads. Only one copy of this
// (and of the state above) may exist per process: the shared object is built from one
// translation unit per kernel file, and this symbol is defined in conv.cu alone.
#ifdef DGATE_EMU_DEFINE_LAUNCH
// The bounds of the `__shared__` section, defined by the linker.
extern "C" unsigned char __start_dgate_emu_shared[], __stop_dgate_emu_shared[];
// A cluster (1 x 1 x cz blocks; cz = 1: none) runs its blocks in rounds, each block
// replayed until every one has run to its end (see emu::cluster_snap).
extern "C" int dgate_emu_launch(void (*k)(const void*), unsigned gx, unsigned gy, unsigned gz, unsigned cz,
                                unsigned threads, unsigned smem, const void* p) {
    if (threads == 0 || threads > 1024) return 1;
    if (cz == 0 || gz % cz != 0) return 3;
    std::lock_guard<std::mutex> guard(emu::launch_lock);
    while (emu::fibers.size() < threads) {
        emu::fibers.emplace_back();
        emu::fibers.back().stack = static_cast<char*>(std::malloc(emu::STACK_BYTES));
        if (emu::fibers.back().stack == nullptr) return 2;
    }
    emu::kernel = k;
    emu::params = p;
    emu::dynamic_smem.resize(smem + 16);
    static unsigned long long launches = 0;
    const unsigned long long launch = launches++;
    blockDim = {threads, 1, 1};
    gridDim = {gx, gy, gz};
    // Blocks in order on even launches, in reverse on odd ones (a GPU runs them in any
    // order: e.g. any of a split-K tile's blocks may be the last to finish).
    // A cluster's blocks are consecutive here, its ranks last (z fastest within it).
    emu::cluster_z = cz;
    const unsigned long long total = (unsigned long long)gx * gy * gz;
    auto run = [&](unsigned bx, unsigned by, unsigned bz) {
        blockIdx = {bx, by, bz};
        emu::defer_copies = ((launch + bx + by + bz) & 1) != 0;
        std::fill(emu::dynamic_smem.begin(), emu::dynamic_smem.end(), 0xff);
        emu::mbars.clear();
        emu::tma_pending.clear();
        emu::idle_spins = 0;
        emu::cluster_barriers = 0;
        std::memset(__start_dgate_emu_shared, 0xff, (size_t)(__stop_dgate_emu_shared - __start_dgate_emu_shared));
        emu::run_block(threads);
    };
    for (unsigned long long i = 0; i < total / cz; ++i) {
        const unsigned long long c = (launch & 1) != 0 ? total / cz - 1 - i : i;
        const unsigned bx = (unsigned)(c % gx), by = (unsigned)(c / gx % gy);
        const unsigned z0 = (unsigned)(c / gx / gy) * cz;
        if (cz == 1) {
            emu::cluster_on = false;
            run(bx, by, z0);
            continue;
        }
        // Rounds over the cluster's unfinished blocks until all have finished (see
        // emu::cluster_snap).
        emu::cluster_on = true;
        emu::cluster_snap.clear();
        emu::cluster_snaps = 0;
        std::vector<bool> finished(cz, false);
        for (unsigned left = cz; left > 0;) {
            const unsigned snaps = emu::cluster_snaps;
            bool progress = false;
            for (unsigned k = 0; k < cz; ++k) {
                const unsigned r = (launch & 1) != 0 ? cz - 1 - k : k;
                if (finished[r]) continue;
                emu::abandon = false;
                run(bx, by, z0 + r);
                if (!emu::abandon) {
                    finished[r] = true;
                    --left;
                    progress = true;
                }
            }
            if (!progress && emu::cluster_snaps == snaps) {
                std::fprintf(stderr,
                             "host_emu: cluster (%u, %u, %u): %u blocks wait on a peer that never reaches the barrier\n",
                             bx, by, z0, left);
                std::abort();
            }
        }
        emu::abandon = false;
    }
    emu::cluster_on = false;
    emu::cluster_z = 1;
    return 0;
}
#endif
