//! Which convolution kernel runs a layer: the table of conv.cu's kernels (tile, threads,
//! shared memory, weight packing, what layers each can run), the candidates a policy
//! offers a layer, split-K, and the cost model used where nothing was measured (the
//! measuring itself is `Prepared::tune` in exec.rs).

use crate::plan::{Conv, Plan, View};

/// conv_tc's k-tile width plus padding (halves per shared row) and ring depth; passed
/// to NVRTC and checked against conv.cu's own.
pub(crate) const TC_LDS: usize = 40;
pub(crate) const TC_STAGES: usize = 4;
/// The ring depth of the wgmma tiles with 64-wide k-tiles (`conv_wg*k64`).
pub(crate) const TC_WG64_STAGES: usize = 4;
/// Input patch pixels conv_halo's 128- and 64-pixel blocks hold (checked against conv.cu).
pub(crate) const HALO_MAXP128: usize = 288;
pub(crate) const HALO_MAXP64: usize = 160;

fn halo_max_patch(bm: usize) -> usize {
    if bm == 128 {
        HALO_MAXP128
    } else {
        HALO_MAXP64
    }
}

/// Whether conv_halo's blocks of `bm` output pixels tile an `h x w` map: whole rows of
/// one image (`bm` a multiple of `w` dividing `h * w`) or whole images (`h * w` dividing
/// `bm`), with the input patch (one more row above and below, a column either side)
/// within the block's shared memory.
pub(crate) fn halo_fits(bm: usize, h: usize, w: usize) -> bool {
    let hw = h * w;
    if hw == 0 || w == 0 {
        return false;
    }
    let (imgs, rows) = if hw >= bm {
        if !hw.is_multiple_of(bm) || !bm.is_multiple_of(w) {
            return false;
        }
        (1, bm / w)
    } else {
        if !bm.is_multiple_of(hw) {
            return false;
        }
        (bm / hw, h)
    };
    imgs * (rows + 2) * (w + 2) <= halo_max_patch(bm)
}
/// Floats of padding per row of conv_tc's staged epilogue tile (`BM x (BN + pad)` f32,
/// in the ring's shared memory once the reduction is done); checked as `TC_LDS` is.
pub(crate) const TC_EPI_PAD: usize = 8;
/// The (x, y, image) extent of conv_tma's 4-D input box for a 3x3 layer on an `h x w`
/// map: 128 pixels that are whole rows of one image (`w` dividing 128, and 128 the
/// image), or whole images (`h * w` dividing 128); `None` where neither holds.
pub(crate) fn tma_box(h: usize, w: usize) -> Option<(usize, usize, usize)> {
    let hw = h * w;
    if hw == 0 {
        None
    } else if hw >= 128 {
        (128usize.is_multiple_of(w) && hw.is_multiple_of(128)).then(|| (w, 128 / w, 1))
    } else {
        128usize.is_multiple_of(hw).then(|| (w, h, 128 / hw))
    }
}

/// conv_tma's ring depth at 256, 128, 64 and 32 output channels (stages of (128 + BN) x
/// 64 halves: 48, 32, 24 and 20 KB).
pub(crate) const TMA_STAGES256: usize = 4;
pub(crate) const TMA_STAGES128: usize = 6;
pub(crate) const TMA_STAGES64: usize = 8;
pub(crate) const TMA_STAGES32: usize = 5;

/// conv_tma's dynamic shared memory: the ring, a `full` and an `empty` barrier per
/// stage, and up to 1024 bytes to align the ring for the 128-byte swizzle.
pub(crate) const fn tma_smem(bn: usize, stages: usize) -> u32 {
    (stages * (128 + bn) * 64 * 2 + 2 * stages * 8 + 1024) as u32
}
const MAX_SPLIT_K: usize = 16;

/// conv_dense_cl8_f16 (a DenseNet layer's 1x1 and 3x3 in one launch over a cluster of
/// `DENSE_CL` blocks, conv.cu): the output pixels a cluster takes, the bottleneck and
/// growth channels it is built for, the most 32-channel k-tiles of the 1x1 a block
/// takes, and its dynamic shared memory (checked against conv.cu's).
pub(crate) const DENSE_KERNEL: &str = "conv_dense_cl8_f16";
pub(crate) const DENSE_CL: usize = 8;
pub(crate) const DENSE_ROWS: usize = 64;
pub(crate) const DENSE_B: usize = 128;
pub(crate) const DENSE_G: usize = 32;
pub(crate) const DENSE_MAXKT: usize = 16;
pub(crate) const DENSE_SMEM: u32 = dense_smem(DENSE_ROWS, DENSE_ROWS + 1);
/// conv_dense_halo_cl8_f16: the same layer on maps with sides a multiple of 8, larger
/// than 8x8, a cluster an 8x8 tile; its 1x1 runs on the tile's 10x10 halo (`DENSE_HALO`
/// pixels of 128 rows) so that the 3x3 reads the bottleneck around the tile.
pub(crate) const DENSE_HALO_KERNEL: &str = "conv_dense_halo_cl8_f16";
pub(crate) const DENSE_HALO: usize = 100;
pub(crate) const DENSE_HALO_SMEM: u32 = dense_smem(128, DENSE_HALO);

/// conv_dense's shared memory (conv.cu's DenseLayout) for `rows` rows of the 1x1 and a
/// bottleneck slice of `slice` rows: the ring, or the 1x1's staged partial if larger,
/// then the 3x3's partial, the pre-activation, the slice and the 3x3's weights.
const fn dense_smem(rows: usize, slice: usize) -> u32 {
    let ring = 3 * (rows + DENSE_B) * TC_LDS * 2;
    let partial1 = rows * (DENSE_B + TC_EPI_PAD) * 4;
    let partial3 = DENSE_ROWS * (DENSE_G + TC_EPI_PAD) * 4;
    let pre = 2 * DENSE_MAXKT * 32 * 4;
    let weights3 = 9 * DENSE_G * 24 * 2;
    let first = if ring > partial1 { ring } else { partial1 };
    (first + partial3 + pre + slice * 24 * 2 + weights3) as u32
}

/// The fused kernel for a DenseNet layer on an `h x w` map, with its shared memory and
/// output pixels a cluster: conv_dense_cl8_f16 where `h * w` divides DENSE_ROWS,
/// conv_dense_halo_cl8_f16 where both sides are multiples of 8 (an 8x8 tile a cluster).
pub(crate) fn dense_kernel(h: usize, w: usize) -> Option<(&'static str, u32)> {
    let hw = h * w;
    if hw > 0 && DENSE_ROWS.is_multiple_of(hw) {
        Some((DENSE_KERNEL, DENSE_SMEM))
    } else if hw > 0 && h.is_multiple_of(8) && w.is_multiple_of(8) {
        Some((DENSE_HALO_KERNEL, DENSE_HALO_SMEM))
    } else {
        None
    }
}

/// Which layers a convolution kernel can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Any C, K, view and pre-activation.
    Any,
    /// Channels, strides and offsets aligned for 16-byte loads (see `vec_aligned`).
    Aligned,
    /// Aligned, no pre-activation, at least 128 output channels.
    AlignedPlainWide,
    /// Aligned 3x3, stride 1, padding 1, C and K multiples of 32, no pre-activation, and
    /// a block's input patch within `halo_max_patch` (conv_halo; see `halo_fits`).
    Halo3x3,
    /// Aligned, and 1x1 of stride 1 (conv_tma: a plain GEMM whose operands TMA copies
    /// as 2-D boxes; pre-activation allowed) or 3x3 of stride 1 and padding 1 without
    /// pre-activation on a map that 128-pixel tiles of whole rows or whole images cover
    /// (`tma_box`; the input in 4-D boxes).
    Tma,
    /// No single layer: a kernel for two layers at once (conv_dense; exec.rs decides
    /// where it applies).
    Pair,
    /// Aligned, pre-activated, and 1x1 without padding: no tap is padding, so the
    /// pre-activation may go onto the MMA fragments (conv_tc's `pr` kernels).
    Pre1x1,
}

