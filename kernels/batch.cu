// batch.cu: moving samples into, within and out of the batch.
//
//   pack_input_{f32,f16}: the host's normalised NCHW f32 images -> the plan's input
//       view (NHWC, storage type). Also starts the pass: *count = n, idx[i] = i.
//       One thread per (sample, pixel, channel), channel fastest on the write side.
//   compact_scan_i32: after a gate, an exclusive prefix sum over keep[0..*count_in)
//       gives each survivor its new slot; writes src_of[new] = old,
//       idx_out[new] = idx_in[old] and *count_out. One block of SCAN_THREADS threads:
//       each thread owns a contiguous chunk (serial sum), chunk sums are scanned in
//       shared memory (Hillis-Steele), then each thread writes its chunk. Batches
//       are at most a few thousand, so one block is enough and keeps it one launch.
//   gate_closed_i32: in place of a closed gate (threshold +inf, which no sample
//       leaves) and its compaction: the next level's count and sample indices are
//       this level's (*count_out = *count_in, idx_out = idx_in). One block.
//   compact_gather_{f32,f16}: scratch[new] = view[src_of[new]] for new < *count_out.
//   compact_copy_{f32,f16}: view[new] = scratch[new]. Gathering through a scratch
//       buffer avoids the read/write race of an in-place gather.
//       Grid (slot, chunk): block (s, k) moves units k * MOVE_THREADS + t, then a grid
//       stride of chunks, of sample s, a unit being `vec` channels of one pixel (16
//       bytes where the view's width, offset and stride allow, else one element). All
//       index arithmetic within a sample is 32-bit: a 64-bit division per element made
//       these two kernels 0.7 ms of ResNet-101's gate 0 at batch 256 on an H200.
//       A survivor already in its slot (src_of[s] == s: every sample before the first
//       exit, and all of them in a pass where none exits) is not moved at all.
//   fill_noise_{f32,f16}: a view <- values in [-1, 1) hashed from (seed, element), so
//       a candidate kernel and the reference it is checked against (while tuning)
//       read the same, non-trivial input.
//   diff_max_{f32,f16}: max |a - b| and max |b| over a view of two buffers (a
//       candidate's output, the reference's), as f32 bits by atomicMax on out[0..2]
//       (non-negative floats order as their bits; NaN orders above every number).
//       Grid-stride, one atomic per thread.
//   hold_stream_i64: one thread spins for `ns` nanoseconds of the global timer. The
//       step-by-step profile queues a pass behind it, so that the GPU runs the pass's
//       kernels back to back whatever the host's launch rate (see profile_pass).
#include "common.cuh"

#define MOVE_THREADS 256
#define SCAN_THREADS 1024

template <typename T>
__device__ __forceinline__ void pack_input(const PackParams& p) {
    const long long e = (long long)blockIdx.x * MOVE_THREADS + threadIdx.x;
    if (e == 0) *p.count = p.n;
    if (e < p.n) p.idx[e] = (int)e;
    const long long total = (long long)p.n * p.HW * p.C;
    if (e >= total) return;
    const int c = (int)(e % p.C);
    const long long pix = e / p.C;
    const long long s = pix / p.HW;
    const int i = (int)(pix - s * p.HW);
    const float v = p.images[(s * p.C + c) * p.HW + i];
    ((T*)p.out)[pix * p.out_stride + p.out_off + c] = from_f32<T>(v);
}

DGATE_KERNEL(compact_scan_i32, CompactParams, SCAN_THREADS) {
    __shared__ int sums[SCAN_THREADS];
    const int n = *p.count_in;
    const int chunk = (n + SCAN_THREADS - 1) / SCAN_THREADS;
    const int t = threadIdx.x;
    const int lo = min(t * chunk, n);
    const int hi = min(lo + chunk, n);
    int local = 0;
    for (int i = lo; i < hi; ++i) local += p.keep[i] != 0;
    sums[t] = local;
    __syncthreads();
    for (int o = 1; o < SCAN_THREADS; o <<= 1) {
        const int add = t >= o ? sums[t - o] : 0;
        __syncthreads();
        sums[t] += add;
        __syncthreads();
    }
    int slot = sums[t] - local;
    for (int i = lo; i < hi; ++i) {
        if (p.keep[i] != 0) {
            p.src_of[slot] = i;
            p.idx_out[slot] = p.idx_in[i];
            ++slot;
        }
    }
    if (t == SCAN_THREADS - 1) *p.count_out = sums[t];
}

DGATE_KERNEL(gate_closed_i32, CompactParams, SCAN_THREADS) {
    const int n = *p.count_in;
    for (int i = threadIdx.x; i < n; i += SCAN_THREADS) p.idx_out[i] = p.idx_in[i];
    if (threadIdx.x == 0) *p.count_out = n;
}

