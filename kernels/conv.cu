// conv.cu: 2-D convolution as an implicit GEMM, with a fused epilogue.
//
// GEMM view (as in CUTLASS): M = live samples * P * Q output pixels, N = K output
// channels, reduction K = R * R * C, ordered (r, s, c) so that consecutive reduction
// indices are consecutive channels of one NHWC pixel (coalesced loads). The A tile
// (pixels x reduction) is gathered from the input view on the fly: each row's
// (sample, y0, x0) and each column's (r, s, c) are decoded once per tile into shared
// tables. The optional pre-activation `relu?(x*scale[c]+shift[c])` is applied as A is
// loaded, and zero padding after it (PyTorch's order). B is the weight, repacked on
// the host to [R*R*C][ldw] with output channels contiguous. Epilogue:
// `out = relu?(acc + bias[k] + residual)`, written into the output view.
//
// Variants:
//   conv_simt_{f32,f16}: 64x64x16 tile, 256 threads, each thread a 4x4 block of
//       outputs in f32 registers. f16 loads half and converts. Split-K as below.
//   conv_mma_f16: 64x64x32 tile, 128 threads = 4 warps in 2x2, each warp 32x32 as
//       2x4 tensor-core mma.sync m16n8k16 tiles (f16 inputs, f32 accumulation), issued
//       as inline PTX so that no CUDA header beyond cuda_fp16.h is needed (the NVRTC
//       wheels lack mma.h's crt/ part). Operands staged in shared memory as f16 bits,
//       A as [pixel][k], B as [out channel][k] (both k-contiguous, as the fragments
//       want pairs of consecutive k); the epilogue writes from the accumulators.
//   conv_mmavec_f16: the same warp tile, 128x64x32 block tile, 256 threads = 4x2 warps,
//       for aligned layers only (C, K, the input view's offset and pixel stride all
//       multiples of 8; output and residual offsets/strides even): operands move as
//       16-byte chunks of 8 channels, B is packed [K][R*R*C] (k-contiguous, the shape
//       the fragments want), and the next k-tile is fetched into registers while the
//       current one is multiplied (two shared buffers, one barrier per k-tile).
//       Split-K: blockIdx.z takes a contiguous range of k-tiles (conv_k_range) and, when split,
//       atomically adds its partial sums to an f32 workspace [M][K]; the last block of
//       each output tile to finish (a ticket per tile) applies bias/residual/ReLU,
//       writes the output and zeroes the workspace for the next layer (splitk_finish;
//       every kernel with split-K ends so). Used where the output is too small to fill
//       the GPU (batch 1, 4x4 and 8x8 maps, the few samples left after a gate).
//   conv_mmaasync_f16: for aligned layers without pre-activation and K >= 128: a
//       128x128x32 block tile, 256 threads = 2x4 warps of 64x32 (4x4 MMAs per k-step),
//       operands copied global -> shared by cp.async (no register staging; out-of-range
//       chunks zero-filled by the copy itself), two stages: the copy of k-tile i+1 is in
//       flight while tile i is multiplied. Same B packing and split-K as conv_mmavec.
//   conv_tc<BM>x<BN>_f16 (128x128, 128x64, 64x64, 128x32, 64x32): the successor of
//       conv_mmaasync for every aligned layer, pre-activation included: a 4-deep
//       cp.async ring in dynamic shared memory, ldmatrix fragment loads, one barrier per
//       k-tile; tile sizes for wide and narrow layers and small batches (see below).
//   conv_tc128x128pr_f16, conv_tcc128x128pr_f16, conv_tc64x64pr_f16: conv_tc (chained
//       for tcc) with a pre-activated 1x1's BN and ReLU applied to the A fragments in
//       registers, so that its k-tiles keep one barrier each (see tc_pre_fragments).
//   conv_tc<BM>x<BN>cl<CL>_f16 (64x64 cl4/cl8, 128x32 cl8, 128x128 cl4; sm_90): conv_tc
//       split CL ways over a thread-block cluster, the parts summed through distributed
//       shared memory instead of the workspace (see cluster_reduce_store).
//   conv_dense_cl8_f16 (sm_90): a whole DenseNet layer, the pre-activated 1x1 into the
//       bottleneck and the 3x3 after it, in one launch over a cluster of 8 blocks, the
//       bottleneck passed in distributed shared memory (see conv_dense).
//   conv_sgemm<BM>x<BN>_f32 (128x128, 128x64, 64x64, 128x32, 64x32): register-blocked
//       f32 (8x8, 8x4 or 4x4 outputs per thread), double-buffered shared memory, no
//       division in the inner loop (see below).
//   The host picks the tile and split-K per layer and batch size (convsel.rs, exec.rs).
// All variants handle any H, W, stride, padding; the first three any C and K (every
// load and store is bounds checked). Blocks whose first pixel belongs to a sample past
// `*count` return at once.
#include "common.cuh"

#define SIMT_BM 64
#define SIMT_BN 64
#define SIMT_BK 16
#define SIMT_THREADS 256

#define VEC_BM 128
#define VEC_BN 64
#define VEC_BK 32
#define VEC_THREADS 256

#define ASY_BM 128
#define ASY_BN 128
#define ASY_BK 32
#define ASY_THREADS 256

#define MMA_BM 64
#define MMA_BN 64
#define MMA_BK 32
#define MMA_THREADS 128

// This block's k-tiles [kt0, kt1), whether it adds into the workspace (split-K), and
// how many blocks (`parts`, the non-empty ranges) add into each of the `tiles` output
// tiles. The host plans gridDim.z splits for the samples it expects to be live after
// the gates (exec.rs); when more are live than the workspace or the tickets hold
// (M * K > ws_cap, tiles > n_tickets), the split is undone here: block z = 0 takes
// every k-tile and writes the output, the rest return. False: nothing for this block.
__device__ __forceinline__ bool conv_k_range(const ConvParams& p, int M, int ktiles, int tiles, int* kt0, int* kt1,
                                             bool* split, int* parts) {
    int splits = (int)gridDim.z;
    if (splits > 1 && ((long long)M * p.K > (long long)p.ws_cap || tiles > p.n_tickets)) {
        if (blockIdx.z != 0) return false;
        splits = 1;
    }
    const int per = (ktiles + splits - 1) / splits;
    *kt0 = (int)blockIdx.z * per;
    *kt1 = min(ktiles, *kt0 + per);
    *split = splits > 1;
    *parts = (ktiles + per - 1) / per;
    return *kt0 < *kt1;
}

// Decodes output pixel `m` into the input pixel base of its sample and the top-left
// input coordinate of its receptive field; base = -1 marks a row past the batch.
__device__ __forceinline__ void conv_row_info(const ConvParams& p, int m, int M, int* base, int* y0, int* x0) {
    if (m >= M) {
        *base = -1;
        *y0 = 0;
        *x0 = 0;
        return;
    }
    const int pq = p.P * p.Q;
    const int n = m / pq;
    const int rem = m - n * pq;
    const int pp = rem / p.Q;
    const int q = rem - pp * p.Q;
    *base = n * p.H * p.W;
    *y0 = pp * p.stride - p.pad;
    *x0 = q * p.stride - p.pad;
}

// Decodes reduction index `kd` into (r, s, c); c = -1 marks a column past K.
__device__ __forceinline__ void conv_k_info(const ConvParams& p, int kd, int Kd, int* c, int* r, int* s) {
    if (kd >= Kd) {
        *c = -1;
        *r = 0;
        *s = 0;
        return;
    }
    const int rs = kd / p.C;
    *c = kd - rs * p.C;
    *r = rs / p.R;
    *s = rs - *r * p.R;
}

template <typename T>
__device__ __forceinline__ float conv_load_a(const ConvParams& p, const T* in, int base, int y0, int x0, int c, int r,
                                             int s) {
    if (base < 0 || c < 0) return 0.0f;
    const int y = y0 + r;
    const int x = x0 + s;
    if (y < 0 || y >= p.H || x < 0 || x >= p.W) return 0.0f;
    const float v = to_f32(in[(size_t)(base + y * p.W + x) * p.in_stride + p.in_off + c]);
    return pre_act(v, p.pre_scale, p.pre_shift, p.pre_relu, c);
}

template <typename T>
__device__ __forceinline__ void conv_store(const ConvParams& p, int m, int k, float v) {
    v += p.bias[k];
    if (p.residual != nullptr) {
        v += to_f32(((const T*)p.residual)[(size_t)m * p.res_stride + p.res_off + k]);
    }
    if (p.relu) v = fmaxf(v, 0.0f);
    ((T*)p.out)[(size_t)m * p.out_stride + p.out_off + k] = from_f32<T>(v);
}

// 16-byte load/store (8 halves); the emulator checks the alignment the GPU requires.
__device__ __forceinline__ uint4 ld128(const void* p) {
#ifdef DGATE_HOST_EMU
    emu_check_align(p, 16);
#endif
    return *(const uint4*)p;
}
__device__ __forceinline__ void st128(void* p, uint4 v) {
#ifdef DGATE_HOST_EMU
    emu_check_align(p, 16);
#endif
    *(uint4*)p = v;
}

// Whether split-K's end can move eight channels at a time: the output, the residual and
// the workspace rows all in aligned groups of eight channels (every layer of ResNet and
// DenseNet).
__device__ __forceinline__ bool splitk_vec8(const ConvParams& p) {
    return p.K % 8 == 0 && p.out_stride % 8 == 0 && p.out_off % 8 == 0 &&
           (p.residual == nullptr || (p.res_stride % 8 == 0 && p.res_off % 8 == 0));
}

// The last part's read-back of a split tile (rows m0.., channels n0.., BM x BN), eight
// channels a unit: two 16-byte workspace reads and the residual's eight channels, all
// issued before any is used, then the workspace zeroed and the outputs (bias, residual,
// ReLU) written with 16-byte stores. The scalar loop it replaces waited on each
// workspace read before the next element's (a store to the workspace came between):
// 32 to 64 round trips in a row for a 64x64 or 128x64 tile, where batch 1 and the
// layers after a gate split up to 16 ways. One unit in flight a thread: two made ptxas
// spill in the tiles held to 128 registers.
template <typename T, int BM, int BN>
__device__ __forceinline__ void splitk_readback_vec8(const ConvParams& p, int M, int m0, int n0, int me, int count) {
    constexpr int VEC = 16 / sizeof(T);  // channels per 16-byte access of T
    for (int u = me; u < BM * BN / 8; u += count) {
        const int m = m0 + u / (BN / 8);
        const int k = n0 + u % (BN / 8) * 8;
        if (m >= M || k >= p.K) continue;  // K is a multiple of 8: a unit is whole or absent
        float4* ws = reinterpret_cast<float4*>(p.workspace + (size_t)m * p.K + k);
        const float4 s0 = __ldcg(ws);
        const float4 s1 = __ldcg(ws + 1);
        float r[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        if (p.residual != nullptr) {
            const T* res = (const T*)p.residual + (size_t)m * p.res_stride + p.res_off + k;
#pragma unroll
            for (int h = 0; h < 8; h += VEC) load_vec<T, VEC>(res + h, r + h);
        }
        const float4 zero = {0.0f, 0.0f, 0.0f, 0.0f};
        __stcg(ws, zero);
        __stcg(ws + 1, zero);
        float v[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
        for (int h = 0; h < 8; ++h) {
            v[h] += p.bias[k + h] + r[h];
            if (p.relu) v[h] = fmaxf(v[h], 0.0f);
        }
        T* out = (T*)p.out + (size_t)m * p.out_stride + p.out_off + k;
#pragma unroll
        for (int h = 0; h < 8; h += VEC) store_vec<T, VEC>(out + h, v + h);
    }
}

// Split-K's end, in the convolution kernel itself (no second launch): once a block has
// added its partial sums of output tile `tile` (rows m0.., channels n0.., BM x BN) into
// the workspace, it takes the tile's ticket; the last of its `parts` blocks to arrive
// reads the sums back, writes the outputs (bias, residual, ReLU) and leaves the
// workspace and the ticket zero for the next layer. The fences order the atomics
// before the ticket and the ticket before the reads (which bypass L1).
// The block's threads `first` .. `first + count - 1` take part, and `sync` is their
// barrier (__syncthreads, or a named barrier where other warps go their own way).
template <typename T, int BM, int BN, typename Sync>
__device__ __forceinline__ void splitk_finish_by(const ConvParams& p, int M, int m0, int n0, int parts, int tile,
                                                 int first, int count, Sync sync) {
    __shared__ int last;
    const int me = (int)threadIdx.x - first;
    __threadfence();
    sync();
    if (me == 0) last = atomicAdd(p.tickets + tile, 1) == parts - 1;
    sync();
    const bool mine = last;
    sync();  // every thread has read `last` before the next tile's ticket overwrites it
    if (!mine) return;
    __threadfence();
    // Not in conv_sgemm128x128_f32, where it made ptxas spill.
    if ((sizeof(T) == 2 || BM * BN < 128 * 128) && BN % 8 == 0 && splitk_vec8(p)) {
        splitk_readback_vec8<T, BM, BN>(p, M, m0, n0, me, count);
    } else {
        for (int e = me; e < BM * BN; e += count) {
            const int m = m0 + e / BN;
            const int k = n0 + e % BN;
            if (m >= M || k >= p.K) continue;
            float* ws = p.workspace + (size_t)m * p.K + k;
            const float v = __ldcg(ws);
            __stcg(ws, 0.0f);
            conv_store<T>(p, m, k, v);
        }
    }
    if (me == 0) p.tickets[tile] = 0;
}

template <typename T, int BM, int BN>
__device__ __forceinline__ void splitk_finish(const ConvParams& p, int M, int m0, int n0, int parts, int tile) {
    splitk_finish_by<T, BM, BN>(p, M, m0, n0, parts, tile, 0, (int)blockDim.x, [] { __syncthreads(); });
}

template <typename T>
__device__ __forceinline__ void conv_simt(const ConvParams& p) {
    __shared__ float As[SIMT_BK][SIMT_BM + 4];
    __shared__ float Bs[SIMT_BK][SIMT_BN + 4];
    __shared__ int rbase[SIMT_BM], ry0[SIMT_BM], rx0[SIMT_BM];
    __shared__ int kc[SIMT_BK], kr[SIMT_BK], ks[SIMT_BK];

    const int M = *p.count * p.P * p.Q;
    const int m0 = blockIdx.x * SIMT_BM;
    if (m0 >= M) return;
    const int n0 = blockIdx.y * SIMT_BN;
    const int Kd = p.R * p.R * p.C;
    const int ktiles = (Kd + SIMT_BK - 1) / SIMT_BK;
    const int tiles = (int)(gridDim.x * gridDim.y);
    const int tile = (int)(blockIdx.y * gridDim.x + blockIdx.x);
    int kt0, kt1, parts;
    bool split;
    if (!conv_k_range(p, M, ktiles, tiles, &kt0, &kt1, &split, &parts)) return;
    const int tid = threadIdx.x;
    const T* in = (const T*)p.in;
    const T* w = (const T*)p.weight;

    if (tid < SIMT_BM) conv_row_info(p, m0 + tid, M, &rbase[tid], &ry0[tid], &rx0[tid]);

    const int ty = tid / 16;
    const int tx = tid % 16;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    for (int kt = kt0; kt < kt1; ++kt) {
        const int k0 = kt * SIMT_BK;
        if (tid < SIMT_BK) conv_k_info(p, k0 + tid, Kd, &kc[tid], &kr[tid], &ks[tid]);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < SIMT_BM * SIMT_BK / SIMT_THREADS; ++i) {
            const int e = tid + i * SIMT_THREADS;
            const int row = e / SIMT_BK;
            const int col = e % SIMT_BK;
            As[col][row] = conv_load_a(p, in, rbase[row], ry0[row], rx0[row], kc[col], kr[col], ks[col]);
        }
#pragma unroll
        for (int i = 0; i < SIMT_BK * SIMT_BN / SIMT_THREADS; ++i) {
            const int e = tid + i * SIMT_THREADS;
            const int row = e / SIMT_BN;
            const int col = e % SIMT_BN;
            const int kd = k0 + row;
            const int k = n0 + col;
            Bs[row][col] = (kd < Kd && k < p.K) ? to_f32(w[(size_t)kd * p.ldw + k]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < SIMT_BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int m = m0 + ty * 4 + i;
        if (m >= M) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int k = n0 + tx * 4 + j;
            if (k >= p.K) continue;
            if (split) {
                atomicAdd(p.workspace + (size_t)m * p.K + k, acc[i][j]);
            } else {
                conv_store<T>(p, m, k, acc[i][j]);
            }
        }
    }
    if (split) splitk_finish<T, SIMT_BM, SIMT_BN>(p, M, m0, n0, parts, tile);
}

// One m16n8k16 tensor-core MMA, f16 inputs, f32 accumulators (PTX ISA fragment
// layout: g = lane / 4, t = lane % 4; A regs hold rows g / g+8, cols 2t.. and 2t+8..;
// B regs hold k = 2t.. and 2t+8.. of column g; D holds (g, 2t..2t+1), (g+8, 2t..2t+1)).
__device__ __forceinline__ void mma_16816(float* d, const unsigned* a, const unsigned* b) {
#ifdef DGATE_HOST_EMU
    emu_mma_16816(d, a, b);
#else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// acc += a x b over a warp's MT x NT m16n8k16 tiles.
template <int MT, int NT>
__device__ __forceinline__ void mma_tiles(float (*acc)[NT][4], const unsigned (*a)[4], const unsigned (*b)[2]) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int nt = 0; nt < NT; ++nt) mma_16816(acc[mt][nt], a[mt], b[nt]);
}

// A warp's MT x NT m16n8 accumulator tiles, zeroed.
template <int MT, int NT>
__device__ __forceinline__ void zero_acc(float (*acc)[NT][4]) {
#pragma unroll
    for (int i = 0; i < MT; ++i)
#pragma unroll
        for (int j = 0; j < NT; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;
}

__device__ __forceinline__ unsigned ld_pair(const unsigned short* p) {
#ifdef DGATE_HOST_EMU
    emu_check_align(p, 4);
#endif
    return *(const unsigned*)p;
}


__device__ __forceinline__ void conv_mma(const ConvParams& p) {
    // Rows padded by 8 halves (16 bytes): the fragment loads of a warp (8 rows x 4
    // words) then hit 32 distinct banks.
    constexpr int LDS = MMA_BK + 8;
    __shared__ __align__(16) unsigned short As[MMA_BM * LDS];  // [pixel][k], f16 bits
    __shared__ __align__(16) unsigned short Bs[MMA_BN * LDS];  // [out channel][k]
    __shared__ int rbase[MMA_BM], ry0[MMA_BM], rx0[MMA_BM];
    __shared__ int kc[MMA_BK], kr[MMA_BK], ks[MMA_BK];

    const int M = *p.count * p.P * p.Q;
    const int m0 = blockIdx.x * MMA_BM;
    if (m0 >= M) return;
    const int n0 = blockIdx.y * MMA_BN;
    const int Kd = p.R * p.R * p.C;
    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int wm = (warp / 2) * 32;
    const int wn = (warp % 2) * 32;
    const __half* in = (const __half*)p.in;
    const unsigned short* w = (const unsigned short*)p.weight;

    if (tid < MMA_BM) conv_row_info(p, m0 + tid, M, &rbase[tid], &ry0[tid], &rx0[tid]);

    float acc[2][4][4];
    zero_acc<2, 4>(acc);

    for (int k0 = 0; k0 < Kd; k0 += MMA_BK) {
        if (tid < MMA_BK) conv_k_info(p, k0 + tid, Kd, &kc[tid], &kr[tid], &ks[tid]);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < MMA_BM * MMA_BK / MMA_THREADS; ++i) {
            const int e = tid + i * MMA_THREADS;
            const int row = e / MMA_BK;
            const int col = e % MMA_BK;
            const float v = conv_load_a(p, in, rbase[row], ry0[row], rx0[row], kc[col], kr[col], ks[col]);
            As[row * LDS + col] = __half_as_ushort(__float2half_rn(v));
        }
#pragma unroll
        for (int i = 0; i < MMA_BK * MMA_BN / MMA_THREADS; ++i) {
            const int e = tid + i * MMA_THREADS;
            const int n = e % MMA_BN;
            const int k = e / MMA_BN;
            const int kd = k0 + k;
            const int oc = n0 + n;
            Bs[n * LDS + k] = (kd < Kd && oc < p.K) ? w[(size_t)kd * p.ldw + oc] : (unsigned short)0;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < MMA_BK; kk += 16) {
            unsigned a[2][4], b[4][2];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const unsigned short* r0 = As + (wm + mt * 16 + g) * LDS + kk + 2 * t;
                a[mt][0] = ld_pair(r0);
                a[mt][1] = ld_pair(r0 + 8 * LDS);
                a[mt][2] = ld_pair(r0 + 8);
                a[mt][3] = ld_pair(r0 + 8 * LDS + 8);
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                const unsigned short* c0 = Bs + (wn + nt * 8 + g) * LDS + kk + 2 * t;
                b[nt][0] = ld_pair(c0);
                b[nt][1] = ld_pair(c0 + 8);
            }
            mma_tiles<2, 4>(acc, a, b);
        }
        __syncthreads();
    }

#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
            const int m = m0 + wm + mt * 16 + g + half * 8;
            if (m >= M) continue;
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                const int k = n0 + wn + nt * 8 + 2 * t;
                if (k < p.K) conv_store<__half>(p, m, k, acc[mt][nt][half * 2]);
                if (k + 1 < p.K) conv_store<__half>(p, m, k + 1, acc[mt][nt][half * 2 + 1]);
            }
        }
    }
}

