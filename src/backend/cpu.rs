//! The CPU reference backend: float32, both cores, and the oracle for the CUDA backend.
//!
//! Activations are channel-major, CNHW: buffer element (c, sample, pixel) lives at
//! `(c·n + sample)·h·w + pixel`, where `n` is the number of samples still in flight.
//! Every convolution is then one GEMM, `out[K × n·P·Q] = W[K × C·R·S] · cols[C·R·S × n·P·Q]`,
//! whatever the batch size; 1×1 stride-1 convolutions read their input in place and others
//! go through im2col in sample chunks that bound its memory. GEMMs are split across the
//! two cores by output channels. Compaction gathers survivors' planes of the stage output.

use rayon::prelude::*;

use crate::backend::{check_batch, Backend};
use crate::plan::{decide, Conv, ExitRule, Op, Plan, PreAct, SampleResult, View};
use crate::Result;

/// Largest im2col buffer, in floats (4 MiB).
const IM2COL_FLOATS: usize = 1 << 20;
/// Columns per sample chunk in the chunk-parallel path, in floats (1 MiB: a core's L2).
const CHUNK_FLOATS: usize = 1 << 18;
/// GEMMs below this many multiply-adds run on one thread.
const PARALLEL_MACS: usize = 1 << 20;

#[derive(Default)]
pub struct CpuBackend {
    acts: Vec<Vec<f32>>,
    cols: Vec<f32>,
    pre: Vec<f32>,
}

/// Everything a forward pass produced.
pub struct Forward {
    pub results: Vec<SampleResult>,
    /// For each requested stage, `n × channels` pooled stage outputs (no gates applied).
    pub features: Vec<Vec<f32>>,
}

impl CpuBackend {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs with gates disabled and returns, for each stage in `stages` (0-based), the
    /// global-average-pooled stage output of every sample (`n × channels`, input order).
    pub fn pooled_features(
        &mut self,
        plan: &Plan,
        images: &[f32],
        n: usize,
        stages: &[usize],
    ) -> Result<Forward> {
        check_batch(images, n)?;
        Ok(self.forward(plan, images, n, false, stages))
    }

    fn forward(
        &mut self,
        plan: &Plan,
        images: &[f32],
        n0: usize,
        gates: bool,
        feature_stages: &[usize],
    ) -> Forward {
        let mut results: Vec<Option<SampleResult>> = vec![None; n0];
        let mut features = vec![Vec::new(); feature_stages.len()];
        if self.acts.len() < plan.buffers.len() {
            self.acts.resize_with(plan.buffers.len(), Vec::new);
        }
        let mut n = n0;
        for (b, buf) in plan.buffers.iter().enumerate() {
            self.acts[b].resize(buf.channels * n * buf.h * buf.w, 0.0);
        }
        // NCHW -> CNHW.
        let hw = 32 * 32;
        {
            let inp = &mut self.acts[plan.input.buf];
            for s in 0..n {
                for c in 0..3 {
                    let dst = ((plan.input.offset + c) * n + s) * hw;
                    inp[dst..dst + hw]
                        .copy_from_slice(&images[(s * 3 + c) * hw..(s * 3 + c + 1) * hw]);
                }
            }
        }
        let mut index: Vec<usize> = (0..n).collect();
        for (si, stage) in plan.stages.iter().enumerate() {
            for op in &stage.ops {
                self.op(plan, op, n);
            }
            if let Some(k) = feature_stages.iter().position(|&s| s == si) {
                let (v, hw) = (stage.output, stage.out_h * stage.out_w);
                features[k] = pool(&self.acts[v.buf], v, n, hw, None);
            }
            let Some(g) = plan
                .gate_after(si)
                .filter(|&g| gates && !plan.gates[g].closed())
            else {
                continue;
            };
            let gate = &plan.gates[g];
            let pooled = pool(
                &self.acts[gate.input.buf],
                gate.input,
                n,
                gate.h * gate.w,
                None,
            );
            let scores = linear(&pooled, n, gate.input.channels, &gate.weight, &gate.bias);
            let classes = plan.classes;
            let mut keep = Vec::with_capacity(n);
            for s in 0..n {
                let sc = &scores[s * classes..(s + 1) * classes];
                let (class, conf) = decide(sc, gate.rule);
                if gate.lets_out(conf) {
                    results[index[s]] = Some(SampleResult {
                        class,
                        exit: Some(g),
                        score: conf,
                        logits: sc.to_vec(),
                    });
                } else {
                    keep.push(s);
                }
            }
            if keep.len() < n {
                self.compact(plan, stage.output, stage.out_h * stage.out_w, n, &keep);
                index = keep.iter().map(|&s| index[s]).collect();
                n = keep.len();
                for (b, buf) in plan.buffers.iter().enumerate() {
                    if b != stage.output.buf {
                        self.acts[b].resize(buf.channels * n * buf.h * buf.w, 0.0);
                    }
                }
            }
            if n == 0 {
                break;
            }
        }
        if n > 0 {
            let head = &plan.head;
            let pooled = pool(
                &self.acts[head.input.buf],
                head.input,
                n,
                head.h * head.w,
                head.pre.as_ref(),
            );
            let logits = linear(&pooled, n, head.input.channels, &head.weight, &head.bias);
            let classes = plan.classes;
            for s in 0..n {
                let l = &logits[s * classes..(s + 1) * classes];
                let (class, score) = decide(l, ExitRule::Hinge);
                results[index[s]] = Some(SampleResult {
                    class,
                    exit: None,
                    score,
                    logits: l.to_vec(),
                });
            }
        }
        Forward {
            results: results
                .into_iter()
                .map(|r| r.unwrap_or_else(lost))
                .collect(),
            features,
        }
    }

