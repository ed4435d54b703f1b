//! Self-check of the CUDA backend against a straightforward CPU reference. Runs where
//! there is no Rust toolchain (the GPU machine runs the release binary's `gpu-check`),
//! so it lives in the library.
//!
//! - Every op on seeded random inputs over a table of awkward shapes (7×7, 3 channels,
//!   channel counts not multiples of 8 or 32, stride 2, channel windows inside wider
//!   buffers, batch 1 and 3): normalised max error `max|gpu − ref| / max|ref|` against
//!   1e-4 (f32) or 1e-2 (f16), then the same case with small-integer inputs, where f16
//!   storage with f32 accumulation must be exact. The whole output buffer is compared,
//!   so a write outside the op's channel window is caught.
//! - Whole passes (gates, compaction, head) of a small option-A ResNet and a small
//!   DenseNet, thresholds placed in gaps of the reference's confidences so that about
//!   half the samples leave at each gate: classes and exits must match exactly, scores
//!   and logits within the tolerance.
//! - [`gpu_check`] adds the latency table of [`super::bench`].
//!
//! The reference ([`super::reference`]) is deliberately naive (NCHW loops) and
//! independent of the library's CPU backend.

use std::io::Write;

use super::reference::{norm_max_err, ref_alloc, ref_op, ref_run, Rng};
use super::synthetic::{
    bottleneck_plan, buf, dense_layers_plan, resnet_bottleneck_plan, single_op_plan, tiny_densenet,
    tiny_resnet, view,
};
use super::CudaBackend;
use crate::backend::{Backend, Precision};
use crate::plan::{Conv, Op, Plan, PreAct, SampleResult};
use crate::{Error, Result};

/// `f32` or `f16`: the storage precision in check labels.
fn precision_tag(p: Precision) -> &'static str {
    match p {
        Precision::F32 => "f32",
        Precision::F16 => "f16",
    }
}

fn tolerance(p: Precision) -> f64 {
    match p {
        Precision::F32 => 1e-4,
        Precision::F16 => 1e-2,
    }
}

struct ConvCase {
    name: &'static str,
    c: usize,
    k: usize,
    hw: usize,
    r: usize,
    stride: usize,
    /// (input buffer channels, input offset); output likewise.
    in_win: (usize, usize),
    out_win: (usize, usize),
    pre: bool,
    /// The pre-activation's ReLU (off only through [`linear_pre`]).
    pre_relu: bool,
    residual: bool,
    relu: bool,
}

const fn cc(
    name: &'static str,
    (c, k, hw, r, stride): (usize, usize, usize, usize, usize),
    in_win: (usize, usize),
    out_win: (usize, usize),
    (pre, residual, relu): (bool, bool, bool),
) -> ConvCase {
    ConvCase {
        name,
        c,
        k,
        hw,
        r,
        stride,
        in_win,
        out_win,
        pre,
        pre_relu: true,
        residual,
        relu,
    }
}

/// A case whose pre-activation has no ReLU (a scale and shift alone), which lets a NaN
/// or an infinity through where a ReLU would turn it into zero.
const fn linear_pre(mut c: ConvCase) -> ConvCase {
    c.pre_relu = false;
    c
}

// (C, K, H=W, R, stride), input (buffer channels, offset), output (buffer channels,
// offset), (pre-activation, residual, ReLU).
#[rustfmt::skip]
const CONV_CASES: &[ConvCase] = &[
    cc("stem 3->16 3x3 32x32", (3, 16, 32, 3, 1), (3, 0), (16, 0), (false, false, true)),
    cc("16->16 3x3 7x7 +res", (16, 16, 7, 3, 1), (16, 0), (16, 0), (false, true, true)),
    cc("16->32 3x3 s2 9x9", (16, 32, 9, 3, 2), (16, 0), (32, 0), (false, false, true)),
    cc("12->20 1x1 pre, windows", (12, 20, 7, 1, 1), (29, 5), (40, 3), (true, false, false)),
    cc("36->12 3x3 pre, windows 8x8", (36, 12, 8, 3, 1), (48, 12), (48, 0), (true, false, false)),
    cc("64->24 1x1 s2 8x8", (64, 24, 8, 1, 2), (64, 0), (24, 0), (false, false, false)),
    cc("130->70 3x3 5x5 +res", (130, 70, 5, 3, 1), (130, 0), (75, 5), (false, true, true)),
    cc("256->64 1x1 4x4", (256, 64, 4, 1, 1), (256, 0), (64, 0), (false, false, true)),
    cc("96->40 3x3 pre, window at 8, 6x6", (96, 40, 6, 3, 1), (112, 8), (44, 2), (true, false, false)),
    cc("64->128 3x3 s2 7x7", (64, 128, 7, 3, 2), (64, 0), (128, 0), (false, false, true)),
    cc("512->256 1x1 2x2 +res", (512, 256, 2, 1, 1), (512, 0), (256, 0), (false, true, true)),
    cc("136->200 3x3 10x10 +res", (136, 200, 10, 3, 1), (136, 0), (200, 0), (false, true, true)),
    // DenseNet's 3x3 layer shape, into a window of a wider buffer (conv_halo: two images
    // a 128-pixel block), a 4x4 map (eight images a block, most past the count), and a
    // 16x16 map (blocks of 8 or 4 rows, most starting inside an image).
    cc("128->32 3x3 8x8, windows", (128, 32, 8, 3, 1), (136, 8), (72, 40), (false, false, true)),
    cc("64->64 3x3 4x4 +res", (64, 64, 4, 3, 1), (64, 0), (64, 0), (false, true, true)),
    cc("64->32 3x3 16x16 +res, windows", (64, 32, 16, 3, 1), (72, 8), (40, 8), (false, true, true)),
    // The 32x32 map of DenseNet's first block (conv_halo: tiles of 4 or 2 rows, a patch
    // 34 pixels wide).
    cc("32->32 3x3 32x32, windows", (32, 32, 32, 3, 1), (40, 8), (48, 16), (false, false, true)),
    // A 1x1 layer (conv_tma) whose channels end inside a k-tile of 64, read from a window
    // with other channels past it, and whose outputs end inside a tile of 128.
    cc("72->200 1x1 9x9 +res, windows", (72, 200, 9, 1, 1), (88, 8), (208, 8), (false, true, true)),
    // 3x3 layers whose channels end inside a k-tile of 64 (conv_tma: the tap's last
    // k-tile meets the next tap's weights against zeros), on a 16x16 map (tiles of 8
    // rows) and a 32x32 one (tiles of 4 rows).
    cc("40->72 3x3 16x16 +res, windows", (40, 72, 16, 3, 1), (48, 8), (80, 8), (false, true, true)),
    cc("24->16 3x3 32x32, windows", (24, 16, 32, 3, 1), (32, 8), (16, 0), (false, false, true)),
    // DenseNet's pre-activated 1x1 layer from a window of its concatenation buffer, whose
    // channels end inside a k-tile (conv_tma: the copy's zeros past C must stay zero).
    cc("136->64 1x1 pre, windows 8x8", (136, 64, 8, 1, 1), (152, 16), (72, 8), (true, false, false)),
    // A DenseNet block-4 1x1 (a 4x4 map, a long pre-activated reduction ending 8 channels
    // into its last k-tile): the `pr` kernels' fragments past C must keep the copy's zeros.
    cc("1000->48 1x1 pre 4x4, windows", (1000, 48, 4, 1, 1), (1016, 8), (56, 8), (true, false, false)),
    // Two k-tiles, the second 8 channels deep: its other chunks' scale and shift were
    // never copied (the emulator's shared memory starts as NaN), so they must not be
    // read. Without the ReLU, which would turn a NaN read into zero.
    linear_pre(cc("40->24 1x1 linear pre 5x5, windows", (40, 24, 5, 1, 1), (48, 8), (32, 8), (true, false, false))),
];