/// One convolution kernel of conv.cu and how to launch it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ConvKernel {
    pub name: &'static str,
    pub dtype: &'static str,
    /// Block tile (output pixels, output channels, reduction step).
    pub tile: (usize, usize, usize),
    pub threads: u32,
    /// Dynamic shared memory per block, bytes.
    pub smem: u32,
    /// Weight packed `[K][(r, s, c)]` (else `[(r, s, c)][K]`).
    pub k_major: bool,
    /// Supports split-K through the workspace.
    pub split: bool,
    pub needs: Needs,
    /// Loops over output tiles (grid-stride in m), so the grid may be sized for the
    /// samples expected live rather than for the whole batch.
    pub m_loop: bool,
    /// Cost model (used where nothing was measured): relative throughput of a full tile.
    pub efficiency: f64,
    /// Uses Hopper wgmma: compiled for sm_90a only (elsewhere absent from the cubin).
    pub wgmma: bool,
    /// Blocks an SM to launch at most (the kernel loops over the rest of the output
    /// tiles, chaining one into the next), or 0 for a block per tile.
    pub resident: usize,
    /// Whether the cost model may choose it where nothing was measured: false for the
    /// kernels no device run has timed yet, which only tuning (or a policy naming them
    /// alone) runs.
    pub modelled: bool,
    /// Split-K over a thread-block cluster of this many blocks (sm_90), the parts summed
    /// in distributed shared memory: launched with exactly `cluster` k-ranges (gridDim.z),
    /// one output tile a cluster; 0 for the other kernels.
    pub cluster: usize,
}

const fn plain(
    name: &'static str,
    dtype: &'static str,
    tile: (usize, usize, usize),
    threads: u32,
    (k_major, split, needs): (bool, bool, Needs),
    efficiency: f64,
) -> ConvKernel {
    ConvKernel {
        name,
        dtype,
        tile,
        threads,
        smem: 0,
        k_major,
        split,
        needs,
        m_loop: false,
        efficiency,
        wgmma: false,
        resident: 0,
        modelled: true,
        cluster: 0,
    }
}

/// `k` with `m_loop` set (its kernel loops over output tiles).
const fn looped(mut k: ConvKernel) -> ConvKernel {
    k.m_loop = true;
    k
}

/// Bytes past a conv_tc / conv_wg ring for the pre-activation of each stage's k-tile:
/// a scale and a shift (f32) for each of its `bk` channels.
const fn tc_pre_bytes(bk: usize, stages: usize) -> usize {
    stages * bk * 2 * 4
}

/// Shared memory of a conv_tc / conv_wg block: the larger of its operand ring and the
/// f32 tile its epilogue stages (the kernel stages only where it was given that much).
const fn tc_smem(bm: usize, bn: usize, ring: usize) -> u32 {
    let epilogue = bm * (bn + TC_EPI_PAD) * 4;
    (if ring > epilogue { ring } else { epilogue }) as u32
}

/// conv_halo: `bm` output pixels by 32 output channels, 128 threads, two stages of the
/// input patch and the nine taps' weights for 32 channels; no split-K; the weights as
/// conv_tc packs them.
const fn halo(name: &'static str, bm: usize, efficiency: f64) -> ConvKernel {
    let patch = if bm == 128 { HALO_MAXP128 } else { HALO_MAXP64 };
    ConvKernel {
        name,
        dtype: "f16",
        tile: (bm, 32, 32),
        threads: 128,
        smem: (2 * (patch + 9 * 32) * 40 * 2) as u32,
        k_major: true,
        split: false,
        needs: Needs::Halo3x3,
        m_loop: true,
        efficiency,
        wgmma: false,
        resident: 0,
        modelled: false,
        cluster: 0,
    }
}

/// conv_halo128_f32: 128 output pixels by 32 output channels, 128 threads, two stages of
/// the input patch and the nine taps' weights for 8 input channels (f32: a stage is 72
/// reduction columns); split-K over the stages; conv_sgemm's weight packing. Maps whose
/// width is a multiple of 4 only (see `applies`).
const fn halo_f32(name: &'static str, efficiency: f64) -> ConvKernel {
    let mut k = halo(name, 128, efficiency);
    k.dtype = "f32";
    k.tile = (128, 32, 72);
    k.smem = (2 * (HALO_MAXP128 + 9 * 32) * 8 * 4) as u32;
    k.k_major = false;
    k.split = true;
    k
}

/// conv_tma: a 128 x `bn` tile, one producer and two consumer warpgroups, `stages`
/// k-tiles of 64 in a TMA ring, `resident` blocks an SM looping over the output tiles;
/// split-K; the weights as conv_tc packs them.
const fn tma(
    name: &'static str,
    bn: usize,
    stages: usize,
    resident: usize,
    efficiency: f64,
) -> ConvKernel {
    ConvKernel {
        name,
        dtype: "f16",
        tile: (128, bn, 64),
        threads: 384,
        smem: tma_smem(bn, stages),
        k_major: true,
        split: true,
        needs: Needs::Tma,
        m_loop: true,
        efficiency,
        wgmma: true,
        resident,
        modelled: false,
        cluster: 0,
    }
}

/// A register-blocked f32 tile (conv_sgemm): any layer, split-K, looping over output tiles.
const fn sgemm(
    name: &'static str,
    bm: usize,
    bn: usize,
    threads: u32,
    efficiency: f64,
) -> ConvKernel {
    looped(plain(
        name,
        "f32",
        (bm, bn, 8),
        threads,
        (false, true, Needs::Any),
        efficiency,
    ))
}

const fn tc(name: &'static str, bm: usize, bn: usize, threads: u32, efficiency: f64) -> ConvKernel {
    ConvKernel {
        name,
        dtype: "f16",
        tile: (bm, bn, 32),
        threads,
        smem: tc_smem(
            bm,
            bn,
            (bm + bn) * TC_LDS * 2 * TC_STAGES + tc_pre_bytes(32, TC_STAGES),
        ),
        k_major: true,
        split: true,
        needs: Needs::Aligned,
        m_loop: true,
        efficiency,
        wgmma: false,
        resident: 0,
        modelled: true,
        cluster: 0,
    }
}

/// conv_tc with chained tiles: `resident` blocks an SM, each looping over output tiles
/// and starting the next tile's copies before the current tile's epilogue; no split-K.
const fn tcc(
    name: &'static str,
    bm: usize,
    bn: usize,
    threads: u32,
    resident: usize,
    efficiency: f64,
) -> ConvKernel {
    let mut k = tc(name, bm, bn, threads, efficiency);
    k.split = false;
    k.resident = resident;
    k.modelled = false;
    k
}

/// A conv_tc or conv_tcc tile `k` whose kernel applies the pre-activation to the A
/// fragments in registers: only for pre-activated 1x1 layers; only tuning picks it.
const fn pre_in_registers(mut k: ConvKernel) -> ConvKernel {
    k.needs = Needs::Pre1x1;
    k.modelled = false;
    k
}

/// conv_tc with split-K over a cluster of `cluster` blocks (sm_90): the parts summed in
/// distributed shared memory rather than by atomics into the workspace and a ticket, so
/// no dependent round trip to L2 follows the reduction. One tile a cluster (no m loop);
/// only tuning picks them.
const fn tc_cluster(
    name: &'static str,
    bm: usize,
    bn: usize,
    threads: u32,
    cluster: usize,
    efficiency: f64,
) -> ConvKernel {
    let mut k = tc(name, bm, bn, threads, efficiency);
    k.split = false;
    k.m_loop = false;
    k.modelled = false;
    k.cluster = cluster;
    k
}