// Copies one unit of VEC elements (16 bytes, or one element).
template <typename T, int VEC>
__device__ __forceinline__ void move_unit(T* dst, const T* src) {
    if (VEC * sizeof(T) == 16) {
#ifdef DGATE_HOST_EMU
        emu_check_align(dst, 16);
        emu_check_align(src, 16);
#endif
        *(uint4*)dst = *(const uint4*)src;
    } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) dst[j] = src[j];
    }
}

template <typename T, int VEC>
__device__ __forceinline__ void compact_units(const CompactParams& p, bool gather) {
    const int slot = blockIdx.x;
    if (slot >= *p.count_out) return;
    const int src = p.src_of[slot];
    if (src == slot) return;
    const int per_pixel = p.C / VEC;
    const int units = p.HW * per_pixel;
    T* buf = (T*)p.buf;
    T* dense = (T*)p.scratch + (size_t)slot * p.HW * p.C;
    T* view = buf + (size_t)(gather ? src : slot) * p.HW * p.stride + p.off;
    for (int u = blockIdx.y * MOVE_THREADS + threadIdx.x; u < units; u += gridDim.y * MOVE_THREADS) {
        const int pix = u / per_pixel;
        const int c = (u - pix * per_pixel) * VEC;
        T* v = view + pix * p.stride + c;
        T* d = dense + pix * p.C + c;
        if (gather) {
            move_unit<T, VEC>(d, v);
        } else {
            move_unit<T, VEC>(v, d);
        }
    }
}

template <typename T>
__device__ __forceinline__ void compact_move(const CompactParams& p, bool gather) {
    if (p.vec * (int)sizeof(T) == 16) {
        compact_units<T, 16 / sizeof(T)>(p, gather);
    } else {
        compact_units<T, 1>(p, gather);
    }
}

DGATE_KERNEL(pack_input_f32, PackParams, MOVE_THREADS) { pack_input<float>(p); }
DGATE_KERNEL(pack_input_f16, PackParams, MOVE_THREADS) { pack_input<__half>(p); }
DGATE_KERNEL(compact_gather_f32, CompactParams, MOVE_THREADS) { compact_move<float>(p, true); }
DGATE_KERNEL(compact_gather_f16, CompactParams, MOVE_THREADS) { compact_move<__half>(p, true); }
DGATE_KERNEL(compact_copy_f32, CompactParams, MOVE_THREADS) { compact_move<float>(p, false); }
DGATE_KERNEL(compact_copy_f16, CompactParams, MOVE_THREADS) { compact_move<__half>(p, false); }

__device__ __forceinline__ unsigned hash_u32(unsigned x) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

template <typename T>
__device__ __forceinline__ void fill_noise(const CheckParams& p) {
    const long long total = (long long)p.rows * p.C;
    for (long long e = (long long)blockIdx.x * MOVE_THREADS + threadIdx.x; e < total;
         e += (long long)gridDim.x * MOVE_THREADS) {
        const long long pix = e / p.C;
        const int c = (int)(e - pix * p.C);
        const unsigned h = hash_u32((unsigned)e * 0x9e3779b9u ^ hash_u32(p.seed + (unsigned)(e >> 32)));
        const float v = (float)(h >> 8) * (2.0f / 16777216.0f) - 1.0f;
        ((T*)p.a)[pix * p.stride + p.off + c] = from_f32<T>(v);
    }
}

template <typename T>
__device__ __forceinline__ void diff_max(const CheckParams& p) {
    const long long total = (long long)p.rows * p.C;
    float d = 0.0f, m = 0.0f;
    for (long long e = (long long)blockIdx.x * MOVE_THREADS + threadIdx.x; e < total;
         e += (long long)gridDim.x * MOVE_THREADS) {
        const long long pix = e / p.C;
        const long long at = pix * p.stride + p.off + (e - pix * p.C);
        const float a = to_f32(((const T*)p.a)[at]);
        const float b = to_f32(((const T*)p.b)[at]);
        const float ad = fabsf(a - b);
        // NaN (a broken candidate) must win: fmaxf would drop it.
        d = (ad > d || ad != ad) && d == d ? ad : d;
        m = fmaxf(m, fabsf(b));
    }
    atomicMax(p.out, __float_as_uint(d));
    atomicMax(p.out + 1, __float_as_uint(m));
}

DGATE_KERNEL(fill_noise_f32, CheckParams, MOVE_THREADS) { fill_noise<float>(p); }
DGATE_KERNEL(fill_noise_f16, CheckParams, MOVE_THREADS) { fill_noise<__half>(p); }
DGATE_KERNEL(diff_max_f32, CheckParams, MOVE_THREADS) { diff_max<float>(p); }
DGATE_KERNEL(diff_max_f16, CheckParams, MOVE_THREADS) { diff_max<__half>(p); }

DGATE_KERNEL(hold_stream_i64, HoldParams, 32) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    const unsigned long long t0 = dgate_now_ns();
    while (dgate_now_ns() - t0 < (unsigned long long)p.ns) {
    }
}
