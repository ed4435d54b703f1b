//! A plan made resident on the device: weights uploaded once, activation buffers and
//! per-pass state preallocated for a batch capacity, and the launch sequence of one
//! forward pass (which is what a CUDA graph captures).
//!
//! Per-pass state: `counts[l]` is the number of live samples at level `l` (level 0:
//! the input batch; level g + 1: after gate g's compaction) and `idx[l][slot]` the
//! input position of the sample in that slot. Results (class, exit, score, logits)
//! are written by the gate or head kernel directly at the input position.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use cudarc::driver::CudaGraph;

use super::convsel::*;
use super::device::{storage_bytes, storage_to_f32, Device, Mem};
use super::params::*;
use crate::plan::{Conv, ExitRule, Op, Plan, PreAct, View};
use crate::{Error, Result};

const ELEMENTWISE_THREADS: u32 = 256;
const GAP_THREADS: usize = 512;
/// Static shared memory is limited to 48 KiB without an opt-in.
const GAP_SMEM_LIMIT: usize = 48 * 1024;
const SCAN_THREADS: u32 = 1024;
const IMAGE_FLOATS: usize = 3 * 32 * 32;

struct DevPre {
    scale: Mem,
    shift: Mem,
    relu: bool,
}

enum DevOp {
    Conv {
        /// The kernels this layer may use (one weight packing); the choice among them
        /// is made per batch size.
        cands: Vec<&'static ConvKernel>,
        /// The candidate every other one is checked against while tuning (the
        /// `auto` policy's last, see `reference_kernel`).
        reference: Option<usize>,
        weight: Mem,
        bias: Mem,
        pre: Option<DevPre>,
        /// conv_tma's tensor maps (input view, weights), where a candidate is conv_tma.
        tma: Option<Box<Mem>>,
    },
    ShortcutA,
    AvgPool2 {
        pre: Option<DevPre>,
    },
}

struct DevLinear {
    weight: Mem,
    bias: Mem,
    pre: Option<DevPre>,
}

/// The 128-byte lines a convolution's kernel prefetches of a weight buffer of `bytes`:
/// every line that starts inside it, so no prefetch leaves the buffer.
fn weight_lines(bytes: usize) -> i32 {
    bytes.div_ceil(128).min(i32::MAX as usize) as i32
}

/// A captured forward pass.
pub(crate) struct Graph(pub CudaGraph);

/// Tuning times each convolution alone; the pass runs them back to back, where a tile
/// that won alone can lose (caches, shared-memory configuration, launch overlap). So
/// once a batch size is tuned, the whole pass is timed with the tuned kernels and with
/// the cost model's, and the faster is kept.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct PassCheck {
    /// Median device milliseconds of a pass with the tuned kernels.
    pub tuned_ms: f64,
    /// The same with the cost model's kernels.
    pub model_ms: f64,
    /// Whether the cost model's kernels were kept.
    pub kept_model: bool,
}

impl PassCheck {
    /// The cost model's kernels are kept only when their pass is more than 1% faster:
    /// within that, the two are the same to the timing's noise, and the tuned ones were
    /// the better kernel by kernel.
    pub fn decide(tuned_ms: f64, model_ms: f64) -> Self {
        PassCheck {
            tuned_ms,
            model_ms,
            kept_model: model_ms.is_finite() && model_ms < 0.99 * tuned_ms,
        }
    }
}

// SAFETY: a graph is only launched or dropped through `&mut CudaBackend`, never from two
// threads at once, and cudarc makes the context current on the calling thread before
// each driver call; the driver allows graph use from any thread under those terms.
unsafe impl Send for Graph {}

pub(crate) struct Prepared {
    /// Identity of the plan's structure and weights (not thresholds).
    pub key: u64,
    /// Thresholds and rules the captured graphs were built with.
    pub decisions: Vec<(u32, ExitRule)>,
    pub capacity: usize,
    pub classes: usize,
    buffers: Vec<Mem>,
    ops: Vec<Vec<DevOp>>,
    gates: Vec<DevLinear>,
    head: DevLinear,
    /// Live counts per level, then per input: exit, class, score, logits, in one
    /// allocation so that a pass's results come back in one copy (see `results`).
    outputs: Mem,
    /// Byte offsets into `outputs` (the counts start at 0).
    off_exit: usize,
    off_class: usize,
    off_score: usize,
    off_logits: usize,
    /// Split-K partial sums; zero between convolutions.
    workspace: Mem,
    /// Split-K: blocks finished per output tile (`n_tickets` of them); zero between
    /// convolutions (the last block of a tile resets its own).
    tickets: Mem,
    n_tickets: usize,
    idx: Vec<Mem>,
    keep: Mem,
    src_of: Mem,
    scratch: Mem,
    pub staging: Mem,
    pub graphs: HashMap<usize, Graph>,
    sms: usize,
    /// (stage, op, batch) -> (candidate, k-splits), where measured or chosen.
    choices: HashMap<(usize, usize, usize), (usize, usize)>,
    /// Measured choices by layer shape, shared by the identical layers of a network.
    tuned: HashMap<TuneKey, (usize, usize)>,
    tuned_batches: std::collections::HashSet<usize>,
    /// Per batch size, the live samples each level's kernels are chosen for (level 0:
    /// the batch; after a gate: what recent passes left, see `observe`).
    assumed: HashMap<usize, Vec<usize>>,
    /// How often `observe` changed a batch size's assumption (bounded, against churn).
    reassumed: HashMap<usize, usize>,
    /// Floats of the workspace split-K may use (the allocation, or less in tests).
    pub ws_cap: usize,
    /// Floats past `ws_cap` that tests watch (see `test_workspace_with_canary`).
    ws_canary: usize,
    /// Tuning's check of each candidate: the reference kernel's output (as large as
    /// the largest activation buffer, made on first use, freed when tuning ends) and two
    /// u32 for diff_max.
    check: Option<(Mem, Mem)>,
    /// Candidate runs that matched the reference, and those that did not (a line each,
    /// also printed): a kernel that disagrees is never chosen.
    pub verified: usize,
    pub rejected: Vec<String>,
    /// Tests only: a tolerance in place of `check_tolerance` (negative rejects all).
    pub test_tolerance: Option<f32>,
    /// (stage, op) where ops `op` and `op + 1` are a DenseNet layer conv_dense_cl8_f16
    /// can run in one launch (`dense_pair`, f16 under `auto`, the kernel loaded).
    pairs: std::collections::HashSet<(usize, usize)>,
    /// (stage, op, batch) of the pairs that run fused: where tuning checked the fused
    /// kernel against the two layers' own and found it faster.
    fused: std::collections::HashSet<(usize, usize, usize)>,
    /// The pairs whose fused kernel disagreed with their own kernels in tuning's check:
    /// never fused, `DGATE_FUSE=1` or not.
    unfusable: std::collections::HashSet<(usize, usize)>,
    /// `DGATE_FUSE`: `Some(true)` (1) fuses every pair, checked or not; `Some(false)`
    /// (0) none; `None` (unset): where tuning measured it faster.
    pub fuse: Option<bool>,
}

/// Largest |candidate - reference| accepted, relative to the reference's largest
/// |value| on the same noise: both accumulate in f32, so they differ by rounding
/// (f16 storage: about 1e-3); a wrong tile, index or pipeline stage gives O(1).
fn check_tolerance(dtype: &str) -> f32 {
    if dtype == "f16" {
        1e-2
    } else {
        1e-3
    }
}

/// What a convolution's speed depends on: its candidate kernels (the first one's name
/// and their number), live samples, geometry, epilogue.
type TuneKey = (&'static str, usize, [usize; 10]);

fn hash_values(h: &mut KeyHasher, v: &[f32]) {
    // The key is checked before every pass, so it must cost microseconds, not the
    // milliseconds that hashing thousands of weights per tensor did (measured on an H200:
    // 14 ms of host time per ResNet-101 pass at batch 1). Where the weights live and a
    // handful of them tell plans apart; in-place weight edits need `CudaBackend::prepare`.
    (v.as_ptr() as usize).hash(h);
    v.len().hash(h);
    let step = (v.len() / 8).max(1);
    for x in v.iter().step_by(step) {
        x.to_bits().hash(h);
    }
}

fn hash_pre(h: &mut KeyHasher, p: &Option<PreAct>) {
    if let Some(p) = p {
        hash_values(h, &p.scale);
        hash_values(h, &p.shift);
        p.relu.hash(h);
    }
}

/// Identity of a plan for the weight cache: its address, its structure (via Debug of
/// the small parts) and a sample of every weight tensor.
/// A multiply-rotate hasher (the Fx scheme): plan keys need speed, not DoS resistance.
pub(crate) struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..c.len()].copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
    fn write_u8(&mut self, x: u8) {
        self.write_u64(x as u64);
    }
}

pub(crate) fn plan_key(plan: &Plan) -> u64 {
    // Hashes fields directly (no formatting): this runs before every pass.
    let mut h = KeyHasher(0);
    (plan as *const Plan as usize).hash(&mut h);
    (&plan.buffers, plan.input, plan.classes).hash(&mut h);
    for s in &plan.stages {
        s.output.hash(&mut h);
        for op in &s.ops {
            match op {
                Op::Conv(c) => {
                    (c.input, c.output, c.residual).hash(&mut h);
                    (
                        c.in_h, c.in_w, c.out_h, c.out_w, c.kernel, c.stride, c.pad, c.relu,
                    )
                        .hash(&mut h);
                    hash_values(&mut h, &c.weight);
                    hash_values(&mut h, &c.bias);
                    hash_pre(&mut h, &c.pre);
                }
                Op::ShortcutA {
                    input,
                    output,
                    in_h,
                    in_w,
                    stride,
                    pad_before,
                } => (1u8, input, output, in_h, in_w, stride, pad_before).hash(&mut h),
                Op::AvgPool2 {
                    input,
                    output,
                    in_h,
                    in_w,
                    pre,
                } => {
                    (2u8, input, output, in_h, in_w).hash(&mut h);
                    hash_pre(&mut h, pre);
                }
            }
        }
    }
    for g in &plan.gates {
        (g.input, g.h, g.w, g.after_stage).hash(&mut h);
        hash_values(&mut h, &g.weight);
        hash_values(&mut h, &g.bias);
    }
    (plan.head.input, plan.head.h, plan.head.w).hash(&mut h);
    hash_values(&mut h, &plan.head.weight);
    hash_values(&mut h, &plan.head.bias);
    hash_pre(&mut h, &plan.head.pre);
    h.finish()
}

pub(crate) fn decisions(plan: &Plan) -> Vec<(u32, ExitRule)> {
    plan.gates
        .iter()
        .map(|g| (g.threshold.to_bits(), g.rule))
        .collect()
}

fn cfg_err(msg: String) -> Error {
    Error::Config(format!("plan: {msg}"))
}

fn check_view(plan: &Plan, v: &View, h: usize, w: usize, what: &str) -> Result<()> {
    let b = plan
        .buffers
        .get(v.buf)
        .ok_or_else(|| cfg_err(format!("{what}: buffer {} does not exist", v.buf)))?;
    if v.channels == 0 || v.offset + v.channels > b.channels {
        return Err(cfg_err(format!(
            "{what}: channels [{}, {}) outside buffer {} of {} channels",
            v.offset,
            v.offset + v.channels,
            v.buf,
            b.channels
        )));
    }
    if b.h != h || b.w != w {
        return Err(cfg_err(format!(
            "{what}: expects {h}x{w} but buffer {} is {}x{}",
            v.buf, b.h, b.w
        )));
    }
    Ok(())
}

