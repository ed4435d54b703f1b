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
// One block per batch slot (grid = largest batch; slots >= *count return). Threads
// stride over channels to pool (NHWC: a warp reads contiguous channels of a pixel)
// into shared memory; then warp w computes classes w, w + 8, ... with a shuffle
// reduction; thread 0 decides. Dynamic shared memory: (C + classes) floats.
#include "common.cuh"

#define GAP_THREADS 256

template <typename T>
__device__ __forceinline__ void gap_linear(const GapLinearParams& p) {
    DGATE_DYNAMIC_SHARED(float, sm);
    float* feat = sm;
    float* scores = sm + p.C;
    const int slot = blockIdx.x;
    if (slot >= *p.count) return;
    const T* in = (const T*)p.in;
    const size_t base = (size_t)slot * p.HW;
    const float inv = 1.0f / (float)p.HW;
    for (int c = threadIdx.x; c < p.C; c += GAP_THREADS) {
        float sum = 0.0f;
        for (int i = 0; i < p.HW; ++i) {
            const float v = to_f32(in[(base + i) * p.in_stride + p.in_off + c]);
            sum += pre_act(v, p.pre_scale, p.pre_shift, p.pre_relu, c);
        }
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
