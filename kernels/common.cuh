// common.cuh: what every kernel file shares.
//
// - The launch-parameter structs. Each is passed by value as the kernel's only
//   argument and is mirrored field for field by a `#[repr(C)]` struct in
//   src/backend/cuda/params.rs. The Rust side passes `-DDGATE_SIZEOF_<NAME>=<size>`
//   to NVRTC, so a layout drift between the two fails at compile time (CI included).
// - Storage-type helpers: activations and conv weights are stored as `float` (f32
//   plans) or `__half` (f16 plans); all arithmetic is f32.
// - The pre-activation `relu?(x * scale[c] + shift[c])` applied on load (DenseNet).
//
// Layout everywhere: activations NHWC. A "view" is a channel window
// `[off, off + C)` of a buffer whose pixel stride is `stride` channels, so DenseNet's
// concatenation needs no copy. Sample `s`, pixel `i`, channel `c` lives at
// `((s * HW) + i) * stride + off + c`.
//
// Survivors: `count` points at the number of live samples (device memory, written by
// the input packer or by the last compaction). Grids are sized for the largest
// batch and blocks past the live samples return at once, so no kernel needs the
// host to know how many samples left at a gate.
#pragma once
#ifdef DGATE_HOST_EMU
#include "host_emu.cuh"
#else
#include <cuda_fp16.h>
// Programmatic dependent launch (sm_90+). Every kernel first lets the next kernel in
// the stream be scheduled (its blocks then wait in their own griddepcontrol.wait) and
// then waits until the previous kernel has finished and its writes are visible, before
// touching global memory. Launched without the attribute (the default; DGATE_PDL=1 on
// the host turns it on) both are no-ops. Hides the launch gap between the hundred-odd
// small kernels of a batch-1 pass.
__device__ __forceinline__ void dgate_pdl_launch() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void dgate_pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;\n" ::: "memory");
#endif
}
// What a kernel does before that wait: only reads of memory no earlier kernel of the
// pass writes. Nothing, unless an overload for its parameter struct says otherwise
// (ConvParams: its weights into L2, below).
template <class P>
__device__ __forceinline__ void dgate_before_wait(const P&) {}
// Nanoseconds of the GPU's global timer (coarse: it may tick once a microsecond).
__device__ __forceinline__ unsigned long long dgate_now_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
// A kernel takes its parameter struct by value; the host emulator defines these
// differently (see host_emu.cuh). `attrs`: the kernel's launch attributes.
#define DGATE_KERNEL_WITH(name, Params, attrs)                      \
    __device__ __forceinline__ void name##_body(const Params& p);   \
    extern "C" __global__ void attrs name(const Params p) {         \
        dgate_pdl_launch();                                         \
        dgate_before_wait(p);                                       \
        dgate_pdl_wait();                                           \
        name##_body(p);                                             \
    }                                                               \
    __device__ __forceinline__ void name##_body(const Params& p)
#define DGATE_KERNEL(name, Params, threads) DGATE_KERNEL_WITH(name, Params, __launch_bounds__(threads))
// The same, asking the compiler for at most 65536 / (threads * min_blocks) registers per
// thread, so that `min_blocks` blocks fit an SM (for tiles whose shared memory allows two).
#define DGATE_KERNEL_OCC(name, Params, threads, min_blocks) \
    DGATE_KERNEL_WITH(name, Params, __launch_bounds__(threads, min_blocks))
// The same for a kernel launched as clusters of 1 x 1 x `cz` blocks (sm_90; fixed here,
// so the host launches it as any other, with gridDim.z a multiple of `cz`).
#define DGATE_KERNEL_CLUSTER(name, Params, threads, cz) \
    DGATE_KERNEL_WITH(name, Params, __cluster_dims__(1, 1, cz) __launch_bounds__(threads))
#define DGATE_DYNAMIC_SHARED(T, name) extern __shared__ T name[]
#endif

struct ConvParams {
    const void* in;
    void* out;
    const void* weight;     // [R*R*C][ldw], or [K][ldw] for conv_mmavec (see conv.cu)
    const float* bias;      // [K]
    const void* residual;   // may be null; same pixels as `out`
    const float* pre_scale; // null: no pre-activation
    const float* pre_shift;
    const int* count;
    float* workspace;       // split-K partial sums [M][K], zero between uses
    int* tickets;           // split-K: blocks done per output tile, zero between uses
    const void* tma;        // conv_tma: tensor maps of the input view and the weights
    int in_stride, in_off, C;
    int out_stride, out_off, K;
    int res_stride, res_off;
    int H, W, P, Q, R, stride, pad;
    int pre_relu, relu, ldw;
    int ws_cap;             // floats of `workspace` split-K may use
    int n_tickets;          // output tiles `tickets` can count
    int weight_lines;       // 128-byte lines of `weight` to prefetch into L2 first; 0: none
};