/// The cases of [`CONV_CASES`] whose reduction is long (27, 16, 39 and 32 k-tiles of 32).
const LONG_CASES: [&str; 4] = [
    "96->40 3x3 pre, window at 8, 6x6",
    "512->256 1x1 2x2 +res",
    "136->200 3x3 10x10 +res",
    "1000->48 1x1 pre 4x4, windows",
];

/// For a chained kernel (a few blocks an SM, each looping over tiles): pretends one SM,
/// so that the small cases give each block several tiles to chain. Returns the count
/// to restore (`be.op_test_sms`).
fn chain_sms(be: &mut CudaBackend, var: &str) -> usize {
    let chained = super::convsel::conv_kernel_info(var).is_some_and(|k| k.resident > 0);
    let sms = be.op_test_sms(1);
    if !chained {
        be.op_test_sms(sms);
    }
    sms
}

impl ConvCase {
    /// The output map's side (padding r / 2).
    fn out_hw(&self) -> usize {
        (self.hw + 2 * (self.r / 2) - self.r) / self.stride + 1
    }
}

fn conv_case_plan(cc: &ConvCase, rng: &mut Rng, exact: bool) -> Plan {
    let pad = cc.r / 2;
    let out_hw = cc.out_hw();
    let mut buffers = vec![
        buf(cc.out_win.0, out_hw, out_hw),
        buf(cc.in_win.0, cc.hw, cc.hw),
    ];
    let residual = if cc.residual {
        buffers.push(buf(cc.k + 4, out_hw, out_hw));
        Some(view(3, 2, cc.k))
    } else {
        None
    };
    let wn = cc.k * cc.c * cc.r * cc.r;
    let wscale = 1.0 / ((cc.c * cc.r * cc.r) as f32).sqrt();
    let (weight, bias) = if exact {
        (rng.ints(wn, -1, 1), rng.ints(cc.k, -2, 2))
    } else {
        (rng.vec(wn, wscale), rng.vec(cc.k, 0.5))
    };
    let pre = cc.pre.then(|| {
        if exact {
            PreAct {
                scale: rng.ints(cc.c, 1, 2),
                shift: rng.ints(cc.c, -1, 1),
                relu: cc.pre_relu,
            }
        } else {
            PreAct {
                scale: rng.vec(cc.c, 1.0).iter().map(|v| 1.0 + 0.5 * v).collect(),
                shift: rng.vec(cc.c, 0.5),
                relu: cc.pre_relu,
            }
        }
    });
    single_op_plan(
        buffers,
        Op::Conv(Conv {
            input: view(2, cc.in_win.1, cc.c),
            output: view(1, cc.out_win.1, cc.k),
            in_h: cc.hw,
            in_w: cc.hw,
            out_h: out_hw,
            out_w: out_hw,
            kernel: cc.r,
            stride: cc.stride,
            pad,
            weight,
            bias,
            pre,
            residual,
            relu: cc.relu,
        }),
    )
}

fn round_to(p: Precision, v: &mut [f32]) {
    if p == Precision::F16 {
        for x in v {
            *x = half::f16::from_f32(*x).to_f32();
        }
    }
}

/// Runs the one-op `plan` on random (or small-integer) contents of every buffer and
/// returns the normalised max error over the whole first op buffer.
fn run_op_case(
    be: &mut CudaBackend,
    plan: &Plan,
    n: usize,
    rng: &mut Rng,
    exact: bool,
) -> Result<f64> {
    let p = be.precision();
    be.op_test_prepare(plan, n)?;
    let mut bufs = ref_alloc(plan, n);
    for (i, b) in bufs.iter_mut().enumerate().skip(1) {
        *b = if exact {
            rng.ints(b.len(), -1, 1)
        } else {
            rng.vec(b.len(), 1.0)
        };
        round_to(p, b);
        be.op_test_write(plan, i, b, n)?;
    }
    be.op_test_run_stage(plan, 0, n)?;
    let got = be.op_test_read(plan, 1, n)?;
    ref_op(plan, &plan.stages[0].ops[0], &mut bufs, n);
    round_to(p, &mut bufs[1]);
    Ok(norm_max_err(&got, &bufs[1]))
}

struct Tally {
    pass: usize,
    fail: usize,
}

impl Tally {
    fn line(&mut self, out: &mut dyn Write, what: &str, err: f64, tol: f64) -> Result<()> {
        self.verdict(
            out,
            err <= tol,
            &format!("{what:<60} err {err:.2e} (tol {tol:.0e})"),
        )
    }

    /// Counts one check and writes its line, `ok` or `FAIL` first.
    fn verdict(&mut self, out: &mut dyn Write, ok: bool, what: &str) -> Result<()> {
        if ok {
            self.pass += 1;
        } else {
            self.fail += 1;
        }
        writeln!(out, "{:4} {what}", if ok { "ok" } else { "FAIL" }).map_err(io_err)
    }
}

