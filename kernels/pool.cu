// pool.cu: the two parameter-free spatial ops of the plan.
//
//   shortcut_a_{f32,f16}: He et al.'s option-A shortcut. out[s][y][x][c + pad_before]
//       = in[s][stride*y][stride*x][c]; every other output channel is zero.
//   avgpool2_{f32,f16}: 2x2 average pool, stride 2 (floor), of pre(input), where pre
//       is the optional per-channel relu?(x*scale+shift) (DenseNet transitions).
//
// Both: grid (chunk of one sample's outputs, sample). A thread decodes its place within
// a sample once, in 32-bit arithmetic, and walks samples blockIdx.y, + gridDim.y, ...
// below `*count` (one thread per element with 64-bit division had made avgpool2 run at a
// quarter of the H200's bandwidth). Channel fastest, so a warp reads and writes
// contiguous NHWC channels. avgpool2 moves `vec` channels a thread (16 bytes where both
// views allow it). Memory bound.
#include "common.cuh"

#define POOL_THREADS 256

template <typename T>
__device__ __forceinline__ void shortcut_a(const ShortcutParams& p) {
    const int pq = p.P * p.Q;
    const int e = blockIdx.x * POOL_THREADS + threadIdx.x;
    if (e >= pq * p.K) return;
    const int k = e % p.K;
    const int pix = e / p.K;  // y * Q + x
    const int y = pix / p.Q;
    const int x = pix - y * p.Q;
    const int c = k - p.pad_before;
    const int count = *p.count;
    for (int s = blockIdx.y; s < count; s += gridDim.y) {
        float v = 0.0f;
        if (c >= 0 && c < p.C) {
            const size_t src = ((size_t)s * p.H * p.W + (size_t)(y * p.stride) * p.W + x * p.stride) * p.in_stride;
            v = to_f32(((const T*)p.in)[src + p.in_off + c]);
        }
        ((T*)p.out)[((size_t)s * pq + pix) * p.out_stride + p.out_off + k] = from_f32<T>(v);
    }
}

template <typename T, int VEC>
__device__ __forceinline__ void avgpool2_units(const PoolParams& p) {
    const int pq = p.P * p.Q;
    const int per_pixel = p.C / VEC;
    const int e = blockIdx.x * POOL_THREADS + threadIdx.x;
    if (e >= pq * per_pixel) return;
    const int c = (e % per_pixel) * VEC;
    const int pix = e / per_pixel;  // y * Q + x
    const int y = pix / p.Q;
    const int x = pix - y * p.Q;
    const T* in = (const T*)p.in;
    const int count = *p.count;
    for (int s = blockIdx.y; s < count; s += gridDim.y) {
        // The four taps' loads first, then their sums (in the order of one at a time).
        float v[4][VEC];
#pragma unroll
        for (int t = 0; t < 4; ++t) {
            const int dy = t / 2, dx = t % 2;
            const size_t src = ((size_t)s * p.H * p.W + (size_t)(2 * y + dy) * p.W + 2 * x + dx) * p.in_stride;
            load_vec<T, VEC>(in + src + p.in_off + c, v[t]);
        }
        float sum[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
            sum[j] = 0.0f;
#pragma unroll
            for (int t = 0; t < 4; ++t) sum[j] += pre_act(v[t][j], p.pre_scale, p.pre_shift, p.pre_relu, c + j);
            sum[j] *= 0.25f;
        }
        store_vec<T, VEC>((T*)p.out + ((size_t)s * pq + pix) * p.out_stride + p.out_off + c, sum);
    }
}

template <typename T>
__device__ __forceinline__ void avgpool2(const PoolParams& p) {
    if (p.vec * (int)sizeof(T) == 16) {
        avgpool2_units<T, 16 / sizeof(T)>(p);
    } else {
        avgpool2_units<T, 1>(p);
    }
}

DGATE_KERNEL(shortcut_a_f32, ShortcutParams, POOL_THREADS) { shortcut_a<float>(p); }
DGATE_KERNEL(shortcut_a_f16, ShortcutParams, POOL_THREADS) { shortcut_a<__half>(p); }
DGATE_KERNEL(avgpool2_pre_f32, PoolParams, POOL_THREADS) { avgpool2<float>(p); }
DGATE_KERNEL(avgpool2_pre_f16, PoolParams, POOL_THREADS) { avgpool2<__half>(p); }