    /// Keeps samples `keep` (ascending) of the buffer holding `v`; only `v`'s channels
    /// carry data across the boundary, the rest of the buffer is rewritten by the next stage.
    fn compact(&mut self, plan: &Plan, v: View, hw: usize, n: usize, keep: &[usize]) {
        let buf = &plan.buffers[v.buf];
        let m = keep.len();
        let old = &self.acts[v.buf];
        let mut new = vec![0.0; buf.channels * m * hw];
        for c in v.offset..v.offset + v.channels {
            for (j, &s) in keep.iter().enumerate() {
                let src = (c * n + s) * hw;
                let dst = (c * m + j) * hw;
                new[dst..dst + hw].copy_from_slice(&old[src..src + hw]);
            }
        }
        self.acts[v.buf] = new;
    }

    fn op(&mut self, plan: &Plan, op: &Op, n: usize) {
        match op {
            Op::Conv(c) => self.conv(plan, c, n),
            Op::ShortcutA {
                input,
                output,
                in_h,
                in_w,
                stride,
                pad_before,
            } => {
                let (oh, ow) = ((in_h - 1) / stride + 1, (in_w - 1) / stride + 1);
                let mut out = std::mem::take(&mut self.acts[output.buf]);
                let inp = &self.acts[input.buf];
                for c in 0..output.channels {
                    for s in 0..n {
                        let dst = ((output.offset + c) * n + s) * oh * ow;
                        let plane = &mut out[dst..dst + oh * ow];
                        if c < *pad_before || c >= pad_before + input.channels {
                            plane.fill(0.0);
                            continue;
                        }
                        let src = ((input.offset + c - pad_before) * n + s) * in_h * in_w;
                        for y in 0..oh {
                            for x in 0..ow {
                                plane[y * ow + x] = inp[src + y * stride * in_w + x * stride];
                            }
                        }
                    }
                }
                self.acts[output.buf] = out;
            }
            Op::AvgPool2 {
                input,
                output,
                in_h,
                in_w,
                pre,
            } => {
                let (oh, ow) = (in_h / 2, in_w / 2);
                let mut out = std::mem::take(&mut self.acts[output.buf]);
                let inp = &self.acts[input.buf];
                let ihw = in_h * in_w;
                let in_plane = n * ihw;
                let out_plane = n * oh * ow;
                out[output.offset * out_plane..(output.offset + output.channels) * out_plane]
                    .par_chunks_mut(out_plane)
                    .enumerate()
                    .for_each(|(c, o)| {
                        let src =
                            &inp[(input.offset + c) * in_plane..(input.offset + c + 1) * in_plane];
                        let f = |x: f32| act(pre.as_ref(), c, x);
                        for s in 0..n {
                            for y in 0..oh {
                                for x in 0..ow {
                                    let p = s * ihw + 2 * y * in_w + 2 * x;
                                    o[s * oh * ow + y * ow + x] = 0.25
                                        * (f(src[p])
                                            + f(src[p + 1])
                                            + f(src[p + in_w])
                                            + f(src[p + in_w + 1]));
                                }
                            }
                        }
                    });
                self.acts[output.buf] = out;
            }
        }
    }