// 8 consecutive f16 values (16 bytes).
struct Chunk {
    uint4 v;
};

// relu?(x * scale + shift) on the two f16 values of `bits`, with their channels' scale and shift
// (s0, h0) and (s1, h1) in hand.
__device__ __forceinline__ unsigned pre_act_pair_with(unsigned bits, float s0, float h0, float s1, float h1, int relu) {
    float a = fmaf(__half2float(__ushort_as_half((unsigned short)(bits & 0xffffu))), s0, h0);
    float b = fmaf(__half2float(__ushort_as_half((unsigned short)(bits >> 16))), s1, h1);
    if (relu) {
        a = fmaxf(a, 0.0f);
        b = fmaxf(b, 0.0f);
    }
    return (unsigned)__half_as_ushort(__float2half_rn(a)) | ((unsigned)__half_as_ushort(__float2half_rn(b)) << 16);
}


__device__ __forceinline__ void conv_store_pair(const ConvParams& p, int m, int k, float v0, float v1) {
    v0 += p.bias[k];
    v1 += p.bias[k + 1];
    if (p.residual != nullptr) {
        const __half* rp = (const __half*)p.residual + (size_t)m * p.res_stride + p.res_off + k;
#ifdef DGATE_HOST_EMU
        emu_check_align(rp, 4);
#endif
        const unsigned r = *(const unsigned*)rp;
        v0 += __half2float(__ushort_as_half((unsigned short)(r & 0xffffu)));
        v1 += __half2float(__ushort_as_half((unsigned short)(r >> 16)));
    }
    if (p.relu) {
        v0 = fmaxf(v0, 0.0f);
        v1 = fmaxf(v1, 0.0f);
    }
    const unsigned out = (unsigned)__half_as_ushort(__float2half_rn(v0)) |
                         ((unsigned)__half_as_ushort(__float2half_rn(v1)) << 16);
    __half* op = (__half*)p.out + (size_t)m * p.out_stride + p.out_off + k;
#ifdef DGATE_HOST_EMU
    emu_check_align(op, 4);
#endif
    *(unsigned*)op = out;
}

// Writes a warp's m16n8 accumulator tiles: to the output through the fused epilogue,
// or (split-K) added into the workspace. (m_base, n_base): the warp tile's origin.
template <int MT, int NT>
__device__ __forceinline__ void mma_epilogue(const ConvParams& p, float (*acc)[NT][4], int m_base, int n_base, int M,
                                             int g, int t, bool split) {
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const int m = m_base + mt * 16 + g + hf * 8;
            if (m >= M) continue;
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                const int k = n_base + nt * 8 + 2 * t;
                if (k >= p.K) continue;  // K is a multiple of 8, so k + 1 < K too
                const float v0 = acc[mt][nt][hf * 2];
                const float v1 = acc[mt][nt][hf * 2 + 1];
                if (split) {
                    atomicAdd(p.workspace + (size_t)m * p.K + k, v0);
                    atomicAdd(p.workspace + (size_t)m * p.K + k + 1, v1);
                } else {
                    conv_store_pair(p, m, k, v0, v1);
                }
            }
        }
    }
}

// Address of `p` in the shared window, for PTX that takes one (the emulator: its offset
// in dynamic shared memory, where every wgmma operand lives).
__device__ __forceinline__ unsigned smem_u32(const void* p) {
#ifdef DGATE_HOST_EMU
    return emu_smem_addr(p);
#else
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;\n" : "=l"(a) : "l"(p));
    return (unsigned)a;
#endif
}

// 16-byte global -> shared copy that bypasses registers (sm_80+); `valid == false`
// zero-fills the destination without reading the source.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#ifdef DGATE_HOST_EMU
    emu_cp_async16(smem, gmem, valid);
#else
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem)), "l"(gmem),
                 "r"(valid ? 16 : 0));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#ifdef DGATE_HOST_EMU
    emu_cp_async_commit();
#else
    asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most `N` committed groups of this thread are still in flight. The
// "memory" clobber keeps the compiler from moving shared-memory reads above it
// (conv_tc's pre-activation reads its landed chunks with no barrier in between).
template <int N>
__device__ __forceinline__ void cp_async_wait() {
#ifdef DGATE_HOST_EMU
    emu_cp_async_wait(N);
#else
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

__device__ __forceinline__ void conv_mmavec(const ConvParams& p) {
    constexpr int LDS = VEC_BK + 8;  // 80-byte rows: 16-byte aligned, conflict-free fragments
    __shared__ __align__(16) unsigned short As[2][VEC_BM * LDS];
    __shared__ __align__(16) unsigned short Bs[2][VEC_BN * LDS];
    __shared__ int rbase[VEC_BM], ry0[VEC_BM], rx0[VEC_BM];
    // Pre-activation of each buffer's k-tile: scale and shift of the 8 channels of each
    // chunk column (see fetch).
    __shared__ __align__(16) float pre_s[2][4][16];

    const int M = *p.count * p.P * p.Q;
    const int m0 = blockIdx.x * VEC_BM;
    if (m0 >= M) return;
    const int n0 = blockIdx.y * VEC_BN;
    const int Kd = p.R * p.R * p.C;
    const int ktiles = (Kd + VEC_BK - 1) / VEC_BK;
    const int tiles = (int)(gridDim.x * gridDim.y);
    const int tile = (int)(blockIdx.y * gridDim.x + blockIdx.x);
    int kt0, kt1, parts;
    bool split;
    if (!conv_k_range(p, M, ktiles, tiles, &kt0, &kt1, &split, &parts)) return;

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int wm = (warp / 2) * 32;
    const int wn = (warp % 2) * 32;
    const __half* in = (const __half*)p.in;
    const __half* w = (const __half*)p.weight;

    if (tid < VEC_BM) conv_row_info(p, m0 + tid, M, &rbase[tid], &ry0[tid], &rx0[tid]);
    __syncthreads();

    // This thread's chunks: A rows ra and ra + 64, B row (output channel) rb, all at
    // chunk column kc of the k-tile.
    const int kc = tid % 4;
    const int ra = tid / 4;
    const int rb = tid / 4;
    Chunk a_reg[2], b_reg;
    const bool pre = p.pre_scale != nullptr;
    bool a_ok[2];

    // The next k-tile's chunks into registers, in flight during the MMAs of this one.
    // The pre-activation is applied when they are stashed, after the MMAs; its scale and
    // shift come by cp.async into pre_s[buf] (the first thread of each chunk column),
    // so that neither the loads nor those round trips stand between a tile and its MMAs.
    auto fetch = [&](int kt, int buf) {
        const int kd = kt * VEC_BK + kc * 8;
        int c = -1, r = 0, s = 0;
        conv_k_info(p, kd, Kd, &c, &r, &s);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int row = ra + i * 64;
            a_reg[i].v = make_uint4(0u, 0u, 0u, 0u);
            const int base = rbase[row];
            const int y = ry0[row] + r;
            const int x = rx0[row] + s;
            a_ok[i] = base >= 0 && c >= 0 && y >= 0 && y < p.H && x >= 0 && x < p.W;
            if (a_ok[i]) a_reg[i].v = ld128(in + (size_t)(base + y * p.W + x) * p.in_stride + p.in_off + c);
        }
        if (pre && tid < 4 && c >= 0) {
            cp_async16(&pre_s[buf][kc][0], p.pre_scale + c, true);
            cp_async16(&pre_s[buf][kc][4], p.pre_scale + c + 4, true);
            cp_async16(&pre_s[buf][kc][8], p.pre_shift + c, true);
            cp_async16(&pre_s[buf][kc][12], p.pre_shift + c + 4, true);
        }
        cp_async_commit();
        const int oc = n0 + rb;
        b_reg.v = make_uint4(0u, 0u, 0u, 0u);
        if (oc < p.K && kd < Kd) b_reg.v = ld128(w + (size_t)oc * p.ldw + kd);
    };
    auto stash = [&](int buf) {
        if (pre) {
            cp_async_wait<0>();
            __syncthreads();  // pre_s[buf], copied by the first threads, visible to all
            const float* ps = pre_s[buf][kc];
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                if (!a_ok[i]) continue;  // padding stays zero
                uint4& v = a_reg[i].v;
                v.x = pre_act_pair_with(v.x, ps[0], ps[8], ps[1], ps[9], p.pre_relu);
                v.y = pre_act_pair_with(v.y, ps[2], ps[10], ps[3], ps[11], p.pre_relu);
                v.z = pre_act_pair_with(v.z, ps[4], ps[12], ps[5], ps[13], p.pre_relu);
                v.w = pre_act_pair_with(v.w, ps[6], ps[14], ps[7], ps[15], p.pre_relu);
            }
        }
#pragma unroll
        for (int i = 0; i < 2; ++i) st128(&As[buf][(ra + i * 64) * LDS + kc * 8], a_reg[i].v);
        st128(&Bs[buf][rb * LDS + kc * 8], b_reg.v);
    };

    float acc[2][4][4];
    zero_acc<2, 4>(acc);

    fetch(kt0, 0);
    stash(0);
    __syncthreads();
    for (int kt = kt0; kt < kt1; ++kt) {
        const int buf = (kt - kt0) & 1;
        const bool more = kt + 1 < kt1;
        if (more) fetch(kt + 1, buf ^ 1);  // global loads in flight during the MMAs below
        const unsigned short* A = As[buf];
        const unsigned short* B = Bs[buf];
#pragma unroll
        for (int kk = 0; kk < VEC_BK; kk += 16) {
            unsigned a[2][4], b[4][2];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt) {
                const unsigned short* r0 = A + (wm + mt * 16 + g) * LDS + kk + 2 * t;
                a[mt][0] = ld_pair(r0);
                a[mt][1] = ld_pair(r0 + 8 * LDS);
                a[mt][2] = ld_pair(r0 + 8);
                a[mt][3] = ld_pair(r0 + 8 * LDS + 8);
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                const unsigned short* c0 = B + (wn + nt * 8 + g) * LDS + kk + 2 * t;
                b[nt][0] = ld_pair(c0);
                b[nt][1] = ld_pair(c0 + 8);
            }
            mma_tiles<2, 4>(acc, a, b);
        }
        if (more) stash(buf ^ 1);
        __syncthreads();
    }

    mma_epilogue<2, 4>(p, acc, m0 + wm, n0 + wn, M, g, t, split);
    if (split) splitk_finish<__half, VEC_BM, VEC_BN>(p, M, m0, n0, parts, tile);
}

__device__ __forceinline__ void conv_mmaasync(const ConvParams& p) {
    constexpr int LDS = ASY_BK + 8;
    __shared__ __align__(16) unsigned short As[2][ASY_BM * LDS];
    __shared__ __align__(16) unsigned short Bs[2][ASY_BN * LDS];
    __shared__ int rbase[ASY_BM], ry0[ASY_BM], rx0[ASY_BM];

    const int M = *p.count * p.P * p.Q;
    const int m0 = blockIdx.x * ASY_BM;
    if (m0 >= M) return;
    const int n0 = blockIdx.y * ASY_BN;
    const int Kd = p.R * p.R * p.C;
    const int ktiles = (Kd + ASY_BK - 1) / ASY_BK;
    const int tiles = (int)(gridDim.x * gridDim.y);
    const int tile = (int)(blockIdx.y * gridDim.x + blockIdx.x);
    int kt0, kt1, parts;
    bool split;
    if (!conv_k_range(p, M, ktiles, tiles, &kt0, &kt1, &split, &parts)) return;

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int wm = (warp / 4) * 64;
    const int wn = (warp % 4) * 32;
    const __half* in = (const __half*)p.in;
    const __half* w = (const __half*)p.weight;

    if (tid < ASY_BM) conv_row_info(p, m0 + tid, M, &rbase[tid], &ry0[tid], &rx0[tid]);
    __syncthreads();

    // This thread's chunks: rows r0 and r0 + 64 of A and of B, chunk column kc.
    const int kc = tid % 4;
    const int r0 = tid / 4;

    auto issue = [&](int kt, int buf) {
        const int kd = kt * ASY_BK + kc * 8;
        int c = -1, r = 0, s = 0;
        conv_k_info(p, kd, Kd, &c, &r, &s);
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int row = r0 + i * 64;
            const int base = rbase[row];
            const int y = ry0[row] + r;
            const int x = rx0[row] + s;
            const bool ok = base >= 0 && c >= 0 && y >= 0 && y < p.H && x >= 0 && x < p.W;
            const __half* src = ok ? in + (size_t)(base + y * p.W + x) * p.in_stride + p.in_off + c : in;
            cp_async16(&As[buf][row * LDS + kc * 8], src, ok);
            const int oc = n0 + row;
            const bool okb = oc < p.K && kd < Kd;
            cp_async16(&Bs[buf][row * LDS + kc * 8], okb ? w + (size_t)oc * p.ldw + kd : w, okb);
        }
        cp_async_commit();
    };

    float acc[4][4][4];
    zero_acc<4, 4>(acc);

    issue(kt0, 0);
    for (int kt = kt0; kt < kt1; ++kt) {
        const int buf = (kt - kt0) & 1;
        if (kt + 1 < kt1) {
            issue(kt + 1, buf ^ 1);
            cp_async_wait<1>();  // this tile's group is done; the next may still fly
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();  // every thread's copies of this tile are visible
        const unsigned short* A = As[buf];
        const unsigned short* B = Bs[buf];
#pragma unroll
        for (int kk = 0; kk < ASY_BK; kk += 16) {
            unsigned a[4][4], b[4][2];
#pragma unroll
            for (int mt = 0; mt < 4; ++mt) {
                const unsigned short* q = A + (wm + mt * 16 + g) * LDS + kk + 2 * t;
                a[mt][0] = ld_pair(q);
                a[mt][1] = ld_pair(q + 8 * LDS);
                a[mt][2] = ld_pair(q + 8);
                a[mt][3] = ld_pair(q + 8 * LDS + 8);
            }
#pragma unroll
            for (int nt = 0; nt < 4; ++nt) {
                const unsigned short* q = B + (wn + nt * 8 + g) * LDS + kk + 2 * t;
                b[nt][0] = ld_pair(q);
                b[nt][1] = ld_pair(q + 8);
            }
            mma_tiles<4, 4>(acc, a, b);
        }
        __syncthreads();  // the buffer is refilled by the next iteration's issue
    }

    mma_epilogue<4, 4>(p, acc, m0 + wm, n0 + wn, M, g, t, split);
    if (split) splitk_finish<__half, ASY_BM, ASY_BN>(p, M, m0, n0, parts, tile);
}

// ---------------------------------------------------------------------------------
// Hopper warpgroup MMA (wgmma, sm_90a): a warpgroup of 4 warps multiplies a 64 x N
// tile of A by an N x 16 tile of B, both read by the tensor cores straight from
// shared memory through 64-bit descriptors, asynchronously: issued after
// wgmma.fence, grouped by wgmma.commit_group, finished by wgmma.wait_group. The
// operands use the layout without swizzling, K-major: 8 x 8 "core matrices" of 8
// rows x 16 contiguous bytes; the descriptor gives the start address, the byte
// distance between core matrices adjacent in K (leading, LBO) and in M or N (stride,
// SBO). The accumulator of warp w of the group is rows 16w..16w+15, laid out per n8
// column block as mma.m16n8k16's C fragment, so conv_tc's epilogue serves it as is.
// NVRTC defines __CUDA_ARCH_FEAT_SM90_ALL for sm_90a only; elsewhere the wgmma kernels
// are not compiled (the host then does without them, see device.rs).
#if !defined(DGATE_HOST_EMU) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define DGATE_WGMMA 1
#endif
#if defined(DGATE_HOST_EMU) || defined(DGATE_WGMMA)
#define DGATE_HAS_WGMMA 1
#endif