#ifndef DGATE_HOST_EMU
// A convolution's constants, which no kernel of a pass writes, asked into L2 before the
// wait for the previous kernel (DGATE_PREFETCH=1 on the host sets weight_lines): the
// weights, then the bias [K] and the pre-activation's scale and shift [C]. The grid's
// threads share the 128-byte lines, each issuing its own at once, so the reads of a
// small batch, whose k-loop would otherwise fetch the weights from DRAM one k-tile after
// another (and the pre-activation's per channel with them), find them in L2. Under
// DGATE_PDL=1 the fetch also overlaps the previous kernel's tail. Prefetches are hints:
// they neither fault nor change a result; every line starts inside its array.
__device__ __forceinline__ void dgate_before_wait(const ConvParams& p) {
    if (p.weight_lines <= 0) return;
    const long long threads = (long long)blockDim.x * blockDim.y * blockDim.z;
    const long long block = blockIdx.x + (long long)gridDim.x * (blockIdx.y + (long long)gridDim.y * blockIdx.z);
    const long long all = threads * gridDim.x * gridDim.y * gridDim.z;
    const long long t = threadIdx.x + (long long)blockDim.x * (threadIdx.y + (long long)blockDim.y * threadIdx.z);
    const long long bias_lines = p.bias ? ((long long)p.K * 4 + 127) / 128 : 0;
    const long long pre_lines = p.pre_scale && p.pre_shift ? ((long long)p.C * 4 + 127) / 128 : 0;
    const long long total = p.weight_lines + bias_lines + 2 * pre_lines;
    for (long long i = block * threads + t; i < total; i += all) {
        long long line = i;
        const char* base = static_cast<const char*>(p.weight);
        if (line >= p.weight_lines) {
            line -= p.weight_lines;
            base = reinterpret_cast<const char*>(p.bias);
            if (line >= bias_lines) {
                line -= bias_lines;
                base = reinterpret_cast<const char*>(p.pre_scale);
                if (line >= pre_lines) {
                    line -= pre_lines;
                    base = reinterpret_cast<const char*>(p.pre_shift);
                }
            }
        }
        asm volatile("prefetch.global.L2 [%0];" ::"l"(base + line * 128));
    }
}
#endif

// conv_dense (conv.cu): a DenseNet layer, its 1x1 bottleneck and its 3x3 growth layer,
// in one launch. Each half as its own layer's launch would pass it.
struct DenseParams {
    ConvParams one;    // the pre-activated 1x1 into the bottleneck buffer
    ConvParams three;  // the 3x3 from the bottleneck into the block's buffer
};
#ifndef DGATE_HOST_EMU
__device__ __forceinline__ void dgate_before_wait(const DenseParams& p) {
    dgate_before_wait(p.one);
    dgate_before_wait(p.three);
}
#endif

struct ShortcutParams {
    const void* in;
    void* out;
    const int* count;
    int in_stride, in_off, C;
    int out_stride, out_off, K;
    int H, W, P, Q, stride, pad_before;
};

struct PoolParams {
    const void* in;
    void* out;
    const float* pre_scale;
    const float* pre_shift;
    const int* count;
    int in_stride, in_off, C;
    int out_stride, out_off;
    int H, W, P, Q, pre_relu;
    int vec;                // channels a thread moves at once: 16 bytes' worth, or 1
    int pad0;
};

// Gate and head: global average pool of a view, then `scores = W x + b`.
struct GapLinearParams {
    const void* in;
    const float* weight;    // [classes][C]
    const float* bias;      // [classes]
    const float* pre_scale;
    const float* pre_shift;
    const int* count;
    const int* idx;         // slot -> input position
    int* keep;              // gate only: 1 = goes on
    int* out_class;         // per input position
    int* out_exit;
    float* out_score;
    float* out_logits;      // [n][classes]
    int in_stride, in_off, C, HW;
    int classes, pre_relu, rule, exit_id;
    float threshold;
    int is_gate;
    int vec;                // channels per pooling load: 1, 4 (f32) or 8 (f16)
    int groups;             // pixel groups pooled in parallel
};