    fn conv(&mut self, _plan: &Plan, c: &Conv, n: usize) {
        let (ihw, ohw) = (c.in_h * c.in_w, c.out_h * c.out_w);
        let (cin, cout, k) = (c.input.channels, c.output.channels, c.kernel);
        let rows = cin * k * k;
        // The input planes of this conv, with the pre-activation applied if any. A DenseNet
        // layer reads and writes disjoint channel windows of one buffer: copy its input.
        let in_plane = n * ihw;
        let materialize = c.pre.is_some() || c.input.buf == c.output.buf;
        if materialize {
            let inp = &self.acts[c.input.buf];
            let window = &inp[c.input.offset * in_plane..(c.input.offset + cin) * in_plane];
            self.pre.resize(cin * in_plane, 0.0);
            let pre = c.pre.as_ref();
            self.pre
                .par_chunks_mut(in_plane)
                .zip(window.par_chunks(in_plane))
                .enumerate()
                .for_each(|(ch, (d, s))| {
                    for (d, &x) in d.iter_mut().zip(s) {
                        *d = act(pre, ch, x);
                    }
                });
        }
        let mut out = std::mem::take(&mut self.acts[c.output.buf]);
        let src: &[f32] = if materialize {
            &self.pre[..cin * in_plane]
        } else {
            &self.acts[c.input.buf][c.input.offset * in_plane..(c.input.offset + cin) * in_plane]
        };
        let ldc = n * ohw;
        let direct = k == 1 && c.stride == 1;
        // Batches are split into sample chunks whose columns stay in a core's cache; each
        // chunk runs im2col, GEMM and the epilogue on one thread while its data is hot.
        let per_sample = if direct { cin * ohw } else { rows * ohw };
        let chunk = (CHUNK_FLOATS / per_sample.max(1)).max(1);
        if n.div_ceil(chunk) >= 2 {
            let out_rows = &mut out[c.output.offset * ldc..(c.output.offset + cout) * ldc];
            let optr = SendPtr(out_rows.as_mut_ptr());
            let res = c
                .residual
                .map(|r| &self.acts[r.buf][r.offset * ldc..(r.offset + cout) * ldc]);
            (0..n.div_ceil(chunk)).into_par_iter().for_each(|ci| {
                let s0 = ci * chunk;
                let m = chunk.min(n - s0);
                let cols_out = optr.add(s0 * ohw);
                if direct {
                    // SAFETY: `src` holds `cin` rows of stride n·P·Q; this chunk reads columns
                    // [s0·P·Q, (s0+m)·P·Q) and writes the same columns of `cout` output rows,
                    // which no other chunk touches.
                    unsafe {
                        gemm_raw(
                            cout,
                            cin,
                            m * ohw,
                            &c.weight,
                            src[s0 * ohw..].as_ptr(),
                            ldc,
                            cols_out,
                            ldc,
                        )
                    };
                } else {
                    COLS.with(|cols| {
                        let mut cols = cols.borrow_mut();
                        cols.resize(rows * m * ohw, 0.0);
                        for r in 0..rows {
                            im2col_row(
                                src,
                                n,
                                c,
                                s0,
                                m,
                                r,
                                &mut cols[r * m * ohw..(r + 1) * m * ohw],
                            );
                        }
                        // SAFETY: as above; `cols` is this thread's own buffer.
                        unsafe {
                            gemm_raw(
                                cout,
                                rows,
                                m * ohw,
                                &c.weight,
                                cols.as_ptr(),
                                m * ohw,
                                cols_out,
                                ldc,
                            )
                        };
                    });
                }
                for o in 0..cout {
                    // SAFETY: row `o`, columns of this chunk only.
                    let row =
                        unsafe { std::slice::from_raw_parts_mut(cols_out.add(o * ldc).0, m * ohw) };
                    let rr = res.map(|r| &r[o * ldc + s0 * ohw..o * ldc + (s0 + m) * ohw]);
                    epilogue(row, c.bias[o], rr, c.relu);
                }
            });
            self.acts[c.output.buf] = out;
            return;
        }
        let out_rows = &mut out[c.output.offset * ldc..(c.output.offset + cout) * ldc];
        if direct {
            gemm(cout, cin, ldc, &c.weight, src, ldc, out_rows, ldc);
        } else {
            let chunk = (IM2COL_FLOATS / (rows * ohw)).clamp(1, n);
            self.cols.resize(rows * chunk * ohw, 0.0);
            let mut s0 = 0;
            while s0 < n {
                let m = chunk.min(n - s0);
                let cols = &mut self.cols[..rows * m * ohw];
                im2col(src, n, c, s0, m, cols);
                gemm(
                    cout,
                    rows,
                    m * ohw,
                    &c.weight,
                    cols,
                    m * ohw,
                    &mut out_rows[s0 * ohw..],
                    ldc,
                );
                s0 += m;
            }
        }
        // Epilogue: bias, residual, ReLU.
        let res = c.residual.map(|r| (&self.acts[r.buf], r.offset));
        out_rows
            .par_chunks_mut(ldc)
            .enumerate()
            .for_each(|(o, row)| {
                let rr = res.map(|(r, off)| &r[(off + o) * ldc..(off + o + 1) * ldc]);
                epilogue(row, c.bias[o], rr, c.relu);
            });
        self.acts[c.output.buf] = out;
    }
}