// Descriptor of a K-major operand without swizzling (fields in 16-byte units).
__device__ __forceinline__ unsigned long long wg_desc(const void* smem, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((smem_u32(smem) & 0x3ffff) >> 4) | (unsigned long long)((lbo & 0x3ffff) >> 4) << 16 |
           (unsigned long long)((sbo & 0x3ffff) >> 4) << 32;
}

// Orders this thread's earlier generic-proxy writes to shared memory (cp.async
// landings, the pre-activation's stores) before later async-proxy reads (wgmma).
__device__ __forceinline__ void fence_proxy_async() {
#ifdef DGATE_WGMMA
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_fence() {
#ifdef DGATE_HOST_EMU
    emu_wgmma_fence();
#elif defined(DGATE_WGMMA)
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void wgmma_commit() {
#ifdef DGATE_HOST_EMU
    emu_wgmma_commit();
#elif defined(DGATE_WGMMA)
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
#endif
}
template <int N>
__device__ __forceinline__ void wgmma_wait() {
#ifdef DGATE_HOST_EMU
    emu_wgmma_wait(N);
#elif defined(DGATE_WGMMA)
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
#endif
}
// The accumulators pass through here after wgmma_wait, so that the compiler cannot
// read them (the epilogue) before the wait, which has no register operands.
template <int R>
__device__ __forceinline__ void wgmma_fence_regs(float* d) {
#ifdef DGATE_WGMMA
#pragma unroll
    for (int i = 0; i < R; ++i) asm volatile("" : "+f"(d[i])::"memory");
#endif
}

// wgmma's accumulators as inline asm needs them, written out once: WG_D32(i) is the
// operand list of d[i..i+31], WG_R<n> the placeholders %0..%<n-1> of the first n.
#define WG_D8(i) \
    "+f"(d[(i)]), "+f"(d[(i) + 1]), "+f"(d[(i) + 2]), "+f"(d[(i) + 3]), "+f"(d[(i) + 4]), "+f"(d[(i) + 5]), \
        "+f"(d[(i) + 6]), "+f"(d[(i) + 7])
#define WG_D32(i) WG_D8(i), WG_D8((i) + 8), WG_D8((i) + 16), WG_D8((i) + 24)
#define WG_R16 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15"
#define WG_R32 \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, " \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WG_R64 WG_R32 ", " \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, " \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WG_R128 WG_R64 ", " \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, " \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, " \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, " \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
// One wgmma.mma_async SHAPE, f32 += f16 x f16, both operands K-major from the
// descriptors da and db (operands %IA and %IB), accumulating (the predicate from %IP).
#define WGMMA_F16(SHAPE, REGS, IA, IB, IP, ...)                                                            \
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" IP ", 0;\n"                                              \
                 "wgmma.mma_async.sync.aligned." SHAPE ".f32.f16.f16 {" REGS "}, %" IA ", %" IB ", p, 1, 1, 0, 0;\n}\n" \
                 : __VA_ARGS__                                                                          \
                 : "l"(da), "l"(db), "r"(1)                                                             \
                 : "memory")

// d (this thread's N / 2 accumulators) += A (64 x 16) * B (16 x N) for the warpgroup.
template <int N>
__device__ __forceinline__ void wgmma_f16(float* d, unsigned long long da, unsigned long long db) {
    static_assert(N == 32 || N == 64 || N == 128 || N == 256, "wgmma tile width");
#ifdef DGATE_HOST_EMU
    emu_wgmma(d, N, da, db);
#elif defined(DGATE_WGMMA)
    if constexpr (N == 32) {
        WGMMA_F16("m64n32k16", WG_R16, "16", "17", "18", WG_D8(0), WG_D8(8));
    } else if constexpr (N == 64) {
        WGMMA_F16("m64n64k16", WG_R32, "32", "33", "34", WG_D32(0));
    } else if constexpr (N == 128) {
        WGMMA_F16("m64n128k16", WG_R64, "64", "65", "66", WG_D32(0), WG_D32(32));
    } else {
        WGMMA_F16("m64n256k16", WG_R128, "128", "129", "130", WG_D32(0), WG_D32(32), WG_D32(64), WG_D32(96));
    }
#endif
}

// ---------------------------------------------------------------------------------
// conv_tc<BM, BN, WM, WN>_f16: the pipelined tensor-core kernel, for aligned layers
// (as conv_mmavec), with or without pre-activation. Block tile BM x BN x 32, WM x WN
// warps, each a (BM/WM) x (BN/WN) warp tile of m16n8k16 MMAs. Operands go global ->
// shared by cp.async through a TC_STAGES-deep ring in dynamic shared memory (one
// barrier per k-tile: the copy of tile i + STAGES - 1 is issued right after the
// barrier that ends every warp's use of its slot), and shared -> registers by
// ldmatrix.x4 (one instruction per 16x16 A fragment or pair of 16x8 B fragments;
// rows padded to 80 bytes, so the eight row addresses of each 8x8 matrix fall in
// distinct banks). Pre-activation is applied in shared memory by the thread that
// copied the chunk, after its copy landed and before the barrier: padding stays zero,
// as in PyTorch. That costs a second barrier a k-tile; the `pr` kernels (RP) apply it
// to the fragments instead, where no tap is padding. Split-K is conv_mmavec's; the
// epilogue goes through shared memory where the output is 8-channel aligned (tc_epi_*,
// below), else it is conv_mmavec's.
#define TC_BK 32
#define TC_LDS (TC_BK + 8)
#define TC_STAGES 4
// The ring of the wgmma tiles with 64-wide k-tiles (conv_wg*k64): two in flight.
#define TC_WG64_STAGES 4
#ifdef DGATE_TC_STAGES
static_assert(DGATE_TC_STAGES == TC_STAGES && DGATE_TC_LDS == TC_LDS && DGATE_TC_WG64_STAGES == TC_WG64_STAGES,
              "the host sizes conv_tc's shared memory from different constants (exec.rs)");
#endif

// Four 8x8 b16 matrices from shared memory; lane l supplies the address of row l % 8
// of matrix l / 8 and receives, from each matrix j, row l / 4, columns 2(l % 4)..+1.
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const unsigned short* smem) {
#ifdef DGATE_HOST_EMU
    emu_ldmatrix_x4(r, smem);
#else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(smem_u32(smem)));
#endif
}

// The B fragments of NT n8 columns (output channels) for one k16 step, from shared rows
// of LDS halves, one row per output channel and the step's 16 reduction columns from
// `B`: one ldmatrix.x4 per pair of fragments.
template <int NT, int LDS>
__device__ __forceinline__ void ldmatrix_b(unsigned (*b)[2], const unsigned short* B, int lane) {
#pragma unroll
    for (int np = 0; np < NT / 2; ++np) {
        unsigned r[4];
        ldmatrix_x4(r, B + (np * 16 + (lane & 7) + (lane >> 4) * 8) * LDS + ((lane >> 3) & 1) * 8);
        b[2 * np][0] = r[0];
        b[2 * np][1] = r[1];
        b[2 * np + 1][0] = r[2];
        b[2 * np + 1][1] = r[3];
    }
}

// A thread's place in the reduction: column kd and its (c, r, s), c = -1 past Kd.
struct TcCursor {
    int kd, c, r, s;
};
__device__ __forceinline__ TcCursor tc_cursor(const ConvParams& p, int kd, int Kd) {
    TcCursor k;
    k.kd = kd;
    conv_k_info(p, kd, Kd, &k.c, &k.r, &k.s);
    return k;
}
// The next k-tile's column: BK further, carried into s and r without a division.
template <int BK>
__device__ __forceinline__ void tc_step(const ConvParams& p, TcCursor* k, int Kd) {
    k->kd += BK;
    if (k->kd >= Kd) {
        k->c = -1;
        return;
    }
    k->c += BK;
    while (k->c >= p.C) {
        k->c -= p.C;
        if (++k->s == p.R) {
            k->s = 0;
            ++k->r;
        }
    }
}

// Where chunk `kc` (8 halves of the reduction) of tile row `row` lives in a stage of
// an operand of `rows` rows, in halves: conv_tc's padded rows, or (WG) the wgmma core
// matrices, each k-chunk a dense rows x 8 block, so that the core matrix of rows
// 8i..8i+7 is 128 contiguous bytes (SBO 128 bytes, LBO rows * 16 bytes).
template <bool WG>
__device__ __forceinline__ int tc_off(int rows, int row, int kc) {
    return WG ? kc * rows * 8 + row * 8 : row * TC_LDS + kc * 8;
}

// conv_tc's epilogue through shared memory. A warp's accumulators (the m16n8 C
// fragment layout, which wgmma's shares) hold two channels a thread and row: written
// straight out, each store instruction puts 16 bytes into each of 8 output rows, half
// of a 32-byte sector, and the residual read is split the same way. Staged, the tile
// goes out row by row, 8 channels (16 bytes) per thread, bias, residual and ReLU
// applied on the way; a split-K part adds them into the workspace the same way (on
// sm_90 as 16-byte vector atomics). Used when K and the output (and residual) rows
// are 8-channel aligned (for a split-K part, K alone), and the host gave the block the
// shared memory (tc_epi_bytes: at most the ring's size, but for wgmma's 128x256 tile,
// for which the host allots the larger of the two).
#define TC_EPI_PAD 8  // floats per staged row past BN: float2 writes of a warp conflict-free
template <int BM, int BN>
__device__ __forceinline__ constexpr int tc_epi_bytes() {
    return BM * (BN + TC_EPI_PAD) * 4;
}
#ifdef DGATE_TC_EPI_PAD
static_assert(DGATE_TC_EPI_PAD == TC_EPI_PAD, "the host sizes the staged epilogue from a different pad (convsel.rs)");
#endif

__device__ __forceinline__ unsigned dynamic_smem_bytes() {
#ifdef DGATE_HOST_EMU
    return emu_dynamic_smem_bytes();
#else
    unsigned n;
    asm volatile("mov.u32 %0, %%dynamic_smem_size;\n" : "=r"(n));
    return n;
#endif
}

__device__ __forceinline__ bool tc_epi_aligned(const ConvParams& p) {
    return p.K % 8 == 0 && p.out_stride % 8 == 0 && p.out_off % 8 == 0 &&
           (p.residual == nullptr || (p.res_stride % 8 == 0 && p.res_off % 8 == 0));
}

// Staged: this warp's fragments into `st` (rows of BN + TC_EPI_PAD floats).
template <int MT, int NT, int BN>
__device__ __forceinline__ void tc_epi_stage(float* st, float (*acc)[NT][4], int wm, int wn, int g, int t) {
    constexpr int LD = BN + TC_EPI_PAD;
    float* base = st + (wm + g) * LD + wn + 2 * t;  // the rest are immediate offsets
#pragma unroll
    for (int mt = 0; mt < MT; ++mt)
#pragma unroll
        for (int hf = 0; hf < 2; ++hf)
#pragma unroll
            for (int nt = 0; nt < NT; ++nt) {
                float* q = base + (mt * 16 + hf * 8) * LD + nt * 8;
#ifdef DGATE_HOST_EMU
                emu_check_dynamic_smem(q, 8);
#endif
                *(float2*)q = make_float2(acc[mt][nt][hf * 2], acc[mt][nt][hf * 2 + 1]);
            }
}

// Split-K: adds 8 consecutive partial sums into the workspace (16-byte aligned: K % 8 ==
// 0), as two vector atomics where the device has them (sm_90), else as eight.
__device__ __forceinline__ void ws_add8(float* ws, const float* v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    atomicAdd((float4*)ws, make_float4(v[0], v[1], v[2], v[3]));
    atomicAdd((float4*)(ws + 4), make_float4(v[4], v[5], v[6], v[7]));
#else
#ifdef DGATE_HOST_EMU
    emu_check_align(ws, 16);
#endif
#pragma unroll
    for (int j = 0; j < 8; ++j) atomicAdd(ws + j, v[j]);
#endif
}

// Staged: the whole tile out, 8 consecutive channels of one row per thread and step.
// Steps go in batches of TC_EPI_BATCH: the batch's residual pieces (16 bytes each) are
// all requested before the first is used. Left to itself the compiler cannot hoist a
// residual load above the previous step's output store (the two pointers might alias),
// so each step would wait a full memory round trip: the H200 run of 2026-11-27 had the
// residual layers at 0.9-1.7 TB/s. Unrolled further, the 128x128 tile spills.
#define TC_EPI_BATCH 4
template <int BM, int BN, int THREADS>
__device__ __forceinline__ void tc_epi_store(const ConvParams& p, const float* st, int m0, int n0, int M, bool split) {
    constexpr int LD = BN + TC_EPI_PAD;
    constexpr int CH = BN / 8;  // 16-byte output pieces per tile row
    constexpr int PIECES = BM * CH;
    const bool res = p.residual != nullptr && !split;
    for (int e0 = (int)threadIdx.x; e0 < PIECES; e0 += TC_EPI_BATCH * THREADS) {
        uint4 r[TC_EPI_BATCH];
#pragma unroll
        for (int b = 0; b < TC_EPI_BATCH; ++b) {
            const int e = e0 + b * THREADS;
            const int m = m0 + e / CH;
            const int k = n0 + (e % CH) * 8;
            r[b] = make_uint4(0u, 0u, 0u, 0u);
            if (res && e < PIECES && m < M && k < p.K)
                r[b] = ld128((const __half*)p.residual + (size_t)m * p.res_stride + p.res_off + k);
        }
#pragma unroll
        for (int b = 0; b < TC_EPI_BATCH; ++b) {
            const int e = e0 + b * THREADS;
            const int row = e / CH;
            const int col = (e % CH) * 8;
            const int m = m0 + row;
            const int k = n0 + col;
            if (e >= PIECES || m >= M || k >= p.K) continue;  // K % 8 == 0: all 8 channels or none
            const float* q = st + row * LD + col;
            if (split) {  // a part: its sums into the workspace (splitk_finish writes the output)
                ws_add8(p.workspace + (size_t)m * p.K + k, q);
                continue;
            }
            float v[8];
#pragma unroll
            for (int j = 0; j < 8; ++j) v[j] = q[j] + p.bias[k + j];
            if (res) {
                const unsigned rw[4] = {r[b].x, r[b].y, r[b].z, r[b].w};
#pragma unroll
                for (int j = 0; j < 4; ++j) {
                    v[2 * j] += __half2float(__ushort_as_half((unsigned short)(rw[j] & 0xffffu)));
                    v[2 * j + 1] += __half2float(__ushort_as_half((unsigned short)(rw[j] >> 16)));
                }
            }
            if (p.relu) {
#pragma unroll
                for (int j = 0; j < 8; ++j) v[j] = fmaxf(v[j], 0.0f);
            }
            unsigned ow[4];
#pragma unroll
            for (int j = 0; j < 4; ++j)
                ow[j] = (unsigned)__half_as_ushort(__float2half_rn(v[2 * j])) |
                        ((unsigned)__half_as_ushort(__float2half_rn(v[2 * j + 1])) << 16);
            st128((__half*)p.out + (size_t)m * p.out_stride + p.out_off + k, make_uint4(ow[0], ow[1], ow[2], ow[3]));
        }
    }
}

// Thread-block clusters (sm_90): split-K without the workspace. The CL blocks of a
// cluster (1 x 1 x CL, fixed at compile time by __cluster_dims__) compute the same output
// tile over CL ranges of the reduction and stage their partial tiles, as f32, in their
// own shared memory. After a cluster barrier, block z sums rows [z BM / CL, (z + 1) BM /
// CL) of the tile over all CL blocks, reading its peers' shared memory (distributed
// shared memory: mapa + ld.shared::cluster), in rank order, and writes them with the
// epilogue; a second barrier keeps every block's shared memory alive until its peers
// have read it. The workspace split (conv_k_range, splitk_finish) instead adds every
// part into global memory by atomics, then the last part to take a ticket reads the sum
// back, writes the output and zeroes the workspace: three dependent round trips to L2
// after the reduction, which at batch 1 are a large share of a layer's 8-12 us (the
// 2026-11-28 profiles). Here the sum is also the same bits on every run (a fixed order).
#if defined(DGATE_HOST_EMU) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)
#define DGATE_HAS_CLUSTER 1
#endif
#ifdef DGATE_HAS_CLUSTER
__device__ __forceinline__ void cluster_sync() {
#ifdef DGATE_HOST_EMU
    emu_cluster_sync();
#else
    asm volatile("barrier.cluster.arrive.release.aligned;\nbarrier.cluster.wait.acquire.aligned;\n" ::: "memory");
#endif
}
// The four floats at `local` (16-byte aligned, dynamic shared memory) in the shared
// memory of block `rank` of this cluster.
__device__ __forceinline__ float4 cluster_ld4(const float* local, unsigned rank) {
#ifdef DGATE_HOST_EMU
    return emu_cluster_ld4(local, rank);
#else
    unsigned remote;
    asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(smem_u32(local)), "r"(rank));
    float4 v;
    asm volatile("ld.shared::cluster.v4.f32 {%0, %1, %2, %3}, [%4];\n"
                 : "=f"(v.x), "=f"(v.y), "=f"(v.z), "=f"(v.w)
                 : "r"(remote)
                 : "memory");
    return v;
#endif
}

// The staged partial tile `st` (BM x (BN + TC_EPI_PAD) f32, this block's part) summed over
// the cluster and written out: this block's BM / CL rows (see above).
template <int BM, int BN, int THREADS, int CL>
__device__ __forceinline__ void cluster_reduce_store(const ConvParams& p, float* st, int m0, int n0, int M) {
    static_assert(BM % CL == 0 && BN % 4 == 0, "a cluster's blocks share the tile's rows");
    constexpr int LD = BN + TC_EPI_PAD;
    constexpr int ROWS = BM / CL;
    const unsigned z = blockIdx.z;
    float* mine = st + z * ROWS * LD;
    cluster_sync();  // every block's part staged
    for (int e = (int)threadIdx.x; e < ROWS * (BN / 4); e += THREADS) {
        float* q = mine + (e / (BN / 4)) * LD + (e % (BN / 4)) * 4;
        float4 sum = cluster_ld4(q, 0);
#pragma unroll
        for (unsigned r = 1; r < CL; ++r) {
            const float4 v = cluster_ld4(q, r);
            sum.x += v.x;
            sum.y += v.y;
            sum.z += v.z;
            sum.w += v.w;
        }
        // Only this block reads (and writes) its own rows' sums from here on; its peers
        // read the other rows.
        *(float4*)q = sum;
    }
    __syncthreads();
    if (tc_epi_aligned(p)) {
        tc_epi_store<ROWS, BN, THREADS>(p, mine, m0 + z * ROWS, n0, M, false);
    } else {
        for (int e = (int)threadIdx.x; e < ROWS * BN; e += THREADS) {
            const int m = m0 + z * ROWS + e / BN;
            const int k = n0 + e % BN;
            if (m < M && k < p.K) conv_store<__half>(p, m, k, mine[(e / BN) * LD + e % BN]);
        }
    }
    cluster_sync();  // the peers are done reading this block's shared memory
}
#else
// Declared for conv_tc_tile's CL > 1 branch, which no kernel instantiates before sm_90.
template <int BM, int BN, int THREADS, int CL>
__device__ void cluster_reduce_store(const ConvParams& p, float* st, int m0, int n0, int M);
#endif