/// conv_tc's pipeline on Hopper wgmma: one 128-thread warpgroup per 64 tile rows,
/// operands in unpadded core-matrix order (32 halves per row and stage), a ring one
/// stage deeper than conv_tc's (an MMA group stays in flight across the barrier).
const fn wg(name: &'static str, bm: usize, bn: usize, efficiency: f64) -> ConvKernel {
    let mut k = tc(name, bm, bn, (bm / 64 * 128) as u32, efficiency);
    k.smem = tc_smem(
        bm,
        bn,
        (bm + bn) * 32 * 2 * (TC_STAGES + 1) + tc_pre_bytes(32, TC_STAGES + 1),
    );
    k.wgmma = true;
    k
}

/// `wg` with 64-wide k-tiles: four MMA instructions per warpgroup and barrier, a ring
/// of TC_WG64_STAGES stages of (bm + bn) x 64 halves.
const fn wg64(name: &'static str, bm: usize, bn: usize, efficiency: f64) -> ConvKernel {
    let mut k = wg(name, bm, bn, efficiency);
    k.tile = (bm, bn, 64);
    k.modelled = false;
    k.smem = tc_smem(
        bm,
        bn,
        (bm + bn) * 64 * 2 * TC_WG64_STAGES + tc_pre_bytes(64, TC_WG64_STAGES),
    );
    k
}

/// Every convolution kernel. Families that share a weight packing can be mixed per
/// batch size; the `auto` policy picks among conv_sgemm* (f32) and conv_tc* (f16).
pub(crate) const CONV_KERNELS: &[ConvKernel] = &[
    plain(
        "conv_simt_f32",
        "f32",
        (64, 64, 16),
        256,
        (false, true, Needs::Any),
        0.5,
    ),
    sgemm("conv_sgemm128x128_f32", 128, 128, 256, 1.0),
    sgemm("conv_sgemm128x64_f32", 128, 64, 256, 0.85),
    sgemm("conv_sgemm64x64_f32", 64, 64, 256, 0.7),
    // 32 output channels (DenseNet's 3x3 layers), where a 64-wide tile idles half its
    // threads. Not yet measured on a GPU.
    sgemm("conv_sgemm128x32_f32", 128, 32, 128, 0.75),
    sgemm("conv_sgemm64x32_f32", 64, 32, 64, 0.6),
    // 3x3 layers from a shared input patch, f32 (DenseNet's 3x3 128->32). Not yet run on
    // a GPU.
    halo_f32("conv_halo128_f32", 0.8),
    plain(
        "conv_simt_f16",
        "f16",
        (64, 64, 16),
        256,
        (false, true, Needs::Any),
        0.1,
    ),
    plain(
        "conv_mma_f16",
        "f16",
        (64, 64, 32),
        128,
        (false, false, Needs::Any),
        0.4,
    ),
    plain(
        "conv_mmavec_f16",
        "f16",
        (128, 64, 32),
        256,
        (true, true, Needs::Aligned),
        0.6,
    ),
    plain(
        "conv_mmaasync_f16",
        "f16",
        (128, 128, 32),
        256,
        (true, true, Needs::AlignedPlainWide),
        0.8,
    ),
    tc("conv_tc128x128_f16", 128, 128, 256, 1.0),
    tc("conv_tc128x64_f16", 128, 64, 128, 0.85),
    tc("conv_tc64x64_f16", 64, 64, 128, 0.7),
    tc("conv_tc128x32_f16", 128, 32, 128, 0.6),
    tc("conv_tc64x32_f16", 64, 32, 64, 0.5),
    // Not yet measured on a GPU; the cost model assumes wgmma's higher peak.
    wg("conv_wg128x256_f16", 128, 256, 1.3),
    wg("conv_wg128x128_f16", 128, 128, 1.25),
    wg("conv_wg128x64_f16", 128, 64, 1.05),
    wg("conv_wg64x128_f16", 64, 128, 0.95),
    wg("conv_wg64x64_f16", 64, 64, 0.85),
    // Not yet run on a GPU, and so, like the two families below, never the cost model's
    // choice (`modelled: false`): only a measurement (tuning) picks them.
    wg64("conv_wg128x256k64_f16", 128, 256, 1.2),
    wg64("conv_wg128x128k64_f16", 128, 128, 1.15),
    wg64("conv_wg128x64k64_f16", 128, 64, 1.0),
    // Chained tiles for short reductions. Not yet run on a GPU.
    tcc("conv_tcc128x128_f16", 128, 128, 256, 2, 0.9),
    tcc("conv_tcc128x64_f16", 128, 64, 128, 3, 0.8),
    // Split-K through a thread-block cluster (sm_90). Not yet run on a GPU.
    tc_cluster("conv_tc64x64cl4_f16", 64, 64, 128, 4, 0.7),
    tc_cluster("conv_tc64x64cl8_f16", 64, 64, 128, 8, 0.7),
    tc_cluster("conv_tc128x32cl8_f16", 128, 32, 128, 8, 0.6),
    tc_cluster("conv_tc128x128cl4_f16", 128, 128, 256, 4, 1.0),
    // A DenseNet layer's 1x1 and 3x3 in one launch (sm_90). Not yet run on a GPU; never
    // a candidate for one layer.
    dense(DENSE_KERNEL, DENSE_SMEM),
    dense(DENSE_HALO_KERNEL, DENSE_HALO_SMEM),
    // 3x3 layers from a shared input patch. Not yet run on a GPU.
    halo("conv_halo128_f16", 128, 0.5),
    halo("conv_halo64_f16", 64, 0.45),
    // 1x1 layers by TMA and warp-specialised wgmma (sm_90a). Not yet run on a GPU.
    tma("conv_tma128x256_f16", 256, TMA_STAGES256, 1, 1.35),
    tma("conv_tma128x128_f16", 128, TMA_STAGES128, 1, 1.3),
    tma("conv_tma128x64_f16", 64, TMA_STAGES64, 1, 1.1),
    tma("conv_tma128x32_f16", 32, TMA_STAGES32, 2, 0.9),
    // conv_tc's tiles that DenseNet-201's pre-activated 1x1 layers run on (the
    // 2026-11-28 profiles), the pre-activation in registers. Not yet run on a GPU.
    pre_in_registers(tc("conv_tc128x128pr_f16", 128, 128, 256, 1.0)),
    pre_in_registers(tcc("conv_tcc128x128pr_f16", 128, 128, 256, 2, 0.9)),
    pre_in_registers(tc("conv_tc64x64pr_f16", 64, 64, 128, 0.7)),
];

pub(crate) fn conv_kernel_info(name: &str) -> Option<&'static ConvKernel> {
    CONV_KERNELS.iter().find(|k| k.name == name)
}

/// Where the candidates for one layer come from: the `auto` policy's family, or one
/// named kernel.
fn family_of(name: &str) -> &str {
    if name.starts_with("conv_tc") {
        "conv_tc"
    } else if name.starts_with("conv_wg") {
        "conv_wg"
    } else if name.starts_with("conv_halo") {
        "conv_halo"
    } else if name.starts_with("conv_tma") {
        "conv_tma"
    } else if name.starts_with("conv_sgemm") {
        "conv_sgemm"
    } else {
        name
    }
}

/// Whether conv_mmavec's 16-byte loads and paired stores are aligned for this layer.
pub(crate) fn vec_aligned(plan: &Plan, c: &Conv) -> bool {
    let stride = |v: &View| plan.buffers[v.buf].channels;
    c.input.channels.is_multiple_of(8)
        && c.output.channels.is_multiple_of(8)
        && stride(&c.input).is_multiple_of(8)
        && c.input.offset.is_multiple_of(8)
        && stride(&c.output).is_multiple_of(2)
        && c.output.offset.is_multiple_of(2)
        && c.residual
            .as_ref()
            .is_none_or(|r| stride(r).is_multiple_of(2) && r.offset.is_multiple_of(2))
}