fn lost() -> SampleResult {
    // Unreachable by construction: every sample either exits at a gate or reaches the head.
    SampleResult {
        class: 0,
        exit: None,
        score: f32::NAN,
        logits: Vec::new(),
    }
}

#[inline]
fn act(p: Option<&PreAct>, c: usize, x: f32) -> f32 {
    match p {
        None => x,
        Some(p) => {
            let y = x * p.scale[c] + p.shift[c];
            if p.relu {
                y.max(0.0)
            } else {
                y
            }
        }
    }
}

/// Columns for samples `[s0, s0 + m)`: row `(ci·k + ky)·k + kx`, column `j·P·Q + oy·Q + ox`.
fn im2col(src: &[f32], n: usize, c: &Conv, s0: usize, m: usize, cols: &mut [f32]) {
    let ohw = c.out_h * c.out_w;
    cols.par_chunks_mut(m * ohw)
        .enumerate()
        .for_each(|(r, row)| im2col_row(src, n, c, s0, m, r, row));
}

/// Row `r` of [`im2col`].
fn im2col_row(src: &[f32], n: usize, c: &Conv, s0: usize, m: usize, r: usize, row: &mut [f32]) {
    let (k, st, pad) = (c.kernel, c.stride, c.pad as isize);
    let (ih, iw, oh, ow) = (c.in_h, c.in_w, c.out_h, c.out_w);
    let ohw = oh * ow;
    let ci = r / (k * k);
    let ky = (r / k % k) as isize;
    let kx = (r % k) as isize;
    for j in 0..m {
        let plane = &src[(ci * n + s0 + j) * ih * iw..(ci * n + s0 + j + 1) * ih * iw];
        let dst = &mut row[j * ohw..(j + 1) * ohw];
        for oy in 0..oh {
            let y = (oy * st) as isize + ky - pad;
            let d = &mut dst[oy * ow..(oy + 1) * ow];
            if y < 0 || y >= ih as isize {
                d.fill(0.0);
                continue;
            }
            let line = &plane[y as usize * iw..(y as usize + 1) * iw];
            if st == 1 {
                // Output columns whose input column x = ox + kx − pad is inside the row:
                // one bulk copy, zeros on either side.
                let lo = (pad - kx).clamp(0, ow as isize) as usize;
                let hi = (iw as isize + pad - kx).clamp(lo as isize, ow as isize) as usize;
                d[..lo].fill(0.0);
                let x0 = (lo as isize + kx - pad) as usize;
                d[lo..hi].copy_from_slice(&line[x0..x0 + (hi - lo)]);
                d[hi..].fill(0.0);
                continue;
            }
            for (ox, v) in d.iter_mut().enumerate() {
                let x = (ox * st) as isize + kx - pad;
                *v = if x < 0 || x >= iw as isize {
                    0.0
                } else {
                    line[x as usize]
                };
            }
        }
    }
}

/// `row = act(row + bias + residual)`.
#[inline]
fn epilogue(row: &mut [f32], bias: f32, res: Option<&[f32]>, relu: bool) {
    match res {
        Some(r) => row.iter_mut().zip(r).for_each(|(x, &y)| *x += bias + y),
        None => row.iter_mut().for_each(|x| *x += bias),
    }
    if relu {
        row.iter_mut().for_each(|x| *x = x.max(0.0));
    }
}