struct CompactParams {
    const int* keep;
    const int* count_in;
    int* count_out;
    const int* idx_in;
    int* idx_out;
    int* src_of;            // new slot -> old slot
    void* buf;
    void* scratch;          // dense [slot][HW][C]
    int stride, off, C, HW;
    int n_max;
    int vec;                // elements a thread moves at once: 16 bytes' worth, or 1
};

struct PackParams {
    const float* images;    // [n][3][HW] NCHW
    void* out;
    int* count;
    int* idx;
    int n, out_stride, out_off, HW;
    int C, pad0;
};

// A view in `a` (and in `b`) that tuning checks; see batch.cu's fill_noise / diff_max.
struct CheckParams {
    void* a;
    const void* b;
    unsigned* out;          // diff_max: max |a - b|, max |b| as f32 bits
    int rows, C, stride, off;
    unsigned seed;
    int pad0;
};

// How long hold_stream (batch.cu) keeps its stream busy.
struct HoldParams {
    long long ns;
};

#ifdef DGATE_SIZEOF_CONV
static_assert(sizeof(ConvParams) == DGATE_SIZEOF_CONV, "ConvParams differs from its Rust mirror");
#endif
#ifdef DGATE_SIZEOF_DENSE
static_assert(sizeof(DenseParams) == DGATE_SIZEOF_DENSE, "DenseParams differs from its Rust mirror");
#endif
#ifdef DGATE_SIZEOF_SHORTCUT
static_assert(sizeof(ShortcutParams) == DGATE_SIZEOF_SHORTCUT, "ShortcutParams differs from its Rust mirror");
#endif
#ifdef DGATE_SIZEOF_POOL
static_assert(sizeof(PoolParams) == DGATE_SIZEOF_POOL, "PoolParams differs from its Rust mirror");
#endif
#ifdef DGATE_SIZEOF_GAP_LINEAR
static_assert(sizeof(GapLinearParams) == DGATE_SIZEOF_GAP_LINEAR, "GapLinearParams differs from its Rust mirror");
#endif
#ifdef DGATE_SIZEOF_COMPACT
static_assert(sizeof(CompactParams) == DGATE_SIZEOF_COMPACT, "CompactParams differs from its Rust mirror");
#endif
#ifdef DGATE_SIZEOF_CHECK
static_assert(sizeof(CheckParams) == DGATE_SIZEOF_CHECK, "CheckParams differs from its Rust mirror");
#endif
#ifdef DGATE_SIZEOF_HOLD
static_assert(sizeof(HoldParams) == DGATE_SIZEOF_HOLD, "HoldParams differs from its Rust mirror");
#endif
#ifdef DGATE_SIZEOF_PACK
static_assert(sizeof(PackParams) == DGATE_SIZEOF_PACK, "PackParams differs from its Rust mirror");
#endif

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_f32<__half>(float x) { return __float2half_rn(x); }

// VEC channels from `src` as floats, and back: one 16-byte access when VEC * sizeof(T) ==
// 16 (the caller keeps it aligned), else VEC element accesses. Gates, pooling.
template <typename T, int VEC>
__device__ __forceinline__ void load_vec(const T* src, float* v) {
    if (VEC * sizeof(T) == 16) {
#ifdef DGATE_HOST_EMU
        emu_check_align(src, 16);
#endif
        const uint4 u = *(const uint4*)src;
        const T* t = (const T*)&u;
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[j] = to_f32(t[j]);
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[j] = to_f32(src[j]);
    }
}

template <typename T, int VEC>
__device__ __forceinline__ void store_vec(T* dst, const float* v) {
    if (VEC * sizeof(T) == 16) {
#ifdef DGATE_HOST_EMU
        emu_check_align(dst, 16);
#endif
        uint4 u;
        T* t = (T*)&u;
#pragma unroll
        for (int j = 0; j < VEC; ++j) t[j] = from_f32<T>(v[j]);
        *(uint4*)dst = u;
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) dst[j] = from_f32<T>(v[j]);
    }
}

// DenseNet's BN-ReLU before a consumer; a no-op when `scale` is null.
__device__ __forceinline__ float pre_act(float v, const float* scale, const float* shift, int relu, int c) {
    if (scale != nullptr) {
        v = fmaf(v, scale[c], shift[c]);
        if (relu) v = fmaxf(v, 0.0f);
    }
    return v;
}