// relu?(x * scale + shift) on a warp's A fragments of one k16 step whose first reduction
// column is `col` (a 1x1 layer: the channel), with the k-tile's scale and shift from
// shared memory (`ps`: 8 scales then 8 shifts per 8-channel chunk, conv_tc's layout).
// A thread holds columns 2t, 2t + 1 (registers 0 and 1: rows g and g + 8) and
// 8 + 2t, 9 + 2t (registers 2 and 3) of the step. A chunk past Kd keeps the copy's
// zeros (its scale and shift were never copied; its weights are zero too).
template <int MT>
__device__ __forceinline__ void tc_pre_fragments(unsigned (*a)[4], const float* ps, int col, int Kd, int t,
                                                 int relu) {
    const int chunk = col % TC_BK / 8;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        if (col + 8 * h >= Kd) continue;
        const float* q = ps + (chunk + h) * 16 + 2 * t;
        const float s0 = q[0], s1 = q[1], h0 = q[8], h1 = q[9];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
            a[mt][2 * h] = pre_act_pair_with(a[mt][2 * h], s0, h0, s1, h1, relu);
            a[mt][2 * h + 1] = pre_act_pair_with(a[mt][2 * h + 1], s0, h0, s1, h1, relu);
        }
    }
}

// CHAIN (mma.sync, unsplit): the caller loops over this block's tiles, and each tile
// starts the next one's copies (its row table, in the other half of `rows`, and its
// first PF k-tiles into ring slots 0..PF-1) before its own epilogue, whose stores then
// overlap them; `prefetched` says this tile's were started so. Without it, a layer with
// a short reduction (2-8 k-tiles: ResNet's 1x1 layers) spends each tile waiting on its
// first copies, then on its stores, with at most two tiles an SM in flight. The
// epilogue writes from registers (the ring is busy with the next tile by then).
//
// CL > 1 (a cluster of CL blocks along z, sm_90; see conv_tc_cluster): block z of the
// cluster takes the z-th of CL contiguous ranges of k-tiles, and the parts are summed
// through distributed shared memory instead of the workspace.
template <int BM, int BN, int WM, int WN, bool WG, int BK, bool CHAIN = false, int CL = 1, bool RP = false>
__device__ __forceinline__ void conv_tc_tile(const ConvParams& p, int m0, int m_next = 0, int rb = 0,
                                             bool prefetched = false) {
    constexpr int THREADS = WM * WN * 32;
    constexpr int WTM = BM / WM;
    constexpr int WTN = BN / WN;
    constexpr int MT = WTM / 16;
    constexpr int NT = WTN / 8;
    constexpr int CHUNKS = BK / 8;  // 16-byte chunks per operand row and k-tile
    constexpr int ROWS_PER_PASS = THREADS / CHUNKS;
    constexpr int A_ITERS = BM / ROWS_PER_PASS;
    constexpr int B_ITERS = BN / ROWS_PER_PASS;
    constexpr int ROW = WG ? BK : TC_LDS;   // halves per operand row in a stage
    constexpr int STAGE = (BM + BN) * ROW;  // halves
    // Tiles in flight ahead of the one multiplied (PF), and the ring: one slot more for
    // wgmma, whose reads of tile kt may still run during iteration kt + 1 (see below).
    // The 64-wide k-tiles (wgmma only) keep two in flight, more of the reduction ahead
    // than three of 32, in a ring that still fits 128x256 (TC_WG64_STAGES).
    constexpr int PF = BK > TC_BK ? TC_WG64_STAGES - 2 : TC_STAGES - 1;
    constexpr int STAGES = WG ? PF + 2 : PF + 1;
    static_assert(BK == TC_BK || (WG && BK == 2 * TC_BK), "k-tiles of 32, or of 64 for wgmma");
    // Pre-activation: each stage also holds the scale and shift of its k-tile's channels
    // (8 + 8 floats per 8-channel chunk), past the ring (see pre_activate).
    constexpr int PRE_FLOATS = CHUNKS * 16;
    static_assert(MT >= 1 && NT % 2 == 0, "warp tile must be 16 x 16k");
    static_assert(!CHAIN || !WG, "chained tiles: the mma.sync pipeline");
    static_assert(!RP || !WG, "pre-activation in registers: the mma.sync fragments");
    static_assert(!WG || (WN == 1 && WM % 4 == 0 && WTM == 16 && (BN == 64 || BN == 128 || BN == 256)),
                  "wgmma: warpgroups stacked in m, each 64 x BN");
    static_assert(A_ITERS >= 1 && B_ITERS >= 1 && A_ITERS * ROWS_PER_PASS == BM && B_ITERS * ROWS_PER_PASS == BN,
                  "tile rows must be a multiple of threads / 4");
    DGATE_DYNAMIC_SHARED(uint4, conv_tc_smem);
    unsigned short* smem = reinterpret_cast<unsigned short*>(conv_tc_smem);
    float* pre_smem = reinterpret_cast<float*>(smem + STAGES * STAGE);
    // Per tile row: sample base, top-left input row and column (conv_row_info); a
    // second table when chained, for the next tile.
    __shared__ int rows[CHAIN ? 2 : 1][3][BM];

    const int M = *p.count * p.P * p.Q;
    const int n0 = blockIdx.y * BN;
    const int Kd = p.R * p.R * p.C;
    const int ktiles = (Kd + BK - 1) / BK;
    const int tiles = (M + BM - 1) / BM * (int)gridDim.y;
    const int tile = m0 / BM * (int)gridDim.y + (int)blockIdx.y;
    int kt0, kt1, parts;
    bool split;
    if constexpr (CL > 1) {
        // Every block of the cluster goes on to the cluster barriers, an empty range too.
        const int per = (ktiles + CL - 1) / CL;
        kt0 = min(ktiles, (int)blockIdx.z * per);
        kt1 = min(ktiles, kt0 + per);
        split = false;
        parts = CL;
    } else if (!conv_k_range(p, M, ktiles, tiles, &kt0, &kt1, &split, &parts)) {
        return;
    }
    // Chained kernels are never split (gridDim.z == 1: convsel.rs gives them no split-K).

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int wm = (warp / WN) * WTM;
    const int wn = (warp % WN) * WTN;
    const __half* in = (const __half*)p.in;
    const __half* w = (const __half*)p.weight;
    const bool pre = p.pre_scale != nullptr;
    // RP: the pre-activation goes onto the A fragments in registers, after ldmatrix and
    // before the MMAs, rather than onto the landed chunks in shared memory between two
    // barriers. Exact only where no tap is padding (a 1x1 without it), which must stay
    // zero: elsewhere these kernels take the shared-memory pass. Rows past M become
    // relu(shift) rather than zero, but no epilogue writes a row past M.
    const bool reg_pre = RP && pre && p.R == 1 && p.pad == 0;

    auto row_table = [&](int mb, int (*tab)[BM]) {
        for (int i = tid; i < BM; i += THREADS) conv_row_info(p, mb + i, M, &tab[0][i], &tab[1][i], &tab[2][i]);
    };
    if (!prefetched) {
        row_table(m0, rows[rb]);
        __syncthreads();
    }
    const int(*cur)[BM] = rows[rb];

    // This thread's chunks: column kc of rows r0 + i * ROWS_PER_PASS, in A and in B.
    // Each k-tile's (c, r, s) comes from a cursor stepped by BK (no division in the
    // loop); the rows' pixels from the table above (registers would cost occupancy).
    const int kc = tid % CHUNKS;
    const int r0 = tid / CHUNKS;
    // Whether tap (r, s) of A row `row` of table `tab` lies in the image (rows past M
    // never do).
    auto a_in = [&](const int(*tab)[BM], int row, int r, int s) {
        return tab[0][row] >= 0 && (unsigned)(tab[1][row] + r) < (unsigned)p.H &&
               (unsigned)(tab[2][row] + s) < (unsigned)p.W;
    };
    // Chained and prefetched: the first PF k-tiles are in flight already.
    TcCursor at_issue = tc_cursor(p, (prefetched ? kt0 + PF : kt0) * BK + kc * 8, Kd);
    TcCursor at_pre = tc_cursor(p, kt0 * BK + kc * 8, Kd);

    // k-tile kt of the tile whose rows are `tab` into ring slot `slot`, from cursor `k`.
    auto issue_from = [&](const int(*tab)[BM], TcCursor& k, int kt, int slot) {
        if (kt < kt1) {
            unsigned short* As = smem + slot * STAGE;
            unsigned short* Bs = As + BM * ROW;
#pragma unroll
            for (int i = 0; i < A_ITERS; ++i) {
                const int row = r0 + i * ROWS_PER_PASS;
                const bool ok = k.c >= 0 && a_in(tab, row, k.r, k.s);
                const size_t at = (size_t)(tab[0][row] + (tab[1][row] + k.r) * p.W + tab[2][row] + k.s) * p.in_stride;
                cp_async16(&As[tc_off<WG>(BM, row, kc)], ok ? in + at + p.in_off + k.c : in, ok);
            }
#pragma unroll
            for (int i = 0; i < B_ITERS; ++i) {
                const int row = r0 + i * ROWS_PER_PASS;
                const int oc = n0 + row;
                const bool ok = oc < p.K && k.c >= 0;
                cp_async16(&Bs[tc_off<WG>(BN, row, kc)], ok ? w + (size_t)oc * p.ldw + k.kd : w, ok);
            }
            // The first thread of each chunk column brings the chunk's pre-activation.
            if (pre && tid < CHUNKS && k.c >= 0) {
                float* d = pre_smem + slot * PRE_FLOATS + kc * 16;
#ifdef DGATE_HOST_EMU
                emu_check_dynamic_smem(d, 64);
#endif
                cp_async16(d, p.pre_scale + k.c, true);
                cp_async16(d + 4, p.pre_scale + k.c + 4, true);
                cp_async16(d + 8, p.pre_shift + k.c, true);
                cp_async16(d + 12, p.pre_shift + k.c + 4, true);
            }
            tc_step<BK>(p, &k, Kd);
        }
        cp_async_commit();  // an empty group past the end keeps the wait counts uniform
    };
    auto issue = [&](int kt, int slot) { issue_from(cur, at_issue, kt, slot); };

    // relu?(x * scale + shift) on this thread's landed A chunks of the next tile (the
    // tiles come in order, as they were issued), with the scale and shift that came
    // with the tile into shared memory. Read from global memory here, they cost every
    // k-tile a round trip to L2 between its copies landing and its MMAs (a new chunk of
    // channels each tile, so L1 does not have them): the H200 run of 2026-11-27 had
    // DenseNet-201's 1x1 layers at 8x8, one block an SM, at about 2 us a k-tile.
    auto pre_activate = [&](int slot) {
        unsigned short* As = smem + slot * STAGE;
        const TcCursor k = at_pre;
        tc_step<BK>(p, &at_pre, Kd);
        if (k.c < 0) return;
        const float* ps = pre_smem + slot * PRE_FLOATS + kc * 16;
        float sc[8], sh[8];
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            sc[j] = ps[j];
            sh[j] = ps[8 + j];
        }
#pragma unroll
        for (int i = 0; i < A_ITERS; ++i) {
            const int row = r0 + i * ROWS_PER_PASS;
            if (!a_in(cur, row, k.r, k.s)) continue;
            unsigned short* q = &As[tc_off<WG>(BM, row, kc)];
            uint4 v = ld128(q);
            v.x = pre_act_pair_with(v.x, sc[0], sh[0], sc[1], sh[1], p.pre_relu);
            v.y = pre_act_pair_with(v.y, sc[2], sh[2], sc[3], sh[3], p.pre_relu);
            v.z = pre_act_pair_with(v.z, sc[4], sh[4], sc[5], sh[5], p.pre_relu);
            v.w = pre_act_pair_with(v.w, sc[6], sh[6], sc[7], sh[7], p.pre_relu);
            *(uint4*)q = v;
        }
    };

    float acc[MT][NT][4];
    zero_acc<MT, NT>(acc);

    if (!prefetched) {
#pragma unroll
        for (int s = 0; s < PF; ++s) issue(kt0 + s, s);
    }

    for (int kt = kt0; kt < kt1; ++kt) {
        const int it = kt - kt0;
        const int slot = it % STAGES;
        cp_async_wait<PF - 1>();  // this thread's copies of tile kt have landed
        if (pre && !reg_pre) {
            __syncthreads();  // and the chunks' scale and shift, which other threads copied
            pre_activate(slot);
        }
        if constexpr (WG) fence_proxy_async();  // this thread's writes, before wgmma reads them
        __syncthreads();  // everyone's copies of tile kt visible; slot of tile kt-1 free
        const unsigned short* A = smem + slot * STAGE;
        const unsigned short* B = A + BM * ROW;
        if constexpr (WG) {
            // Warpgroup warp/4 multiplies rows 64(warp/4).. of the tile by all BN columns,
            // 16 columns of the reduction (two core-matrix columns) per instruction, while
            // this thread issues the copies of tile kt + PF. Waiting with one group left
            // in flight means tile kt's MMAs may run on into iteration kt + 1; tile kt - 1's
            // are done. So every warpgroup has finished with tile kt - 2 when anyone passes
            // this iteration's barrier, and tile kt + PF goes into its slot:
            // (kt + PF) % STAGES == (kt - 2) % STAGES.
            static_assert(PF + 2 == STAGES, "wgmma ring: slot reuse two tiles back");
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < BK / 16; ++kk)
                wgmma_f16<BN>(&acc[0][0][0], wg_desc(A + tc_off<true>(BM, (warp / 4) * 64, 2 * kk), BM * 16, 128),
                              wg_desc(B + tc_off<true>(BN, 0, 2 * kk), BN * 16, 128));
            wgmma_commit();
            issue(kt + PF, (it + PF) % STAGES);
            wgmma_wait<1>();
        } else {
            static_assert(WG || PF + 1 == STAGES, "mma.sync ring: slot reuse one tile back");
            issue(kt + PF, (it + PF) % STAGES);
#pragma unroll
            for (int kk = 0; kk < TC_BK; kk += 16) {
                unsigned a[MT][4], b[NT][2];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
                    ldmatrix_x4(a[mt], A + (wm + mt * 16 + (lane & 15)) * TC_LDS + kk + (lane >> 4) * 8);
                if constexpr (RP) {
                    if (reg_pre) tc_pre_fragments<MT>(a, pre_smem + slot * PRE_FLOATS, kt * BK + kk, Kd, t, p.pre_relu);
                }
                // (ldmatrix_b's addressing, written out: through the helper, ptxas spills
                // 16 bytes of the 128x128 tile on sm_90.)
#pragma unroll
                for (int np = 0; np < NT / 2; ++np) {
                    unsigned r[4];
                    ldmatrix_x4(r,
                                B + (wn + np * 16 + (lane & 7) + (lane >> 4) * 8) * TC_LDS + kk + ((lane >> 3) & 1) * 8);
                    b[2 * np][0] = r[0];
                    b[2 * np][1] = r[1];
                    b[2 * np + 1][0] = r[2];
                    b[2 * np + 1][1] = r[3];
                }
                mma_tiles<MT, NT>(acc, a, b);
            }
        }
    }
    cp_async_wait<0>();
    if constexpr (WG) {
        wgmma_wait<0>();
        wgmma_fence_regs<MT * NT * 4>(&acc[0][0][0]);
    }
    if constexpr (CHAIN) {
        if (m_next < M) {
            row_table(m_next, rows[rb ^ 1]);
            __syncthreads();  // every warp done with the ring (its ldmatrix reads); the rows visible
            TcCursor k = tc_cursor(p, kc * 8, Kd);
#pragma unroll
            for (int s = 0; s < PF; ++s) issue_from(rows[rb ^ 1], k, s, s);
        }
        mma_epilogue<MT, NT>(p, acc, m0 + wm, n0 + wn, M, g, t, false);
        return;
    }

    if constexpr (CL > 1) {
        float* st = reinterpret_cast<float*>(conv_tc_smem);
        __syncthreads();  // every warp done with the ring (its ldmatrix reads)
        tc_epi_stage<MT, NT, BN>(st, acc, wm, wn, g, t);
        cluster_reduce_store<BM, BN, THREADS, CL>(p, st, m0, n0, M);
        return;
    }
    if ((split ? p.K % 8 == 0 : tc_epi_aligned(p)) && dynamic_smem_bytes() >= (unsigned)tc_epi_bytes<BM, BN>()) {
        float* st = reinterpret_cast<float*>(conv_tc_smem);
        __syncthreads();  // every warp done with the ring (its ldmatrix reads, or its MMAs waited for)
        tc_epi_stage<MT, NT, BN>(st, acc, wm, wn, g, t);
        __syncthreads();
        tc_epi_store<BM, BN, THREADS>(p, st, m0, n0, M, split);
        if (split) splitk_finish<__half, BM, BN>(p, M, m0, n0, parts, tile);
        return;
    }
    mma_epilogue<MT, NT>(p, acc, m0 + wm, n0 + wn, M, g, t, split);
    if (split) splitk_finish<__half, BM, BN>(p, M, m0, n0, parts, tile);
}

// Output tiles m0 = blockIdx.x * BM, + gridDim.x * BM, ...: the host sizes the grid for
// the samples it expects live (after a gate: what recent passes left), so a smaller
// survivor count launches no idle blocks, and a larger one is still covered.
// Chained (CHAIN), the host launches a few blocks an SM and each loops over many tiles.
template <int BM, int BN, int WM, int WN, bool WG = false, int BK = TC_BK, bool CHAIN = false, bool RP = false>
__device__ __forceinline__ void conv_tc(const ConvParams& p) {
    const int M = *p.count * p.P * p.Q;
    int rb = 0;
    bool prefetched = false;
    for (int m0 = (int)blockIdx.x * BM; m0 < M; m0 += (int)gridDim.x * BM) {
        const int m_next = m0 + (int)gridDim.x * BM;
        conv_tc_tile<BM, BN, WM, WN, WG, BK, CHAIN, 1, RP>(p, m0, m_next, rb, prefetched);
        if (CHAIN) {
            rb ^= 1;
            prefetched = m_next < M;
        }
        __syncthreads();  // the next tile reuses the shared memory
    }
}