/// A raw output pointer shared by threads that write disjoint columns.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used for disjoint writes, see its uses.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn add(self, i: usize) -> SendPtr {
        // SAFETY: callers stay inside the allocation the pointer came from.
        SendPtr(unsafe { self.0.add(i) })
    }
}

thread_local! {
    static COLS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `C = A·B` through raw B and C pointers with row strides.
///
/// # Safety
/// `b` must be valid for `k` rows of stride `ldb` and `n` columns, `c` for `m` rows of
/// stride `ldc` and `n` columns, and no other thread may touch those C elements.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_raw(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: *const f32,
    ldb: usize,
    c: SendPtr,
    ldc: usize,
) {
    debug_assert!(a.len() >= m * k);
    matrixmultiply::sgemm(
        m,
        k,
        n,
        1.0,
        a.as_ptr(),
        k as isize,
        1,
        b,
        ldb as isize,
        1,
        0.0,
        c.0,
        ldc as isize,
        1,
    );
}

/// `C[m × n] = A[m × k] · B[k × n]`; A dense row-major, B and C with row strides.
#[allow(clippy::too_many_arguments)]
fn gemm(m: usize, k: usize, n: usize, a: &[f32], b: &[f32], ldb: usize, c: &mut [f32], ldc: usize) {
    assert!(a.len() >= m * k && b.len() >= (k - 1) * ldb + n && c.len() >= (m - 1) * ldc + n);
    if m >= 2 && m * k * n >= PARALLEL_MACS {
        let m1 = m / 2;
        let (ct, cb) = c.split_at_mut(m1 * ldc);
        let (at, ab) = a.split_at(m1 * k);
        rayon::join(
            || gemm_one(m1, k, n, at, b, ldb, ct, ldc),
            || gemm_one(m - m1, k, n, ab, b, ldb, cb, ldc),
        );
    } else {
        gemm_one(m, k, n, a, b, ldb, c, ldc);
    }
}

#[allow(clippy::too_many_arguments)]
fn gemm_one(
    m: usize,
    k: usize,
    n: usize,
    a: &[f32],
    b: &[f32],
    ldb: usize,
    c: &mut [f32],
    ldc: usize,
) {
    // SAFETY: the bounds asserted in `gemm` cover every element sgemm touches.
    unsafe {
        matrixmultiply::sgemm(
            m,
            k,
            n,
            1.0,
            a.as_ptr(),
            k as isize,
            1,
            b.as_ptr(),
            ldb as isize,
            1,
            0.0,
            c.as_mut_ptr(),
            ldc as isize,
            1,
        );
    }
}

/// Global average pool of a view (CNHW) into `n × channels` (sample-major).
fn pool(buf: &[f32], v: View, n: usize, hw: usize, pre: Option<&PreAct>) -> Vec<f32> {
    let mut out = vec![0.0; n * v.channels];
    for c in 0..v.channels {
        for s in 0..n {
            let p = &buf[((v.offset + c) * n + s) * hw..((v.offset + c) * n + s + 1) * hw];
            let sum: f32 = p.iter().map(|&x| act(pre, c, x)).sum();
            out[s * v.channels + c] = sum / hw as f32;
        }
    }
    out
}

/// `n × classes` scores of `x` (`n × f`) under `w` (`classes × f`) and `b`.
pub fn linear(x: &[f32], n: usize, f: usize, w: &[f32], b: &[f32]) -> Vec<f32> {
    let classes = b.len();
    let mut out = vec![0.0; n * classes];
    for s in 0..n {
        for j in 0..classes {
            let row = &w[j * f..(j + 1) * f];
            let xs = &x[s * f..(s + 1) * f];
            out[s * classes + j] = b[j] + row.iter().zip(xs).map(|(a, b)| a * b).sum::<f32>();
        }
    }
    out
}

impl Backend for CpuBackend {
    fn name(&self) -> String {
        format!("cpu ({} threads)", rayon::current_num_threads())
    }

    fn run(&mut self, plan: &Plan, images: &[f32], n: usize) -> Result<Vec<SampleResult>> {
        check_batch(images, n)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        Ok(self.forward(plan, images, n, true, &[]).results)
    }
}