/// FNV-1a over `bytes`, starting from `seed`: a seed for one keyed random stream.
fn fnv1a(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(seed ^ 0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Which units of the self-check (one kernel's op table, one pass case, ...) this
/// process runs. [`Share::all`] runs every unit. [`Share::claims`] shares one check
/// among processes that each hold the same directory: a process runs a unit only if it
/// creates the unit's claim file first, so the units go to whichever process is free
/// (the CPU emulator runs on one thread; two processes use two cores). Together the
/// processes run every unit exactly once; each checks every unit it runs in full.
#[derive(Debug, Clone, Default)]
pub struct Share {
    dir: Option<std::path::PathBuf>,
}

impl Share {
    /// Every unit, in this process.
    pub fn all() -> Self {
        Share { dir: None }
    }

    /// The units whose claim file this process creates first in `dir` (which must
    /// exist, empty, before the first process starts).
    pub fn claims(dir: impl Into<std::path::PathBuf>) -> Self {
        Share {
            dir: Some(dir.into()),
        }
    }

    /// Whether this process runs `unit` (a label unique within one check). With
    /// `DGATE_SELFCHECK_ONLY` set, only the units whose label contains it (for running
    /// one unit while working on it).
    fn mine(&self, unit: &str) -> Result<bool> {
        if std::env::var("DGATE_SELFCHECK_ONLY").is_ok_and(|only| !unit.contains(&only)) {
            return Ok(false);
        }
        let Some(dir) = &self.dir else {
            return Ok(true);
        };
        let name: String = unit
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        // The sanitised label plus a hash of the label itself: distinct labels stay distinct.
        let path = dir.join(format!("{name}-{:016x}", fnv1a(0, unit.as_bytes())));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::io(&path, e)),
        }
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::io("selfcheck report", e)
}

/// A conv case's plan, inputs and reference output, made once and then run by every
/// kernel: each kernel faces the same data, and the CPU reference, which was about half
/// of `gpu-check`'s op-check time (1.8 s per kernel's case table on two cores; 184 s in
/// all on the 2026-11-28 H200 run), is computed once per case instead of once per kernel.
struct CaseData {
    plan: Plan,
    /// The reference's buffers before the op (inputs rounded to the precision).
    inputs: super::reference::RefBufs,
    /// The output buffer after the reference op, rounded to the precision.
    want: Vec<f32>,
}

/// [`CaseData`] by (case, batch, exact). Each entry's data comes from its own random
/// stream, seeded by the key: the same whichever kernels (or which process of a shared
/// check, [`Share`]) asked first.
struct CaseCache {
    seed: u64,
    cases: std::collections::HashMap<(&'static str, usize, bool), CaseData>,
}

impl CaseCache {
    fn new(seed: u64) -> Self {
        CaseCache {
            seed,
            cases: Default::default(),
        }
    }

    fn get(&mut self, p: Precision, cc: &ConvCase, n: usize, exact: bool) -> &CaseData {
        let seed = fnv1a(self.seed, format!("{} {n} {exact}", cc.name).as_bytes());
        self.cases.entry((cc.name, n, exact)).or_insert_with(|| {
            let rng = &mut Rng::new(seed);
            let plan = conv_case_plan(cc, rng, exact);
            let mut inputs = ref_alloc(&plan, n);
            for b in inputs.iter_mut().skip(1) {
                *b = if exact {
                    rng.ints(b.len(), -1, 1)
                } else {
                    rng.vec(b.len(), 1.0)
                };
                round_to(p, b);
            }
            let mut bufs = inputs.clone();
            ref_op(&plan, &plan.stages[0].ops[0], &mut bufs, n);
            let mut want = std::mem::take(&mut bufs[1]);
            round_to(p, &mut want);
            CaseData { plan, inputs, want }
        })
    }
}

/// Runs a cached conv case on the device; the error against its reference output.
/// `unsplit` leaves split-K no workspace, so that every block walks the whole reduction
/// (at these small batches split-K would otherwise cut each block's share to a few
/// k-tiles, too few to wrap a deep copy ring).
fn run_conv_case(be: &mut CudaBackend, data: &CaseData, n: usize, unsplit: bool) -> Result<f64> {
    let plan = &data.plan;
    be.op_test_prepare(plan, n)?;
    if unsplit {
        be.op_test_small_workspace(0, 16)?;
    }
    for (i, b) in data.inputs.iter().enumerate().skip(1) {
        be.op_test_write(plan, i, b, n)?;
    }
    be.op_test_run_stage(plan, 0, n)?;
    let got = be.op_test_read(plan, 1, n)?;
    Ok(norm_max_err(&got, &data.want))
}

/// One convolution case of [`CONV_CASES`] under policy `var` (storage `tag`): `n`
/// samples, small integers if `exact` (error 0 demanded), split-K off if `unsplit`.
/// Writes its line and returns the kernel that ran.
fn conv_case_line(
    be: &mut CudaBackend,
    out: &mut dyn Write,
    tally: &mut Tally,
    cases: &mut CaseCache,
    (var, tag): (&str, &str),
    cc: &ConvCase,
    (n, exact, unsplit): (usize, bool, bool),
) -> Result<String> {
    let data = cases.get(be.precision(), cc, n, exact);
    let plan = &data.plan;
    // A kernel that faults ends the check: say which one, and on what.
    let err = run_conv_case(be, data, n, unsplit).map_err(|e| match e {
        Error::Cuda(msg) => Error::Cuda(format!("{var} on {} n={n}: {msg}", cc.name)),
        other => other,
    })?;
    let used = match &plan.stages[0].ops[0] {
        Op::Conv(c) => super::convsel::choose_conv_kernel(var, tag, plan, c),
        _ => var.to_string(),
    };
    let what = format!(
        "{used} {} n={n}{}{}",
        cc.name,
        if unsplit { " unsplit" } else { "" },
        if exact { " exact" } else { "" }
    );
    let tol = if exact {
        0.0
    } else {
        tolerance(be.precision())
    };
    // A split convolution leaves the workspace rows it used, and its tickets, zero.
    let clean = be.op_test_workspace_zero(n * cc.out_hw() * cc.out_hw() * cc.k)?;
    tally.verdict(
        out,
        err <= tol && clean,
        &format!(
            "{what:<60} err {err:.2e} (tol {tol:.0e}){}",
            if clean {
                ""
            } else {
                ", split-K workspace or tickets left non-zero"
            }
        ),
    )?;
    Ok(used)
}

fn check_ops(
    be: &mut CudaBackend,
    out: &mut dyn Write,
    tally: &mut Tally,
    share: &Share,
) -> Result<()> {
    let p = be.precision();
    let tag = precision_tag(p);
    let variants: &[&str] = match p {
        Precision::F32 => &[
            "conv_sgemm128x128_f32",
            "conv_sgemm128x64_f32",
            "conv_sgemm64x64_f32",
            "conv_sgemm128x32_f32",
            "conv_sgemm64x32_f32",
            "conv_halo128_f32",
            "conv_simt_f32",
        ],
        Precision::F16 => &[
            "conv_tc128x128_f16",
            "conv_tc128x64_f16",
            "conv_tc64x64_f16",
            "conv_tc128x32_f16",
            "conv_tc64x32_f16",
            "conv_tcc128x128_f16",
            "conv_tcc128x64_f16",
            "conv_tc128x128pr_f16",
            "conv_tcc128x128pr_f16",
            "conv_tc64x64pr_f16",
            "conv_tc64x64cl4_f16",
            "conv_tc64x64cl8_f16",
            "conv_tc128x32cl8_f16",
            "conv_tc128x128cl4_f16",
            "conv_wg128x256_f16",
            "conv_wg128x128_f16",
            "conv_wg128x64_f16",
            "conv_wg64x128_f16",
            "conv_wg64x64_f16",
            "conv_wg128x256k64_f16",
            "conv_wg128x128k64_f16",
            "conv_wg128x64k64_f16",
            "conv_halo128_f16",
            "conv_halo64_f16",
            "conv_tma128x256_f16",
            "conv_tma128x128_f16",
            "conv_tma128x64_f16",
            "conv_tma128x32_f16",
            "conv_mmaasync_f16",
            "conv_mmavec_f16",
            "conv_mma_f16",
            "conv_simt_f16",
        ],
    };
    let default = be.conv_kernel().to_string();
    let mut ran = std::collections::BTreeSet::new();
    let mut cases = CaseCache::new(7);
    // The kernels whose case table this process ran (all of them, unless shared).
    let mut mine = Vec::new();
    for &var in variants {
        if !share.mine(&format!("{tag} ops {var}"))? {
            continue;
        }
        if !be.has_conv_kernel(var) {
            // Not a check that passed: said so, and left out of the tally.
            writeln!(
                out,
                "skip {var}: not on this device (wgmma tiles need sm_90; or its shared memory was refused)"
            )
            .map_err(io_err)?;
            continue;
        }
        mine.push(var);
        be.set_conv_kernel(var)?;
        let sms = chain_sms(be, var);
        for cc in CONV_CASES {
            for n in [1usize, 3] {
                for exact in [false, true] {
                    ran.insert(conv_case_line(
                        be,
                        out,
                        tally,
                        &mut cases,
                        (var, tag),
                        cc,
                        (n, exact, false),
                    )?);
                }
            }
        }
        be.op_test_sms(sms);
        // A looping kernel that also splits (conv_tma) splits nothing as if on one SM:
        // its table again on every SM, where the cost model splits the long reductions.
        if super::convsel::conv_kernel_info(var).is_some_and(|k| k.resident > 0 && k.split) {
            writeln!(out, "-- {var} again on {sms} SMs (split-K)").map_err(io_err)?;
            for cc in CONV_CASES {
                for exact in [false, true] {
                    conv_case_line(
                        be,
                        out,
                        tally,
                        &mut cases,
                        (var, tag),
                        cc,
                        (3, exact, false),
                    )?;
                }
            }
        }
    }
    // Long reductions in one block (16 to 39 k-tiles): the pipelined kernels' rings wrap
    // several times, so a stage refilled too early (or read too late) shows.
    for &var in variants {
        if !be.has_conv_kernel(var) || !share.mine(&format!("{tag} long {var}"))? {
            continue;
        }
        be.set_conv_kernel(var)?;
        let sms = chain_sms(be, var);
        for cc in CONV_CASES.iter().filter(|cc| LONG_CASES.contains(&cc.name)) {
            for exact in [false, true] {
                conv_case_line(be, out, tally, &mut cases, (var, tag), cc, (3, exact, true))?;
            }
        }
        be.op_test_sms(sms);
    }
    be.set_conv_kernel(&default)?;
    // Each case table ran only the kernels under check, its own among them (another
    // table's kernel may stand in for a case its kernel does not take).
    if !ran.iter().all(|k| variants.contains(&k.as_str())) || !mine.iter().all(|k| ran.contains(*k))
    {
        tally.fail += 1;
        writeln!(
            out,
            "FAIL the case table did not exercise every conv kernel: ran {ran:?}"
        )
        .map_err(io_err)?;
    }

    if share.mine(&format!("{tag} ops shortcut and pool"))? {
        check_shortcut_and_pool(be, out, tally, tag)?;
    }
    Ok(())
}

/// Option-A shortcuts and 2×2 average pools (pre-activated or not) over awkward
/// shapes and channel windows.
fn check_shortcut_and_pool(
    be: &mut CudaBackend,
    out: &mut dyn Write,
    tally: &mut Tally,
    tag: &str,
) -> Result<()> {
    let p = be.precision();
    let mut rng = Rng::new(7);
    // (channels, hw, stride, pad_before, out channels, in window, out window)
    let shortcut_cases = [
        (
            16usize,
            32usize,
            2usize,
            8usize,
            32usize,
            (16usize, 0usize),
            (32usize, 0usize),
        ),
        (5, 7, 2, 2, 9, (8, 3), (11, 1)),
        (12, 6, 1, 0, 12, (12, 0), (12, 0)),
    ];
    for (c, hw, s, padb, k, iw, ow) in shortcut_cases {
        let ohw = hw.div_ceil(s);
        let plan = single_op_plan(
            vec![buf(ow.0, ohw, ohw), buf(iw.0, hw, hw)],
            Op::ShortcutA {
                input: view(2, iw.1, c),
                output: view(1, ow.1, k),
                in_h: hw,
                in_w: hw,
                stride: s,
                pad_before: padb,
            },
        );
        for n in [1usize, 3] {
            for exact in [false, true] {
                let err = run_op_case(be, &plan, n, &mut rng, exact)?;
                let what = format!(
                    "shortcut_a_{tag} {c}->{k} {hw}x{hw} s{s} n={n}{}",
                    if exact { " exact" } else { "" }
                );
                tally.line(out, &what, err, 0.0)?;
            }
        }
    }

    // (channels, hw, pre, in window, out window)
    let pool_cases = [
        (20usize, 8usize, true, (20usize, 0usize), (20usize, 0usize)),
        (7, 7, false, (10, 2), (9, 1)),
        (12, 32, true, (30, 18), (12, 0)),
    ];
    for (c, hw, pre, iw, ow) in pool_cases {
        for n in [1usize, 3] {
            for exact in [false, true] {
                let pre_act = pre.then(|| PreAct {
                    scale: if exact {
                        rng.ints(c, 1, 2)
                    } else {
                        rng.vec(c, 1.0)
                    },
                    shift: if exact {
                        rng.ints(c, -1, 1)
                    } else {
                        rng.vec(c, 0.5)
                    },
                    relu: true,
                });
                let plan = single_op_plan(
                    vec![buf(ow.0, hw / 2, hw / 2), buf(iw.0, hw, hw)],
                    Op::AvgPool2 {
                        input: view(2, iw.1, c),
                        output: view(1, ow.1, c),
                        in_h: hw,
                        in_w: hw,
                        pre: pre_act,
                    },
                );
                let err = run_op_case(be, &plan, n, &mut rng, exact)?;
                let what = format!(
                    "avgpool2_pre_{tag} {c}ch {hw}x{hw}{} n={n}{}",
                    if pre { " pre" } else { "" },
                    if exact { " exact" } else { "" }
                );
                let tol = if exact { 0.0 } else { tolerance(p) };
                tally.line(out, &what, err, tol)?;
            }
        }
    }
    Ok(())
}

fn random_images(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.vec(n * 3 * 32 * 32, 1.5)
}

/// Runs `plan` on the GPU and the reference; returns (failures, description).
/// Reference outcomes already computed, keyed by (plan name, batch, fractions, f16):
/// the calibrated plan, the results and the decision margins.
type RefCache = std::collections::HashMap<String, (Plan, Vec<SampleResult>, Vec<f32>)>;

/// What tells apart two plans of one arch name (tiny networks of another growth or
/// seed): their convolutions' shapes and first weights. Unlike `plan_key`, equal for
/// clones, so that one reference serves every copy of a plan.
fn fingerprint(plan: &Plan) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for op in plan.stages.iter().flat_map(|s| s.ops.iter()) {
        if let Op::Conv(c) = op {
            let first = c.weight.first().map(|w| w.to_bits());
            (
                c.input.channels,
                c.output.channels,
                c.kernel,
                c.stride,
                c.weight.len(),
                first,
            )
                .hash(&mut h);
        }
    }
    h.finish()
}

fn compare_pass(
    be: &mut CudaBackend,
    plan: &Plan,
    n: usize,
    seed: u64,
    fractions: &[f32],
    cache: &mut RefCache,
) -> Result<(bool, String)> {
    compare_pass_as(be, plan, n, seed, fractions, cache, None)
}

/// [`compare_pass`], running `run_as` (`plan` with the calibrated thresholds copied
/// in) where given: the backend keeps one resident plan per plan object.
fn compare_pass_as(
    be: &mut CudaBackend,
    plan: &Plan,
    n: usize,
    seed: u64,
    fractions: &[f32],
    cache: &mut RefCache,
    run_as: Option<&mut Plan>,
) -> Result<(bool, String)> {
    let mut rng = Rng::new(seed);
    let mut images = random_images(&mut rng, n);
    round_to(be.precision(), &mut images);
    // The images depend on the seed, the reference on the plan (structure and weights,
    // not thresholds: the calibration sets those): both are part of the key.
    let key = format!(
        "{} {:x} {n} {fractions:?} {:?} seed {seed}",
        plan.arch,
        fingerprint(plan),
        be.precision()
    );
    let (plan, want, margins) = cache
        .entry(key)
        .or_insert_with(|| {
            let mut calibrated = plan.clone();
            let (want, margins) = ref_run(&mut calibrated, &images, n, Some(fractions));
            (calibrated, want, margins)
        })
        .clone();
    let got = match run_as {
        Some(p) => {
            for (g, c) in p.gates.iter_mut().zip(&plan.gates) {
                g.threshold = c.threshold;
            }
            be.run(p, &images, n)?
        }
        None => be.run(&plan, &images, n)?,
    };
    let tol = tolerance(be.precision());
    let mut worst = 0.0f64;
    let mut flips = 0;
    let mut excused = 0;
    for (g, w) in got.iter().zip(&want) {
        if g.exit != w.exit || g.class != w.class {
            // A decision may flip only if the reference was that close to it.
            let scale = w.logits.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            let near = margins
                .iter()
                .any(|&m| (m as f64) < tol * scale as f64 * 4.0);
            if near {
                excused += 1;
            } else {
                flips += 1;
            }
            continue;
        }
        worst = worst.max(norm_max_err(&g.logits, &w.logits));
        worst = worst.max(norm_max_err(&[g.score], &[w.score]));
    }
    let exits: Vec<usize> = (0..=plan.gates.len())
        .map(|e| {
            let e = if e == plan.gates.len() { None } else { Some(e) };
            want.iter().filter(|r| r.exit == e).count()
        })
        .collect();
    let ok = flips == 0 && worst <= tol && got.len() == n;
    let desc = format!(
        "{} n={n} exits {:?} mismatched decisions {flips} (near-threshold {excused}) logit err {worst:.2e} (tol {tol:.0e})",
        plan.arch, exits
    );
    Ok((ok, desc))
}

/// `quick`: smaller batches; `extra`: a second kernel policy over the same code paths,
/// where the small networks suffice.
fn check_passes(
    be: &mut CudaBackend,
    out: &mut dyn Write,
    tally: &mut Tally,
    quick: bool,
    extra: bool,
    cache: &mut RefCache,
    share: &Share,
) -> Result<()> {
    let conv = be.conv_kernel().to_string();
    let tag = precision_tag(be.precision());
    let graph_modes: &[bool] = if be.is_emulated() {
        &[false]
    } else {
        &[false, true]
    };
    let mut cases = if quick {
        vec![
            (tiny_resnet(11, 10), 1usize),
            (tiny_resnet(12, 10), 6),
            (tiny_densenet(13, 10, 4), 3),
            (tiny_densenet(14, 100, 3), 7),
            (resnet_bottleneck_plan([1, 1, 1, 1], 10, 15), 2),
        ]
    } else {
        vec![
            (tiny_resnet(11, 10), 1usize),
            (tiny_resnet(12, 10), 37),
            (tiny_densenet(13, 10, 4), 3),
            (tiny_densenet(14, 100, 3), 29),
            (resnet_bottleneck_plan([1, 1, 1, 1], 10, 15), 3),
        ]
    };
    // The image buffer widened to 8 channels, as `Engine` runs f16 on the GPU: the
    // stem then runs on the aligned kernels.
    for (mut plan, n) in [(tiny_resnet(16, 10), 5usize), (tiny_densenet(17, 10, 8), 4)] {
        if plan.pad_input_channels(8) {
            plan.arch = format!("padded-input {}", plan.arch);
            cases.push((plan, n));
        }
    }
    // Layer 1's projection folded into its block's last convolution, as the loader
    // runs ResNet-50/101/152 (`Plan::fuse_projection_shortcuts`): the stem and the
    // 3x3 write side by side into one buffer, the block's first 1x1 reads half of it.
    let mut folded = if quick {
        bottleneck_plan([2, 1, 1, 1], 8, 10, 18)
    } else {
        resnet_bottleneck_plan([2, 1, 1, 1], 10, 18)
    };
    if folded.fuse_projection_shortcuts() == 1 {
        folded.arch = format!("folded-shortcut {}", folded.arch);
        cases.push((folded, 3));
    }
    if extra {
        cases.retain(|(p, _)| p.arch.starts_with("tiny"));
    }
    for &graphs in graph_modes {
        be.set_graphs(graphs);
        for (i, (plan, n)) in cases.iter().enumerate() {
            let unit = format!("{tag} pass {conv} {graphs} {i} {} n={n}", plan.arch);
            if !share.mine(&unit)? {
                continue;
            }
            let fractions: &[[f32; 2]] = if quick {
                &[[0.5, 0.4]]
            } else {
                &[[0.5, 0.4], [0.0, 0.0], [1.0, 1.0]]
            };
            for fr in fractions {
                let (ok, desc) = compare_pass(be, plan, *n, 99 + *n as u64, fr, cache)?;
                let what = format!(
                    "{conv} {} {desc}",
                    if graphs { "graph" } else { "launches" }
                );
                let mark = if ok { "ok" } else { "FAIL" };
                if ok {
                    tally.pass += 1;
                } else {
                    tally.fail += 1;
                }
                writeln!(out, "{mark:4} pass {what}").map_err(io_err)?;
            }
        }
    }
    be.set_graphs(true);
    Ok(())
}

/// Kernels chosen for few survivors, then a pass where every sample survives: a pass
/// where all leave at gate 0 makes the later stages' kernels be chosen for one live
/// sample (split-K where it helps); with the workspace cut to what one sample needs,
/// the pass without exits must still match the reference, the kernels undoing their
/// split on the device (conv_k_range).
fn check_split_guard(
    be: &mut CudaBackend,
    out: &mut dyn Write,
    tally: &mut Tally,
    cache: &mut RefCache,
    share: &Share,
) -> Result<()> {
    if !share.mine(&format!("{} split guard", precision_tag(be.precision())))? {
        return Ok(());
    }
    let plan = tiny_resnet(12, 10);
    let mut resident = plan.clone();
    let n = 6;
    let autotune = be.autotune();
    be.set_autotune(false);
    let (first, _) = compare_pass_as(be, &plan, n, 5, &[1.0, 1.0], cache, Some(&mut resident))?;
    let after_gate = |s: usize| plan.level_of(s) > 0;
    let cap = plan
        .stages
        .iter()
        .enumerate()
        .filter(|(s, _)| after_gate(*s))
        .flat_map(|(_, st)| st.ops.iter())
        .filter_map(|op| match op {
            Op::Conv(c) => Some(c.out_h * c.out_w * c.output.channels),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    // Past `cap`, a canary that would absorb the partial sums of a split that was not
    // undone (and hand them to the output).
    be.op_test_small_workspace(cap, 8 * cap)?;
    // The case means something only if some later conv is planned with split-K (by
    // the cost model: measured choices might not split).
    let mut split = Vec::new();
    for (s, st) in plan
        .stages
        .iter()
        .enumerate()
        .filter(|(s, _)| after_gate(*s))
    {
        for o in 0..st.ops.len() {
            if let Some(k) = be
                .op_test_conv_kernel(&plan, s, o, n)
                .filter(|k| k.contains('/'))
            {
                split.push(k);
            }
        }
    }
    let (ok, desc) = compare_pass_as(be, &plan, n, 5, &[0.0, 0.0], cache, Some(&mut resident))?;
    let intact = be.op_test_workspace_intact()?;
    be.set_autotune(autotune);
    tally.verdict(
        out,
        first && ok && intact && !split.is_empty(),
        &format!("split-K planned for 1 survivor, {n} arrive, workspace {cap} floats (canary intact: {intact}): {desc}; split convs {split:?}"),
    )
}

/// Passes with a closed gate (threshold `+inf`), which runs as one launch carrying the
/// level's count and sample indices over: first gate 0 closed (gate 1 compacts from
/// the carried indices), then gate 1 closed after gate 0 compacted. No sample may
/// leave at the closed gate (the reference lets none), and every result must match.
fn check_closed_gates(
    be: &mut CudaBackend,
    out: &mut dyn Write,
    tally: &mut Tally,
    cache: &mut RefCache,
    share: &Share,
) -> Result<()> {
    if !share.mine(&format!("{} closed gates", precision_tag(be.precision())))? {
        return Ok(());
    }
    let plan = tiny_resnet(12, 10);
    for fractions in [[-1.0, 0.4], [0.5, -1.0]] {
        let (ok, desc) = compare_pass(be, &plan, 7, 31, &fractions, cache)?;
        tally.verdict(out, ok, &format!("closed gate {fractions:?}: {desc}"))?;
    }
    Ok(())
}

/// Whole passes with every convolution's kernel measured first (`tune`): on a GPU as
/// by default; in the emulator this is the only run of the tuning path, whose forced
/// choices (every tile, with and without split-K) must all compute the same result.
fn check_tuned_passes(
    be: &mut CudaBackend,
    out: &mut dyn Write,
    tally: &mut Tally,
    cache: &mut RefCache,
    share: &Share,
) -> Result<()> {
    let tag = precision_tag(be.precision());
    let autotune = be.autotune();
    be.set_autotune(true);
    // Channels multiples of 8, so that f16 tunes among conv_tc's tiles (pre-activation
    // included for DenseNet) and checks them against conv_mmavec_f16.
    for (plan, n) in [(tiny_resnet(12, 10), 6), (tiny_densenet(14, 100, 8), 3)] {
        if !share.mine(&format!("{tag} tuned {} n={n}", plan.arch))? {
            continue;
        }
        let mut resident = plan.clone();
        let (ok, desc) =
            compare_pass_as(be, &plan, n, 21, &[0.5, 0.4], cache, Some(&mut resident))?;
        let measured = be.op_test_measured_choices();
        // Tuning ran every candidate on noise against the reference kernel: all agree.
        let (agreed, rejected) = be.op_test_checked();
        tally.verdict(
            out,
            ok && measured > 0 && agreed > 0 && rejected.is_empty(),
            &format!(
                "pass tuned ({measured} measured choices; {} candidate runs checked against the reference kernel, {} disagreed) {desc}",
                agreed + rejected.len(),
                rejected.len()
            ),
        )?;
        for r in &rejected {
            writeln!(out, "     {r}").map_err(io_err)?;
        }
        // A candidate that disagrees is never chosen: with every one made to disagree,
        // tuning keeps the reference kernel for every layer, and the pass still matches.
        be.op_test_check_tolerance(Some(-1.0))?;
        let (ok, desc) =
            compare_pass_as(be, &plan, n, 21, &[0.5, 0.4], cache, Some(&mut resident))?;
        let (_, rejected) = be.op_test_checked();
        let mut off_reference = Vec::new();
        for (s, st) in plan.stages.iter().enumerate() {
            for (o, op) in st.ops.iter().enumerate() {
                let Op::Conv(c) = op else { continue };
                let want = super::convsel::reference_kernel(be.dtype(), &plan, c).map(|k| k.name);
                let got = be.op_test_conv_kernel(&plan, s, o, n);
                if want.is_some() && got.as_deref() != want {
                    off_reference.push(got.unwrap_or_default());
                }
            }
        }
        be.op_test_check_tolerance(None)?;
        tally.verdict(
            out,
            ok && !rejected.is_empty() && off_reference.is_empty(),
            &format!(
                "pass tuned with every candidate made to disagree ({} rejected, chosen other than the reference: {off_reference:?}) {desc}",
                rejected.len()
            ),
        )?;
    }
    be.set_autotune(autotune);
    Ok(())
}

/// conv_dense_cl8_f16 and conv_dense_halo_cl8_f16 (a DenseNet layer's 1x1 and 3x3 in
/// one launch) in whole passes against the CPU reference, f16 on a device with
/// thread-block clusters: two layers on an 8x8 map (three clusters at 3 samples), on a
/// 4x4 one (four images a cluster, the last slot empty) and on a 16x16 one (the halo
/// kernel: four 8x8 tiles an image, each reading its neighbours' pixels and the
/// image's padding), every layer fused (`DGATE_FUSE=1`'s setting), and the same pass
/// with none fused.
fn check_fused_dense(
    be: &mut CudaBackend,
    out: &mut dyn Write,
    tally: &mut Tally,
    cache: &mut RefCache,
    share: &Share,
) -> Result<()> {
    if be.precision() != Precision::F16 {
        return Ok(());
    }
    let n = 3;
    for hw in [8, 4, 16] {
        let Some((kernel, _)) = super::convsel::dense_kernel(hw, hw) else {
            continue;
        };
        if be.op_test_has_function(kernel).is_err() {
            continue;
        }
        let plan = dense_layers_plan(60 + hw as u64, hw);
        if !share.mine(&format!("f16 fused dense {}", plan.arch))? {
            continue;
        }
        // The last layer's bottleneck and block buffers after each pass: the logits
        // average the map away, so a wrong border pixel shows there more than in them.
        let Some(Op::Conv(last)) = plan.stages[0].ops.last() else {
            continue;
        };
        let mut kept: Vec<Vec<f32>> = Vec::new();
        for fuse in [true, false] {
            be.prepare(&plan, n)?;
            be.op_test_set_fuse(Some(fuse));
            let mut resident = plan.clone();
            let (ok, desc) = compare_pass_as(be, &plan, n, 43, &[], cache, Some(&mut resident))?;
            let bufs = [last.input.buf, last.output.buf]
                .iter()
                .map(|&b| be.op_test_read(&resident, b, n))
                .collect::<Result<Vec<_>>>()?;
            if fuse {
                kept = bufs;
            } else {
                let diff = kept
                    .iter()
                    .flatten()
                    .zip(bufs.iter().flatten())
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                let scale = bufs
                    .iter()
                    .flatten()
                    .map(|v| v.abs())
                    .fold(0.0f32, f32::max);
                let tol = 5e-3 * scale;
                tally.verdict(
                    out,
                    diff <= tol && scale > 0.0,
                    &format!(
                        "{kernel}'s bottleneck and block buffers against the two layers' own kernels: max |diff| {diff:.3e} \
                         (tol {tol:.3e}, max |value| {scale:.3e}) {} n={n}",
                        plan.arch
                    ),
                )?;
            }
            let (pairs, on) = be.op_test_fused_pairs(n);
            let named = (0..plan.stages[0].ops.len())
                .filter(|&o| be.op_test_conv_kernel(&plan, 0, o, n).as_deref() == Some(kernel))
                .count();
            let want = if fuse { 2 } else { 0 };
            tally.verdict(
                out,
                ok && pairs == 2 && on == want && named == want,
                &format!(
                    "pass {} layers fused ({on} of {pairs} that could be; {named} ops name {}) {desc}",
                    if fuse { "every" } else { "no" },
                    kernel
                ),
            )?;
        }
        // Tuned (DGATE_FUSE unset): tuning checks the fused kernel against the layers'
        // own on noise, then keeps whichever is faster (in the emulator, by the wall clock).
        let autotune = be.autotune();
        be.set_autotune(true);
        be.op_test_set_fuse(None);
        be.prepare(&plan, n)?;
        let mut resident = plan.clone();
        let (ok, desc) = compare_pass_as(be, &plan, n, 43, &[], cache, Some(&mut resident))?;
        let (agreed, rejected) = be.op_test_checked();
        let (pairs, on) = be.op_test_fused_pairs(n);
        be.set_autotune(autotune);
        tally.verdict(
            out,
            ok && agreed > 0 && rejected.is_empty() && pairs == 2,
            &format!(
                "pass tuned, fused where faster ({on} of {pairs}; {agreed} runs agreed with the reference kernels, {} did not) {desc}",
                rejected.len()
            ),
        )?;
        for r in &rejected {
            writeln!(out, "     {r}").map_err(io_err)?;
        }
    }
    be.op_test_set_fuse(None);
    Ok(())
}

/// Checks every op and whole passes of small networks against the CPU reference,
/// in f32 and f16, one line per case. `Ok(true)` when everything passed.
pub fn selfcheck(report: &mut dyn Write) -> Result<bool> {
    selfcheck_with(report, &mut CudaBackend::new, false, &Share::all())
}

/// [`selfcheck`] with backends from `make` (e.g. [`CudaBackend::new_emulated`]);
/// `quick` uses smaller batches and fewer threshold settings (for the CPU emulator).
pub fn selfcheck_with(
    report: &mut dyn Write,
    make: &mut dyn FnMut(Precision) -> Result<CudaBackend>,
    quick: bool,
    share: &Share,
) -> Result<bool> {
    let mut tally = Tally { pass: 0, fail: 0 };
    let mut cache = RefCache::new();
    for p in [Precision::F32, Precision::F16] {
        let mut be = make(p)?;
        writeln!(report, "== {} ==", be.name()).map_err(io_err)?;
        check_ops(&mut be, report, &mut tally, share)?;
        check_passes(&mut be, report, &mut tally, quick, false, &mut cache, share)?;
        check_split_guard(&mut be, report, &mut tally, &mut cache, share)?;
        check_closed_gates(&mut be, report, &mut tally, &mut cache, share)?;
        check_tuned_passes(&mut be, report, &mut tally, &mut cache, share)?;
        check_fused_dense(&mut be, report, &mut tally, &mut cache, share)?;
        let extra: &[&str] = match p {
            Precision::F32 => &["conv_simt_f32"],
            Precision::F16 => &[
                "conv_tc_f16",
                "conv_mmaasync_f16",
                "conv_mmavec_f16",
                "conv_mma_f16",
                "conv_simt_f16",
            ],
        };
        for k in extra {
            be.set_conv_kernel(k)?;
            check_passes(&mut be, report, &mut tally, quick, true, &mut cache, share)?;
        }
        be.set_conv_kernel("auto")?;
    }
    writeln!(
        report,
        "selfcheck: {} passed, {} failed",
        tally.pass, tally.fail
    )
    .map_err(io_err)?;
    Ok(tally.fail == 0)
}

/// A ResNet-101-shaped plan (random weights, no exits) on the GPU against the
/// reference at batch 1 in f32, and f16 against f32 at batch 8: the real layer shapes,
/// where split-K and the aligned tensor-core kernels do the work.
pub fn deep_check(report: &mut dyn Write) -> Result<bool> {
    let plan = resnet_bottleneck_plan([3, 4, 23, 3], 10, 77);
    let mut rng = Rng::new(78);
    let images = rng.vec(8 * 3 * 32 * 32, 1.5);
    let mut f32_be = CudaBackend::new(Precision::F32)?;
    let got32 = f32_be.run(&plan, &images, 8)?;
    let mut ref_plan = plan.clone();
    let (want, _) = ref_run(&mut ref_plan, &images[..3 * 32 * 32], 1, None);
    let err_ref = norm_max_err(&got32[0].logits, &want[0].logits);
    let mut f16_be = CudaBackend::new(Precision::F16)?;
    let got16 = f16_be.run(&plan, &images, 8)?;
    let mut err16 = 0.0f64;
    let mut same = 0;
    for (a, b) in got16.iter().zip(&got32) {
        err16 = err16.max(norm_max_err(&a.logits, &b.logits));
        same += usize::from(a.class == b.class);
    }
    let ok32 = err_ref <= 1e-3 && got32[0].class == want[0].class;
    let ok16 = err16 <= 5e-2;
    writeln!(
        report,
        "{:4} deep {} f32 vs reference n=1: logit err {err_ref:.2e} (tol 1e-3), class {} vs {}",
        if ok32 { "ok" } else { "FAIL" },
        plan.arch,
        got32[0].class,
        want[0].class
    )
    .map_err(io_err)?;
    writeln!(
        report,
        "{:4} deep {} f16 vs f32 n=8: logit err {err16:.2e} (tol 5e-2), same class {same}/8",
        if ok16 { "ok" } else { "FAIL" },
        plan.arch
    )
    .map_err(io_err)?;
    Ok(ok32 && ok16)
}

/// `dgate-rt gpu-check`'s op part: device, [`selfcheck`] and [`deep_check`]. `Ok(true)`
/// when every check passed; an error in one part is reported and the next part still runs.
pub fn gpu_check(report: &mut dyn Write) -> Result<bool> {
    writeln!(report, "device: {}", super::device_name()?).map_err(io_err)?;
    let t = std::time::Instant::now();
    let mut ok = match selfcheck(report) {
        Ok(ok) => ok,
        Err(e) => {
            writeln!(report, "FAIL selfcheck stopped: {e}").map_err(io_err)?;
            false
        }
    };
    writeln!(report, "selfcheck took {:.1} s", t.elapsed().as_secs_f64()).map_err(io_err)?;
    let t = std::time::Instant::now();
    match deep_check(report) {
        Ok(deep) => ok &= deep,
        Err(e) => {
            writeln!(report, "FAIL deep check stopped: {e}").map_err(io_err)?;
            ok = false;
        }
    }
    writeln!(report, "deep check took {:.1} s", t.elapsed().as_secs_f64()).map_err(io_err)?;
    Ok(ok)
}

/// `dgate-rt gpu-check`'s timing part: the latency table of [`super::bench::timing`] and
/// the per-layer tables. It checks nothing, so `gpu-check` runs it last, where a time
/// limit can cut it short without losing a check. `Ok(false)` when a table stopped.
pub fn gpu_timing(report: &mut dyn Write) -> Result<bool> {
    let t = std::time::Instant::now();
    let mut ok = true;
    if let Err(e) = super::bench::timing(report, &[1, 64, 256], 20) {
        writeln!(report, "FAIL timing stopped: {e}").map_err(io_err)?;
        ok = false;
    }
    let layers = super::bench::layer_table(report, &[Precision::F32, Precision::F16], 256, 10)
        .and_then(|()| super::bench::layer_table(report, &[Precision::F16], 1, 20));
    if let Err(e) = layers {
        writeln!(report, "FAIL layer table stopped: {e}").map_err(io_err)?;
        ok = false;
    }
    writeln!(report, "timing took {:.1} s", t.elapsed().as_secs_f64()).map_err(io_err)?;
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cuda::synthetic::stage_conv_flops;

    #[test]
    fn a_shared_check_runs_each_unit_in_one_process() {
        let dir = std::env::temp_dir().join(format!("dgate-share-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (Share::claims(&dir), Share::claims(&dir));
        // Labels that sanitise to the same file name stay distinct units.
        let units = [
            "f16 ops conv_tc128x128_f16",
            "f16 ops conv_tc128x128/f16",
            "f32 tuned x",
        ];
        let first: Vec<bool> = units.iter().map(|u| a.mine(u).unwrap()).collect();
        let second: Vec<bool> = units.iter().map(|u| b.mine(u).unwrap()).collect();
        assert_eq!(first, [true; 3]);
        assert_eq!(second, [false; 3]);
        assert!(
            !a.mine(units[0]).unwrap(),
            "a unit is claimed once, even by its owner"
        );
        assert!(Share::all().mine(units[0]).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
        // A claim directory that is not there is an error naming it, not a silent skip.
        let err = a.mine("f32 split guard").unwrap_err().to_string();
        assert!(err.contains("dgate-share-test"), "{err}");
    }

    #[test]
    fn conv_case_data_does_not_depend_on_the_order_it_is_asked_for() {
        let (x, y) = (&CONV_CASES[0], &CONV_CASES[1]);
        let mut one = CaseCache::new(7);
        let mut two = CaseCache::new(7);
        let want = one.get(Precision::F32, y, 3, false).want.clone();
        two.get(Precision::F32, x, 1, true);
        assert_eq!(two.get(Precision::F32, y, 3, false).want, want);
    }

    #[test]
    fn synthetic_plans_are_valid() {
        for plan in [
            tiny_resnet(1, 10),
            tiny_densenet(2, 10, 4),
            tiny_densenet(2, 10, 3),
            resnet_bottleneck_plan([1, 1, 1, 1], 10, 3),
        ] {
            if let Err(e) = super::super::exec::validate(&plan) {
                panic!("{}: {e}", plan.arch);
            }
        }
        let r101 = resnet_bottleneck_plan([3, 4, 23, 3], 10, 3);
        let gf = stage_conv_flops(&r101).iter().sum::<f64>() / 1e9;
        assert!((gf - 5.0).abs() < 0.1, "ResNet-101 shape gives {gf} GFLOPs");
    }

    #[test]
    fn calibration_gives_a_mix_of_exits() {
        for mut plan in [tiny_resnet(4, 10), tiny_densenet(5, 10, 3)] {
            let n = 16;
            let images = random_images(&mut Rng::new(6), n);
            let (res, margins) = ref_run(&mut plan, &images, n, Some(&[0.5, 0.5]));
            let e0 = res.iter().filter(|r| r.exit == Some(0)).count();
            let e1 = res.iter().filter(|r| r.exit == Some(1)).count();
            let head = res.iter().filter(|r| r.exit.is_none()).count();
            assert!(
                e0 > 0 && e1 > 0 && head > 0,
                "{}: {e0}/{e1}/{head}",
                plan.arch
            );
            assert!(margins.iter().all(|&m| m > 0.0), "{margins:?}");
            for r in &res {
                assert!(r.score.is_finite() && r.logits.len() == 10);
            }
        }
    }

    #[test]
    fn shortcut_reference_pads_channels_evenly() {
        let plan = single_op_plan(
            vec![buf(4, 2, 2), buf(2, 4, 4)],
            Op::ShortcutA {
                input: view(2, 0, 2),
                output: view(1, 0, 4),
                in_h: 4,
                in_w: 4,
                stride: 2,
                pad_before: 1,
            },
        );
        let mut bufs = ref_alloc(&plan, 1);
        bufs[2] = (0..32).map(|v| v as f32).collect();
        ref_op(&plan, &plan.stages[0].ops[0], &mut bufs, 1);
        assert_eq!(
            bufs[1],
            vec![0., 0., 0., 0., 0., 2., 8., 10., 16., 18., 24., 26., 0., 0., 0., 0.]
        );
    }
}
