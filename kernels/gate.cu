// gate.cu: global average pool + linear, for decision gates and the classifier head.
//
//   gate_fused_{f32,f16}: pools the gate's input view, scores s = W x + b, takes the
//       arg-max (ties to the lowest index) and the confidence (rule 0, hinge: max score;
//       rule 1, ce: max softmax probability = 1 / sum_j exp(s_j - max)), compares it with
//       the threshold, and writes keep[slot]. An exiting sample's class, confidence,
//       exit index and scores are written at its input position (idx[slot]) at once,
//       so results need no later scatter. One launch per gate.
//   head_gap_{f32,f16}: the same with the optional pre-activation, no threshold: every
//       live sample gets class = arg-max logit, score = max logit, exit = -1.
//
// One block per batch slot (grid = largest batch; slots >= *count return). Pooling:
// thread (u, g) sums channel unit u (`vec` consecutive channels: 8 f16 or 4 f32 in one
// 16-byte load where the view is aligned, else 1) over pixels g, g + groups, ...; the
// `groups` partial sums per channel meet in shared memory. The host picks `groups` so
// that units x groups fills the block: a 32x32 map at batch 1 is read by the whole
// block, not by one thread per channel. Then warp w computes classes w, w + 16, ...
// with a shuffle reduction, and thread 0 decides.
// Dynamic shared memory: (C + classes + groups x C) floats.
#include "common.cuh"

#define GAP_THREADS 512

// Thread (u, g)'s part of the pool: channel unit u (VEC channels) summed over pixels
// g, g + groups, ... into part[g][c]. Four pixels' loads are issued before their sums
// (in the same order as one at a time, so the result is the same to the bit), so that
// each thread keeps several 16-byte loads in flight.
template <typename T, int VEC>
__device__ __forceinline__ void pool_units(const GapLinearParams& p, float* part) {
    const T* in = (const T*)p.in;
    const int slot = blockIdx.x;
    const int units = p.C / VEC;
    const size_t step = (size_t)p.groups * p.in_stride;
    for (int e = threadIdx.x; e < units * p.groups; e += GAP_THREADS) {
        const int u = e % units;
        const int grp = e / units;
        const int c0 = u * VEC;
        const T* src = in + ((size_t)slot * p.HW + grp) * p.in_stride + p.in_off + c0;
        float acc[VEC];
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc[j] = 0.0f;
        int i = grp;
        for (; i + 3 * p.groups < p.HW; i += 4 * p.groups) {
            float v[4][VEC];
#pragma unroll
            for (int q = 0; q < 4; ++q) load_vec<T, VEC>(src + q * step, v[q]);
            src += 4 * step;
#pragma unroll
            for (int q = 0; q < 4; ++q)
#pragma unroll
                for (int j = 0; j < VEC; ++j)
                    acc[j] += pre_act(v[q][j], p.pre_scale, p.pre_shift, p.pre_relu, c0 + j);
        }
        for (; i < p.HW; i += p.groups) {
            float v[VEC];
            load_vec<T, VEC>(src, v);
            src += step;
#pragma unroll
            for (int j = 0; j < VEC; ++j) acc[j] += pre_act(v[j], p.pre_scale, p.pre_shift, p.pre_relu, c0 + j);
        }
#pragma unroll
        for (int j = 0; j < VEC; ++j) part[grp * p.C + c0 + j] = acc[j];
    }
}

template <typename T>
__device__ __forceinline__ void gap_linear(const GapLinearParams& p) {
    DGATE_DYNAMIC_SHARED(float, sm);
    float* feat = sm;
    float* scores = sm + p.C;
    float* part = sm + p.C + p.classes;  // [groups][C]
    const int slot = blockIdx.x;
    if (slot >= *p.count) return;
    const float inv = 1.0f / (float)p.HW;
    if (p.vec * (int)sizeof(T) == 16) {
        pool_units<T, 16 / sizeof(T)>(p, part);
    } else {
        pool_units<T, 1>(p, part);
    }
    __syncthreads();
    for (int c = threadIdx.x; c < p.C; c += GAP_THREADS) {
        float sum = 0.0f;
        for (int grp = 0; grp < p.groups; ++grp) sum += part[grp * p.C + c];
        feat[c] = sum * inv;
    }
    __syncthreads();
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    for (int j = warp; j < p.classes; j += GAP_THREADS / 32) {
        const float* wj = p.weight + (size_t)j * p.C;
        float dot = 0.0f;
        for (int c = lane; c < p.C; c += 32) dot = fmaf(wj[c], feat[c], dot);
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (lane == 0) scores[j] = dot + p.bias[j];
    }
    __syncthreads();
    if (threadIdx.x != 0) return;
    int best = 0;
    for (int j = 1; j < p.classes; ++j)
        if (scores[j] > scores[best]) best = j;
    const float m = scores[best];
    float conf = m;
    if (p.rule == 1) {
        float z = 0.0f;
        for (int j = 0; j < p.classes; ++j) z += expf(scores[j] - m);
        conf = 1.0f / z;
    }
    bool leave = true;
    if (p.is_gate) {
        leave = conf >= p.threshold;
        p.keep[slot] = leave ? 0 : 1;
    }
    if (!leave) return;
    const int dst = p.idx[slot];
    p.out_class[dst] = best;
    p.out_exit[dst] = p.exit_id;
    p.out_score[dst] = conf;
    for (int j = 0; j < p.classes; ++j) p.out_logits[(size_t)dst * p.classes + j] = scores[j];
}

DGATE_KERNEL(gate_fused_f32, GapLinearParams, GAP_THREADS) { gap_linear<float>(p); }
DGATE_KERNEL(gate_fused_f16, GapLinearParams, GAP_THREADS) { gap_linear<__half>(p); }
DGATE_KERNEL(head_gap_f32, GapLinearParams, GAP_THREADS) { gap_linear<float>(p); }
DGATE_KERNEL(head_gap_f16, GapLinearParams, GAP_THREADS) { gap_linear<__half>(p); }