fn applies(k: &ConvKernel, plan: &Plan, c: &Conv) -> bool {
    match k.needs {
        Needs::Any => true,
        Needs::Aligned => vec_aligned(plan, c),
        Needs::AlignedPlainWide => {
            vec_aligned(plan, c) && c.pre.is_none() && c.output.channels >= 128
        }
        Needs::Halo3x3 => {
            vec_aligned(plan, c)
                && c.kernel == 3
                && c.stride == 1
                && c.pad == 1
                && (c.out_h, c.out_w) == (c.in_h, c.in_w)
                && c.input.channels.is_multiple_of(32)
                && c.output.channels.is_multiple_of(32)
                && c.pre.is_none()
                && halo_fits(k.tile.0, c.in_h, c.in_w)
                // The f32 kernel's thread owns four consecutive pixels of one row.
                && (k.dtype != "f32" || c.in_w.is_multiple_of(4))
        }
        Needs::Pair => false,
        Needs::Pre1x1 => vec_aligned(plan, c) && c.pre.is_some() && (c.kernel, c.pad) == (1, 0),
        Needs::Tma => {
            let same = (c.out_h, c.out_w) == (c.in_h, c.in_w) && c.stride == 1;
            vec_aligned(plan, c)
                && same
                && match (c.kernel, c.pad) {
                    (1, 0) => true,
                    (3, 1) => c.pre.is_none() && tma_box(c.in_h, c.in_w).is_some(),
                    _ => false,
                }
        }
    }
}

/// A conv_dense kernel's entry: 64 output pixels by the 128 bottleneck channels a cluster.
const fn dense(name: &'static str, smem: u32) -> ConvKernel {
    ConvKernel {
        name,
        dtype: "f16",
        tile: (DENSE_ROWS, DENSE_B, 32),
        threads: 256,
        smem,
        k_major: true,
        split: false,
        needs: Needs::Pair,
        m_loop: false,
        efficiency: 0.5,
        wgmma: false,
        resident: 0,
        modelled: false,
        cluster: DENSE_CL,
    }
}

/// Whether convolutions `a` then `b` form a DenseNet layer that conv_dense_cl8_f16 runs
/// in one launch: `a` a 1x1 of stride 1 without padding or residual (pre-activation
/// allowed) from C channels (a multiple of 32, at most DENSE_CL * DENSE_MAXKT * 32) into
/// exactly the DENSE_B channels `b` reads, `b` a 3x3 of stride 1 and padding 1 onto
/// DENSE_G channels without pre-activation or residual, on a map [`dense_kernel`]
/// takes, with views aligned for the kernel's 16-byte loads and 8-byte
/// stores, and neither output overlapping `a`'s input (other clusters read it while
/// this one writes).
pub(crate) fn dense_pair(plan: &Plan, a: &Conv, b: &Conv) -> bool {
    let stride = |v: &View| plan.buffers[v.buf].channels;
    let disjoint = |x: &View, y: &View| {
        x.buf != y.buf || x.offset + x.channels <= y.offset || y.offset + y.channels <= x.offset
    };
    let same = |c: &Conv| (c.in_h, c.in_w, c.out_h, c.out_w) == (a.in_h, a.in_w, a.in_h, a.in_w);
    (a.kernel, a.stride, a.pad) == (1, 1, 0)
        && (b.kernel, b.stride, b.pad) == (3, 1, 1)
        && same(a)
        && same(b)
        && dense_kernel(a.in_h, a.in_w).is_some()
        && a.residual.is_none()
        && b.residual.is_none()
        && b.pre.is_none()
        && a.input.channels.is_multiple_of(32)
        && a.input.channels <= DENSE_CL * DENSE_MAXKT * 32
        && stride(&a.input).is_multiple_of(8)
        && a.input.offset.is_multiple_of(8)
        && a.output.channels == DENSE_B
        && b.input == a.output
        && b.output.channels == DENSE_G
        && [&a.output, &b.output]
            .iter()
            .all(|v| stride(v).is_multiple_of(4) && v.offset.is_multiple_of(4))
        && disjoint(&a.output, &a.input)
        && disjoint(&b.output, &a.input)
        && disjoint(&b.output, &a.output)
}

/// Whether `policy` names something [`conv_candidates`] understands for `dtype`.
pub(crate) fn policy_known(policy: &str, dtype: &str) -> bool {
    policy == "auto"
        || ["conv_tc_f16", "conv_wg_f16", "conv_tma_f16"].contains(&policy) && dtype == "f16"
        || policy == format!("conv_sgemm_{dtype}") && dtype == "f32"
        || conv_kernel_info(policy).is_some_and(|k| k.dtype == dtype && k.needs != Needs::Pair)
}

/// The kernels one convolution may use under `policy`, all with one weight packing:
/// `auto` (f32: the conv_sgemm tiles; f16: the conv_tc tiles and, on sm_90, the
/// conv_wg ones, which share their weight packing), a family (`conv_sgemm_f32`,
/// `conv_tc_f16`, `conv_wg_f16`, `conv_tma_f16`), or one kernel by name. Where none applies (the
/// aligned-only kernels on an unaligned layer) it falls back along
/// conv_mmaasync_f16 -> conv_mmavec_f16 -> conv_mma_f16. Which candidate runs, and with
/// how many k-splits, is chosen per batch size (measured by [`Prepared::tune`], else
/// by the cost model of [`model_choice`]).
pub(crate) fn conv_candidates(
    policy: &str,
    dtype: &str,
    plan: &Plan,
    c: &Conv,
) -> Vec<&'static ConvKernel> {
    let families: &[&str] = match policy {
        "auto" if dtype == "f32" => &["conv_sgemm", "conv_halo"],
        "auto" => &["conv_tc", "conv_wg", "conv_halo", "conv_tma"],
        "conv_tc_f16" => &["conv_tc"],
        "conv_wg_f16" => &["conv_wg"],
        "conv_tma_f16" => &["conv_tma"],
        "conv_sgemm_f32" => &["conv_sgemm"],
        _ => &[],
    };
    let mut cands: Vec<&'static ConvKernel> = match conv_kernel_info(policy) {
        Some(k) => vec![k],
        None => CONV_KERNELS
            .iter()
            .filter(|k| k.dtype == dtype && families.contains(&family_of(k.name)))
            .collect(),
    };
    cands.retain(|k| applies(k, plan, c));
    // `auto` also offers the previous default, which its candidates are checked
    // against while tuning (and which then only runs where it is the fastest).
    if policy == "auto" && !cands.is_empty() {
        if let Some(r) = reference_kernel(dtype, plan, c) {
            if r.k_major == cands[0].k_major && !cands.iter().any(|k| k.name == r.name) {
                cands.push(r);
            }
        }
    }
    if cands.is_empty() {
        let fallback = ["conv_mmavec_f16", "conv_mma_f16", "conv_simt_f32"];
        cands.extend(
            fallback
                .iter()
                .filter_map(|n| conv_kernel_info(n))
                .filter(|k| k.dtype == dtype && applies(k, plan, c))
                .take(1),
        );
    }
    cands
}

/// The kernel every other `auto` candidate is checked against while tuning: the
/// previous default of the same weight packing, which the H200 run of 2026-11-27
/// checked against the CPU reference (`docs/performance.md`). Tuning also times it,
/// so `auto` keeps it wherever a newer tile is not faster.
pub(crate) fn reference_kernel(dtype: &str, plan: &Plan, c: &Conv) -> Option<&'static ConvKernel> {
    let names: &[&str] = if dtype == "f32" {
        &["conv_simt_f32"]
    } else {
        &["conv_mmaasync_f16", "conv_mmavec_f16"]
    };
    names
        .iter()
        .filter_map(|n| conv_kernel_info(n))
        .find(|k| k.dtype == dtype && applies(k, plan, c))
}