/// Whether two views share a channel of one buffer.
fn overlaps(a: &View, b: &View) -> bool {
    a.buf == b.buf && a.offset < b.offset + b.channels && b.offset < a.offset + a.channels
}

fn check_pre(pre: &Option<PreAct>, c: usize, what: &str) -> Result<()> {
    if let Some(p) = pre {
        if p.scale.len() != c || p.shift.len() != c {
            return Err(cfg_err(format!(
                "{what}: pre-activation has {}/{} values for {c} channels",
                p.scale.len(),
                p.shift.len()
            )));
        }
    }
    Ok(())
}

/// Rejects plans whose kernels would read or write out of bounds.
pub(crate) fn validate(plan: &Plan) -> Result<()> {
    let b = plan
        .buffers
        .get(plan.input.buf)
        .ok_or_else(|| cfg_err("input buffer missing".into()))?;
    check_view(plan, &plan.input, b.h, b.w, "input")?;
    if plan.input.channels != 3 || b.h != 32 || b.w != 32 {
        return Err(cfg_err("the input view must be 3 x 32 x 32".into()));
    }
    if plan.classes == 0 {
        return Err(cfg_err("zero classes".into()));
    }
    for (si, s) in plan.stages.iter().enumerate() {
        for (oi, op) in s.ops.iter().enumerate() {
            let what = format!("stage {si} op {oi}");
            match op {
                Op::Conv(c) => {
                    check_view(plan, &c.input, c.in_h, c.in_w, &what)?;
                    check_view(plan, &c.output, c.out_h, c.out_w, &what)?;
                    // Blocks write outputs while others still read inputs: a race.
                    if overlaps(&c.input, &c.output) {
                        return Err(cfg_err(format!(
                            "{what}: output channels [{}, {}) of buffer {} overlap the input's [{}, {})",
                            c.output.offset,
                            c.output.offset + c.output.channels,
                            c.output.buf,
                            c.input.offset,
                            c.input.offset + c.input.channels
                        )));
                    }
                    if let Some(r) = &c.residual {
                        check_view(plan, r, c.out_h, c.out_w, &what)?;
                        if r.channels != c.output.channels {
                            return Err(cfg_err(format!("{what}: residual channels differ")));
                        }
                    }
                    let (k, ci, r) = (c.output.channels, c.input.channels, c.kernel);
                    if c.weight.len() != k * ci * r * r || c.bias.len() != k {
                        return Err(cfg_err(format!("{what}: weight/bias sizes")));
                    }
                    if c.stride == 0 || r == 0 {
                        return Err(cfg_err(format!("{what}: zero stride or kernel")));
                    }
                    let want_h = (c.in_h + 2 * c.pad)
                        .checked_sub(r)
                        .map(|x| x / c.stride + 1);
                    let want_w = (c.in_w + 2 * c.pad)
                        .checked_sub(r)
                        .map(|x| x / c.stride + 1);
                    if want_h != Some(c.out_h) || want_w != Some(c.out_w) {
                        return Err(cfg_err(format!("{what}: output size")));
                    }
                    check_pre(&c.pre, ci, &what)?;
                }
                Op::ShortcutA {
                    input,
                    output,
                    in_h,
                    in_w,
                    stride,
                    pad_before,
                } => {
                    if *stride == 0 {
                        return Err(cfg_err(format!("{what}: zero stride")));
                    }
                    check_view(plan, input, *in_h, *in_w, &what)?;
                    let (oh, ow) = (in_h.div_ceil(*stride), in_w.div_ceil(*stride));
                    check_view(plan, output, oh, ow, &what)?;
                    if output.channels < input.channels + pad_before {
                        return Err(cfg_err(format!("{what}: shortcut channels")));
                    }
                }
                Op::AvgPool2 {
                    input,
                    output,
                    in_h,
                    in_w,
                    pre,
                } => {
                    check_view(plan, input, *in_h, *in_w, &what)?;
                    check_view(plan, output, in_h / 2, in_w / 2, &what)?;
                    if output.channels != input.channels {
                        return Err(cfg_err(format!("{what}: pool channels")));
                    }
                    check_pre(pre, input.channels, &what)?;
                }
            }
        }
        let ob = plan
            .buffers
            .get(s.output.buf)
            .ok_or_else(|| cfg_err(format!("stage {si}: output buffer")))?;
        check_view(plan, &s.output, ob.h, ob.w, &format!("stage {si} output"))?;
    }
    for (gi, g) in plan.gates.iter().enumerate() {
        let what = format!("gate {gi}");
        if g.after_stage + 1 >= plan.stages.len() {
            return Err(cfg_err(format!("{what}: after the last stage")));
        }
        if gi > 0 && plan.gates[gi - 1].after_stage >= g.after_stage {
            return Err(cfg_err(format!("{what}: gates out of order")));
        }
        check_view(plan, &g.input, g.h, g.w, &what)?;
        if g.weight.len() != plan.classes * g.input.channels || g.bias.len() != plan.classes {
            return Err(cfg_err(format!("{what}: weight/bias sizes")));
        }
        if !gap_fits(g.input.channels, plan.classes) {
            return Err(cfg_err(format!("{what}: too many channels or classes")));
        }
    }
    let hd = &plan.head;
    check_view(plan, &hd.input, hd.h, hd.w, "head")?;
    if hd.weight.len() != plan.classes * hd.input.channels || hd.bias.len() != plan.classes {
        return Err(cfg_err("head: weight/bias sizes".into()));
    }
    check_pre(&hd.pre, hd.input.channels, "head")?;
    if !gap_fits(hd.input.channels, plan.classes) {
        return Err(cfg_err("head: too many channels or classes".into()));
    }
    Ok(())
}

/// Conv weight `[K][C][R][R]` -> `[(r, s, c)][K]` (output channels contiguous), or
/// `[K][(r, s, c)]` when `k_major` (for conv_mmavec).
fn pack_conv_weight(w: &[f32], k: usize, c: usize, r: usize, k_major: bool) -> Vec<f32> {
    let kd = r * r * c;
    let mut out = vec![0.0f32; kd * k];
    for o in 0..k {
        for ci in 0..c {
            for y in 0..r {
                for x in 0..r {
                    let src = ((o * c + ci) * r + y) * r + x;
                    let row = (y * r + x) * c + ci;
                    if k_major {
                        out[o * kd + row] = w[src];
                    } else {
                        out[row * k + o] = w[src];
                    }
                }
            }
        }
    }
    out
}

fn upload_pre(dev: &Device, pre: &Option<PreAct>) -> Result<Option<DevPre>> {
    pre.as_ref()
        .map(|p| {
            Ok(DevPre {
                scale: dev.upload_f32(&p.scale)?,
                shift: dev.upload_f32(&p.shift)?,
                relu: p.relu,
            })
        })
        .transpose()
}

fn pre_ptrs(p: &Option<DevPre>) -> (u64, u64, i32) {
    match p {
        Some(p) => (p.scale.ptr, p.shift.ptr, p.relu as i32),
        None => (0, 0, 0),
    }
}

/// How a gate/head pools its view: channels per load, pixel groups, shared bytes.
fn gap_layout(dev: &Device, plan: &Plan, input: &View, hw: usize) -> (usize, usize, usize) {
    let stride = plan.buffers[input.buf].channels;
    let vec = vec_channels(dev.elem_bytes(), stride, input.offset, input.channels);
    let units = input.channels / vec;
    let fixed = (input.channels + plan.classes) * 4;
    let per_group = input.channels * 4;
    let fit = GAP_SMEM_LIMIT.saturating_sub(fixed) / per_group;
    let groups = (GAP_THREADS / units).clamp(1, hw.max(1)).min(fit.max(1));
    (vec, groups, fixed + groups * per_group)
}

/// Largest channel count a gate or head can pool within the shared-memory limit.
fn gap_fits(channels: usize, classes: usize) -> bool {
    (2 * channels + classes) * 4 <= GAP_SMEM_LIMIT
}

fn blocks(total: usize, per: usize) -> u32 {
    total.div_ceil(per).min(u32::MAX as usize) as u32
}

/// Channels a gate, compaction or pooling thread loads at once (`vec` of their parameters):
/// 16 bytes' worth where a view `channels` wide at `offset` in a buffer `stride` channels
/// wide keeps every pixel's 16-byte units aligned, else 1.
/// conv_tma's tensor maps for layer `c`, in device memory: its input view over the
/// buffer's `capacity` samples, in boxes of 128 pixels (rows past the live ones are read
/// but never stored), as rows of channels (1x1) or as (channels, x, y, image) (3x3, so
/// that a tap is the box moved and the padding is what lies outside the map); and its
/// `[K][(r, s, c)]` weights in boxes of 256, 128, 64 and 32 output channels (one for each
/// tile width; TMA zero-fills past K).
fn tma_maps(
    dev: &Device,
    plan: &Plan,
    c: &Conv,
    buffers: &[Mem],
    capacity: usize,
    weight: &Mem,
) -> Result<Mem> {
    let b = &plan.buffers[c.input.buf];
    let eb = dev.elem_bytes();
    let (ch, pixel) = (c.input.channels, b.channels * eb);
    let layer = format!("a {0}x{0} {1}->{2} layer", c.kernel, ch, c.output.channels);
    let at = buffers[c.input.buf].ptr + (c.input.offset * eb) as u64;
    let what = format!("the input of {layer}");
    let input = if c.kernel == 1 {
        dev.tma_map_f16(&what, at, &[ch, capacity * b.h * b.w], &[pixel], &[64, 128])?
    } else {
        let (bw, bh, bn) = tma_box(b.h, b.w)
            .ok_or_else(|| Error::Cuda(format!("{layer}: no TMA box for a {}x{} map", b.h, b.w)))?;
        dev.tma_map_f16(
            &what,
            at,
            &[ch, b.w, b.h, capacity],
            &[pixel, pixel * b.w, pixel * b.w * b.h],
            &[64, bw as u32, bh as u32, bn as u32],
        )?
    };
    let kd = c.kernel * c.kernel * ch;
    let weights = |box_rows| {
        dev.tma_map_f16(
            &format!("the weights of {layer}"),
            weight.ptr,
            &[kd, c.output.channels],
            &[kd * eb],
            &[64, box_rows],
        )
    };
    // In conv.cu's order (tma_weight_map): the input, then boxes of 256, 128, 64, 32 rows.
    let maps = [
        input,
        weights(256)?,
        weights(128)?,
        weights(64)?,
        weights(32)?,
    ];
    let bytes: Vec<u8> = bytemuck::cast_slice(&maps).to_vec();
    let mut mem = dev.alloc(bytes.len())?;
    dev.upload_bytes(&mut mem, &bytes)?;
    Ok(mem)
}

/// Blocks along m for a kernel that keeps `resident` blocks an SM (0: one per tile):
/// at most that many over all `n_blocks` columns, at least one, never more than tiles.
fn resident_blocks(m_blocks: u32, n_blocks: u32, resident: usize, sms: usize) -> u32 {
    if resident == 0 {
        return m_blocks;
    }
    let cap = (resident * sms).div_ceil(n_blocks.max(1) as usize).max(1);
    m_blocks.min(cap.min(u32::MAX as usize) as u32)
}

fn vec_channels(elem_bytes: usize, stride: usize, offset: usize, channels: usize) -> usize {
    let v = 16 / elem_bytes;
    if [stride, offset, channels]
        .iter()
        .all(|x| x.is_multiple_of(v))
    {
        v
    } else {
        1
    }
}

/// Grid of the per-sample elementwise kernels (shortcut_a, avgpool2): `per_sample` threads'
/// worth of blocks across, one row of blocks per sample (at most 65535 rows; the kernels
/// stride over the rest).
fn sample_grid(n: usize, per_sample: usize) -> (u32, u32) {
    (
        blocks(per_sample.max(1), ELEMENTWISE_THREADS as usize),
        n.clamp(1, 65535) as u32,
    )
}