#ifdef DGATE_HAS_CLUSTER
// One output tile a cluster (no loop over m: the emulator replays a cluster's blocks up
// to their first cluster barrier, see host_emu.cuh), every block of it past the batch's
// live samples returning together.
template <int BM, int BN, int WM, int WN, int CL>
__device__ __forceinline__ void conv_tc_cluster(const ConvParams& p) {
    const int M = *p.count * p.P * p.Q;
    const int m0 = (int)blockIdx.x * BM;
    if (m0 >= M) return;
    conv_tc_tile<BM, BN, WM, WN, false, TC_BK, false, CL>(p, m0);
}

// ---------------------------------------------------------------------------------
// conv_dense_cl8_f16: a whole DenseNet layer in one launch, for maps of at most 64
// pixels (8x8 and 4x4: 80 of DenseNet-201's 98 layers). The pre-activated 1x1 C -> 128
// bottleneck (its batch norm folded in, ReLU) and the 3x3 128 -> 32 growth layer after
// it are two launches otherwise, and at batch 1 each took 9-16 us in the 2026-11-28
// H200 profile whatever its work (1.745 ms for 207 steps). Here a cluster of 8 blocks
// (sm_90) takes 64 output pixels (one 8x8 image, or four 4x4 ones), and the 3x3
// reads the bottleneck from shared memory, never from L2:
// 1. block z of the cluster multiplies the 64 pixels by the 1x1's weights over the
//    z-th eighth of the input channels (conv_tc's pipeline: cp.async ring, the
//    pre-activation on each thread's own landed chunk, ldmatrix, mma.sync) and stages
//    its 64 x 128 partial sums in its shared memory;
// 2. after a cluster barrier, block z sums bottleneck channels 16z..16z+15 over the
//    8 partials (distributed shared memory), adds the bias, applies the ReLU, and keeps
//    them as f16 (also written to the bottleneck buffer, as the 1x1's launch would);
// 3. block z then multiplies its 16 channels, at all nine taps, by the 3x3's weights
//    for all 32 outputs: a 64 x 32 partial over a 144-long reduction, a padding tap read
//    from a zero row; its weights came into shared memory with the first k-tile;
// 4. after a second barrier, block z sums output rows 8z..8z+7 over the 8 partials
//    and writes them (bias, ReLU) into the output view; a third barrier keeps every
//    block's shared memory until its peers have read it.
// The host gives it f16 layers whose 1x1 is of stride 1 without padding, C a multiple
// of 32 and at most 8 * DENSE_MAXKT * 32, 128 bottleneck channels, the 3x3 of stride 1
// and padding 1 onto 32 channels without pre-activation or residual, views aligned for
// 16-byte loads and 8-byte stores, and a map of h * w pixels dividing 64 (exec.rs,
// dense_fusable). Tuning checks it against the two layers' own kernels and times it
// against them; it runs only where it is faster.
//
// conv_dense_halo_cl8_f16 (HALO) takes maps whose sides are multiples of 8 and larger
// than 8x8 (DenseNet-201's 18 layers at 32x32 and 16x16): a cluster a 8x8 tile of one
// image. Its 3x3 needs the bottleneck one pixel around the tile, so the 1x1 runs on the
// 10x10 pixels (128 rows, 100 used) and the halo's channels stay in shared memory; a
// halo pixel outside the image is a zero row, the 3x3's padding. Only the tile's own 64
// pixels are written to the bottleneck buffer (each pixel by the one tile it is in).
#define DENSE_CL 8
#define DENSE_ROWS 64    // output pixels a cluster
#define DENSE_B 128      // bottleneck channels
#define DENSE_G 32       // the 3x3's output channels
#define DENSE_THREADS 256
#define DENSE_STAGES 3
#define DENSE_MAXKT 16   // 32-channel k-tiles a block at most
#define DENSE_LD1 (DENSE_B + TC_EPI_PAD)  // floats per staged 1x1 partial row
#define DENSE_LD2 (DENSE_G + TC_EPI_PAD)  // floats per staged 3x3 partial row
#define DENSE_SLD 24     // halves per row of the bottleneck slice and of the 3x3 weights
#define DENSE_HALO 10  // the side of a HALO tile's bottleneck (8 + 2)

// conv_dense's shared memory, in bytes: the ring (where the 1x1's partial is staged
// after it), the 3x3's partial, the pre-activation, the bottleneck slice (and a zero
// row, or the halo) and the 3x3's weights.
template <bool HALO>
struct DenseLayout {
    static constexpr int R1 = HALO ? 128 : DENSE_ROWS;  // the 1x1's rows (HALO: 100 used)
    static constexpr int RB = HALO ? DENSE_HALO * DENSE_HALO : DENSE_ROWS + 1;  // slice rows
    static constexpr int RING = DENSE_STAGES * (R1 + DENSE_B) * TC_LDS * 2;
    static constexpr int ST1 = R1 * DENSE_LD1 * 4;
    static constexpr int P2 = RING > ST1 ? RING : ST1;
    static constexpr int PRE = P2 + DENSE_ROWS * DENSE_LD2 * 4;
    static constexpr int BOT = PRE + 2 * DENSE_MAXKT * 32 * 4;
    static constexpr int W2 = BOT + RB * DENSE_SLD * 2;
    static constexpr int SMEM = W2 + 9 * DENSE_G * DENSE_SLD * 2;
    static_assert(P2 % 16 == 0 && BOT % 16 == 0 && W2 % 16 == 0, "16-byte aligned regions");
};
#ifdef DGATE_DENSE_SMEM
static_assert(DGATE_DENSE_SMEM == DenseLayout<false>::SMEM, "the host sizes conv_dense's shared memory differently (convsel.rs)");
#endif
#ifdef DGATE_DENSE_HALO_SMEM
static_assert(DGATE_DENSE_HALO_SMEM == DenseLayout<true>::SMEM,
              "the host sizes conv_dense_halo's shared memory differently (convsel.rs)");
#endif

// Four f32 values as f16 bits, two to a word.
__device__ __forceinline__ uint2 pack_half4(const float* v) {
    unsigned w[2];
#pragma unroll
    for (int j = 0; j < 2; ++j)
        w[j] = (unsigned)__half_as_ushort(__float2half_rn(v[2 * j])) |
               ((unsigned)__half_as_ushort(__float2half_rn(v[2 * j + 1])) << 16);
    return make_uint2(w[0], w[1]);
}

// The four floats at `q` summed over the cluster's blocks, in rank order.
__device__ __forceinline__ float4 dense_cluster_sum(const float* q) {
    float4 s = cluster_ld4(q, 0);
#pragma unroll
    for (unsigned r = 1; r < DENSE_CL; ++r) {
        const float4 v = cluster_ld4(q, r);
        s.x += v.x;
        s.y += v.y;
        s.z += v.z;
        s.w += v.w;
    }
    return s;
}

template <bool HALO>
__device__ __forceinline__ void conv_dense(const DenseParams& dp) {
    using L = DenseLayout<HALO>;
    const ConvParams& p1 = dp.one;
    const ConvParams& p3 = dp.three;
    const int PQ = p1.H * p1.W;
    const int M = *p1.count * PQ;
    // Not HALO: output pixels m0.. of the batch. HALO: the 8x8 tile (ty, tx) of image img.
    const int tiles_x = HALO ? p1.W / 8 : 1;
    const int tiles = HALO ? (p1.H / 8) * tiles_x : 1;
    const int img = (int)blockIdx.x / tiles;
    const int ty = (int)blockIdx.x % tiles / tiles_x;
    const int tx = (int)blockIdx.x % tiles % tiles_x;
    const int m0 = HALO ? img * PQ : (int)blockIdx.x * DENSE_ROWS;
    if (m0 >= M) return;  // the whole cluster (one blockIdx.x) together
    // The batch row of the tile's output row r (0..63), or -1 past the batch.
    auto out_row = [&](int r) {
        if (HALO) return m0 + (8 * ty + r / 8) * p1.W + 8 * tx + r % 8;
        return m0 + r < M ? m0 + r : -1;
    };
    const unsigned z = blockIdx.z;  // the rank in the cluster (gridDim.z == DENSE_CL)
    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int g = lane / 4;
    const int t = lane % 4;
    DGATE_DYNAMIC_SHARED(uint4, dense_smem);
    unsigned char* sm = reinterpret_cast<unsigned char*>(dense_smem);
    unsigned short* ring = reinterpret_cast<unsigned short*>(sm);
    float* st2 = reinterpret_cast<float*>(sm + L::P2);
    float* pre_s = reinterpret_cast<float*>(sm + L::PRE);  // scale, then shift at + MAXKT * 32
    unsigned short* bot = reinterpret_cast<unsigned short*>(sm + L::BOT);
    unsigned short* w2s = reinterpret_cast<unsigned short*>(sm + L::W2);
    constexpr int STAGE = (L::R1 + DENSE_B) * TC_LDS;  // halves
    constexpr int AR = L::R1 / 64;                     // A rows a thread copies a k-tile

    // This block's k-tiles of the 1x1 (32 input channels each).
    const int ktiles = p1.C / 32;
    const int per = (ktiles + DENSE_CL - 1) / DENSE_CL;
    const int kt0 = min(ktiles, (int)z * per);
    const int kt1 = min(ktiles, kt0 + per);
    const __half* in = (const __half*)p1.in;
    const __half* w1 = (const __half*)p1.weight;
    const __half* w2 = (const __half*)p3.weight;
    const bool pre = p1.pre_scale != nullptr;

    // With the first k-tile: the pre-activation of this block's channels, and the 3x3's
    // weights for its 16 bottleneck channels ([tap][out channel][16], rows of DENSE_SLD).
    if (pre) {
        for (int i = tid; i < (kt1 - kt0) * 8; i += DENSE_THREADS) {
            cp_async16(pre_s + 4 * i, p1.pre_scale + kt0 * 32 + 4 * i, true);
            cp_async16(pre_s + DENSE_MAXKT * 32 + 4 * i, p1.pre_shift + kt0 * 32 + 4 * i, true);
        }
    }
    for (int i = tid; i < 9 * DENSE_G * 2; i += DENSE_THREADS) {
        const int tap = i / (DENSE_G * 2);
        const int oc = i / 2 % DENSE_G;
        const int h = i % 2;
        cp_async16(w2s + (tap * DENSE_G + oc) * DENSE_SLD + 8 * h,
                   w2 + (size_t)oc * p3.ldw + tap * DENSE_B + 16 * z + 8 * h, true);
    }

    // Each thread copies AR 16-byte chunks of A (rows ar + 64i, channels 8kc..) a k-tile,
    // and two of B (output channels ar and ar + 64). HALO: A's row r < 100 is the halo
    // pixel (r / 10 - 1, r % 10 - 1) of the tile; outside the image, or r >= 100, zeros.
    const int ar = tid / 4;
    const int kc = tid % 4;
    bool a_ok[AR];
    const __half* a_src[AR];
#pragma unroll
    for (int i = 0; i < AR; ++i) {
        const int r = ar + 64 * i;
        int m = m0 + r;
        a_ok[i] = m < M;
        if (HALO) {
            const int y = 8 * ty + r / DENSE_HALO - 1;
            const int x = 8 * tx + r % DENSE_HALO - 1;
            a_ok[i] = r < DENSE_HALO * DENSE_HALO && (unsigned)y < (unsigned)p1.H && (unsigned)x < (unsigned)p1.W;
            m = m0 + y * p1.W + x;
        }
        a_src[i] = a_ok[i] ? in + (size_t)m * p1.in_stride + p1.in_off + 8 * kc : in;
    }
    auto issue = [&](int kt, int slot) {
        if (kt < kt1) {
            unsigned short* As = ring + slot * STAGE;
            unsigned short* Bs = As + L::R1 * TC_LDS;
#pragma unroll
            for (int i = 0; i < AR; ++i)
                cp_async16(&As[(ar + 64 * i) * TC_LDS + 8 * kc], a_ok[i] ? a_src[i] + kt * 32 : in, a_ok[i]);
#pragma unroll
            for (int i = 0; i < 2; ++i) {
                const int oc = ar + 64 * i;
                cp_async16(&Bs[oc * TC_LDS + 8 * kc], w1 + (size_t)oc * p1.ldw + kt * 32 + 8 * kc, true);
            }
        }
        cp_async_commit();
    };

    // 8 warps, each 32 rows: in 2 x 4 of 32 channels (64 x 128), HALO 4 x 2 of 64.
    constexpr int WCOLS = HALO ? 2 : 4;
    constexpr int NT = DENSE_B / WCOLS / 8;
    const int wm = (warp / WCOLS) * 32;
    const int wn = (warp % WCOLS) * (DENSE_B / WCOLS);
    float acc[2][NT][4];
    zero_acc<2, NT>(acc);
    issue(kt0, 0);
    issue(kt0 + 1, 1);
    for (int kt = kt0; kt < kt1; ++kt) {
        const int it = kt - kt0;
        const int slot = it % DENSE_STAGES;
        cp_async_wait<1>();  // this thread's copies of k-tile kt have landed
        if (it == 0) __syncthreads();  // and the scale and shift, which others copied
        if (pre) {
            // Only this thread's own chunks: no barrier between their landing and this.
            const float* sc = pre_s + it * 32 + 8 * kc;
            const float* sh = sc + DENSE_MAXKT * 32;
#pragma unroll
            for (int i = 0; i < AR; ++i) {
                if (!a_ok[i]) continue;
                unsigned short* q = ring + slot * STAGE + (ar + 64 * i) * TC_LDS + 8 * kc;
                uint4 v = ld128(q);
                v.x = pre_act_pair_with(v.x, sc[0], sh[0], sc[1], sh[1], p1.pre_relu);
                v.y = pre_act_pair_with(v.y, sc[2], sh[2], sc[3], sh[3], p1.pre_relu);
                v.z = pre_act_pair_with(v.z, sc[4], sh[4], sc[5], sh[5], p1.pre_relu);
                v.w = pre_act_pair_with(v.w, sc[6], sh[6], sc[7], sh[7], p1.pre_relu);
                st128(q, v);
            }
        }
        __syncthreads();  // k-tile kt ready; the slot of k-tile kt - 1 free
        issue(kt + 2, (it + 2) % DENSE_STAGES);
        const unsigned short* A = ring + slot * STAGE;
        const unsigned short* B = A + L::R1 * TC_LDS;
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 16) {
            unsigned a[2][4], b[NT][2];
#pragma unroll
            for (int mt = 0; mt < 2; ++mt)
                ldmatrix_x4(a[mt], A + (wm + mt * 16 + (lane & 15)) * TC_LDS + kk + (lane >> 4) * 8);
#pragma unroll
            for (int np = 0; np < NT / 2; ++np) {
                unsigned r[4];
                ldmatrix_x4(r, B + (wn + np * 16 + (lane & 7) + (lane >> 4) * 8) * TC_LDS + kk + ((lane >> 3) & 1) * 8);
                b[2 * np][0] = r[0];
                b[2 * np][1] = r[1];
                b[2 * np + 1][0] = r[2];
                b[2 * np + 1][1] = r[3];
            }
            mma_tiles<2, NT>(acc, a, b);
        }
    }
    cp_async_wait<0>();
    __syncthreads();  // the ring's reads done; every copy (the 3x3's weights too) visible
    float* st1 = reinterpret_cast<float*>(ring);
    tc_epi_stage<2, NT, DENSE_B>(st1, acc, wm, wn, g, t);
    cluster_sync();  // 1: every block's 1x1 partial staged

    // This block's 16 bottleneck channels of the slice's rows: a float4 a thread and
    // step. HALO: a halo pixel outside the image is zeros (the 3x3's padding); only the
    // tile's own pixels go to the bottleneck buffer.
    for (int i = tid; i < (HALO ? L::RB : DENSE_ROWS) * 4; i += DENSE_THREADS) {
        const int row = i / 4;
        const int ch = 16 * (int)z + 4 * (i % 4);
        int dst = out_row(row);
        bool keep = true;
        if (HALO) {
            const int hy = row / DENSE_HALO;
            const int hx = row % DENSE_HALO;
            const int y = 8 * ty + hy - 1;
            const int x = 8 * tx + hx - 1;
            keep = (unsigned)y < (unsigned)p1.H && (unsigned)x < (unsigned)p1.W;
            const bool own = hy >= 1 && hy <= 8 && hx >= 1 && hx <= 8;
            dst = own ? out_row((hy - 1) * 8 + hx - 1) : -1;
        }
        const float4 s = dense_cluster_sum(st1 + row * DENSE_LD1 + ch);
        float v[4] = {s.x + p1.bias[ch], s.y + p1.bias[ch + 1], s.z + p1.bias[ch + 2], s.w + p1.bias[ch + 3]};
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = !keep ? 0.0f : p1.relu ? fmaxf(v[j], 0.0f) : v[j];
        const uint2 h = pack_half4(v);
        *(uint2*)(bot + row * DENSE_SLD + 4 * (i % 4)) = h;
        if (dst >= 0) *(uint2*)((__half*)p1.out + (size_t)dst * p1.out_stride + p1.out_off + ch) = h;
    }
    if (!HALO && tid < DENSE_SLD / 2) ((unsigned*)(bot + DENSE_ROWS * DENSE_SLD))[tid] = 0u;  // the padding row
    __syncthreads();  // the slice complete

    // The 3x3 over this block's 16 channels: warp (mt, nh) takes tile rows 16mt.. and
    // output channels 16nh.., one k16 step a tap.
    {
        const int mt = warp % 4;
        const int nh = warp / 4;
        const int lrow = mt * 16 + (lane & 15);  // the row whose address this lane gives
        const int limg = lrow / PQ;              // (not HALO: its image and pixel in the tile)
        const int pix = lrow % PQ;
        const int y = pix / p1.W;
        const int x = pix % p1.W;
        float acc2[2][4];
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc2[j][e] = 0.0f;
#pragma unroll
        for (int tap = 0; tap < 9; ++tap) {
            int src;
            if (HALO) {
                src = (lrow / 8 + tap / 3) * DENSE_HALO + lrow % 8 + tap % 3;
            } else {
                const int yy = y + tap / 3 - 1;
                const int xx = x + tap % 3 - 1;
                const bool inside = (unsigned)yy < (unsigned)p1.H && (unsigned)xx < (unsigned)p1.W;
                src = inside ? limg * PQ + yy * p1.W + xx : DENSE_ROWS;
            }
            unsigned a[4];
            ldmatrix_x4(a, bot + src * DENSE_SLD + (lane >> 4) * 8);
#pragma unroll
            for (int j = 0; j < 2; ++j) {
                const unsigned short* wq = w2s + (tap * DENSE_G + (2 * nh + j) * 8 + g) * DENSE_SLD + 2 * t;
                const unsigned b[2] = {ld_pair(wq), ld_pair(wq + 8)};
                mma_16816(acc2[j], a, b);
            }
        }
#pragma unroll
        for (int j = 0; j < 2; ++j)
#pragma unroll
            for (int hf = 0; hf < 2; ++hf) {
                float* q = st2 + (mt * 16 + hf * 8 + g) * DENSE_LD2 + (2 * nh + j) * 8 + 2 * t;
#ifdef DGATE_HOST_EMU
                emu_check_dynamic_smem(q, 8);
#endif
                *(float2*)q = make_float2(acc2[j][hf * 2], acc2[j][hf * 2 + 1]);
            }
    }
    cluster_sync();  // 2: every block's 3x3 partial staged

    // Output rows 8z..8z+7, all 32 channels: one float4 a thread for 64 threads.
    if (tid < 8 * DENSE_G / 4) {
        const int row = 8 * (int)z + tid / 8;
        const int ch = 4 * (tid % 8);
        const float* q = st2 + row * DENSE_LD2 + ch;
        const float4 s = dense_cluster_sum(q);
        float v[4] = {s.x + p3.bias[ch], s.y + p3.bias[ch + 1], s.z + p3.bias[ch + 2], s.w + p3.bias[ch + 3]};
        if (p3.relu) {
#pragma unroll
            for (int j = 0; j < 4; ++j) v[j] = fmaxf(v[j], 0.0f);
        }
        const int dst = out_row(row);
        if (dst >= 0) *(uint2*)((__half*)p3.out + (size_t)dst * p3.out_stride + p3.out_off + ch) = pack_half4(v);
    }
    cluster_sync();  // 3: the peers are done reading this block's shared memory
}
#endif