/// The kernel a policy gives one convolution, or `family*` where it leaves the tile
/// to be chosen per batch size.
pub(crate) fn choose_conv_kernel(policy: &str, dtype: &str, plan: &Plan, c: &Conv) -> String {
    let cands = conv_candidates(policy, dtype, plan, c);
    match cands.as_slice() {
        [one] => one.name.to_string(),
        [first, ..] => format!("{}*", family_of(first.name)),
        [] => String::new(),
    }
}

/// (candidate index, k-splits) for a layer of GEMM shape `(m, k, kd)` by a cost
/// model: waves of one block per SM, each the block's tile work over the kernel's
/// relative throughput. Used where nothing was measured (the emulator, or
/// `DGATE_AUTOTUNE=0`).
pub(crate) fn model_choice(
    cands: &[&'static ConvKernel],
    (m, k, kd): (usize, usize, usize),
    sms: usize,
    workspace_floats: usize,
) -> (usize, usize) {
    // Kernels no device has timed only where nothing else can run the layer.
    let any_modelled = cands.iter().any(|c| c.modelled);
    let mut best = (0, 1, f64::INFINITY);
    for (i, cand) in cands.iter().enumerate() {
        if any_modelled && !cand.modelled {
            continue;
        }
        let (bm, bn, bk) = cand.tile;
        let splits = if cand.split {
            split_k(cand.tile, (m, k, kd), sms, workspace_floats)
        } else {
            1
        };
        let blocks = m.div_ceil(bm) * k.div_ceil(bn) * splits;
        let waves = blocks.div_ceil(sms.max(1));
        let steps = kd.div_ceil(bk).div_ceil(splits) * bk;
        let cost = waves as f64 * (bm * bn * steps) as f64 / cand.efficiency;
        if cost < best.2 {
            best = (i, splits, cost);
        }
    }
    (best.0, best.1)
}

/// How many k-ranges to split a conv_mmavec launch into: enough blocks to fill the
/// GPU when the output alone gives fewer than half a wave.
pub(crate) fn split_k(
    (tile_m, tile_n, tile_k): (usize, usize, usize),
    (m, k, kd): (usize, usize, usize),
    sms: usize,
    workspace_floats: usize,
) -> usize {
    let tiles = m.div_ceil(tile_m) * k.div_ceil(tile_n);
    let ktiles = kd.div_ceil(tile_k);
    if tiles * 2 > sms || ktiles < 8 || m * k > workspace_floats {
        return 1;
    }
    sms.div_ceil(tiles).min(ktiles / 4).clamp(1, MAX_SPLIT_K)
}

/// The k-splits that tuning measures for a split-K tile besides the unsplit launch: the
/// model's [`split_k`] and 2, 4 and 8, where the output alone gives fewer than four blocks
/// an SM, each part keeps at least four k-tiles, the split launch stays within eight
/// blocks an SM, and the workspace holds the output. A full wave of one block an SM, each
/// looping over a long k (DenseNet's 3x3 layers at 8x8, the layers after a gate), waits
/// on memory latency that more, shorter blocks would overlap.
pub(crate) fn split_tries(
    tile: (usize, usize, usize),
    (m, k, kd): (usize, usize, usize),
    sms: usize,
    workspace_floats: usize,
) -> Vec<usize> {
    let (tile_m, tile_n, tile_k) = tile;
    let tiles = m.div_ceil(tile_m) * k.div_ceil(tile_n);
    let ktiles = kd.div_ceil(tile_k);
    let mut out = Vec::new();
    let model = split_k(tile, (m, k, kd), sms, workspace_floats);
    if model > 1 {
        out.push(model);
    }
    if tiles >= 4 * sms || m * k > workspace_floats {
        return out;
    }
    for s in [2, 4, 8] {
        if split_worth_timing(tiles, ktiles, s, sms) && !out.contains(&s) {
            out.push(s);
        }
    }
    out
}

/// Whether tuning times a cluster-split tile on a layer of GEMM shape `(m, k, kd)`: where
/// [`split_tries`] would try a split of the cluster's size (the output alone gives fewer
/// than four blocks an SM, each part keeps at least four k-tiles, the launch stays within
/// eight blocks an SM). Elsewhere a split does not pay, and timing it costs tuning time.
pub(crate) fn cluster_tried(
    kernel: &ConvKernel,
    (m, k, kd): (usize, usize, usize),
    sms: usize,
) -> bool {
    let (tile_m, tile_n, tile_k) = kernel.tile;
    let tiles = m.div_ceil(tile_m) * k.div_ceil(tile_n);
    kernel.cluster > 0 && split_worth_timing(tiles, kd.div_ceil(tile_k), kernel.cluster, sms)
}

/// Whether tuning times a split into `s` parts of an output of `tiles` tiles over `ktiles`
/// k-tiles (see [`split_tries`]).
fn split_worth_timing(tiles: usize, ktiles: usize, s: usize, sms: usize) -> bool {
    tiles < 4 * sms && s <= ktiles / 4 && s <= MAX_SPLIT_K && tiles * s <= 8 * sms
}

#[cfg(test)]
mod kernel_choice {
    use super::*;
    use crate::backend::cuda::reference::Rng;
    use crate::backend::cuda::synthetic::{buf, conv_op, random_pre, single_op_plan, view};
    use crate::plan::Op;

    /// A single-conv plan: C -> K, 3x3 at `hw`, optional pre-activation, input view at
    /// `in_off` of a buffer `in_stride` channels wide.
    fn plan(c: usize, k: usize, hw: usize, pre: bool, window: (usize, usize)) -> Plan {
        plan_rs(c, k, hw, (3, 1), pre, window)
    }

    /// [`plan`] with an `r` x `r` kernel of stride `stride`.
    fn plan_rs(
        c: usize,
        k: usize,
        hw: usize,
        (r, stride): (usize, usize),
        pre: bool,
        (in_stride, in_off): (usize, usize),
    ) -> Plan {
        let mut rng = Rng::new(1);
        let pre = pre.then(|| random_pre(&mut rng, c));
        // single_op_plan puts the image buffer first: output is buffer 1, input 2.
        let op = conv_op(
            &mut rng,
            view(2, in_off, c),
            view(1, 0, k),
            hw,
            r,
            stride,
            pre,
            None,
            true,
        );
        single_op_plan(vec![buf(k, hw, hw), buf(in_stride, hw, hw)], op)
    }

    fn names(policy: &str, dtype: &str, p: &Plan) -> Vec<&'static str> {
        let Op::Conv(c) = &p.stages[0].ops[0] else {
            panic!("not a conv")
        };
        conv_candidates(policy, dtype, p, c)
            .iter()
            .map(|k| k.name)
            .collect()
    }

    #[test]
    fn the_cost_model_never_picks_a_kernel_no_gpu_has_timed() {
        // Where nothing was measured (DGATE_AUTOTUNE=0, and the pass tuning is checked
        // against), the cost model must keep to the kernels a device run has timed:
        // none of the seventh session's (chained, halo, 64-wide wgmma tiles), nor the
        // eighth's TMA tiles.
        let untimed = |n: &str| {
            conv_kernel_info(n).is_some_and(|k| k.cluster > 0)
                || n.contains("k64")
                || n.starts_with("conv_tcc")
                || n.starts_with("conv_halo")
                || n.starts_with("conv_tma")
                || n.ends_with("pr_f16")
        };
        let mut rng = Rng::new(3);
        // (C, K, map, kernel, pre): ResNet-101's and DenseNet-201's layer shapes.
        let shapes = [
            (64, 64, 32, 1, false),
            (64, 64, 32, 3, false),
            (64, 256, 32, 1, false),
            (256, 64, 32, 1, false),
            (128, 128, 16, 3, false),
            (512, 128, 16, 1, false),
            (128, 512, 16, 1, false),
            (256, 256, 8, 3, false),
            (1024, 256, 8, 1, false),
            (256, 1024, 8, 1, false),
            (512, 512, 4, 3, false),
            (2048, 512, 4, 1, false),
            (512, 2048, 4, 1, false),
            (128, 32, 32, 3, false),
            (128, 32, 16, 3, false),
            (128, 32, 8, 3, false),
            (128, 32, 4, 3, false),
            (224, 128, 32, 1, true),
            (480, 128, 16, 1, true),
            (1760, 128, 8, 1, true),
            (1024, 128, 4, 1, true),
        ];
        for (c, k, hw, r, pre) in shapes {
            let pre = pre.then(|| random_pre(&mut rng, c));
            let op = conv_op(
                &mut rng,
                view(2, 0, c),
                view(1, 0, k),
                hw,
                r,
                1,
                pre,
                None,
                true,
            );
            let p = single_op_plan(vec![buf(k, hw, hw), buf(c, hw, hw)], op);
            let Op::Conv(conv) = &p.stages[0].ops[0] else {
                panic!("not a conv")
            };
            let cands = conv_candidates("auto", "f16", &p, conv);
            for n in [1, 64, 256] {
                let (i, splits) = model_choice(&cands, (n * hw * hw, k, r * r * c), 132, 1 << 24);
                assert!(
                    !untimed(cands[i].name),
                    "{c}->{k} {r}x{r} at {hw}x{hw}, batch {n}: {}/{splits}",
                    cands[i].name
                );
            }
        }
        // A policy that names one of them alone still runs it.
        let halo = [conv_kernel_info("conv_halo128_f16").unwrap()];
        assert_eq!(
            model_choice(&halo, (256 * 64, 32, 9 * 128), 132, 1 << 24),
            (0, 1)
        );
    }

    #[test]
    fn cluster_split_kernels_are_tuning_candidates_of_every_aligned_layer() {
        // An aligned 1x1 layer (DenseNet's 8x8 "pre" layers at batch 1) and a 3x3 one:
        // `auto` offers the cluster tiles beside the workspace-split ones; tuning times
        // them (device.rs loads them from sm_90 on).
        for (c, k, r) in [(1024, 128, 1), (128, 32, 3)] {
            let n = names("auto", "f16", &plan_rs(c, k, 8, (r, 1), r == 1, (c, 0)));
            for cl in [
                "conv_tc64x64cl4_f16",
                "conv_tc64x64cl8_f16",
                "conv_tc128x32cl8_f16",
                "conv_tc128x128cl4_f16",
            ] {
                assert!(n.contains(&cl), "{c}->{k}: {n:?}");
            }
        }
        // Not on a layer whose 16-byte loads would be misaligned (a 3-channel stem), nor
        // in f32.
        let stem = names("auto", "f16", &plan_rs(3, 16, 8, (3, 1), false, (3, 0)));
        assert!(!stem.iter().any(|n| n.contains("cl")), "{stem:?}");
        let f32 = names("auto", "f32", &plan(128, 32, 8, false, (128, 0)));
        assert!(!f32.iter().any(|n| n.contains("cl")), "{f32:?}");
        // A cluster kernel's parts are its cluster's blocks: no workspace split, one tile
        // a cluster (the launch's z is the cluster, exec.rs).
        for k in CONV_KERNELS.iter().filter(|k| k.cluster > 0) {
            assert!(
                !k.split && !k.m_loop && !k.modelled && k.resident == 0,
                "{}",
                k.name
            );
            assert!(k.tile.0.is_multiple_of(k.cluster), "{}", k.name);
            assert!(k.name.contains(&format!("cl{}_", k.cluster)), "{}", k.name);
        }
    }

    #[test]
    fn tuning_times_cluster_tiles_only_where_a_split_of_their_size_would_be_tried() {
        let k = |n: &str| conv_kernel_info(n).unwrap();
        // DenseNet-201's 3x3 128->32 at 8x8, batch 1 (64 x 32, 36 k-tiles): 8 parts.
        assert!(cluster_tried(
            k("conv_tc128x32cl8_f16"),
            (64, 32, 1152),
            132
        ));
        // Its 1x1 pre layer of 640 channels (20 k-tiles): 4 parts, not 8.
        assert!(cluster_tried(k("conv_tc64x64cl4_f16"), (64, 128, 640), 132));
        assert!(!cluster_tried(
            k("conv_tc64x64cl8_f16"),
            (64, 128, 640),
            132
        ));
        // ResNet-101's 1x1 1024->256 on 52 survivors at 8x8 (3328 x 256: 52 tiles of
        // 128 x 128): 4 parts.
        assert!(cluster_tried(
            k("conv_tc128x128cl4_f16"),
            (3328, 256, 1024),
            132
        ));
        // Not at full batch: the 1x1 256->1024 at 8x8, batch 256 (1024 tiles of 128 x 128,
        // 8 k-tiles).
        assert!(!cluster_tried(
            k("conv_tc128x128cl4_f16"),
            (16384, 1024, 256),
            132
        ));
        // Not a kernel without a cluster.
        assert!(!cluster_tried(k("conv_tc64x64_f16"), (64, 128, 640), 132));
    }

    #[test]
    fn halo_blocks_are_whole_rows_or_whole_images_with_the_patch_in_shared_memory() {
        // 128-pixel blocks: 4 rows of 32, 8 of 16, 2 images of 8x8, 8 of 4x4.
        for hw in [32, 16, 8, 4] {
            assert!(halo_fits(128, hw, hw), "{hw}");
            assert!(halo_fits(64, hw, hw), "{hw}");
        }
        // The patch of 8 images of 4x4 is 8 x 6 x 6 = 288 pixels: 128's limit exactly.
        assert_eq!(8 * 6 * 6, HALO_MAXP128);
        // Rows that do not tile the block, maps that neither hold nor divide it, a
        // patch too large (2x2 maps: 32 images of 4 x 4 padded pixels), nothing at all.
        assert!(!halo_fits(128, 7, 7));
        assert!(!halo_fits(128, 24, 24));
        assert!(!halo_fits(128, 2, 2));
        assert!(!halo_fits(64, 0, 0));
        // DenseNet's 3x3 layer is a candidate; stride 2, pre-activation, or a channel
        // count off 32 is not.
        let dense = names("auto", "f16", &plan(128, 32, 8, false, (160, 32)));
        assert!(dense.contains(&"conv_halo128_f16") && dense.contains(&"conv_halo64_f16"));
        // In f32 too, on maps whose width is a multiple of 4 (a thread's four pixels).
        assert!(
            names("auto", "f32", &plan(128, 32, 8, false, (160, 32))).contains(&"conv_halo128_f32")
        );
        assert!(
            names("auto", "f32", &plan(128, 32, 4, false, (160, 32))).contains(&"conv_halo128_f32")
        );
        let pre = names("auto", "f16", &plan(128, 32, 8, true, (160, 32)));
        assert!(!pre.iter().any(|n| n.starts_with("conv_halo")));
        let odd = names("auto", "f16", &plan(72, 32, 8, false, (72, 0)));
        assert!(!odd.iter().any(|n| n.starts_with("conv_halo")));
        assert_eq!(
            names(
                "conv_halo128_f16",
                "f16",
                &plan(128, 32, 8, false, (128, 0))
            ),
            ["conv_halo128_f16"]
        );
    }

    #[test]
    fn tma_tiles_take_plain_aligned_1x1_and_3x3_layers_of_stride_1() {
        // (C, K, map, kernel, stride, pre, input window (buffer channels, offset))
        let one = |c, k, hw, r, stride, pre: bool, window| {
            let p = plan_rs(c, k, hw, (r, stride), pre, window);
            names("auto", "f16", &p)
                .into_iter()
                .filter(|n| n.starts_with("conv_tma"))
                .collect::<Vec<_>>()
        };
        let all = [
            "conv_tma128x256_f16",
            "conv_tma128x128_f16",
            "conv_tma128x64_f16",
            "conv_tma128x32_f16",
        ];
        // ResNet's 1x1 layers, and one reading a window of a wider buffer.
        assert_eq!(one(256, 1024, 8, 1, 1, false, (256, 0)), all);
        assert_eq!(one(64, 256, 32, 1, 1, false, (64, 0)), all);
        assert_eq!(one(72, 200, 9, 1, 1, false, (88, 8)), all);
        // ResNet's 3x3 layers of stride 1, on each of its maps.
        for hw in [32, 16, 8, 4] {
            assert_eq!(one(64, 64, hw, 3, 1, false, (64, 0)), all, "{hw}");
        }
        assert_eq!(tma_box(32, 32), Some((32, 4, 1)));
        assert_eq!(tma_box(8, 8), Some((8, 8, 2)));
        assert_eq!(tma_box(4, 4), Some((4, 4, 8)));
        // Maps 128-pixel tiles of whole rows or images do not cover.
        assert!(one(64, 64, 7, 3, 1, false, (64, 0)).is_empty());
        assert!(one(64, 64, 24, 3, 1, false, (64, 0)).is_empty());
        assert_eq!(tma_box(12, 12), None);
        assert_eq!(tma_box(0, 0), None);
        // DenseNet's pre-activated 1x1 layers (the consumers apply it in shared memory).
        assert_eq!(one(1760, 128, 8, 1, 1, true, (1760, 0)), all);
        // Not stride 2, a pre-activated 3x3 layer, nor an unaligned window.
        assert!(one(256, 512, 16, 1, 2, false, (256, 0)).is_empty());
        assert!(one(128, 32, 8, 3, 1, true, (128, 0)).is_empty());
        assert!(one(64, 64, 8, 1, 1, false, (70, 3)).is_empty());
        // DenseNet's 3x3 layer, into a window of its concatenation buffer.
        assert_eq!(one(128, 32, 8, 3, 1, false, (128, 0)), all);
        // The host sizes the ring as conv.cu does: 193, 193, 193 and 101 KB.
        let smem = |n: &str| conv_kernel_info(n).map(|k| k.smem);
        assert_eq!(smem("conv_tma128x256_f16"), Some(4 * 384 * 128 + 64 + 1024));
        assert_eq!(smem("conv_tma128x128_f16"), Some(6 * 256 * 128 + 96 + 1024));
        assert_eq!(smem("conv_tma128x64_f16"), Some(8 * 192 * 128 + 128 + 1024));
        assert_eq!(smem("conv_tma128x32_f16"), Some(5 * 160 * 128 + 80 + 1024));
    }

    #[test]
    fn auto_offers_one_packing_per_layer() {
        let aligned = plan(64, 64, 8, false, (64, 0));
        // The family's tiles, then the reference they are checked against (the
        // previous default; conv_mmaasync_f16 needs 128 output channels).
        let tc = names("auto", "f16", &aligned);
        assert_eq!(tc.len(), 26);
        assert!(tc[..5].iter().all(|n| n.starts_with("conv_tc")));
        assert!(tc[5..13].iter().all(|n| n.starts_with("conv_wg")));
        assert_eq!(tc[13..15], ["conv_tcc128x128_f16", "conv_tcc128x64_f16"]);
        assert!(tc[15..19].iter().all(|n| n.contains("cl")));
        assert_eq!(tc[19..21], ["conv_halo128_f16", "conv_halo64_f16"]);
        assert!(tc[21..25].iter().all(|n| n.starts_with("conv_tma")));
        assert_eq!(tc[25], "conv_mmavec_f16");
        let wide = names("auto", "f16", &plan(64, 128, 8, false, (64, 0)));
        assert_eq!(wide.last(), Some(&"conv_mmaasync_f16"));
        let f32s = names("auto", "f32", &aligned);
        assert!(f32s[..5].iter().all(|n| n.starts_with("conv_sgemm")) && f32s.len() == 7);
        assert_eq!(f32s[5..], ["conv_halo128_f32", "conv_simt_f32"]);
        // A family by name has no reference in it (conv_tc's includes the chained and
        // the cluster tiles).
        assert_eq!(names("conv_tc_f16", "f16", &aligned).len(), 11);
        let wg = names("conv_wg_f16", "f16", &aligned);
        assert!(wg.len() == 8 && wg.iter().all(|n| n.starts_with("conv_wg")));
        // Pre-activation is fine for conv_tc (not conv_halo); an unaligned view is not.
        assert_eq!(
            names("auto", "f16", &plan(64, 64, 8, true, (72, 8))).len(),
            20
        );
        assert_eq!(
            names("auto", "f16", &plan(3, 64, 8, false, (3, 0))),
            ["conv_mma_f16"]
        );
        assert_eq!(
            names("auto", "f16", &plan(64, 64, 8, false, (70, 3))),
            ["conv_mma_f16"]
        );
        // The older kernels by name, with their fallbacks.
        assert_eq!(
            names("conv_mmaasync_f16", "f16", &aligned),
            ["conv_mmavec_f16"]
        );
        assert_eq!(
            names(
                "conv_mmaasync_f16",
                "f16",
                &plan(64, 128, 8, false, (64, 0))
            ),
            ["conv_mmaasync_f16"]
        );
        assert_eq!(
            names("conv_tc64x32_f16", "f16", &aligned),
            ["conv_tc64x32_f16"]
        );
        // conv_dense is no policy: it takes two layers at once (exec.rs fuses them).
        assert!(!policy_known(DENSE_KERNEL, "f16"));
        for k in CONV_KERNELS.iter().filter(|k| k.needs != Needs::Pair) {
            assert!(policy_known(k.name, k.dtype));
            assert!(!policy_known(
                k.name,
                if k.dtype == "f32" { "f16" } else { "f32" }
            ));
        }
        assert!(policy_known("conv_tc_f16", "f16") && !policy_known("conv_tc_f16", "f32"));
        assert!(policy_known("conv_wg_f16", "f16") && !policy_known("conv_wg_f16", "f32"));
        assert!(policy_known("conv_tma_f16", "f16") && !policy_known("conv_tma_f16", "f32"));
        let tma = names("conv_tma_f16", "f16", &aligned);
        assert!(tma.len() == 4 && tma.iter().all(|n| n.starts_with("conv_tma")));
        assert!(!policy_known("conv_nope_f16", "f16"));
    }

    #[test]
    fn register_pre_activation_only_where_no_tap_is_padding() {
        let pr = |p: &Plan| {
            names("auto", "f16", p)
                .into_iter()
                .filter(|n| n.ends_with("pr_f16"))
                .collect::<Vec<_>>()
        };
        let dense = plan_rs(136, 128, 8, (1, 1), true, (152, 16));
        assert_eq!(
            pr(&dense),
            [
                "conv_tc128x128pr_f16",
                "conv_tcc128x128pr_f16",
                "conv_tc64x64pr_f16"
            ]
        );
        // Every other kernel is still offered (the pre-activated 3x3's 20 and conv_tma's
        // four), and conv_tc's family has them.
        assert_eq!(names("auto", "f16", &dense).len(), 20 + 4 + 3);
        assert_eq!(names("conv_tc_f16", "f16", &dense).len(), 11 + 3);
        // A pre-activated 3x3 (its padding must stay zero), a 1x1 without
        // pre-activation, and an unaligned window: none.
        assert!(pr(&plan(136, 128, 8, true, (152, 16))).is_empty());
        assert!(pr(&plan_rs(136, 128, 8, (1, 1), false, (152, 16))).is_empty());
        assert!(pr(&plan_rs(136, 128, 8, (1, 1), true, (150, 14))).is_empty());
        // Only tuning picks them.
        assert!(pr(&dense)
            .iter()
            .all(|n| conv_kernel_info(n).is_some_and(|k| !k.modelled && k.dtype == "f16")));
    }

    #[test]
    fn tensor_core_tiles_have_room_to_stage_their_epilogue() {
        // conv_tma writes from registers (no staged epilogue); it fits a block too.
        for k in CONV_KERNELS.iter().filter(|k| k.needs == Needs::Tma) {
            assert!(k.smem <= 227 * 1024, "{}", k.name);
        }
        let tiles: Vec<_> = CONV_KERNELS
            .iter()
            .filter(|k| {
                k.smem > 0 && !matches!(k.needs, Needs::Tma | Needs::Pair) && k.dtype == "f16"
            })
            .collect();
        assert_eq!(tiles.len(), 24);
        // conv_dense stages its 64 x 128 partial in its ring, within one block's share.
        let dense = conv_kernel_info(DENSE_KERNEL).unwrap();
        assert!(dense.smem as usize >= 3 * (DENSE_ROWS + DENSE_B) * TC_LDS * 2);
        const {
            assert!(
                3 * (DENSE_ROWS + DENSE_B) * TC_LDS * 2 >= DENSE_ROWS * (DENSE_B + TC_EPI_PAD) * 4
            )
        };
        assert!(dense.smem <= 227 * 1024 && dense.cluster == DENSE_CL);
        for k in tiles {
            let (bm, bn, _) = k.tile;
            assert!(k.smem as usize >= bm * (bn + TC_EPI_PAD) * 4, "{}", k.name);
            // An H100/H200 block may have 227 KB.
            assert!(k.smem <= 227 * 1024, "{}", k.name);
        }
        // Only wgmma's widest tile needs more than its ring for that.
        let wide = conv_kernel_info("conv_wg128x256_f16").unwrap();
        assert_eq!(wide.smem as usize, 128 * (256 + TC_EPI_PAD) * 4);
        let ring = conv_kernel_info("conv_tc128x128_f16").unwrap();
        assert_eq!(
            ring.smem as usize,
            256 * TC_LDS * 2 * TC_STAGES + TC_STAGES * 32 * 8
        );
        // 64-wide k-tiles: the ring is the larger, 192 KB at 128x256.
        let k64 = conv_kernel_info("conv_wg128x256k64_f16").unwrap();
        assert_eq!(
            k64.smem as usize,
            384 * 64 * 2 * TC_WG64_STAGES + TC_WG64_STAGES * 64 * 8
        );
        assert_eq!(k64.tile.2, 64);
        // conv_halo: two stages of the largest patch and nine taps' weights, 80-byte rows.
        let halo = conv_kernel_info("conv_halo128_f16").unwrap();
        assert_eq!(halo.smem as usize, 2 * (HALO_MAXP128 + 288) * 80);
        // conv_halo128_f32: two stages of the patch and the taps' weights, 8 channels of f32.
        let halo32 = conv_kernel_info("conv_halo128_f32").unwrap();
        assert_eq!(halo32.smem as usize, 2 * (HALO_MAXP128 + 9 * 32) * 8 * 4);
    }

    #[test]
    fn tuning_tries_splits_where_one_wave_loops_over_a_long_k() {
        let ws = 1 << 24;
        // DenseNet-201's 3x3 128->32 at 8x8, batch 256: 128 tiles of 128x32, 36 k-tiles.
        let dense = (256 * 64, 32, 9 * 128);
        assert_eq!(split_tries((128, 32, 32), dense, 132, ws), [2, 4, 8]);
        // conv_halo128_f32 there on the 52 samples left after the gates: 26 tiles, 16
        // stages of 8 channels (72 reduction columns), each part keeping four.
        let halo = conv_kernel_info("conv_halo128_f32").unwrap();
        assert_eq!(
            split_tries(halo.tile, (52 * 64, 32, 9 * 128), 132, ws),
            [4, 2]
        );
        // Its 1x1 layers at 8x8 (128 outputs, 1728 input channels) on 128x128 tiles, with
        // the workspace Prepared allots on an H200 (2 x 132 of the largest tile).
        let h200_ws = 2 * 132 * 128 * 256;
        assert_eq!(
            split_tries((128, 128, 32), (256 * 64, 128, 1728), 132, h200_ws),
            [2, 4, 8]
        );
        // On 64x32 tiles there are 256 blocks already: 8 parts would be 16 blocks an SM.
        assert_eq!(split_tries((64, 32, 32), dense, 132, ws), [2, 4]);
        // A wide layer at full batch fills many waves: no split.
        assert!(split_tries((128, 128, 32), (256 * 1024, 256, 64), 132, ws).is_empty());
        // A short k: no part would keep four k-tiles.
        assert!(split_tries((128, 32, 32), (4096, 32, 64), 132, ws).is_empty());
        // The output must fit the workspace.
        assert!(split_tries((128, 32, 32), dense, 132, 1000).is_empty());
        // Batch 1: the model's own split is kept, first.
        let one = (64, 256, 9 * 256);
        let model = split_k((64, 64, 32), one, 132, ws);
        assert!(model > 1);
        assert_eq!(split_tries((64, 64, 32), one, 132, ws)[0], model);
    }

    #[test]
    fn the_cost_model_fits_the_tile_to_the_work() {
        let p = plan(256, 256, 8, false, (256, 0));
        let Op::Conv(c) = &p.stages[0].ops[0] else {
            panic!("not a conv")
        };
        let cands = conv_candidates("auto", "f16", &p, c);
        let ws = 67 * 128 * 128;
        let pick = |n: usize| {
            let (i, splits) = model_choice(
                &cands,
                (
                    n * c.out_h * c.out_w,
                    c.output.channels,
                    9 * c.input.channels,
                ),
                132,
                ws,
            );
            (cands[i].name, splits)
        };
        // Batch 256 at 8x8: 16384 x 256 outputs fill the GPU with the largest tile, 128
        // of them in one wave (wgmma's, where the device has it: exec.rs drops the
        // tiles it lacks).
        assert_eq!(pick(256), ("conv_wg128x256_f16", 1));
        // Batch 1: 64 x 256 outputs are a few tiles; small tiles and split-K win.
        let (name, splits) = pick(1);
        assert!(!name.contains("128x128") && splits > 1, "{name}/{splits}");
        // Without the wgmma tiles (sm_80, sm_89), conv_tc's.
        let tc: Vec<_> = cands.iter().copied().filter(|k| !k.wgmma).collect();
        let (i, splits) = model_choice(&tc, (256 * 64, 256, 9 * 256), 132, ws);
        assert_eq!((tc[i].name, splits), ("conv_tc128x128_f16", 1));
        // f32, DenseNet's 128 -> 32 3x3 layers at batch 256: a 32-wide tile rather than
        // a 64-wide one half empty; wide layers keep the widest.
        let d = plan(128, 32, 32, true, (256, 0));
        let Op::Conv(dc) = &d.stages[0].ops[0] else {
            panic!("not a conv")
        };
        let f32s = conv_candidates("auto", "f32", &d, dc);
        let (i, _) = model_choice(&f32s, (256 * 1024, 32, 9 * 128), 132, ws);
        assert_eq!(f32s[i].name, "conv_sgemm128x32_f32");
        let f32s = conv_candidates("auto", "f32", &p, c);
        let (i, _) = model_choice(&f32s, (256 * 64, 256, 9 * 256), 132, ws);
        assert_eq!(f32s[i].name, "conv_sgemm128x128_f32");
    }
}