/// The compaction kernels' grid: one column of blocks per batch slot, enough blocks in
/// it that each thread moves about four of a sample's `units`.
fn compact_grid(n: usize, units: usize) -> (u32, u32) {
    let chunks = units
        .div_ceil(4 * ELEMENTWISE_THREADS as usize)
        .clamp(1, 65535);
    (n.min(u32::MAX as usize) as u32, chunks as u32)
}

/// One step of a pass, as the profiler sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Input normalisation into the first buffer.
    Pack,
    /// Op `o` of stage `s`.
    Op(usize, usize),
    /// Gate `g`: pooling, linear, decision, compaction.
    Gate(usize),
    Head,
}

impl Prepared {
    /// What one step did in a pass whose levels ended with `live` samples: a label
    /// naming its shape (equal for equal shapes), the kernel, the samples it ran on,
    /// FLOPs (convolutions, gates, head) and the bytes it must move at least.
    pub fn step_work(
        &self,
        plan: &Plan,
        step: Step,
        live: &[usize],
        n: usize,
        eb: usize,
    ) -> crate::backend::OpTime {
        let at = |l: usize| live.get(l).copied().unwrap_or(n);
        let (op, kernel, samples, flops, bytes) = match step {
            Step::Pack => (
                "pack input 3x32x32".to_string(),
                "pack_input".to_string(),
                n,
                0.0,
                (n * IMAGE_FLOATS * (4 + eb)) as f64,
            ),
            Step::Op(s, o) => {
                let l = at(plan.level_of(s));
                match &plan.stages[s].ops[o] {
                    Op::Conv(c) => {
                        let (m, k, kd) = Self::gemm_shape(c, l);
                        let inputs = l * c.in_h * c.in_w * c.input.channels;
                        let outs = m * k * (1 + c.residual.is_some() as usize);
                        // A stem reading a widened image buffer (Plan::pad_input_channels):
                        // FLOPs count the image's own channels, as the other tables do.
                        let real = if c.input.buf == plan.input.buf {
                            plan.input.channels.min(c.input.channels)
                        } else {
                            c.input.channels
                        };
                        let channels = if real == c.input.channels {
                            real.to_string()
                        } else {
                            format!("{real}(of {})", c.input.channels)
                        };
                        let label = format!(
                            "conv {r}x{r} {channels}->{k} {}x{}{}{}{}",
                            c.in_h,
                            c.in_w,
                            if c.stride > 1 { " s2" } else { "" },
                            if c.pre.is_some() { " pre" } else { "" },
                            if c.residual.is_some() { " +res" } else { "" },
                            r = c.kernel,
                        );
                        (
                            label,
                            self.conv_kernel(plan, s, o, n).unwrap_or_default(),
                            l,
                            2.0 * (m * k * kd / c.input.channels * real) as f64,
                            ((inputs + outs + k * kd) * eb) as f64,
                        )
                    }
                    Op::ShortcutA {
                        input,
                        output,
                        in_h,
                        in_w,
                        stride,
                        ..
                    } => {
                        let pq = in_h.div_ceil(*stride) * in_w.div_ceil(*stride);
                        (
                            format!(
                                "shortcut-A {}->{} {in_h}x{in_w}",
                                input.channels, output.channels
                            ),
                            "shortcut_a".to_string(),
                            l,
                            0.0,
                            (l * pq * (input.channels + output.channels) * eb) as f64,
                        )
                    }
                    Op::AvgPool2 {
                        input, in_h, in_w, ..
                    } => (
                        format!("avgpool2 {} {in_h}x{in_w}", input.channels),
                        "avgpool2_pre".to_string(),
                        l,
                        0.0,
                        (l * in_h * in_w * input.channels * eb * 5 / 4) as f64,
                    ),
                }
            }
            Step::Gate(g) => {
                let gate = &plan.gates[g];
                let l = at(plan.level_of(gate.after_stage));
                let kept = at(plan.level_of(gate.after_stage) + 1);
                let out = &plan.stages[gate.after_stage].output;
                let hwc = gate.h * gate.w * out.channels;
                if gate.closed() {
                    // The level's count and sample indices carried over: read and written.
                    return crate::backend::OpTime {
                        op: format!("gate {g} closed"),
                        kernel: "gate_closed".into(),
                        samples: l,
                        ms: 0.0,
                        flops: 0.0,
                        bytes: (2 * (l + 1) * 4) as f64,
                    };
                }
                (
                    format!("gate {g} {} {}x{}", out.channels, gate.h, gate.w),
                    "gate_fused+compact".to_string(),
                    l,
                    2.0 * (l * plan.classes * gate.input.channels) as f64,
                    // Pool the batch; gather the survivors out and copy them back (an upper
                    // bound: survivors that keep their slot are not moved).
                    ((l + 4 * kept) * hwc * eb) as f64,
                )
            }
            Step::Head => {
                let h = &plan.head;
                let l = at(plan.gates.len());
                (
                    format!("head {} {}x{}", h.input.channels, h.h, h.w),
                    "head_gap".to_string(),
                    l,
                    2.0 * (l * plan.classes * h.input.channels) as f64,
                    (l * h.h * h.w * h.input.channels * eb) as f64,
                )
            }
        };
        crate::backend::OpTime {
            op,
            kernel,
            samples,
            ms: 0.0,
            flops,
            bytes,
        }
    }