// ---------------------------------------------------------------------------------
// conv_halo<BM>_f16: 3x3 convolutions of stride 1 and padding 1 whose C and K are
// multiples of 32, as DenseNet's 128 -> 32 layers. The implicit GEMM of conv_tc reads
// each input pixel nine times (once per tap) through L2 for 32 output channels: the
// H200 run of 2026-11-27 had those layers at 11-90 TFLOP/s, 4.9 of DenseNet-201's 12.2
// ms at batch 256. Here a block's BM output pixels (whole rows of one image, or whole
// images where a map is smaller than BM) take their input patch, the rows one above
// and one below and a column either side, 32 channels at a time, into shared memory
// once, with the padding zero-filled by the copy; the nine taps then read it there.
// ldmatrix takes any eight row addresses, so a tap is an offset into the patch. The
// weights of the 32 channels for all nine taps and 32 output channels come with it: a
// stage is one 32-channel chunk, two stages in a ring. 128 threads, 4 warps stacked in
// m, each (BM / 4) x 32 outputs; blockIdx.y picks the 32 output channels. No split-K.
// The patch of every layer the host gives it fits HALO_MAXP pixels (convsel.rs checks).
#define HALO_LDS 40  // halves per shared row: 32 channels + 8, conflict-free ldmatrix rows
template <int BM>
__device__ __forceinline__ constexpr int halo_maxp() {
    return BM == 128 ? 288 : 160;
}
#ifdef DGATE_HALO_MAXP128
static_assert(DGATE_HALO_MAXP128 == halo_maxp<128>() && DGATE_HALO_MAXP64 == halo_maxp<64>(),
              "the host checks conv_halo's patches against different sizes (convsel.rs)");
#endif

// The input patch of a conv_halo block whose first output pixel is m0: IMGS images
// of ROWS rows from row y0 of image img0, each with a one-pixel border, PW = W + 2
// pixels a row, PI pixels an image, NP in all.
struct HaloPatch {
    int rows, PW, PI, np, img0, y0;
};

template <int BM>
__device__ __forceinline__ HaloPatch halo_patch(const ConvParams& p, int m0) {
    const int HW = p.H * p.W;
    HaloPatch h;
    const int imgs = BM > HW ? BM / HW : 1;
    h.rows = BM > HW ? p.H : BM / p.W;
    h.PW = p.W + 2;
    h.PI = (h.rows + 2) * h.PW;
    h.np = imgs * h.PI;
    h.img0 = m0 / HW;
    h.y0 = (m0 - h.img0 * HW) / p.W;
    return h;
}

// The input pixel (sample-major over the whole map) that patch pixel `pix` holds, or
// -1 for the padding, past the patch, and samples past `count` (all zero-filled).
__device__ __forceinline__ int halo_src(const ConvParams& p, const HaloPatch& h, int pix, int count) {
    if (pix >= h.np) return -1;
    const int im = pix / h.PI;
    const int rem = pix - im * h.PI;
    const int py = rem / h.PW;
    const int y = h.y0 + py - 1;
    const int x = rem - py * h.PW - 1;
    const int n = h.img0 + im;
    return n < count && (unsigned)y < (unsigned)p.H && (unsigned)x < (unsigned)p.W ? (n * p.H + y) * p.W + x : -1;
}

// The patch pixel under tile pixel `lm` (0 .. BM-1) at tap (0, 0).
__device__ __forceinline__ int halo_pos(const ConvParams& p, const HaloPatch& h, int lm) {
    const int im = lm / (h.rows * p.W);
    const int rem = lm - im * h.rows * p.W;
    const int ly = rem / p.W;
    return im * h.PI + ly * h.PW + (rem - ly * p.W);
}

template <int BM>
__device__ __forceinline__ void conv_halo_tile(const ConvParams& p, int m0, int M) {
    constexpr int THREADS = 128;
    constexpr int MAXP = halo_maxp<BM>();
    constexpr int MT = BM / 64;  // m16 tiles per warp
    constexpr int NT = 4;        // 32 output channels
    constexpr int W_ROWS = 9 * 32;
    constexpr int STAGE = (MAXP + W_ROWS) * HALO_LDS;  // halves
    constexpr int P_ITERS = (MAXP * 4 + THREADS - 1) / THREADS;
    constexpr int W_ITERS = W_ROWS * 4 / THREADS;
    static_assert(W_ITERS * THREADS == W_ROWS * 4, "weight chunks per thread");
    DGATE_DYNAMIC_SHARED(uint4, halo_smem);
    unsigned short* smem = reinterpret_cast<unsigned short*>(halo_smem);

    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const int warp = tid / 32;
    const int g = lane / 4;
    const int t = lane % 4;
    const int n0 = blockIdx.y * 32;
    // The block's pixels m0 .. m0 + BM - 1 and their patch.
    const HaloPatch hp = halo_patch<BM>(p, m0);
    const int PW = hp.PW;
    const int np = hp.np;
    const int count = *p.count;

    // This thread's patch chunks (16 bytes: 8 channels of a pixel), the same for every
    // 32-channel chunk of the reduction but its channel offset: the input pixel, or -1
    // for padding and samples past the count (zero-filled).
    int src[P_ITERS];
#pragma unroll
    for (int i = 0; i < P_ITERS; ++i) src[i] = halo_src(p, hp, (tid + i * THREADS) / 4, count);
    // Patch row of this lane's ldmatrix row in each m16 tile, for tap (0, 0).
    int prow[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) prow[mt] = halo_pos(p, hp, warp * (BM / 4) + mt * 16 + (lane & 15));

    const __half* in = (const __half*)p.in;
    const __half* w = (const __half*)p.weight;
    auto issue = [&](int cc, int slot) {
        unsigned short* Ps = smem + slot * STAGE;
        unsigned short* Ws = Ps + MAXP * HALO_LDS;
        const int c0 = cc * 32;
#pragma unroll
        for (int i = 0; i < P_ITERS; ++i) {
            const int e = tid + i * THREADS;
            if (e >= np * 4) break;
            const bool ok = src[i] >= 0;
            unsigned short* dst = &Ps[(e / 4) * HALO_LDS + (e % 4) * 8];
#ifdef DGATE_HOST_EMU
            emu_check_dynamic_smem(dst, 16);
#endif
            cp_async16(dst, ok ? in + (size_t)src[i] * p.in_stride + p.in_off + c0 + (e % 4) * 8 : in, ok);
        }
#pragma unroll
        for (int i = 0; i < W_ITERS; ++i) {
            const int e = tid + i * THREADS;
            const int row = e / 4;  // tap * 32 + output channel
            const int tap = row / 32;
            const int oc = n0 + row % 32;
            unsigned short* dst = &Ws[row * HALO_LDS + (e % 4) * 8];
#ifdef DGATE_HOST_EMU
            emu_check_dynamic_smem(dst, 16);
#endif
            cp_async16(dst, w + (size_t)oc * p.ldw + tap * p.C + c0 + (e % 4) * 8, true);
        }
        cp_async_commit();
    };

    float acc[MT][NT][4];
    zero_acc<MT, NT>(acc);

    const int chunks = p.C / 32;
    issue(0, 0);
    for (int cc = 0; cc < chunks; ++cc) {
        if (cc + 1 < chunks) {
            issue(cc + 1, (cc + 1) % 2);
        } else {
            cp_async_commit();  // an empty group keeps the wait count uniform
        }
        cp_async_wait<1>();  // chunk cc has landed (this thread's copies)
        __syncthreads();     // everyone's
        const unsigned short* Ps = smem + (cc % 2) * STAGE;
        const unsigned short* Ws = Ps + MAXP * HALO_LDS;
#pragma unroll
        for (int tap = 0; tap < 9; ++tap) {
            const int toff = (tap / 3) * PW + tap % 3;
            const unsigned short* B = Ws + tap * 32 * HALO_LDS;
#pragma unroll
            for (int kk = 0; kk < 32; kk += 16) {
                unsigned a[MT][4], b[NT][2];
#pragma unroll
                for (int mt = 0; mt < MT; ++mt)
                    ldmatrix_x4(a[mt], Ps + (prow[mt] + toff) * HALO_LDS + kk + (lane >> 4) * 8);
                ldmatrix_b<NT, HALO_LDS>(b, B + kk, lane);
                mma_tiles<MT, NT>(acc, a, b);
            }
        }
        __syncthreads();  // the slot is free for chunk cc + 2
    }
    cp_async_wait<0>();
    mma_epilogue<MT, NT>(p, acc, m0 + warp * (BM / 4), n0, M, g, t, false);
}

template <int BM>
__device__ __forceinline__ void conv_halo(const ConvParams& p) {
    const int M = *p.count * p.P * p.Q;
    for (int m0 = (int)blockIdx.x * BM; m0 < M; m0 += (int)gridDim.x * BM) {
        conv_halo_tile<BM>(p, m0, M);
        __syncthreads();  // the next tile reuses the shared memory
    }
}

// ---------------------------------------------------------------------------------
// conv_tma<BN>_f16: 1x1 convolutions of stride 1 (a plain GEMM over NHWC pixels:
// ResNet's 1x1 layers, about half of ResNet-101's f16 pass on the H200 at 0.9-1.7
// TB/s) and 3x3 convolutions of stride 1 and padding 1 (ResNet's 3x3 layers, a fifth
// of it at 200 TFLOP/s), without pre-activation, on Hopper's tensor memory accelerator
// (TMA), shared-memory barriers (mbarrier) and wgmma, with the warps specialised:
// - warpgroup 0 is the producer: one thread issues two TMA copies per k-tile of 64
//   channels (a 128 x 64 box of the input view, a BN x 64 box of the weights) into a
//   ring of STAGES stages, each completing on the stage's `full` barrier. For a 3x3
//   layer a tile is whole rows of one image, or whole images, and the input box is 4-D
//   (channels, x, y, image): tap (r, s) is the same box moved by (s - 1, r - 1), the
//   copy zero-filling the padding, so a k-tile is (tap, 64 channels). It waits on
//   the stage's `empty` barrier before refilling it. No address arithmetic per row,
//   no per-thread copies: the copy engine gathers the rows, zero-fills what lies past
//   the view (channels past C, rows past the buffer, weight rows past K) and stores
//   them in 128-byte swizzled rows, the layout wgmma reads without bank conflicts.
// - warpgroups 1 and 2 multiply rows 0-63 and 64-127 of the tile by its BN columns,
//   four wgmma per k-tile, keep one group in flight, and release a stage once the
//   MMAs that read it are done (lane 0 of each of the eight warps arrives on `empty`).
// Blocks loop over output tiles (blockIdx.y picks the columns), a few an SM: the
// producer runs up to STAGES k-tiles ahead, into the next tile while the consumers
// are in their epilogue, so the stores of one tile overlap the loads of the next. The
// epilogue writes from registers (bias, residual, ReLU), as conv_mmavec's; split-K
// (blockIdx.z) adds into the workspace instead, the consumers of a tile's last part
// writing the output (splitk_finish_by, with a barrier of theirs alone).
// The host gives it layers whose input view, residual and output allow 16-byte
// aligned rows (convsel.rs, Needs::Tma) and its tensor maps in global memory
// (ConvParams::tma, encoded by the host: the input view over the buffer's full
// capacity in boxes of 128 pixels, the weights in boxes of 256, 128, 64 and 32 channels).
#define TMA_BK 64  // channels per k-tile: one 128-byte swizzled row per operand row

// A CUtensorMap (opaque, 128 bytes; the emulator's own layout where emulated).
struct __align__(64) TmaMap {
    unsigned long long bits[16];
};

__device__ __forceinline__ void mbar_init(unsigned long long* bar, unsigned count) {
#ifdef DGATE_HOST_EMU
    emu_mbar_init(bar, count);
#elif defined(DGATE_WGMMA)
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(count) : "memory");
#endif
}
// The barriers' initialisation, visible to the asynchronous proxy (TMA completions).
__device__ __forceinline__ void mbar_init_fence() {
#ifdef DGATE_WGMMA
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void mbar_arrive(unsigned long long* bar) {
#ifdef DGATE_HOST_EMU
    emu_mbar_arrive(bar, 0);
#elif defined(DGATE_WGMMA)
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(smem_u32(bar)) : "memory");
#endif
}
// Arrives, and expects `bytes` more of asynchronous copies in the current phase.
__device__ __forceinline__ void mbar_arrive_tx(unsigned long long* bar, unsigned bytes) {
#ifdef DGATE_HOST_EMU
    emu_mbar_arrive(bar, bytes);
#elif defined(DGATE_WGMMA)
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(smem_u32(bar)), "r"(bytes)
                 : "memory");
#endif
}
// Waits until the phase of parity `parity` has completed. A fresh barrier is in phase
// 0, so waiting for parity 1 returns at once (the producer's first pass over the ring).
// A phase that has not completed after 2^33 clock cycles (seconds; a legitimate wait is
// microseconds) traps: the launch fails with an error the host reports, where a
// miscounted barrier would otherwise hang the GPU until the process is killed.
__device__ __forceinline__ void mbar_wait(unsigned long long* bar, unsigned parity) {
#ifdef DGATE_HOST_EMU
    emu_mbar_wait(bar, parity);
#elif defined(DGATE_WGMMA)
    const long long t0 = clock64();
    unsigned done;
    do {
        asm volatile(
            "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
            : "=r"(done)
            : "r"(smem_u32(bar)), "r"(parity)
            : "memory");
        if (!done && clock64() - t0 > (1ll << 33)) __trap();
    } while (!done);
#endif
}
// The tensor maps were written to global memory by the host (generic proxy) before the
// launch; TMA reads them through the tensormap proxy.
__device__ __forceinline__ void tma_map_acquire(const TmaMap* map) {
#ifdef DGATE_WGMMA
    asm volatile("fence.proxy.tensormap::generic.acquire.gpu [%0], 128;\n" ::"l"(map) : "memory");
#endif
}
// The box of `map` at element (c0, c1) (innermost first) into shared memory at `dst`
// (1024-byte aligned for the 128-byte swizzle), completing `bar`'s transaction bytes.
__device__ __forceinline__ void tma_load_2d(void* dst, const TmaMap* map, int c0, int c1, unsigned long long* bar) {
#ifdef DGATE_HOST_EMU
    emu_tma_load_2d(dst, map, c0, c1, bar);
#elif defined(DGATE_WGMMA)
    asm volatile(
        "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
            smem_u32(dst)),
        "l"(map), "r"(c0), "r"(c1), "r"(smem_u32(bar))
        : "memory");
#endif
}
// The same for a 4-D map (channels, x, y, image): coordinates may be negative, and
// what lies outside the map is zero (a 3x3 layer's padding).
__device__ __forceinline__ void tma_load_4d(void* dst, const TmaMap* map, int c0, int c1, int c2, int c3,
                                            unsigned long long* bar) {
#ifdef DGATE_HOST_EMU
    emu_tma_load_4d(dst, map, c0, c1, c2, c3, bar);
#elif defined(DGATE_WGMMA)
    asm volatile(
        "cp.async.bulk.tensor.4d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3, %4, %5}], "
        "[%6];\n" ::"r"(smem_u32(dst)),
        "l"(map), "r"(c0), "r"(c1), "r"(c2), "r"(c3), "r"(smem_u32(bar))
        : "memory");
#endif
}
// bar.sync ID (1-15; 0 is __syncthreads) for THREADS threads (a multiple of 32): a
// barrier among some warps of the block, as a warpgroup's. Constant ids, so that ptxas
// reserves only the barriers used.
template <int ID, int THREADS>
__device__ __forceinline__ void named_barrier() {
    static_assert(ID >= 1 && ID < 16 && THREADS % 32 == 0, "bar.sync id and thread count");
#ifdef DGATE_HOST_EMU
    emu_named_barrier(ID, THREADS);
#else
    asm volatile("bar.sync %0, %1;\n" ::"n"(ID), "n"(THREADS) : "memory");
#endif
}

// Descriptor of a K-major wgmma operand in 128-byte swizzled rows (TMA's
// CU_TENSOR_MAP_SWIZZLE_128B): 8-row atoms of 1024 bytes (SBO), the leading offset
// unused; `smem` may step 32 bytes (16 halves of k) into an atom, whose base is
// 1024-byte aligned: the swizzle is a function of the address bits.
__device__ __forceinline__ unsigned long long wg_desc_sw128(const void* smem) {
    return (unsigned long long)((smem_u32(smem) & 0x3ffff) >> 4) | 1ull << 16 | (unsigned long long)(1024 >> 4) << 32 |
           1ull << 62;
}

// Which of ConvParams::tma's maps holds the weights in boxes of BN rows (0: the input).
__device__ __forceinline__ constexpr int tma_weight_map(int bn) {
    return bn == 256 ? 1 : bn == 128 ? 2 : bn == 64 ? 3 : 4;
}

