// pool.cu: the two parameter-free spatial ops of the plan.
//
//   shortcut_a_{f32,f16}: He et al.'s option-A shortcut. out[s][y][x][c + pad_before]
//       = in[s][stride*y][stride*x][c]; every other output channel is zero.
//   avgpool2_{f32,f16}: 2x2 average pool, stride 2 (floor), of pre(input), where pre
//       is the optional per-channel relu?(x*scale+shift) (DenseNet transitions).
//
// Both: one thread per output element (sample, y, x, channel), channel fastest, so a
// warp reads and writes contiguous NHWC channels. Grid sized for the largest batch;
// threads of samples past `*count` return at once. Memory bound.
#include "common.cuh"

#define POOL_THREADS 256

template <typename T>
__device__ __forceinline__ void shortcut_a(const ShortcutParams& p) {
    const int per_sample = p.P * p.Q * p.K;
    const long long e = (long long)blockIdx.x * POOL_THREADS + threadIdx.x;
    if (e >= (long long)*p.count * per_sample) return;
    const int k = (int)(e % p.K);
    const long long pix = e / p.K;  // sample * P * Q + y * Q + x
    const int pq = p.P * p.Q;
    const int s = (int)(pix / pq);
    const int rem = (int)(pix - (long long)s * pq);
    const int y = rem / p.Q;
    const int x = rem - y * p.Q;
    const int c = k - p.pad_before;
    float v = 0.0f;
    if (c >= 0 && c < p.C) {
        const size_t src = ((size_t)s * p.H * p.W + (size_t)(y * p.stride) * p.W + x * p.stride) * p.in_stride;
        v = to_f32(((const T*)p.in)[src + p.in_off + c]);
    }
    ((T*)p.out)[(size_t)pix * p.out_stride + p.out_off + k] = from_f32<T>(v);
}

template <typename T>
__device__ __forceinline__ void avgpool2(const PoolParams& p) {
    const int per_sample = p.P * p.Q * p.C;
    const long long e = (long long)blockIdx.x * POOL_THREADS + threadIdx.x;
    if (e >= (long long)*p.count * per_sample) return;
    const int c = (int)(e % p.C);
    const long long pix = e / p.C;
    const int pq = p.P * p.Q;
    const int s = (int)(pix / pq);
    const int rem = (int)(pix - (long long)s * pq);
    const int y = rem / p.Q;
    const int x = rem - y * p.Q;
    const T* in = (const T*)p.in;
    float sum = 0.0f;
#pragma unroll
    for (int dy = 0; dy < 2; ++dy)
#pragma unroll
        for (int dx = 0; dx < 2; ++dx) {
            const size_t src = ((size_t)s * p.H * p.W + (size_t)(2 * y + dy) * p.W + 2 * x + dx) * p.in_stride;
            sum += pre_act(to_f32(in[src + p.in_off + c]), p.pre_scale, p.pre_shift, p.pre_relu, c);
        }
    ((T*)p.out)[(size_t)pix * p.out_stride + p.out_off + c] = from_f32<T>(sum * 0.25f);
}

DGATE_KERNEL(shortcut_a_f32, ShortcutParams, POOL_THREADS) { shortcut_a<float>(p); }
DGATE_KERNEL(shortcut_a_f16, ShortcutParams, POOL_THREADS) { shortcut_a<__half>(p); }
DGATE_KERNEL(avgpool2_pre_f32, PoolParams, POOL_THREADS) { avgpool2<float>(p); }
DGATE_KERNEL(avgpool2_pre_f16, PoolParams, POOL_THREADS) { avgpool2<__half>(p); }