    pub fn new(dev: &Device, plan: &Plan, capacity: usize, policy: &str) -> Result<Self> {
        validate(plan)?;
        let eb = dev.elem_bytes();
        let buffers = plan
            .buffers
            .iter()
            .map(|b| dev.alloc(capacity * b.channels * b.h * b.w * eb))
            .collect::<Result<Vec<_>>>()?;
        let mut ops = Vec::with_capacity(plan.stages.len());
        for s in &plan.stages {
            let mut dev_ops = Vec::with_capacity(s.ops.len());
            for op in &s.ops {
                dev_ops.push(match op {
                    Op::Conv(c) => {
                        let mut cands = conv_candidates(policy, dev.dtype(), plan, c);
                        cands.retain(|k| dev.has_function(k.name).is_ok());
                        let reference = reference_kernel(dev.dtype(), plan, c)
                            .filter(|_| policy == "auto" && cands.len() > 1)
                            .and_then(|r| cands.iter().position(|k| k.name == r.name));
                        if cands.is_empty() {
                            // A device that refused a tile's shared memory: the general kernel.
                            cands.extend(
                                ["conv_mma_f16", "conv_simt_f32"]
                                    .iter()
                                    .filter_map(|name| conv_kernel_info(name))
                                    .filter(|k| {
                                        k.dtype == dev.dtype() && dev.has_function(k.name).is_ok()
                                    })
                                    .take(1),
                            );
                        }
                        let k_major = match cands.first() {
                            Some(k) => k.k_major,
                            None => {
                                return Err(cfg_err(format!(
                                    "no {} convolution kernel under policy {policy}",
                                    dev.dtype()
                                )))
                            }
                        };
                        debug_assert!(cands.iter().all(|k| k.k_major == k_major));
                        let packed = pack_conv_weight(
                            &c.weight,
                            c.output.channels,
                            c.input.channels,
                            c.kernel,
                            k_major,
                        );
                        let weight = dev.upload_storage(&packed)?;
                        let tma = if cands.iter().any(|k| k.needs == Needs::Tma) {
                            Some(Box::new(tma_maps(
                                dev, plan, c, &buffers, capacity, &weight,
                            )?))
                        } else {
                            None
                        };
                        DevOp::Conv {
                            cands,
                            reference,
                            weight,
                            bias: dev.upload_f32(&c.bias)?,
                            pre: upload_pre(dev, &c.pre)?,
                            tma,
                        }
                    }
                    Op::ShortcutA { .. } => DevOp::ShortcutA,
                    Op::AvgPool2 { pre, .. } => DevOp::AvgPool2 {
                        pre: upload_pre(dev, pre)?,
                    },
                });
            }
            ops.push(dev_ops);
        }
        let gates = plan
            .gates
            .iter()
            .map(|g| {
                Ok(DevLinear {
                    weight: dev.upload_f32(&g.weight)?,
                    bias: dev.upload_f32(&g.bias)?,
                    pre: None,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let head = DevLinear {
            weight: dev.upload_f32(&plan.head.weight)?,
            bias: dev.upload_f32(&plan.head.bias)?,
            pre: upload_pre(dev, &plan.head.pre)?,
        };
        let mut pairs = std::collections::HashSet::new();
        if policy == "auto" && dev.dtype() == "f16" {
            for (s, st) in plan.stages.iter().enumerate() {
                for o in 0..st.ops.len().saturating_sub(1) {
                    let (Op::Conv(a), Op::Conv(b)) = (&st.ops[o], &st.ops[o + 1]) else {
                        continue;
                    };
                    let k_major = |d: &DevOp| matches!(d, DevOp::Conv { cands, .. } if cands.iter().all(|k| k.k_major));
                    let built = dense_kernel(a.in_h, a.in_w)
                        .is_some_and(|(k, _)| dev.has_function(k).is_ok());
                    if dense_pair(plan, a, b)
                        && built
                        && k_major(&ops[s][o])
                        && k_major(&ops[s][o + 1])
                    {
                        pairs.insert((s, o));
                    }
                }
            }
        }
        let levels = plan.gates.len() + 1;
        let scratch_elems = plan
            .gates
            .iter()
            .map(|g| g.h * g.w * plan.stages[g.after_stage].output.channels)
            .max()
            .unwrap_or(0);
        let ints = capacity * 4;
        // The cost model splits an output of at most sms/2 tiles (split_k); tuning also
        // tries splits of an output under 4 * sms tiles whose sums fit here (split_tries).
        // 2 * sms of the largest tile holds DenseNet-201's 1x1 layers at 8x8 and 16x16 at
        // batch 256 (16384 and 65536 x 128 outputs; 35 MB on an H200).
        let max_tile = CONV_KERNELS
            .iter()
            .map(|k| k.tile.0 * k.tile.1)
            .max()
            .unwrap_or(0);
        let workspace_floats = 2 * dev.sms.max(1) * max_tile;
        // As many output tiles as the workspace can hold sums for, at the smallest tile
        // (kernels undo a split with more tiles than tickets, see conv_k_range).
        let min_tile = CONV_KERNELS
            .iter()
            .map(|k| k.tile.0 * k.tile.1)
            .min()
            .unwrap_or(1);
        let n_tickets = workspace_floats.div_ceil(min_tile) + 1;
        let off_exit = (levels * 4).next_multiple_of(16);
        let off_class = off_exit + ints;
        let off_score = off_class + ints;
        let off_logits = off_score + ints;
        Ok(Prepared {
            workspace: dev.alloc(workspace_floats * 4)?,
            tickets: dev.alloc(n_tickets * 4)?,
            n_tickets,
            key: plan_key(plan),
            decisions: decisions(plan),
            capacity,
            classes: plan.classes,
            buffers,
            ops,
            gates,
            head,
            outputs: dev.alloc(off_logits + capacity * plan.classes * 4)?,
            off_exit,
            off_class,
            off_score,
            off_logits,
            idx: (0..levels)
                .map(|_| dev.alloc(ints))
                .collect::<Result<Vec<_>>>()?,
            keep: dev.alloc(ints)?,
            src_of: dev.alloc(ints)?,
            scratch: dev.alloc(capacity * scratch_elems * eb)?,
            staging: dev.alloc(capacity * IMAGE_FLOATS * 4)?,
            graphs: HashMap::new(),
            sms: dev.sms,
            choices: HashMap::new(),
            tuned: HashMap::new(),
            tuned_batches: Default::default(),
            assumed: HashMap::new(),
            reassumed: HashMap::new(),
            ws_cap: workspace_floats,
            ws_canary: 0,
            check: None,
            verified: 0,
            rejected: Vec::new(),
            test_tolerance: None,
            pairs,
            fused: Default::default(),
            unfusable: Default::default(),
            fuse: match std::env::var("DGATE_FUSE").as_deref() {
                Ok("0") => Some(false),
                Ok("1") => Some(true),
                _ => None,
            },
        })
    }

    /// Whether ops `o` and `o + 1` of stage `s` run as one conv_dense launch at batch `n`.
    fn fuse_on(&self, s: usize, o: usize, n: usize) -> bool {
        self.pairs.contains(&(s, o))
            && match self.fuse {
                Some(on) => on && !self.unfusable.contains(&(s, o)),
                None => self.fused.contains(&(s, o, n)),
            }
    }

    /// How many DenseNet layers could run fused, and how many do at batch `n`.
    pub fn fused_pairs(&self, n: usize) -> (usize, usize) {
        let on = self
            .pairs
            .iter()
            .filter(|&&(s, o)| self.fuse_on(s, o, n))
            .count();
        (self.pairs.len(), on)
    }

    /// The kernel (and k-splits) a convolution op runs with at batch `n`.
    pub fn conv_kernel(&self, plan: &Plan, stage: usize, op: usize, n: usize) -> Option<String> {
        let (Op::Conv(c), DevOp::Conv { cands, .. }) = (
            plan.stages.get(stage)?.ops.get(op)?,
            self.ops.get(stage)?.get(op)?,
        ) else {
            return None;
        };
        let fused = dense_kernel(c.in_h, c.in_w).map_or("", |(k, _)| k);
        if self.fuse_on(stage, op, n) {
            return Some(fused.to_string());
        }
        if op > 0 && self.fuse_on(stage, op - 1, n) {
            return Some(format!("(in {fused})"));
        }
        let level = plan.level_of(stage);
        let (i, splits) = self.choice(stage, op, level, c, cands, n);
        let name = cands.get(i)?.name;
        Some(if splits > 1 {
            format!("{name}/{splits}")
        } else {
            name.to_string()
        })
    }

    fn gemm_shape(c: &Conv, n: usize) -> (usize, usize, usize) {
        (
            n * c.out_h * c.out_w,
            c.output.channels,
            c.kernel * c.kernel * c.input.channels,
        )
    }

    /// Live samples the kernels of `level` are chosen for at batch `n`.
    fn assumed_count(&self, n: usize, level: usize) -> usize {
        self.assumed
            .get(&n)
            .and_then(|a| a.get(level))
            .copied()
            .unwrap_or(n)
    }

    /// The measured choice for (stage, op, n), else the cost model's for the samples
    /// assumed live at the op's level.
    fn choice(
        &self,
        stage: usize,
        op: usize,
        level: usize,
        c: &Conv,
        cands: &[&'static ConvKernel],
        n: usize,
    ) -> (usize, usize) {
        match self.choices.get(&(stage, op, n)) {
            Some(&ch) if ch.0 < cands.len() => ch,
            _ => model_choice(
                cands,
                Self::gemm_shape(c, self.assumed_count(n, level)),
                self.sms,
                self.ws_cap,
            ),
        }
    }

    /// Takes the live-sample counts a pass at batch `n` left at each level (read back
    /// from the device) and returns true when the kernels of some level should be
    /// chosen again: its count rose above the assumption or fell to a quarter of it.
    /// The assumption becomes the count rounded up to a power of two, so counts that
    /// wander near one value change nothing; a batch size is re-chosen at most 8 times.
    /// The caller drops the batch size's graph on true.
    pub fn observe(&mut self, n: usize, counts: &[usize]) -> bool {
        let levels = self.idx.len();
        let times = self.reassumed.get(&n).copied().unwrap_or(0);
        let current: Vec<usize> = (0..levels).map(|l| self.assumed_count(n, l)).collect();
        let next: Vec<usize> = current
            .iter()
            .enumerate()
            .map(|(l, &a)| match counts.get(l) {
                Some(&c) if l > 0 && (c > a || c * 4 <= a) => c.max(1).next_power_of_two().min(n),
                _ => a,
            })
            .collect();
        if next == current || times >= 8 {
            return false;
        }
        self.assumed.insert(n, next);
        self.reassumed.insert(n, times + 1);
        self.choices.retain(|k, _| k.2 != n);
        self.fused.retain(|k| k.2 != n);
        self.tuned_batches.remove(&n);
        self.graphs.remove(&n);
        true
    }

    /// Replaces the split-K workspace by one of `cap` floats (zero) followed by a
    /// canary of `canary` floats set to 1.0, which no kernel may touch: for the check
    /// that kernels undo a split the workspace cannot hold. Drops captured graphs.
    pub fn test_workspace_with_canary(
        &mut self,
        dev: &Device,
        cap: usize,
        canary: usize,
    ) -> Result<()> {
        let mut v = vec![0.0f32; cap + canary];
        v[cap..].fill(1.0);
        self.workspace = dev.upload_f32(&v)?;
        self.ws_cap = cap;
        self.ws_canary = canary;
        self.graphs.clear();
        Ok(())
    }

    /// Whether the canary of [`Self::test_workspace_with_canary`] is untouched, and the
    /// workspace before it and every split-K ticket are zero again.
    pub fn test_workspace_intact(&self, dev: &Device) -> Result<bool> {
        let bytes = dev.download_bytes(&self.workspace, (self.ws_cap + self.ws_canary) * 4)?;
        let v = storage_to_f32(crate::backend::Precision::F32, &bytes);
        Ok(v[..self.ws_cap].iter().all(|&x| x == 0.0)
            && v[self.ws_cap..].iter().all(|&x| x == 1.0)
            && self.tickets_zero(dev)?)
    }

    /// Whether the first `floats` of the split-K workspace and every ticket are zero, as
    /// a split convolution must leave them for the next.
    pub fn test_workspace_zero(&self, dev: &Device, floats: usize) -> Result<bool> {
        let bytes = dev.download_bytes(&self.workspace, floats.min(self.ws_cap) * 4)?;
        Ok(bytes.iter().all(|&b| b == 0) && self.tickets_zero(dev)?)
    }

    fn tickets_zero(&self, dev: &Device) -> Result<bool> {
        let tickets = dev.download_bytes(&self.tickets, self.n_tickets * 4)?;
        Ok(tickets.iter().all(|&b| b == 0))
    }

    /// How many (op, batch size) kernel choices were measured.
    pub fn measured_choices(&self) -> usize {
        self.choices.len()
    }

    /// Drops every kernel choice and captured graph (they are made again as needed).
    pub fn forget_choices(&mut self) {
        self.choices.clear();
        self.fused.clear();
        self.tuned.clear();
        self.tuned_batches.clear();
        self.graphs.clear();
    }

    /// Live samples per level after the last pass (device counters).
    pub fn live_counts(&self, dev: &Device) -> Result<Vec<usize>> {
        let b = dev.download_bytes(&self.outputs, self.idx.len() * 4)?;
        Ok(b.chunks_exact(4)
            .map(|c| i32::from_le_bytes([c[0], c[1], c[2], c[3]]).max(0) as usize)
            .collect())
    }

    fn tune_key(c: &Conv, cands: &[&'static ConvKernel], n: usize) -> TuneKey {
        (
            cands.first().map_or("", |k| k.name),
            cands.len(),
            [
                n,
                c.input.channels,
                c.output.channels,
                c.in_h,
                c.in_w,
                c.kernel,
                c.stride,
                c.pad,
                c.pre.is_some() as usize,
                c.residual.is_some() as usize,
            ],
        )
    }

    /// Measures every candidate kernel (with and without split-K) of every convolution
    /// at batch `n` on the device and keeps the fastest: the launches a CUDA graph for
    /// `n` then captures. Identical layers are measured once. Convolutions after a gate
    /// are measured with the samples assumed live there (see `observe`). CUDA events
    /// time the GPU; the emulator's synchronous launches are timed by the wall clock
    /// (which only exercises this path: emulated times say nothing of a GPU's).
    /// Returns whether it measured now (false: batch `n` was already tuned).
    pub fn tune(&mut self, dev: &Device, plan: &Plan, n: usize) -> Result<bool> {
        if !self.tuned_batches.insert(n) {
            return Ok(false);
        }
        let started = std::time::Instant::now();
        let mut timed = 0usize;
        let ev = |e: cudarc::driver::DriverError| Error::Cuda(format!("tuning event: {e}"));
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        // CUDA events on a GPU; the emulator runs launches synchronously: wall clock.
        let events = match (dev.context(), dev.stream()) {
            (Some(ctx), Some(stream)) => Some((
                ctx.new_event(flags).map_err(ev)?,
                ctx.new_event(flags).map_err(ev)?,
                stream.clone(),
            )),
            _ => None,
        };
        // Each level as live as assumed: the kernels read their sample count from the
        // device.
        let levels = plan.gates.len() + 1;
        let live: Vec<usize> = (0..levels).map(|l| self.assumed_count(n, l)).collect();
        let counts: Vec<u8> = live
            .iter()
            .flat_map(|&c| (c as i32).to_le_bytes())
            .collect();
        dev.upload_bytes(&mut self.outputs, &counts)?;
        let mut level = 0;
        for s in 0..plan.stages.len() {
            for (o, op) in plan.stages[s].ops.iter().enumerate() {
                let (
                    Op::Conv(c),
                    DevOp::Conv {
                        cands, reference, ..
                    },
                ) = (op, &self.ops[s][o])
                else {
                    continue;
                };
                let (cands, reference) = (cands.clone(), *reference);
                if self.choices.contains_key(&(s, o, n)) {
                    continue;
                }
                let key = Self::tune_key(c, &cands, live[level]);
                if let Some(&ch) = self.tuned.get(&key) {
                    self.choices.insert((s, o, n), ch);
                    continue;
                }
                let shape = Self::gemm_shape(c, live[level]);
                // Round 1: every candidate, unsplit and with the cost model's k-split.
                let mut tries = Vec::new();
                for (i, cand) in cands.iter().enumerate() {
                    // A cluster tile is a split: timed only where one would be tried.
                    if cand.cluster > 0 && !cluster_tried(cand, shape, dev.sms) {
                        continue;
                    }
                    tries.push((i, 1));
                    let model = if cand.split {
                        split_k(cand.tile, shape, dev.sms, self.ws_cap)
                    } else {
                        1
                    };
                    if model > 1 {
                        tries.push((i, model));
                    }
                }
                let pos = (s, o, level, n);
                let mut timed_tries = self.check_and_time(
                    dev,
                    plan,
                    c,
                    pos,
                    live[level],
                    (&cands, reference),
                    &tries,
                    &events,
                )?;
                // Round 2: more k-splits (split_tries) for the fastest split-capable
                // candidate of round 1 only, which keeps tuning's time bounded (DenseNet-201
                // tunes about 100 shapes per batch size and exit pattern).
                let leader = timed_tries
                    .iter()
                    .filter(|((i, _), _)| cands[*i].split)
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .map(|((i, _), _)| *i);
                let more: Vec<(usize, usize)> = leader
                    .map(|i| {
                        split_tries(cands[i].tile, shape, dev.sms, self.ws_cap)
                            .into_iter()
                            .map(|sp| (i, sp))
                            .filter(|t| !tries.contains(t))
                            .collect()
                    })
                    .unwrap_or_default();
                if !more.is_empty() {
                    timed_tries.extend(self.check_and_time(
                        dev,
                        plan,
                        c,
                        pos,
                        live[level],
                        (&cands, reference),
                        &more,
                        &events,
                    )?);
                }
                let best = timed_tries
                    .iter()
                    .copied()
                    .min_by(|a, b| a.1.total_cmp(&b.1))
                    .unwrap_or(((0, 1), f32::INFINITY));
                self.tuned.insert(key, best.0);
                self.choices.insert((s, o, n), best.0);
                timed += 1;
            }
            if self.fuse != Some(false) {
                self.tune_pairs(dev, plan, (s, level, n, live[level]), &events)?;
            }
            if plan.gate_after(s).is_some() {
                level += 1;
            }
        }
        dev.sync()?;
        // The check's scratch is as large as the largest activation buffer: not kept
        // between tunings.
        self.check = None;
        if std::env::var_os("DGATE_DEBUG").is_some() {
            eprintln!(
                "dgate: tuned {timed} convolution shapes for batch {n} (live per level {live:?}) in {:.0} ms; \
                 candidate runs checked so far: {} agreed with the reference kernel, {} did not",
                started.elapsed().as_secs_f64() * 1e3,
                self.verified,
                self.rejected.len()
            );
        }
        Ok(true)
    }

    /// Removes batch `n`'s measured kernel choices (its convolutions then run with the
    /// cost model's) and returns them for [`Self::restore_choices`].
    #[allow(clippy::type_complexity)]
    pub fn take_choices(&mut self, n: usize) -> Vec<((usize, usize, usize), (usize, usize))> {
        let taken: Vec<_> = self
            .choices
            .iter()
            .filter(|(k, _)| k.2 == n)
            .map(|(&k, &v)| (k, v))
            .collect();
        self.choices.retain(|k, _| k.2 != n);
        taken
    }

    /// Puts back choices from [`Self::take_choices`].
    #[allow(clippy::type_complexity)]
    pub fn restore_choices(&mut self, taken: Vec<((usize, usize, usize), (usize, usize))>) {
        self.choices.extend(taken);
    }

    /// Milliseconds of one launch of convolution `o` of stage `s` with the `ch` (candidate,
    /// splits). On a GPU, TIME_REPS launches captured into a CUDA graph, replayed once to
    /// warm up and once under CUDA events: the passes run as graphs too, and a graph
    /// launches short kernels back to back where launches from the host would measure
    /// the host's launch rate instead (batch 1's kernels take a few microseconds). The
    /// replay queues behind a hold of the stream, so the graph's own launch call is not
    /// in the time either. If capture fails, the launches are timed directly. In the
    /// emulator (no events): one launch by the wall clock, which exercises the path and
    /// says nothing of a GPU.
    #[allow(clippy::type_complexity)]
    fn time_try(
        &self,
        dev: &Device,
        plan: &Plan,
        c: &Conv,
        (s, o, level, n): (usize, usize, usize, usize),
        ch: Option<(usize, usize)>,
        events: &Option<(
            cudarc::driver::CudaEvent,
            cudarc::driver::CudaEvent,
            std::sync::Arc<cudarc::driver::CudaStream>,
        )>,
    ) -> Result<f32> {
        Self::time_launches(dev, events, &|| {
            self.launch_conv(dev, plan, c, s, o, level, n, ch, None)
        })
    }

    /// [`Self::time_try`]'s timing of any launches `launch` enqueues: milliseconds a run.
    #[allow(clippy::type_complexity)]
    fn time_launches(
        dev: &Device,
        events: &Option<(
            cudarc::driver::CudaEvent,
            cudarc::driver::CudaEvent,
            std::sync::Arc<cudarc::driver::CudaStream>,
        )>,
        launch_once: &dyn Fn() -> Result<()>,
    ) -> Result<f32> {
        const TIME_REPS: usize = 10;
        let ev = |e: cudarc::driver::DriverError| Error::Cuda(format!("tuning event: {e}"));
        let Some((start, end, stream)) = events else {
            let wall = std::time::Instant::now();
            launch_once()?;
            return Ok(wall.elapsed().as_secs_f32() * 1e3);
        };
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        let graph = stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
            .ok()
            .and_then(|()| {
                let launched = (0..TIME_REPS).try_for_each(|_| launch_once());
                let graph = stream.end_capture(CUgraphInstantiate_flags(0));
                launched.ok().and(graph.ok().flatten())
            });
        let reps = if graph.is_some() { TIME_REPS } else { 3 };
        let launch = || -> Result<()> {
            match &graph {
                Some(g) => g
                    .launch()
                    .map_err(|e| Error::Cuda(format!("tuning graph: {e}"))),
                None => (0..reps).try_for_each(|_| launch_once()),
            }
        };
        launch()?; // warm-up
        dev.hold(super::TIMING_HOLD_MS)?; // the GPU's time alone (see Device::hold)
        start.record(stream).map_err(ev)?;
        launch()?;
        end.record(stream).map_err(ev)?;
        end.synchronize().map_err(ev)?;
        Ok(start.elapsed_ms(end).map_err(ev)? / reps as f32)
    }

    /// Tuning of stage `s`'s DenseNet layers (`pairs`) at batch `n` (live samples
    /// `live`, counted at `level`), once both layers' kernels are chosen: the fused
    /// kernel runs on noise in the 1x1's input, and its output is compared on the
    /// device with the two layers' own launches (`diff_max`); where it agrees, both
    /// ways are timed and it is kept where faster (`DGATE_FUSE=1`: wherever it agrees).
    /// A disagreement is printed and kept in `rejected`, as for a candidate kernel.
    #[allow(clippy::type_complexity)]
    fn tune_pairs(
        &mut self,
        dev: &Device,
        plan: &Plan,
        (s, level, n, live): (usize, usize, usize, usize),
        events: &Option<(
            cudarc::driver::CudaEvent,
            cudarc::driver::CudaEvent,
            std::sync::Arc<cudarc::driver::CudaStream>,
        )>,
    ) -> Result<()> {
        let mut mine: Vec<usize> = self
            .pairs
            .iter()
            .filter(|p| p.0 == s)
            .map(|p| p.1)
            .collect();
        mine.sort_unstable();
        let dt = dev.dtype();
        for o in mine {
            let (Op::Conv(a), Op::Conv(b)) = (&plan.stages[s].ops[o], &plan.stages[s].ops[o + 1])
            else {
                continue;
            };
            let (ref_ptr, _) = self.check_scratch(dev)?;
            let rows = live * a.in_h * a.in_w;
            self.fill_noise(dev, plan, &a.input, rows, (s * 1000 + o) as u32)?;
            let pos = |op: usize| (s, op, level, n);
            // The two layers' own kernels (the reference) into the scratch, then fused.
            self.launch_conv(dev, plan, a, s, o, level, n, None, None)?;
            self.launch_conv(dev, plan, b, s, o + 1, level, n, None, Some(ref_ptr))?;
            self.launch_dense(dev, plan, pos(o), None)?;
            let (diff, scale) = self.diff_max(dev, plan, &b.output, rows, ref_ptr)?;
            let tol = self.test_tolerance.unwrap_or_else(|| check_tolerance(dt));
            if diff > tol * scale {
                let kernel = dense_kernel(a.in_h, a.in_w).map_or("", |(k, _)| k);
                let msg = format!(
                    "{kernel} disagrees with the two layers' own kernels on a {}->{}->{} DenseNet layer at {}x{}, \
                     {live} samples (max |diff| {diff:.3e}, max |value| {scale:.3e}): not fused",
                    a.input.channels, a.output.channels, b.output.channels, a.in_h, a.in_w,
                );
                if self.test_tolerance.is_none() {
                    eprintln!("dgate: {msg}");
                }
                self.rejected.push(msg);
                self.unfusable.insert((s, o));
                continue;
            }
            self.verified += 1;
            let fuse = if self.fuse == Some(true) {
                true
            } else {
                let apart = Self::time_launches(dev, events, &|| {
                    self.launch_conv(dev, plan, a, s, o, level, n, None, None)?;
                    self.launch_conv(dev, plan, b, s, o + 1, level, n, None, None)
                })?;
                let fused = Self::time_launches(dev, events, &|| {
                    self.launch_dense(dev, plan, pos(o), None)
                })?;
                fused < apart
            };
            if fuse {
                self.fused.insert((s, o, n));
            }
        }
        Ok(())
    }

    /// Checks `tries` (candidate, k-splits) against the reference kernel where there is
    /// one, then times those that agree: (try, milliseconds) each.
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn check_and_time(
        &mut self,
        dev: &Device,
        plan: &Plan,
        c: &Conv,
        pos: (usize, usize, usize, usize),
        live: usize,
        (cands, reference): (&[&'static ConvKernel], Option<usize>),
        tries: &[(usize, usize)],
        events: &Option<(
            cudarc::driver::CudaEvent,
            cudarc::driver::CudaEvent,
            std::sync::Arc<cudarc::driver::CudaStream>,
        )>,
    ) -> Result<Vec<((usize, usize), f32)>> {
        let mut tries = tries.to_vec();
        if let Some(r) = reference {
            let bad = self.check_candidates(dev, plan, c, pos, live, (cands, r), &tries)?;
            tries.retain(|t| !bad.contains(t));
        }
        tries
            .into_iter()
            .map(|t| Ok((t, self.time_try(dev, plan, c, pos, Some(t), events)?)))
            .collect()
    }

    /// Tuning's correctness check. Fills the convolution's input (and residual) views
    /// with noise, runs candidate `reference` of `cands` into a scratch buffer, then each of
    /// `tries` (candidate, k-splits) into the real output, comparing the two on the
    /// device (`diff_max`, 8 bytes back). Returns the tries that disagree: each is
    /// printed and kept in `rejected`, and tuning never chooses it. So a kernel that is
    /// wrong on some device (or for some shape) costs speed, not answers.
    #[allow(clippy::too_many_arguments)]
    fn check_candidates(
        &mut self,
        dev: &Device,
        plan: &Plan,
        c: &Conv,
        (s, o, level, n): (usize, usize, usize, usize),
        live: usize,
        (cands, reference): (&[&'static ConvKernel], usize),
        tries: &[(usize, usize)],
    ) -> Result<Vec<(usize, usize)>> {
        // A residual read in place (the output's own channels) changes with every run:
        // nothing to compare against (no plan the model builds does this).
        if c.residual.as_ref().is_some_and(|r| overlaps(r, &c.output)) {
            return Ok(Vec::new());
        }
        let dt = dev.dtype();
        let (ref_ptr, _) = self.check_scratch(dev)?;
        let seed = (s * 1000 + o) as u32;
        let in_rows = live * c.in_h * c.in_w;
        let out_rows = live * c.out_h * c.out_w;
        self.fill_noise(dev, plan, &c.input, in_rows, seed)?;
        if let Some(r) = &c.residual {
            self.fill_noise(dev, plan, r, out_rows, seed ^ 0x5555)?;
        }
        self.launch_conv(
            dev,
            plan,
            c,
            s,
            o,
            level,
            n,
            Some((reference, 1)),
            Some(ref_ptr),
        )?;
        let tol = self.test_tolerance.unwrap_or_else(|| check_tolerance(dt));
        let mut bad = Vec::new();
        for &(i, sp) in tries {
            if (i, sp) == (reference, 1) {
                continue;
            }
            self.launch_conv(dev, plan, c, s, o, level, n, Some((i, sp)), None)?;
            let (diff, scale) = self.diff_max(dev, plan, &c.output, out_rows, ref_ptr)?;
            if diff <= tol * scale {
                self.verified += 1;
                continue;
            }
            let split = if sp > 1 {
                format!("/{sp}")
            } else {
                String::new()
            };
            let msg = format!(
                "{}{split} disagrees with {} on a {}->{} {}x{} stride-{} convolution at {}x{}, {live} samples \
                 (max |diff| {diff:.3e}, max |value| {scale:.3e}): not used for this layer",
                cands[i].name,
                cands[reference].name,
                c.input.channels,
                c.output.channels,
                c.kernel,
                c.kernel,
                c.stride,
                c.in_h,
                c.in_w,
            );
            if self.test_tolerance.is_none() {
                eprintln!("dgate: {msg}");
            }
            self.rejected.push(msg);
            bad.push((i, sp));
        }
        Ok(bad)
    }

    /// The tuning checks' scratch: a buffer as large as the largest activation buffer
    /// (the reference's output) and 8 bytes for `diff_max`'s answer, allocated on first
    /// use. Returns their addresses.
    fn check_scratch(&mut self, dev: &Device) -> Result<(u64, u64)> {
        let (r, d) = match self.check.take() {
            Some(c) => c,
            None => {
                let largest = self.buffers.iter().map(|b| b.bytes).max().unwrap_or(0);
                (dev.alloc(largest)?, dev.alloc(8)?)
            }
        };
        let ptrs = (r.ptr, d.ptr);
        self.check = Some((r, d));
        Ok(ptrs)
    }

    /// `fill_noise`/`diff_max` parameters over `rows` pixels of view `v`.
    fn check_params(plan: &Plan, v: &View, rows: usize, ptrs: [u64; 3], seed: u32) -> CheckParams {
        CheckParams {
            a: ptrs[0],
            b: ptrs[1],
            out: ptrs[2],
            rows: rows as i32,
            c: v.channels as i32,
            stride: plan.buffers[v.buf].channels as i32,
            off: v.offset as i32,
            seed,
            pad0: 0,
        }
    }

    fn check_grid(rows: usize, v: &View) -> (u32, u32) {
        (
            blocks(rows * v.channels, ELEMENTWISE_THREADS as usize).min(4096),
            1,
        )
    }

    /// Fills `rows` pixels of view `v` with noise from `seed`.
    fn fill_noise(
        &self,
        dev: &Device,
        plan: &Plan,
        v: &View,
        rows: usize,
        seed: u32,
    ) -> Result<()> {
        let p = Self::check_params(plan, v, rows, [self.view_ptr(v), 0, 0], seed);
        dev.launch(
            &format!("fill_noise_{}", dev.dtype()),
            Self::check_grid(rows, v),
            ELEMENTWISE_THREADS,
            0,
            &p,
        )
    }

    /// Compares `rows` pixels of view `v` with the same pixels at `reference` (laid out
    /// as the view's buffer) on the device: (max |difference|, max |value|), read back
    /// through the scratch's 8 bytes.
    fn diff_max(
        &mut self,
        dev: &Device,
        plan: &Plan,
        v: &View,
        rows: usize,
        reference: u64,
    ) -> Result<(f32, f32)> {
        let (_, out) = self.check_scratch(dev)?;
        let p = Self::check_params(plan, v, rows, [self.view_ptr(v), reference, out], 0);
        let Some((_, d)) = self.check.as_mut() else {
            return Err(Error::Cuda("tuning's check has no scratch".into()));
        };
        dev.upload_bytes(d, &[0u8; 8])?;
        dev.launch(
            &format!("diff_max_{}", dev.dtype()),
            Self::check_grid(rows, v),
            ELEMENTWISE_THREADS,
            0,
            &p,
        )?;
        let b = dev.download_bytes(d, 8)?;
        let word =
            |i: usize| f32::from_bits(u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]));
        Ok((word(0), word(4)))
    }

    fn count_ptr(&self, level: usize) -> u64 {
        self.outputs.ptr + 4 * level as u64
    }

    fn view_ptr(&self, v: &View) -> u64 {
        self.buffers[v.buf].ptr
    }

    /// Enqueues the whole forward pass for `n` images already in `staging`.
    pub fn enqueue(&self, dev: &Device, plan: &Plan, n: usize) -> Result<()> {
        self.enqueue_with(dev, plan, n, &mut |_| Ok(()))
    }

    /// [`Self::enqueue`], calling `after` once each step's launches are enqueued (the
    /// profiler records an event there).
    pub fn enqueue_with(
        &self,
        dev: &Device,
        plan: &Plan,
        n: usize,
        after: &mut dyn FnMut(Step) -> Result<()>,
    ) -> Result<()> {
        let dt = dev.dtype();
        let input_buf = &plan.buffers[plan.input.buf];
        let pack = PackParams {
            images: self.staging.ptr,
            out: self.view_ptr(&plan.input),
            count: self.count_ptr(0),
            idx: self.idx[0].ptr,
            n: n as i32,
            out_stride: input_buf.channels as i32,
            out_off: plan.input.offset as i32,
            hw: 1024,
            c: 3,
            pad0: 0,
        };
        dev.launch(
            &format!("pack_input_{dt}"),
            (blocks(n * IMAGE_FLOATS, ELEMENTWISE_THREADS as usize), 1),
            ELEMENTWISE_THREADS,
            0,
            &pack,
        )?;
        after(Step::Pack)?;
        let mut level = 0;
        for s in 0..plan.stages.len() {
            self.enqueue_stage_with(dev, plan, s, level, n, after)?;
            if let Some(g) = plan.gate_after(s) {
                self.enqueue_gate(dev, plan, g, level, n)?;
                after(Step::Gate(g))?;
                level += 1;
            }
        }
        self.enqueue_head(dev, plan, level, n)?;
        after(Step::Head)
    }

    /// The launch parameters of convolution `o` of stage `s` (live samples counted at
    /// `level`) for a kernel of that weight packing, into its output view or the same
    /// view of buffer `out`.
    fn conv_params(
        &self,
        dev: &Device,
        plan: &Plan,
        c: &Conv,
        (s, o, level, n): (usize, usize, usize, usize),
        k_major: bool,
        out: Option<u64>,
    ) -> Result<ConvParams> {
        let DevOp::Conv {
            weight,
            bias,
            pre,
            tma,
            ..
        } = &self.ops[s][o]
        else {
            return Err(Error::Cuda("prepared plan does not match the plan".into()));
        };
        let (ps, pb, pr) = pre_ptrs(pre);
        let (res_ptr, res_stride, res_off) = match &c.residual {
            Some(r) => (
                self.view_ptr(r),
                plan.buffers[r.buf].channels as i32,
                r.offset as i32,
            ),
            None => (0, 0, 0),
        };
        let (_, k, kd) = Self::gemm_shape(c, n);
        Ok(ConvParams {
            input: self.view_ptr(&c.input),
            out: out.unwrap_or_else(|| self.view_ptr(&c.output)),
            weight: weight.ptr,
            bias: bias.ptr,
            residual: res_ptr,
            pre_scale: ps,
            pre_shift: pb,
            count: self.count_ptr(level),
            workspace: self.workspace.ptr,
            tickets: self.tickets.ptr,
            tma: tma.as_ref().map_or(0, |m| m.ptr),
            in_stride: plan.buffers[c.input.buf].channels as i32,
            in_off: c.input.offset as i32,
            c: c.input.channels as i32,
            out_stride: plan.buffers[c.output.buf].channels as i32,
            out_off: c.output.offset as i32,
            k: k as i32,
            res_stride,
            res_off,
            h: c.in_h as i32,
            w: c.in_w as i32,
            p: c.out_h as i32,
            q: c.out_w as i32,
            r: c.kernel as i32,
            stride: c.stride as i32,
            pad: c.pad as i32,
            pre_relu: pr,
            relu: c.relu as i32,
            ldw: if k_major { kd as i32 } else { k as i32 },
            ws_cap: self.ws_cap.min(i32::MAX as usize) as i32,
            n_tickets: self.n_tickets.min(i32::MAX as usize) as i32,
            weight_lines: if dev.prefetch {
                weight_lines(weight.bytes)
            } else {
                0
            },
        })
    }

    /// Launches ops `o` and `o + 1` of stage `s` (a [`dense_pair`]) as one conv_dense
    /// launch ([`dense_kernel`]): a cluster of DENSE_CL blocks per DENSE_ROWS output
    /// pixels of the batch, or per 8x8 tile (halo), those past the live samples returning
    /// at once. The 3x3's output goes to
    /// its view or the same view of buffer `out`.
    fn launch_dense(
        &self,
        dev: &Device,
        plan: &Plan,
        (s, o, level, n): (usize, usize, usize, usize),
        out: Option<u64>,
    ) -> Result<()> {
        let (Some(Op::Conv(a)), Some(Op::Conv(b))) =
            (plan.stages[s].ops.get(o), plan.stages[s].ops.get(o + 1))
        else {
            return Err(Error::Cuda(
                "fused DenseNet layer is not two convolutions".into(),
            ));
        };
        let p = DenseParams {
            one: self.conv_params(dev, plan, a, (s, o, level, n), true, None)?,
            three: self.conv_params(dev, plan, b, (s, o + 1, level, n), true, out)?,
        };
        let Some((kernel, smem)) = dense_kernel(a.in_h, a.in_w) else {
            return Err(Error::Cuda(format!(
                "no fused kernel for a DenseNet layer at {}x{}",
                a.in_h, a.in_w
            )));
        };
        // A cluster per DENSE_ROWS pixels of the batch, or (halo) per 8x8 tile.
        let clusters = if kernel == DENSE_KERNEL {
            blocks(n * a.in_h * a.in_w, DENSE_ROWS)
        } else {
            (n * (a.in_h / 8) * (a.in_w / 8)) as u32
        };
        dev.launch3(kernel, (clusters, 1, DENSE_CL as u32), 256, smem, &p)
    }

    /// Launches convolution `o` of stage `s` (live samples counted at `level`), with
    /// the kernel and splits chosen for batch `n`, or `force`d ones (for tuning), into
    /// its output view or, for tuning's check, the same view of buffer `out`.
    #[allow(clippy::too_many_arguments)]
    fn launch_conv(
        &self,
        dev: &Device,
        plan: &Plan,
        c: &Conv,
        s: usize,
        o: usize,
        level: usize,
        n: usize,
        force: Option<(usize, usize)>,
        out: Option<u64>,
    ) -> Result<()> {
        let DevOp::Conv { cands, .. } = &self.ops[s][o] else {
            return Err(Error::Cuda("prepared plan does not match the plan".into()));
        };
        let (i, splits) = force.unwrap_or_else(|| self.choice(s, o, level, c, cands, n));
        let kernel = cands
            .get(i)
            .ok_or_else(|| Error::Cuda("convolution choice out of range".into()))?;
        let p = self.conv_params(dev, plan, c, (s, o, level, n), kernel.k_major, out)?;
        let (m, k, _) = Self::gemm_shape(c, n);
        // Splits were chosen for the samples assumed live; should more arrive than the
        // workspace holds, the kernel undoes the split itself (conv_k_range).
        // A cluster kernel always runs its cluster's k-ranges (one launch, no workspace).
        let splits = if kernel.cluster > 0 {
            kernel.cluster
        } else if kernel.split {
            splits.max(1)
        } else {
            1
        };
        let (tm, tn, _) = kernel.tile;
        // Kernels that loop over output tiles get a grid for the samples expected live
        // (fewer than the batch after a gate), not idle blocks for the rest.
        let m_grid = if kernel.m_loop {
            Self::gemm_shape(c, self.assumed_count(n, level).clamp(1, n)).0
        } else {
            m
        };
        let grid = (
            // (A split launch's parts share the SMs too.)
            resident_blocks(
                blocks(m_grid, tm),
                blocks(k, tn) * splits as u32,
                kernel.resident,
                self.sms,
            ),
            blocks(k, tn),
            splits as u32,
        );
        // A split's last block per tile writes the outputs (splitk_finish): one launch.
        dev.launch3(kernel.name, grid, kernel.threads, kernel.smem, &p)?;
        Ok(())
    }

    pub fn enqueue_stage(
        &self,
        dev: &Device,
        plan: &Plan,
        s: usize,
        level: usize,
        n: usize,
    ) -> Result<()> {
        self.enqueue_stage_with(dev, plan, s, level, n, &mut |_| Ok(()))
    }

    fn enqueue_stage_with(
        &self,
        dev: &Device,
        plan: &Plan,
        s: usize,
        level: usize,
        n: usize,
        after: &mut dyn FnMut(Step) -> Result<()>,
    ) -> Result<()> {
        let dt = dev.dtype();
        let count = self.count_ptr(level);
        for (o, (op, dop)) in plan.stages[s].ops.iter().zip(&self.ops[s]).enumerate() {
            match (op, dop) {
                // A fused DenseNet layer: both ops in the first one's launch.
                (Op::Conv(_), DevOp::Conv { .. }) if self.fuse_on(s, o, n) => {
                    self.launch_dense(dev, plan, (s, o, level, n), None)?;
                }
                (Op::Conv(_), DevOp::Conv { .. }) if o > 0 && self.fuse_on(s, o - 1, n) => {}
                (Op::Conv(c), DevOp::Conv { .. }) => {
                    self.launch_conv(dev, plan, c, s, o, level, n, None, None)?;
                }
                (
                    Op::ShortcutA {
                        input,
                        output,
                        in_h,
                        in_w,
                        stride,
                        pad_before,
                    },
                    DevOp::ShortcutA,
                ) => {
                    let (oh, ow) = (in_h.div_ceil(*stride), in_w.div_ceil(*stride));
                    let p = ShortcutParams {
                        input: self.view_ptr(input),
                        out: self.view_ptr(output),
                        count,
                        in_stride: plan.buffers[input.buf].channels as i32,
                        in_off: input.offset as i32,
                        c: input.channels as i32,
                        out_stride: plan.buffers[output.buf].channels as i32,
                        out_off: output.offset as i32,
                        k: output.channels as i32,
                        h: *in_h as i32,
                        w: *in_w as i32,
                        p: oh as i32,
                        q: ow as i32,
                        stride: *stride as i32,
                        pad_before: *pad_before as i32,
                    };
                    dev.launch(
                        &format!("shortcut_a_{dt}"),
                        sample_grid(n, oh * ow * output.channels),
                        ELEMENTWISE_THREADS,
                        0,
                        &p,
                    )?;
                }
                (
                    Op::AvgPool2 {
                        input,
                        output,
                        in_h,
                        in_w,
                        ..
                    },
                    DevOp::AvgPool2 { pre },
                ) => {
                    let (ps, pb, pr) = pre_ptrs(pre);
                    let (oh, ow) = (in_h / 2, in_w / 2);
                    let (in_stride, out_stride) = (
                        plan.buffers[input.buf].channels,
                        plan.buffers[output.buf].channels,
                    );
                    // 16-byte units only where both views keep them aligned.
                    let eb = dev.elem_bytes();
                    let vec = vec_channels(eb, in_stride, input.offset, input.channels)
                        .min(vec_channels(eb, out_stride, output.offset, input.channels));
                    let p = PoolParams {
                        input: self.view_ptr(input),
                        out: self.view_ptr(output),
                        pre_scale: ps,
                        pre_shift: pb,
                        count,
                        in_stride: in_stride as i32,
                        in_off: input.offset as i32,
                        c: input.channels as i32,
                        out_stride: out_stride as i32,
                        out_off: output.offset as i32,
                        h: *in_h as i32,
                        w: *in_w as i32,
                        p: oh as i32,
                        q: ow as i32,
                        pre_relu: pr,
                        vec: vec as i32,
                        pad0: 0,
                    };
                    dev.launch(
                        &format!("avgpool2_pre_{dt}"),
                        sample_grid(n, oh * ow * input.channels / vec),
                        ELEMENTWISE_THREADS,
                        0,
                        &p,
                    )?;
                }
                _ => return Err(Error::Cuda("prepared plan does not match the plan".into())),
            }
            after(Step::Op(s, o))?;
        }
        Ok(())
    }

    /// Parameters and dynamic shared memory of a gate/head launch.
    fn gap_params(
        &self,
        dev: &Device,
        plan: &Plan,
        lin: &DevLinear,
        input: &View,
        hw: usize,
        level: usize,
    ) -> (GapLinearParams, u32) {
        let (ps, pb, pr) = pre_ptrs(&lin.pre);
        let (vec, groups, smem) = gap_layout(dev, plan, input, hw);
        let p = GapLinearParams {
            input: self.view_ptr(input),
            weight: lin.weight.ptr,
            bias: lin.bias.ptr,
            pre_scale: ps,
            pre_shift: pb,
            count: self.count_ptr(level),
            idx: self.idx[level].ptr,
            keep: self.keep.ptr,
            out_class: self.outputs.ptr + self.off_class as u64,
            out_exit: self.outputs.ptr + self.off_exit as u64,
            out_score: self.outputs.ptr + self.off_score as u64,
            out_logits: self.outputs.ptr + self.off_logits as u64,
            in_stride: plan.buffers[input.buf].channels as i32,
            in_off: input.offset as i32,
            c: input.channels as i32,
            hw: hw as i32,
            classes: plan.classes as i32,
            pre_relu: pr,
            rule: 0,
            exit_id: -1,
            threshold: 0.0,
            is_gate: 0,
            vec: vec as i32,
            groups: groups as i32,
        };
        (p, smem as u32)
    }

    /// Gate `g` on the samples live at `level`: scores them, writes the results of
    /// those that leave, and compacts the survivors into level `level + 1`. A closed
    /// gate (threshold `+inf`) is one small launch that carries the level over.
    fn enqueue_gate(
        &self,
        dev: &Device,
        plan: &Plan,
        g: usize,
        level: usize,
        n: usize,
    ) -> Result<()> {
        let dt = dev.dtype();
        let gate = &plan.gates[g];
        let out = &plan.stages[gate.after_stage].output;
        let ob = &plan.buffers[out.buf];
        let cp = CompactParams {
            keep: self.keep.ptr,
            count_in: self.count_ptr(level),
            count_out: self.count_ptr(level + 1),
            idx_in: self.idx[level].ptr,
            idx_out: self.idx[level + 1].ptr,
            src_of: self.src_of.ptr,
            buf: self.view_ptr(out),
            scratch: self.scratch.ptr,
            stride: ob.channels as i32,
            off: out.offset as i32,
            c: out.channels as i32,
            hw: (ob.h * ob.w) as i32,
            n_max: n as i32,
            vec: vec_channels(dev.elem_bytes(), ob.channels, out.offset, out.channels) as i32,
        };
        if gate.closed() {
            return dev.launch("gate_closed_i32", (1, 1), SCAN_THREADS, 0, &cp);
        }
        let (mut p, smem) = self.gap_params(
            dev,
            plan,
            &self.gates[g],
            &gate.input,
            gate.h * gate.w,
            level,
        );
        p.rule = match gate.rule {
            ExitRule::Hinge => 0,
            ExitRule::Ce => 1,
        };
        p.exit_id = g as i32;
        p.threshold = gate.threshold;
        p.is_gate = 1;
        dev.launch(
            &format!("gate_fused_{dt}"),
            (n as u32, 1),
            GAP_THREADS as u32,
            smem,
            &p,
        )?;
        dev.launch("compact_scan_i32", (1, 1), SCAN_THREADS, 0, &cp)?;
        let grid = compact_grid(n, ob.h * ob.w * out.channels / cp.vec as usize);
        dev.launch(
            &format!("compact_gather_{dt}"),
            grid,
            ELEMENTWISE_THREADS,
            0,
            &cp,
        )?;
        dev.launch(
            &format!("compact_copy_{dt}"),
            grid,
            ELEMENTWISE_THREADS,
            0,
            &cp,
        )
    }

    fn enqueue_head(&self, dev: &Device, plan: &Plan, level: usize, n: usize) -> Result<()> {
        let dt = dev.dtype();
        let h = &plan.head;
        let (p, smem) = self.gap_params(dev, plan, &self.head, &h.input, h.h * h.w, level);
        dev.launch(
            &format!("head_gap_{dt}"),
            (n as u32, 1),
            GAP_THREADS as u32,
            smem,
            &p,
        )
    }

    /// Reads the per-input results of the last pass and the live count per level it
    /// left, in one device-to-host copy.
    pub fn results(
        &self,
        dev: &Device,
        n: usize,
    ) -> Result<(Vec<crate::plan::SampleResult>, Vec<usize>)> {
        let k = self.classes;
        let b = dev.download_bytes(&self.outputs, self.off_logits + n * k * 4)?;
        let word = |at: usize| [b[at], b[at + 1], b[at + 2], b[at + 3]];
        let int = |off: usize, i: usize| i32::from_le_bytes(word(off + 4 * i));
        let float = |off: usize, i: usize| f32::from_le_bytes(word(off + 4 * i));
        let live = (0..self.idx.len())
            .map(|l| int(0, l).max(0) as usize)
            .collect();
        let class: Vec<i32> = (0..n).map(|i| int(self.off_class, i)).collect();
        let exit: Vec<i32> = (0..n).map(|i| int(self.off_exit, i)).collect();
        let score: Vec<f32> = (0..n).map(|i| float(self.off_score, i)).collect();
        let logits: Vec<f32> = (0..n * k).map(|i| float(self.off_logits, i)).collect();
        let results = (0..n)
            .map(|i| {
                let c = class[i];
                if c < 0 || c as usize >= k || exit[i] < -1 || exit[i] >= self.gates.len() as i32 {
                    return Err(Error::Cuda(format!(
                        "sample {i} got no valid result (class {c}, exit {})",
                        exit[i]
                    )));
                }
                Ok(crate::plan::SampleResult {
                    class: c as usize,
                    exit: if exit[i] < 0 {
                        None
                    } else {
                        Some(exit[i] as usize)
                    },
                    score: score[i],
                    logits: logits[i * k..(i + 1) * k].to_vec(),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((results, live))
    }

    /// Marks every result invalid so that a sample nobody wrote is caught. One copy of
    /// the prefix of `outputs`: the live counts (zero; the pass writes them) and the
    /// exits.
    pub fn clear_results(&mut self, dev: &Device, n: usize) -> Result<()> {
        let mut bytes = vec![0u8; self.off_exit];
        bytes.extend((0..n).flat_map(|_| (-9i32).to_le_bytes()));
        dev.upload_bytes(&mut self.outputs, &bytes)
    }

    // --- single-op access for the self-check ---

    /// Writes per-sample NCHW values into a whole buffer (all its channels).
    pub fn write_buffer(
        &mut self,
        dev: &Device,
        plan: &Plan,
        buf: usize,
        nchw: &[f32],
        n: usize,
    ) -> Result<()> {
        let b = &plan.buffers[buf];
        let hw = b.h * b.w;
        let mut nhwc = vec![0.0f32; n * hw * b.channels];
        for s in 0..n {
            for c in 0..b.channels {
                for i in 0..hw {
                    nhwc[(s * hw + i) * b.channels + c] = nchw[(s * b.channels + c) * hw + i];
                }
            }
        }
        let bytes = storage_bytes(dev.precision, &nhwc);
        dev.upload_bytes(&mut self.buffers[buf], &bytes)
    }

    /// Reads a whole buffer back as per-sample NCHW f32.
    pub fn read_buffer(&self, dev: &Device, plan: &Plan, buf: usize, n: usize) -> Result<Vec<f32>> {
        let b = &plan.buffers[buf];
        let hw = b.h * b.w;
        let bytes =
            dev.download_bytes(&self.buffers[buf], n * hw * b.channels * dev.elem_bytes())?;
        let nhwc = storage_to_f32(dev.precision, &bytes);
        let mut out = vec![0.0f32; n * hw * b.channels];
        for s in 0..n {
            for c in 0..b.channels {
                for i in 0..hw {
                    out[(s * b.channels + c) * hw + i] = nhwc[(s * hw + i) * b.channels + c];
                }
            }
        }
        Ok(out)
    }

    /// Sets the live count of level 0 (what the input packer does in a full pass).
    pub fn set_live(&mut self, dev: &Device, n: usize) -> Result<()> {
        let idx: Vec<u8> = (0..n as i32).flat_map(|i| i.to_le_bytes()).collect();
        dev.upload_bytes(&mut self.idx[0], &idx)?;
        dev.upload_bytes(&mut self.outputs, &(n as i32).to_le_bytes())
    }
}

#[cfg(test)]
mod key_cost {
    #[test]
    fn plan_key_is_cheap() {
        let w = crate::zoo::random("resnet101", 0).unwrap();
        let m = crate::model::Model::from_weights(&w).unwrap();
        let t = std::time::Instant::now();
        let k = super::plan_key(&m.plan);
        let cold = t.elapsed().as_secs_f64() * 1e6;
        let t = std::time::Instant::now();
        assert_eq!(super::plan_key(&m.plan), k);
        let us = t.elapsed().as_secs_f64() * 1e6;
        println!("cold {cold:.0} us");
        println!("plan_key of ResNet-101: {us:.0} us ({k:x})");
        // Checked before every pass: it must stay far below a batch-1 pass (~1 ms).
        assert!(us < 2000.0, "plan_key took {us} us");
        let t = std::time::Instant::now();
        let _ = super::decisions(&m.plan);
        println!("decisions: {:.0} us", t.elapsed().as_secs_f64() * 1e6);
    }
}

#[cfg(test)]
mod validation {
    use crate::backend::cuda::reference::Rng;
    use crate::backend::cuda::synthetic::{buf, conv_op, single_op_plan, view};

    /// A 1x1 conv inside one 32-channel buffer: input [0, 16), output at `out_off`.
    fn within_one_buffer(out_off: usize) -> crate::plan::Plan {
        let mut rng = Rng::new(3);
        let op = conv_op(
            &mut rng,
            view(1, 0, 16),
            view(1, out_off, 8),
            8,
            1,
            1,
            None,
            None,
            false,
        );
        single_op_plan(vec![buf(32, 8, 8)], op)
    }

    #[test]
    fn chained_kernels_get_a_few_blocks_an_sm_and_others_a_block_a_tile() {
        use super::resident_blocks;
        assert_eq!(resident_blocks(2048, 2, 0, 132), 2048);
        // 2 an SM over 132 SMs, the output in 2 columns: 132 blocks along m.
        assert_eq!(resident_blocks(2048, 2, 2, 132), 132);
        assert_eq!(resident_blocks(2048, 1, 3, 132), 396);
        // Never more blocks than tiles, never none.
        assert_eq!(resident_blocks(5, 2, 2, 132), 5);
        assert_eq!(resident_blocks(1, 400, 2, 132), 1);
    }

    #[test]
    fn the_cost_models_pass_is_kept_only_when_clearly_faster() {
        use super::PassCheck;
        assert!(
            !PassCheck::decide(2.0, 1.995).kept_model,
            "within 1%: noise"
        );
        assert!(!PassCheck::decide(2.0, 2.5).kept_model);
        assert!(PassCheck::decide(2.6, 1.8).kept_model);
        assert!(!PassCheck::decide(2.0, f64::NAN).kept_model);
        let c = PassCheck::decide(2.6, 1.8);
        assert_eq!((c.tuned_ms, c.model_ms), (2.6, 1.8));
    }

    #[test]
    fn a_conv_writing_over_its_own_input_is_refused() {
        // DenseNet's layout: the new channels right after the ones read.
        assert!(super::validate(&within_one_buffer(16)).is_ok());
        let err = super::validate(&within_one_buffer(12))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("output channels [12, 20) of buffer 1 overlap the input's [0, 16)"),
            "{err}"
        );
    }
}

#[cfg(test)]
mod compaction_layout {
    use super::{compact_grid, vec_channels};

    #[test]
    fn sixteen_byte_units_only_where_every_pixel_stays_aligned() {
        // f16: 8 channels a unit; f32: 4.
        assert_eq!(vec_channels(2, 256, 0, 256), 8);
        assert_eq!(vec_channels(4, 256, 0, 256), 4);
        // A DenseNet concatenation view: 32 wide at offset 96 of a 256-wide buffer.
        assert_eq!(vec_channels(2, 256, 96, 32), 8);
        // Any of width, offset or stride off the unit: one element at a time.
        assert_eq!(vec_channels(2, 256, 0, 12), 1);
        assert_eq!(vec_channels(2, 256, 4, 32), 1);
        assert_eq!(vec_channels(4, 10, 0, 8), 1);
        assert_eq!(vec_channels(4, 3, 0, 3), 1);
    }

    #[test]
    fn the_grid_has_a_column_per_slot_and_covers_every_unit() {
        // ResNet-101's gate 0 at batch 256, f16: 32x32 pixels x 256 channels / 8.
        let (slots, chunks) = compact_grid(256, 32 * 32 * 256 / 8);
        assert_eq!(slots, 256);
        assert!(chunks as usize * 4 * 256 >= 32 * 32 * 256 / 8);
        assert!(chunks >= 8, "{chunks}");
        // A tiny sample still gets one block; a huge one is capped at the y limit.
        assert_eq!(compact_grid(3, 5), (3, 1));
        assert_eq!(compact_grid(1, usize::MAX / 4096).1, 65535);
    }
}

#[cfg(test)]
mod sample_grids {
    use super::{sample_grid, ELEMENTWISE_THREADS};

    #[test]
    fn a_row_of_blocks_per_sample_covering_its_outputs() {
        let t = ELEMENTWISE_THREADS as usize;
        // DenseNet-201's first transition at batch 256, f16: 16x16 outputs x 256 channels / 8.
        let (x, y) = sample_grid(256, 16 * 16 * 256 / 8);
        assert_eq!(y, 256);
        assert!(x as usize * t >= 16 * 16 * 256 / 8 && (x as usize - 1) * t < 16 * 16 * 256 / 8);
        // Past 65535 samples the kernels stride over the rest; an empty pass still launches.
        assert_eq!(sample_grid(100_000, 10).1, 65535);
        assert_eq!(sample_grid(0, 0), (1, 1));
    }
}

#[cfg(test)]
mod prefetch_lines {
    use super::weight_lines;

    #[test]
    fn every_line_that_starts_inside_the_weights_and_none_past_them() {
        assert_eq!(weight_lines(0), 0);
        assert_eq!(weight_lines(1), 1);
        assert_eq!(weight_lines(128), 1);
        assert_eq!(weight_lines(129), 2);
        // ResNet-101's 3x3 512->512 in f16: 4.5 MiB, 36864 lines.
        assert_eq!(weight_lines(9 * 512 * 512 * 2), 36864);
        assert_eq!(weight_lines(usize::MAX), i32::MAX);
    }
}

#[cfg(test)]
mod dense_pairs {
    use crate::backend::cuda::convsel::dense_pair;
    use crate::plan::{Op, Plan};

    fn pairs(plan: &Plan) -> Vec<(usize, usize)> {
        let mut found = Vec::new();
        for st in &plan.stages {
            for w in st.ops.windows(2) {
                if let [Op::Conv(a), Op::Conv(b)] = w {
                    if dense_pair(plan, a, b) {
                        found.push((a.in_h, a.input.channels));
                    }
                }
            }
        }
        found
    }

    /// DenseNet-201 as the loader lowers it: conv_dense takes the 48 layers at 8x8 and
    /// the 32 at 4x4, its halo kernel the 12 at 16x16 and the 6 at 32x32 (all 98);
    /// ResNet-101 has none.
    #[test]
    fn every_densenet_201_layer_is_a_pair() {
        let w = crate::zoo::random("densenet201", 0).unwrap();
        let m = crate::model::Model::from_weights(&w).unwrap();
        let found = pairs(&m.plan);
        let at = |hw: usize| found.iter().filter(|p| p.0 == hw).count();
        assert_eq!((at(8), at(4), at(16), at(32)), (48, 32, 12, 6), "{found:?}");
        // The largest input is within a cluster's k-tiles.
        assert!(found.iter().all(|p| p.1 % 32 == 0 && p.1 <= 8 * 16 * 32));
        let w = crate::zoo::random("resnet101", 0).unwrap();
        let m = crate::model::Model::from_weights(&w).unwrap();
        assert!(pairs(&m.plan).is_empty());
    }

    /// What breaks a pair: a pre-activated 3x3, a growth other than 32, a map neither
    /// dividing 64 pixels nor of sides multiples of 8, an input window off the 8-channel
    /// grid. A 16x16 map is the halo kernel's.
    #[test]
    fn pairs_need_the_kernel_shape() {
        let plan = crate::backend::cuda::synthetic::dense_layers_plan(1, 8);
        let ops = &plan.stages[0].ops;
        let (Op::Conv(a), Op::Conv(b)) = (&ops[2], &ops[3]) else {
            panic!("the plan's first dense layer is ops 2 and 3");
        };
        assert!(dense_pair(&plan, a, b));
        let mut b2 = b.clone();
        b2.pre = a.pre.clone().map(|mut p| {
            p.scale.truncate(128);
            p.shift.truncate(128);
            p
        });
        assert!(!dense_pair(&plan, a, &b2));
        let mut b3 = b.clone();
        b3.output.channels = 16;
        assert!(!dense_pair(&plan, a, &b3));
        let (mut a4, mut b4) = (a.clone(), b.clone());
        for c in [&mut a4, &mut b4] {
            (c.in_h, c.in_w, c.out_h, c.out_w) = (12, 12, 12, 12);
        }
        assert!(!dense_pair(&plan, &a4, &b4));
        for c in [&mut a4, &mut b4] {
            (c.in_h, c.in_w, c.out_h, c.out_w) = (16, 16, 16, 16);
        }
        assert!(dense_pair(&plan, &a4, &b4));
        let mut a5 = a.clone();
        a5.input.offset += 4;
        a5.input.channels -= 32;
        assert!(!dense_pair(&plan, &a5, b));
    }

    /// Which fused kernel a map gets: the one without a halo where the map divides 64
    /// pixels (several images a cluster), the halo one for sides multiples of 8.
    #[test]
    fn the_map_picks_the_fused_kernel() {
        use crate::backend::cuda::convsel::*;
        for (h, w) in [(8, 8), (4, 4), (2, 2), (1, 1), (8, 4), (4, 8)] {
            assert_eq!(
                dense_kernel(h, w),
                Some((DENSE_KERNEL, DENSE_SMEM)),
                "{h}x{w}"
            );
        }
        for (h, w) in [(16, 16), (32, 32), (16, 8), (8, 24)] {
            assert_eq!(
                dense_kernel(h, w),
                Some((DENSE_HALO_KERNEL, DENSE_HALO_SMEM)),
                "{h}x{w}"
            );
        }
        for (h, w) in [(12, 12), (16, 12), (0, 8), (3, 3)] {
            assert_eq!(dense_kernel(h, w), None, "{h}x{w}");
        }
        // Both fit an SM with another block (2 x 113.5 KB of the 227).
        assert!(DENSE_SMEM < DENSE_HALO_SMEM && DENSE_HALO_SMEM as usize <= 227 * 1024 / 2);
    }
}