template <int BN, int STAGES>
__device__ __forceinline__ constexpr int tma_smem_bytes() {
    return STAGES * (128 + BN) * TMA_BK * 2 + 2 * STAGES * 8 + 1024;
}
static_assert(DGATE_TMA_SMEM32 == tma_smem_bytes<32, DGATE_TMA_STAGES32>() &&
                  DGATE_TMA_SMEM256 == tma_smem_bytes<256, DGATE_TMA_STAGES256>() &&
                  DGATE_TMA_SMEM128 == tma_smem_bytes<128, DGATE_TMA_STAGES128>() &&
                  DGATE_TMA_SMEM64 == tma_smem_bytes<64, DGATE_TMA_STAGES64>(),
              "the host sizes conv_tma's shared memory differently (convsel.rs)");

template <int BN, int STAGES>
__device__ __forceinline__ void conv_tma(const ConvParams& p) {
    constexpr int BM = 128;
    constexpr int A_BYTES = BM * TMA_BK * 2;
    constexpr int STAGE = (BM + BN) * TMA_BK * 2;
    static_assert(STAGE % 1024 == 0 && A_BYTES % 1024 == 0, "stages of whole 1024-byte swizzle atoms");
    DGATE_DYNAMIC_SHARED(uint4, conv_tma_smem);
    unsigned char* ring = reinterpret_cast<unsigned char*>(conv_tma_smem);
    ring += (1024u - (smem_u32(ring) & 1023u)) & 1023u;
    unsigned long long* full = reinterpret_cast<unsigned long long*>(ring + STAGES * STAGE);
    unsigned long long* empty = full + STAGES;
    const TmaMap* maps = static_cast<const TmaMap*>(p.tma);

    const int M = *p.count * p.P * p.Q;
    const int n0 = (int)blockIdx.y * BN;
    const int chunks = (p.C + TMA_BK - 1) / TMA_BK;  // k-tiles per tap
    const int ktiles = p.R * p.R * chunks;
    const int tiles = (M + BM - 1) / BM * (int)gridDim.y;
    // Split-K (blockIdx.z: this part's k-tiles kt0 .. kt1 - 1 of every tile), as conv_tc's.
    int kt0, kt1, parts;
    bool split;
    if (!conv_k_range(p, M, ktiles, tiles, &kt0, &kt1, &split, &parts)) return;
    const int tid = threadIdx.x;
    if (tid == 0) {
        for (int s = 0; s < STAGES; ++s) {
            mbar_init(&full[s], 1);
            mbar_init(&empty[s], 8);
        }
        mbar_init_fence();
    }
    __syncthreads();

    if (tid < 128) {
        if (tid == 0) {
            tma_map_acquire(&maps[0]);
            tma_map_acquire(&maps[tma_weight_map(BN)]);
            int slot = 0;
            unsigned phase = 0;
            for (int m0 = (int)blockIdx.x * BM; m0 < M; m0 += (int)gridDim.x * BM) {
                // 3x3: the tile's first image and row (tiles are whole rows, or whole images).
                const int img = m0 / (p.H * p.W);
                const int y0 = m0 % (p.H * p.W) / p.W;
                int tap = kt0 / chunks, c0 = kt0 % chunks * TMA_BK;
                for (int kt = kt0; kt < kt1; ++kt) {
                    mbar_wait(&empty[slot], phase ^ 1);
                    unsigned char* a = ring + slot * STAGE;
                    mbar_arrive_tx(&full[slot], STAGE);
                    if (p.R == 1) {
                        tma_load_2d(a, &maps[0], c0, m0, &full[slot]);
                    } else {
                        // Tap (r, s) of pixel (x, y) reads (x + s - 1, y + r - 1): the whole box
                        // shifted, zero where it leaves the image.
                        tma_load_4d(a, &maps[0], c0, tap % 3 - 1, y0 + tap / 3 - 1, img, &full[slot]);
                    }
                    // Weight columns (tap, channel); a k-tile past C reads the next tap's
                    // weights, against input channels the copy made zero.
                    tma_load_2d(a + A_BYTES, &maps[tma_weight_map(BN)], tap * p.C + c0, n0, &full[slot]);
                    c0 += TMA_BK;
                    if (c0 >= p.C) {
                        c0 = 0;
                        ++tap;
                    }
                    if (++slot == STAGES) {
                        slot = 0;
                        phase ^= 1;
                    }
                }
            }
        }
        return;
    }

    const int cw = tid / 128 - 1;     // consumer warpgroup: tile rows 64 cw ..
    const int warp = (tid / 32) % 4;  // its warp: rows 16 warp .. of those
    const int lane = tid % 32;
    const int g = lane / 4;
    const int t = lane % 4;
    // Pre-activation (1x1 layers only, convsel.rs): each thread of the warpgroup
    // rewrites one 16-byte unit (8 channels) of 4 of its 64 rows in place, with those
    // channels' scale and shift requested before the stage's wait.
    const bool pre = p.pre_scale != nullptr;
    const int pj = tid % 8;         // the unit: channels 8 pj .. of the k-tile
    const int pr = tid % 128 / 8;   // rows pr, pr + 16, pr + 32, pr + 48
    int slot = 0;
    unsigned phase = 0;
    for (int m0 = (int)blockIdx.x * BM; m0 < M; m0 += (int)gridDim.x * BM) {
        float acc[1][BN / 8][4];
        zero_acc<1, BN / 8>(acc);
        int held = -1;  // the stage of the MMAs still in flight
        for (int kt = kt0; kt < kt1; ++kt) {
            const int pc = kt * TMA_BK + 8 * pj;
            const bool pin = pre && pc < p.C;  // past C the copy's zeros stay zero
            float4 sc[2], sh[2];
            if (pin) {
                sc[0] = *(const float4*)(p.pre_scale + pc);
                sc[1] = *(const float4*)(p.pre_scale + pc + 4);
                sh[0] = *(const float4*)(p.pre_shift + pc);
                sh[1] = *(const float4*)(p.pre_shift + pc + 4);
            }
            mbar_wait(&full[slot], phase);
            unsigned char* a = ring + slot * STAGE + cw * 64 * (TMA_BK * 2);
            const unsigned char* b = ring + slot * STAGE + A_BYTES;
            if (pre) {
                if (pin) {
#pragma unroll
                    for (int i = 0; i < 4; ++i) {
                        const int r = pr + 16 * i;  // its unit pj sits at pj ^ (r % 8) (swizzle)
                        unsigned char* q = a + r * (TMA_BK * 2) + ((pj ^ (r % 8)) * 16);
                        uint4 v = ld128(q);
                        v.x = pre_act_pair_with(v.x, sc[0].x, sh[0].x, sc[0].y, sh[0].y, p.pre_relu);
                        v.y = pre_act_pair_with(v.y, sc[0].z, sh[0].z, sc[0].w, sh[0].w, p.pre_relu);
                        v.z = pre_act_pair_with(v.z, sc[1].x, sh[1].x, sc[1].y, sh[1].y, p.pre_relu);
                        v.w = pre_act_pair_with(v.w, sc[1].z, sh[1].z, sc[1].w, sh[1].w, p.pre_relu);
                        st128(q, v);
                    }
                }
                fence_proxy_async();            // these writes, before wgmma reads them
                // The warpgroup's rows all rewritten.
                if (cw == 0) {
                    named_barrier<1, 128>();
                } else {
                    named_barrier<2, 128>();
                }
            }
            wgmma_fence();
#pragma unroll
            for (int kk = 0; kk < TMA_BK / 16; ++kk)
                wgmma_f16<BN>(&acc[0][0][0], wg_desc_sw128(a + kk * 32), wg_desc_sw128(b + kk * 32));
            wgmma_commit();
            wgmma_wait<1>();  // the previous k-tile's MMAs are done: its stage is free
            if (held >= 0 && lane == 0) mbar_arrive(&empty[held]);
            held = slot;
            if (++slot == STAGES) {
                slot = 0;
                phase ^= 1;
            }
        }
        wgmma_wait<0>();
        if (lane == 0) mbar_arrive(&empty[held]);
        wgmma_fence_regs<BN / 2>(&acc[0][0][0]);
        mma_epilogue<1, BN / 8>(p, acc, m0 + cw * 64 + warp * 16, n0, M, g, t, split);
        if (split) {
            // The consumers alone (the producer is on its own loop): a named barrier.
            const int tile = m0 / BM * (int)gridDim.y + (int)blockIdx.y;
            splitk_finish_by<__half, BM, BN>(p, M, m0, n0, parts, tile, 128, 256, [] { named_barrier<3, 256>(); });
        }
    }
}

// ---------------------------------------------------------------------------------
// conv_sgemm<BM, BN>_f32: the register-blocked f32 kernel. Block tile BM x BN x 8,
// THREADS threads as TY x TX (TX = 16 along the output channels, 8 for the 32-wide
// tiles of DenseNet's 3x3 layers, which a 64-wide tile would run half empty), each
// thread (BM/TY) x (BN/TX) outputs held in registers as float4-aligned groups of 4 (the
// groups of one thread sit BM/2 or BN/2 apart, so the shared-memory reads of a warp are
// broadcast or conflict-free). Two shared buffers
// with the next k-tile prefetched into registers while the current one is multiplied:
// one barrier per k-tile. Each thread keeps one A row for the whole reduction (its
// pixel decoded once) and walks its reduction columns' (r, s, c) incrementally, so the
// inner loop has no integer division. Any C, K, H, W, stride, padding, views; split-K
// as conv_simt.
#define SG_BK 8
// N (2 or 4) consecutive floats in one 8- or 16-byte load.
template <int N>
__device__ __forceinline__ void ld_floats(const float* src, float* dst) {
#ifdef DGATE_HOST_EMU
    emu_check_align(src, N * 4);
#endif
    if constexpr (N == 4) {
        const float4 v = *(const float4*)src;
        dst[0] = v.x;
        dst[1] = v.y;
        dst[2] = v.z;
        dst[3] = v.w;
    } else {
        const float2 v = *(const float2*)src;
        dst[0] = v.x;
        dst[1] = v.y;
    }
}
#define SG_THREADS 256

// conv_store of 4 consecutive f32 channels k.. of row m (16-byte aligned: see vec_out).
__device__ __forceinline__ void sgemm_store4(const ConvParams& p, int m, int k, const float* acc) {
    float v[4];
#pragma unroll
    for (int j = 0; j < 4; ++j) v[j] = acc[j] + p.bias[k + j];
    if (p.residual != nullptr) {
        const uint4 r = ld128((const float*)p.residual + (size_t)m * p.res_stride + p.res_off + k);
        v[0] += __uint_as_float(r.x);
        v[1] += __uint_as_float(r.y);
        v[2] += __uint_as_float(r.z);
        v[3] += __uint_as_float(r.w);
    }
    if (p.relu) {
#pragma unroll
        for (int j = 0; j < 4; ++j) v[j] = fmaxf(v[j], 0.0f);
    }
    st128((float*)p.out + (size_t)m * p.out_stride + p.out_off + k,
          make_uint4(__float_as_uint(v[0]), __float_as_uint(v[1]), __float_as_uint(v[2]), __float_as_uint(v[3])));
}

template <int BM, int BN, int THREADS>
__device__ __forceinline__ void conv_sgemm_tile(const ConvParams& p, int m0) {
    constexpr int TX = BN >= 64 ? 16 : 8;
    constexpr int TY = THREADS / TX;
    constexpr int TM = BM / TY;
    constexpr int TN = BN / TX;
    constexpr int GM = TM / 4;
    constexpr int GN = TN / 4;
    constexpr int A_PER = BM * SG_BK / THREADS;
    constexpr int B_PER = BN * SG_BK / THREADS;
    static_assert(TM % 4 == 0 && TN % 4 == 0 && TY * TX == THREADS, "tile shape");
    static_assert(A_PER >= 1 && SG_BK % A_PER == 0 && B_PER >= 1 && BN % B_PER == 0, "loads");
    __shared__ __align__(16) float As[2][SG_BK][BM + 4];
    __shared__ __align__(16) float Bs[2][SG_BK][BN + 4];

    const int M = *p.count * p.P * p.Q;
    const int n0 = blockIdx.y * BN;
    const int Kd = p.R * p.R * p.C;
    const int ktiles = (Kd + SG_BK - 1) / SG_BK;
    const int tiles = (M + BM - 1) / BM * (int)gridDim.y;
    const int tile = m0 / BM * (int)gridDim.y + (int)blockIdx.y;
    int kt0, kt1, parts;
    bool split;
    if (!conv_k_range(p, M, ktiles, tiles, &kt0, &kt1, &split, &parts)) return;

    const int tid = threadIdx.x;
    const float* in = (const float*)p.in;
    const float* w = (const float*)p.weight;

    // A: row a_row, columns a_col .. a_col + A_PER - 1 of each k-tile.
    const int a_row = tid / (SG_BK / A_PER);
    const int a_col = (tid % (SG_BK / A_PER)) * A_PER;
    int base, y0, x0;
    conv_row_info(p, m0 + a_row, M, &base, &y0, &x0);
    int kc, kr, ks;  // (c, r, s) of reduction index kt * SG_BK + a_col
    {
        const int kd = kt0 * SG_BK + a_col;
        conv_k_info(p, kd < Kd ? kd : 0, Kd, &kc, &kr, &ks);
    }
    // B: row b_row, columns b_col .. b_col + B_PER - 1.
    const int b_row = tid / (BN / B_PER);
    const int b_col = (tid % (BN / B_PER)) * B_PER;
    const bool b_vec = (B_PER == 4 || B_PER == 2) && p.ldw % B_PER == 0;

    // Four channels of one tap per 16-byte load, where the view allows it (the pixel
    // stride and the offset multiples of 4, C of A_PER; a_col and the tap's first
    // channel kc are then multiples of A_PER, so the columns never cross into the next tap).
    const bool a_vec = A_PER % 4 == 0 && p.C % A_PER == 0 && p.in_stride % 4 == 0 && p.in_off % 4 == 0;
    // Each thread's outputs are groups of 4 consecutive channels: one 16-byte store (and
    // residual load) a group where the output and residual views are 4-channel aligned.
    const bool vec_out = p.out_stride % 4 == 0 && p.out_off % 4 == 0 &&
                         (p.residual == nullptr || (p.res_stride % 4 == 0 && p.res_off % 4 == 0));

    float ra[A_PER], rb[B_PER];
    auto load = [&](int kt) {
        const int kd0 = kt * SG_BK + a_col;
        bool a_loaded = false;
        if constexpr (A_PER % 4 == 0) {
            if (a_vec) {
                const int y = y0 + kr;
                const int x = x0 + ks;
                if (kd0 < Kd && base >= 0 && y >= 0 && y < p.H && x >= 0 && x < p.W) {
                    const float* src = in + (size_t)(base + y * p.W + x) * p.in_stride + p.in_off + kc;
#pragma unroll
                    for (int q = 0; q < A_PER; q += 4) {
                        const uint4 v = ld128(src + q);
                        const int c = kc + q;
                        ra[q] = pre_act(__uint_as_float(v.x), p.pre_scale, p.pre_shift, p.pre_relu, c);
                        ra[q + 1] = pre_act(__uint_as_float(v.y), p.pre_scale, p.pre_shift, p.pre_relu, c + 1);
                        ra[q + 2] = pre_act(__uint_as_float(v.z), p.pre_scale, p.pre_shift, p.pre_relu, c + 2);
                        ra[q + 3] = pre_act(__uint_as_float(v.w), p.pre_scale, p.pre_shift, p.pre_relu, c + 3);
                    }
                } else {
#pragma unroll
                    for (int j = 0; j < A_PER; ++j) ra[j] = 0.0f;
                }
                a_loaded = true;
            }
        }
        if (!a_loaded) {
#pragma unroll
            for (int j = 0; j < A_PER; ++j) {
                int c = kc + j, r = kr, s = ks;
                while (c >= p.C) {
                    c -= p.C;
                    if (++s == p.R) {
                        s = 0;
                        ++r;
                    }
                }
                ra[j] = conv_load_a<float>(p, in, base, y0, x0, kd0 + j < Kd ? c : -1, r, s);
            }
        }
        // Step (kc, kr, ks) to the next k-tile.
        kc += SG_BK;
        while (kc >= p.C) {
            kc -= p.C;
            if (++ks == p.R) {
                ks = 0;
                ++kr;
            }
        }
        const int kd = kt * SG_BK + b_row;
        const int k = n0 + b_col;
        bool loaded = false;
        if constexpr (B_PER == 4 || B_PER == 2) {
            if (b_vec && kd < Kd && k + B_PER - 1 < p.K) {
                ld_floats<B_PER>(w + (size_t)kd * p.ldw + k, rb);
                loaded = true;
            }
        }
        if (!loaded) {
#pragma unroll
            for (int j = 0; j < B_PER; ++j)
                rb[j] = (kd < Kd && k + j < p.K) ? w[(size_t)kd * p.ldw + k + j] : 0.0f;
        }
    };
    auto store = [&](int buf) {
#pragma unroll
        for (int j = 0; j < A_PER; ++j) As[buf][a_col + j][a_row] = ra[j];
#pragma unroll
        for (int j = 0; j < B_PER; ++j) Bs[buf][b_row][b_col + j] = rb[j];
    };

    const int ty = tid / TX;
    const int tx = tid % TX;
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

    load(kt0);
    store(0);
    __syncthreads();
    for (int kt = kt0; kt < kt1; ++kt) {
        const int buf = (kt - kt0) & 1;
        const bool more = kt + 1 < kt1;
        if (more) load(kt + 1);  // global loads in flight during the multiply
#pragma unroll
        for (int kk = 0; kk < SG_BK; ++kk) {
            float a[TM], b[TN];
#pragma unroll
            for (int gi = 0; gi < GM; ++gi) {
                const float4 v = *(const float4*)&As[buf][kk][gi * (BM / GM) + ty * 4];
                a[gi * 4 + 0] = v.x;
                a[gi * 4 + 1] = v.y;
                a[gi * 4 + 2] = v.z;
                a[gi * 4 + 3] = v.w;
            }
#pragma unroll
            for (int gj = 0; gj < GN; ++gj) {
                const float4 v = *(const float4*)&Bs[buf][kk][gj * (BN / GN) + tx * 4];
                b[gj * 4 + 0] = v.x;
                b[gj * 4 + 1] = v.y;
                b[gj * 4 + 2] = v.z;
                b[gj * 4 + 3] = v.w;
            }
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        if (more) store(buf ^ 1);
        __syncthreads();
    }

#pragma unroll
    for (int i = 0; i < TM; ++i) {
        const int m = m0 + (i / 4) * (BM / GM) + ty * 4 + i % 4;
        if (m >= M) continue;
#pragma unroll
        for (int gj = 0; gj < GN; ++gj) {
            const int k0 = n0 + gj * (BN / GN) + tx * 4;
            if (k0 >= p.K) continue;
            if (!split && vec_out && k0 + 3 < p.K) {
                sgemm_store4(p, m, k0, &acc[i][gj * 4]);
                continue;
            }
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int k = k0 + j;
                if (k >= p.K) continue;
                if (split) {
                    atomicAdd(p.workspace + (size_t)m * p.K + k, acc[i][gj * 4 + j]);
                } else {
                    conv_store<float>(p, m, k, acc[i][gj * 4 + j]);
                }
            }
        }
    }
    if (split) splitk_finish<float, BM, BN>(p, M, m0, n0, parts, tile);
}

// Output tiles m0 = blockIdx.x * BM, + gridDim.x * BM, ...: the host sizes the grid for
// the samples it expects live (after a gate: what recent passes left), so a smaller
// survivor count launches no idle blocks, and a larger one is still covered.
template <int BM, int BN, int THREADS>
__device__ __forceinline__ void conv_sgemm(const ConvParams& p) {
    const int M = *p.count * p.P * p.Q;
    for (int m0 = (int)blockIdx.x * BM; m0 < M; m0 += (int)gridDim.x * BM) {
        conv_sgemm_tile<BM, BN, THREADS>(p, m0);
        __syncthreads();  // the next tile reuses the shared memory
    }
}

// conv_halo128_f32: conv_halo's shared input patch in f32, on SIMT FMAs, for 3x3 layers
// of stride 1 and padding 1 on maps whose width is a multiple of 4. Written for
// DenseNet's 3x3 128->32 layers: at 32x32 they were 31% of DenseNet-201's f32 exit
// pass at batch 256 on the H200 (2026-11-28), at 22.6 TFLOP/s in conv_sgemm64x32_f32,
// whose every k-tile gathers its A columns from global memory, decoding each tap.
// Here a block has 128 output pixels and 32 output channels (blockIdx.y), and walks
// the reduction 8 input channels a stage: the patch (the tile's image rows and a
// one-pixel border, [pixel][8 channels]) and the nine taps' weights ([tap][channel][32])
// come in by cp.async, two stages in a ring, and every tap reads the patch where it
// lies. 128 threads as 16 x 8: thread (ty, tx) has output channels tx*4 .. tx*4+3 and
// two groups of four consecutive pixels (g*64 + ty*4 ..), each group within one image
// row. For each kernel row, a group's six patch pixels (a float4 of 4 channels each)
// serve its four pixels at all three taps: 12 loads of 16 bytes per 384 FMAs a
// thread. The eight threads of a quarter warp read one patch address (a broadcast) and
// eight consecutive weight float4s. Same weight packing as conv_sgemm ([(r, s, c)][K]);
// bias, residual and ReLU as conv_sgemm's epilogue; split-K over the 8-channel stages
// (for the few samples left after a gate), as conv_sgemm's.
#define HALO32_CB 8  // input channels a stage
template <int BM>
__device__ __forceinline__ void conv_halo_f32_tile(const ConvParams& p, int m0, int M) {
    constexpr int THREADS = 128;
    constexpr int MAXP = halo_maxp<BM>();
    constexpr int P_FLOATS = MAXP * HALO32_CB;
    constexpr int W_FLOATS = 9 * HALO32_CB * 32;
    constexpr int STAGE = P_FLOATS + W_FLOATS;
    constexpr int P_ITERS = (MAXP * 2 + THREADS - 1) / THREADS;  // 16-byte chunks, 2 a pixel
    constexpr int W_CHUNKS = W_FLOATS / 4;
    constexpr int W_ITERS = (W_CHUNKS + THREADS - 1) / THREADS;
    constexpr int G = BM / 64;  // pixel groups a thread
    static_assert(BM % 64 == 0, "16 x 4 pixels a group row");
    DGATE_DYNAMIC_SHARED(uint4, halo32_smem);
    float* smem = reinterpret_cast<float*>(halo32_smem);

    const int tid = threadIdx.x;
    const int ty = tid / 8;
    const int tx = tid % 8;
    const int n0 = blockIdx.y * 32;
    const HaloPatch hp = halo_patch<BM>(p, m0);
    const int PW = hp.PW;
    const int np = hp.np;
    const int count = *p.count;
    // Split-K over the stages of 8 channels (blockIdx.z), as conv_sgemm's.
    const int chunks = p.C / HALO32_CB;
    const int tiles = (M + BM - 1) / BM * (int)gridDim.y;
    const int tile = m0 / BM * (int)gridDim.y + (int)blockIdx.y;
    int cc0, cc1, parts;
    bool split;
    if (!conv_k_range(p, M, chunks, tiles, &cc0, &cc1, &split, &parts)) return;

    // This thread's patch chunks (4 channels of a pixel): the input pixel, or -1 for the
    // padding and samples past the count (zero-filled).
    int src[P_ITERS];
#pragma unroll
    for (int i = 0; i < P_ITERS; ++i) src[i] = halo_src(p, hp, (tid + i * THREADS) / 2, count);
    // Patch pixel of each group's first pixel at tap (0, 0).
    int prow[G];
#pragma unroll
    for (int g = 0; g < G; ++g) prow[g] = halo_pos(p, hp, g * 64 + ty * 4);

    const float* in = (const float*)p.in;
    const float* w = (const float*)p.weight;
    auto issue = [&](int cc, int slot) {
        float* Ps = smem + slot * STAGE;
        float* Ws = Ps + P_FLOATS;
        const int c0 = cc * HALO32_CB;
#pragma unroll
        for (int i = 0; i < P_ITERS; ++i) {
            const int e = tid + i * THREADS;
            if (e >= np * 2) break;
            const bool ok = src[i] >= 0;
            float* dst = &Ps[(e / 2) * HALO32_CB + (e % 2) * 4];
#ifdef DGATE_HOST_EMU
            emu_check_dynamic_smem(dst, 16);
#endif
            cp_async16(dst, ok ? in + (size_t)src[i] * p.in_stride + p.in_off + c0 + (e % 2) * 4 : in, ok);
        }
#pragma unroll
        for (int i = 0; i < W_ITERS; ++i) {
            const int e = tid + i * THREADS;
            if (e >= W_CHUNKS) break;
            const int row = e / 8;  // tap * 8 + channel
            const int col = (e % 8) * 4;
            float* dst = &Ws[row * 32 + col];
#ifdef DGATE_HOST_EMU
            emu_check_dynamic_smem(dst, 16);
#endif
            cp_async16(dst, w + (size_t)((row / HALO32_CB) * p.C + c0 + row % HALO32_CB) * p.ldw + n0 + col, true);
        }
        cp_async_commit();
    };

    float acc[G * 4][4];
#pragma unroll
    for (int i = 0; i < G * 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.0f;

    issue(cc0, 0);
    for (int cc = cc0; cc < cc1; ++cc) {
        if (cc + 1 < cc1) {
            issue(cc + 1, (cc + 1 - cc0) % 2);
        } else {
            cp_async_commit();  // an empty group keeps the wait count uniform
        }
        cp_async_wait<1>();  // chunk cc has landed (this thread's copies)
        __syncthreads();     // everyone's
        const float* Ps = smem + ((cc - cc0) % 2) * STAGE;
        const float* Ws = Ps + P_FLOATS;
#pragma unroll
        for (int r = 0; r < 3; ++r) {
#pragma unroll
            for (int c4 = 0; c4 < HALO32_CB; c4 += 4) {
                float4 a[G][6];
#pragma unroll
                for (int g = 0; g < G; ++g)
#pragma unroll
                    for (int q = 0; q < 6; ++q) a[g][q] = *(const float4*)&Ps[(prow[g] + r * PW + q) * HALO32_CB + c4];
#pragma unroll
                for (int s = 0; s < 3; ++s)
#pragma unroll
                    for (int c = 0; c < 4; ++c) {
                        const float4 b = *(const float4*)&Ws[((r * 3 + s) * HALO32_CB + c4 + c) * 32 + tx * 4];
#pragma unroll
                        for (int g = 0; g < G; ++g)
#pragma unroll
                            for (int i = 0; i < 4; ++i) {
                                const float4 v = a[g][i + s];
                                const float x = c == 0 ? v.x : c == 1 ? v.y : c == 2 ? v.z : v.w;
                                float* o = acc[g * 4 + i];
                                o[0] = fmaf(x, b.x, o[0]);
                                o[1] = fmaf(x, b.y, o[1]);
                                o[2] = fmaf(x, b.z, o[2]);
                                o[3] = fmaf(x, b.w, o[3]);
                            }
                    }
            }
        }
        __syncthreads();  // the slot is free for chunk cc + 2
    }
    cp_async_wait<0>();

    const bool vec_out = p.out_stride % 4 == 0 && p.out_off % 4 == 0 &&
                         (p.residual == nullptr || (p.res_stride % 4 == 0 && p.res_off % 4 == 0));
    const int k0 = n0 + tx * 4;  // K % 32 == 0: all four channels or none
#pragma unroll
    for (int g = 0; g < G; ++g)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = m0 + g * 64 + ty * 4 + i;
            if (m >= M || k0 >= p.K) continue;
            const float* v = acc[g * 4 + i];
            if (split) {  // a part: its sums into the workspace (splitk_finish writes the output)
                float* ws = p.workspace + (size_t)m * p.K + k0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
                atomicAdd((float4*)ws, make_float4(v[0], v[1], v[2], v[3]));
#else
#pragma unroll
                for (int j = 0; j < 4; ++j) atomicAdd(ws + j, v[j]);
#endif
            } else if (vec_out) {
                sgemm_store4(p, m, k0, acc[g * 4 + i]);
            } else {
#pragma unroll
                for (int j = 0; j < 4; ++j) conv_store<float>(p, m, k0 + j, v[j]);
            }
        }
    if (split) splitk_finish<float, BM, 32>(p, M, m0, n0, parts, tile);
}

template <int BM>
__device__ __forceinline__ void conv_halo_f32(const ConvParams& p) {
    const int M = *p.count * p.P * p.Q;
    for (int m0 = (int)blockIdx.x * BM; m0 < M; m0 += (int)gridDim.x * BM) {
        conv_halo_f32_tile<BM>(p, m0, M);
        __syncthreads();  // the next tile reuses the shared memory
    }
}

DGATE_KERNEL(conv_simt_f32, ConvParams, SIMT_THREADS) { conv_simt<float>(p); }
DGATE_KERNEL(conv_simt_f16, ConvParams, SIMT_THREADS) { conv_simt<__half>(p); }
DGATE_KERNEL(conv_mma_f16, ConvParams, MMA_THREADS) { conv_mma(p); }
// Three blocks an SM, as before split-K's eight-channel read-back (which would take it
// from 80 registers to 94, two blocks).
DGATE_KERNEL_OCC(conv_mmavec_f16, ConvParams, VEC_THREADS, 3) { conv_mmavec(p); }
DGATE_KERNEL(conv_mmaasync_f16, ConvParams, ASY_THREADS) { conv_mmaasync(p); }
// Two blocks per SM (2 x 83 KB of shared memory fit): at most 128 registers.
DGATE_KERNEL_OCC(conv_tc128x128_f16, ConvParams, 256, 2) { conv_tc<128, 128, 2, 4>(p); }
DGATE_KERNEL(conv_tc128x64_f16, ConvParams, 128) { conv_tc<128, 64, 2, 2>(p); }
DGATE_KERNEL(conv_tc64x64_f16, ConvParams, 128) { conv_tc<64, 64, 2, 2>(p); }
DGATE_KERNEL(conv_tc128x32_f16, ConvParams, 128) { conv_tc<128, 32, 4, 1>(p); }
DGATE_KERNEL(conv_tc64x32_f16, ConvParams, 64) { conv_tc<64, 32, 2, 1>(p); }
// Chained tiles (see conv_tc_tile), a few blocks an SM looping over the output: for
// short reductions. Not yet run on a GPU.
DGATE_KERNEL_OCC(conv_tcc128x128_f16, ConvParams, 256, 2) { conv_tc<128, 128, 2, 4, false, TC_BK, true>(p); }
DGATE_KERNEL(conv_tcc128x64_f16, ConvParams, 128) { conv_tc<128, 64, 2, 2, false, TC_BK, true>(p); }
// The pre-activation in registers (RP, above), for pre-activated 1x1 layers (DenseNet's):
// one barrier a k-tile, as without pre-activation, for four times the conversions
// (each A element is transformed by the WN warps that read it).
DGATE_KERNEL_OCC(conv_tc128x128pr_f16, ConvParams, 256, 2) { conv_tc<128, 128, 2, 4, false, TC_BK, false, true>(p); }
DGATE_KERNEL_OCC(conv_tcc128x128pr_f16, ConvParams, 256, 2) { conv_tc<128, 128, 2, 4, false, TC_BK, true, true>(p); }
DGATE_KERNEL(conv_tc64x64pr_f16, ConvParams, 128) { conv_tc<64, 64, 2, 2, false, TC_BK, false, true>(p); }
// Split-K over a thread-block cluster of 2-8 blocks (sm_90; see cluster_reduce_store).
// Not yet run on a GPU.
#ifdef DGATE_HAS_CLUSTER
DGATE_KERNEL_CLUSTER(conv_tc64x64cl4_f16, ConvParams, 128, 4) { conv_tc_cluster<64, 64, 2, 2, 4>(p); }
DGATE_KERNEL_CLUSTER(conv_tc64x64cl8_f16, ConvParams, 128, 8) { conv_tc_cluster<64, 64, 2, 2, 8>(p); }
DGATE_KERNEL_CLUSTER(conv_tc128x32cl8_f16, ConvParams, 128, 8) { conv_tc_cluster<128, 32, 4, 1, 8>(p); }
DGATE_KERNEL_CLUSTER(conv_tc128x128cl4_f16, ConvParams, 256, 4) { conv_tc_cluster<128, 128, 2, 4, 4>(p); }
// A DenseNet layer's 1x1 and 3x3 in one launch (see conv_dense). Not yet run on a GPU.
DGATE_KERNEL_CLUSTER(conv_dense_cl8_f16, DenseParams, DENSE_THREADS, DENSE_CL) { conv_dense<false>(p); }
DGATE_KERNEL_CLUSTER(conv_dense_halo_cl8_f16, DenseParams, DENSE_THREADS, DENSE_CL) { conv_dense<true>(p); }
#endif
// 3x3 layers from a shared input patch (see conv_halo). Not yet run on a GPU.
DGATE_KERNEL(conv_halo128_f16, ConvParams, 128) { conv_halo<128>(p); }
DGATE_KERNEL(conv_halo64_f16, ConvParams, 128) { conv_halo<64>(p); }
// conv_tc's pipeline with Hopper wgmma in place of mma.sync (sm_90a; see above): one
// warpgroup per 64 tile rows. 128-row tiles: two blocks per SM (2 x 82 KB of shared memory).
#ifdef DGATE_HAS_WGMMA
// The widest: 128 accumulators a thread, one block per SM (2 x 60 KB would not leave
// registers for two), for the layers with many output channels.
DGATE_KERNEL(conv_wg128x256_f16, ConvParams, 256) { conv_tc<128, 256, 8, 1, true>(p); }
DGATE_KERNEL_OCC(conv_wg128x128_f16, ConvParams, 256, 2) { conv_tc<128, 128, 8, 1, true>(p); }
DGATE_KERNEL_OCC(conv_wg128x64_f16, ConvParams, 256, 2) { conv_tc<128, 64, 8, 1, true>(p); }
DGATE_KERNEL(conv_wg64x128_f16, ConvParams, 128) { conv_tc<64, 128, 4, 1, true>(p); }
DGATE_KERNEL(conv_wg64x64_f16, ConvParams, 128) { conv_tc<64, 64, 4, 1, true>(p); }
// 64-wide k-tiles: four wgmma instructions per warpgroup between barriers where the
// 32-wide take two, so the per-tile work (barrier, copies, cursor) is half as much per
// MMA. A 4-deep ring of 24-48 KB stages: one block per SM at 128x128 and 128x256, two
// at 128x64. For the large layers at full batch, where the 32-wide wgmma tiles lost to
// mma.sync on the H200. Not yet run on a GPU.
DGATE_KERNEL(conv_wg128x256k64_f16, ConvParams, 256) { conv_tc<128, 256, 8, 1, true, 64>(p); }
DGATE_KERNEL(conv_wg128x128k64_f16, ConvParams, 256) { conv_tc<128, 128, 8, 1, true, 64>(p); }
DGATE_KERNEL_OCC(conv_wg128x64k64_f16, ConvParams, 256, 2) { conv_tc<128, 64, 8, 1, true, 64>(p); }
// TMA and warp-specialised wgmma for 1x1 layers (see conv_tma): a producer warpgroup
// and two consumer warpgroups. Not yet run on a GPU.
DGATE_KERNEL(conv_tma128x256_f16, ConvParams, 384) { conv_tma<256, DGATE_TMA_STAGES256>(p); }
DGATE_KERNEL(conv_tma128x128_f16, ConvParams, 384) { conv_tma<128, DGATE_TMA_STAGES128>(p); }
DGATE_KERNEL(conv_tma128x64_f16, ConvParams, 384) { conv_tma<64, DGATE_TMA_STAGES64>(p); }
// 32 output channels (DenseNet's 3x3 layers): two blocks an SM.
DGATE_KERNEL_OCC(conv_tma128x32_f16, ConvParams, 384, 2) { conv_tma<32, DGATE_TMA_STAGES32>(p); }
#endif
// Two blocks per SM on sm_90 (128 registers, no spills there); sm_80 would spill.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SG128_MIN_BLOCKS 2
#else
#define SG128_MIN_BLOCKS 1
#endif
DGATE_KERNEL_OCC(conv_sgemm128x128_f32, ConvParams, SG_THREADS, SG128_MIN_BLOCKS) {
    conv_sgemm<128, 128, SG_THREADS>(p);
}
DGATE_KERNEL(conv_sgemm128x64_f32, ConvParams, SG_THREADS) { conv_sgemm<128, 64, SG_THREADS>(p); }
DGATE_KERNEL(conv_sgemm64x64_f32, ConvParams, SG_THREADS) { conv_sgemm<64, 64, SG_THREADS>(p); }
// 32 output channels (DenseNet's 3x3 layers): 8x4 outputs a thread, 16 x 8 or 8 x 8 threads.
DGATE_KERNEL(conv_sgemm128x32_f32, ConvParams, 128) { conv_sgemm<128, 32, 128>(p); }
DGATE_KERNEL(conv_sgemm64x32_f32, ConvParams, 64) { conv_sgemm<64, 32, 64>(p); }
// 3x3 layers from a shared input patch in f32 (see conv_halo_f32). Not yet run on a GPU.
DGATE_KERNEL(conv_halo128_f32, ConvParams, 128) { conv_halo_f32<128>(p); }
