//! CUDA backend: hand-written kernels (`kernels/*.cu`) compiled at run time by NVRTC
//! for the device's architecture, NHWC activations, f32 or f16 storage with f32
//! accumulation (tensor cores for f16 convolutions: `mma.sync`, and on H100/H200 also
//! Hopper's `wgmma`, for which sm_90 devices get an sm_90a build).
//!
//! A forward pass never returns to the host between stages: the gate kernel decides
//! per sample and writes exiting samples' results straight to their input positions,
//! the compaction kernels pack survivors into a dense batch whose size stays in device
//! memory, and later kernels read that size and let blocks past it return at once.
//! The pass is therefore one fixed launch sequence per batch size, captured once into
//! a CUDA graph and replayed (set `DGATE_CUDA_GRAPHS=0` to launch kernel by kernel).
//!
//! Module map: [`kernels`] (sources, NVRTC), [`params`] (launch structs mirrored in
//! `common.cuh`), `device` (context or CPU emulator, memory), `convsel` (the conv
//! kernel table, candidates per layer, split-K, cost model), `exec` (a plan made
//! resident, kernel tuning, the launch sequence), [`selfcheck`] (every op and small networks against
//! [`reference`](mod@reference)), [`synthetic`] (random-weight plans), [`bench`](mod@bench) (latency tables).
//!
//! Without a GPU the same kernel sources run in a CPU emulator
//! (`kernels/host_emu.cuh`, [`kernels::build_emulator`], [`CudaBackend::new_emulated`]):
//! slow, but it executes every kernel, barrier and tensor-core fragment the way the
//! GPU does, so the self-check runs in CI.
//!
//! Environment: `DGATE_CUDA_INCLUDE` (CUDA headers for NVRTC), `DGATE_CUDA_GRAPHS=0`
//! (no graphs), `DGATE_CONV=<policy>` (see [`CudaBackend::set_conv_kernel`]),
//! `DGATE_AUTOTUNE=0` (choose convolution tiles by the cost model instead of measuring
//! them), `DGATE_PDL=1` (programmatic dependent launch on sm_90+: each kernel may be
//! scheduled while its predecessor finishes; off until measured), `DGATE_PREFETCH=1`
//! (convolutions ask their weights into L2 before waiting for the previous kernel; off
//! until measured, see [`Backend::set_weight_prefetch`]), `DGATE_WGMMA=0` (on
//! sm_90, build plain sm_90 without the Hopper wgmma tiles `conv_wg*`), `DGATE_CLUSTER=0` (leave
//! out the cluster-split tiles `conv_tc*cl*` and `conv_dense*_cl8_f16`), `DGATE_FUSE=0|1`
//! (a DenseNet layer's 1x1 and 3x3 in one launch, `conv_dense_cl8_f16` at 8x8 and 4x4,
//! `conv_dense_halo_cl8_f16` at 16x16 and 32x32:
//! never, or wherever it applies; unset, where tuning checked it and found it faster), `DGATE_CARVEOUT=<0-100|max>`
//! (one shared-memory share of L1 for every kernel; off until measured), `DGATE_DEBUG` (print
//! NVRTC compile times, tuning and its whole-pass check), `DGATE_PTXAS_VERBOSE` (print
//! registers, spills and shared memory per kernel).

pub mod bench;
mod convsel;
mod device;
mod exec;
pub mod kernels;
pub mod params;
pub mod reference;
pub mod selfcheck;
pub mod synthetic;

pub use kernels::{compile_all_for_arch, KernelFile};

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};

use crate::backend::{check_batch, Backend, OpTime, Precision, Profile};
use crate::plan::{Plan, SampleResult};
use crate::{Error, Result};
use device::Device;
use exec::Prepared;

/// How long the stream is held before a timed launch of one op or one candidate kernel
/// (see [`Device::hold`]): well beyond the host's time to launch it and record an event.
pub(crate) const TIMING_HOLD_MS: f64 = 0.2;

/// How long a step-by-step profile holds the stream while the host launches the pass
/// (see [`CudaBackend::profile_pass`]). The profile reports how long the launches took
/// and whether they fit in it.
pub const PROFILE_HOLD_MS: f64 = 50.0;

/// Whether a CUDA device, its driver and NVRTC are usable here; the reason if not.
/// Never panics.
pub fn available() -> Result<()> {
    device::probe()
}

/// A short description of device 0 for reports, e.g. `NVIDIA H200 (sm_90, 139 GiB)`.
pub fn device_name() -> Result<String> {
    device::probe()?;
    let ctx =
        cudarc::driver::CudaContext::new(0).map_err(|e| Error::CudaUnavailable(format!("{e}")))?;
    let name = ctx.name().map_err(|e| Error::Cuda(format!("{e}")))?;
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| Error::Cuda(format!("{e}")))?;
    let mem = ctx.total_mem().map_err(|e| Error::Cuda(format!("{e}")))?;
    let nvrtc = kernels::nvrtc_version()
        .map(|(a, b)| format!(", NVRTC {a}.{b}"))
        .unwrap_or_default();
    Ok(format!(
        "{name} (sm_{major}{minor}, {:.0} GiB{nvrtc})",
        mem as f64 / (1u64 << 30) as f64
    ))
}

pub struct CudaBackend {
    dev: Device,
    conv_kernel: String,
    use_graphs: bool,
    /// Measure the convolution kernels per batch size before capturing (GPU only).
    autotune: bool,
    prepared: Option<Prepared>,
    /// Tests only: the `DGATE_FUSE` setting plans get (see `op_test_set_fuse`).
    fuse_override: Option<Option<bool>>,
}

/// One pass at batch `n` captured into a CUDA graph with the kernels chosen now.
fn capture(
    dev: &Device,
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    prep: &mut exec::Prepared,
    plan: &Plan,
    n: usize,
) -> Result<exec::Graph> {
    stream
        .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED)
        .map_err(|e| Error::Cuda(format!("begin graph capture: {e}")))?;
    let enq = prep.enqueue(dev, plan, n);
    let graph = stream
        .end_capture(CUgraphInstantiate_flags(0))
        .map_err(|e| Error::Cuda(format!("end graph capture: {e}")));
    enq?;
    let graph = graph?.ok_or_else(|| Error::Cuda("graph capture produced nothing".into()))?;
    Ok(exec::Graph(graph))
}

/// Median device milliseconds of `reps` replays of `g`, after two to warm up.
fn time_graph(
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    g: &exec::Graph,
    reps: usize,
) -> Result<f64> {
    let ev = |e: cudarc::driver::DriverError| Error::Cuda(format!("pass check event: {e}"));
    let launch = |g: &exec::Graph| {
        g.0.launch()
            .map_err(|e| Error::Cuda(format!("graph launch: {e}")))
    };
    let ctx = stream.context();
    let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
    launch(g)?;
    launch(g)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps.max(1) {
        let start = ctx.new_event(flags).map_err(ev)?;
        let end = ctx.new_event(flags).map_err(ev)?;
        start.record(stream).map_err(ev)?;
        launch(g)?;
        end.record(stream).map_err(ev)?;
        end.synchronize().map_err(ev)?;
        times.push(start.elapsed_ms(&end).map_err(ev)? as f64);
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// Tuning's whole-pass check (see [`exec::PassCheck`]): `tuned` is the pass captured
/// with the kernels tuning chose. Times it and a pass with the cost model's kernels,
/// keeps the faster (with its choices), prints both times under `DGATE_DEBUG`, and
/// returns the graph to replay. Nothing to compare where tuning measured no convolution,
/// nor once tuning has rejected a kernel as wrong on this device: the cost model, which
/// knows nothing of that, might choose it.
fn check_tuned_pass(
    dev: &Device,
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    prep: &mut exec::Prepared,
    plan: &Plan,
    n: usize,
    tuned: exec::Graph,
) -> Result<exec::Graph> {
    const REPS: usize = 7;
    if !prep.rejected.is_empty() {
        return Ok(tuned);
    }
    let tuned_ms = time_graph(stream, &tuned, REPS)?;
    let taken = prep.take_choices(n);
    if taken.is_empty() {
        return Ok(tuned);
    }
    let model = capture(dev, stream, prep, plan, n)?;
    let model_ms = time_graph(stream, &model, REPS)?;
    let check = exec::PassCheck::decide(tuned_ms, model_ms);
    if std::env::var_os("DGATE_DEBUG").is_some() {
        eprintln!(
            "dgate: whole pass at batch {n}: {tuned_ms:.3} ms with the tuned kernels, {model_ms:.3} ms with the cost model's; keeping the {}",
            if check.kept_model { "cost model's" } else { "tuned" }
        );
    }
    if check.kept_model {
        Ok(model)
    } else {
        prep.restore_choices(taken);
        Ok(tuned)
    }
}

impl CudaBackend {
    /// Opens device 0 and compiles (once per process and architecture) every kernel.
    /// `Err(Error::CudaUnavailable)` without a driver, NVRTC or GPU; never panics.
    pub fn new(precision: Precision) -> Result<Self> {
        let dev = Device::new(precision)?;
        // DGATE_CONV names a conv kernel policy for experiments (see set_conv_kernel).
        let conv_kernel = std::env::var("DGATE_CONV").unwrap_or_else(|_| "auto".into());
        if !convsel::policy_known(&conv_kernel, dev.dtype()) {
            return Err(Error::Config(format!(
                "DGATE_CONV={conv_kernel} is not a convolution kernel policy for {}",
                dev.dtype()
            )));
        }
        let use_graphs = std::env::var("DGATE_CUDA_GRAPHS").as_deref() != Ok("0");
        let autotune = std::env::var("DGATE_AUTOTUNE").as_deref() != Ok("0");
        Ok(CudaBackend {
            dev,
            conv_kernel,
            use_graphs,
            autotune,
            prepared: None,
            fuse_override: None,
        })
    }

    /// A backend whose kernels run in the CPU emulator (`kernels/host_emu.cuh`), built
    /// by [`kernels::build_emulator`]: slow, no graphs, for testing without a GPU.
    pub fn new_emulated(precision: Precision, emulator: &std::path::Path) -> Result<Self> {
        let dev = Device::new_emulated(precision, emulator)?;
        let conv_kernel = "auto".to_string();
        Ok(CudaBackend {
            dev,
            conv_kernel,
            use_graphs: false,
            autotune: false,
            prepared: None,
            fuse_override: None,
        })
    }

    /// Whether kernels run in the CPU emulator rather than on a GPU.
    pub fn is_emulated(&self) -> bool {
        self.dev.is_emulated()
    }

    pub fn precision(&self) -> Precision {
        self.dev.precision
    }

    /// The convolution kernel policy: `auto` or a kernel name.
    pub fn conv_kernel(&self) -> &str {
        &self.conv_kernel
    }

    /// Whether this device has convolution kernel `name` (the wgmma tiles exist on
    /// sm_90 and in the emulator only; a tile whose shared memory was refused is absent).
    pub fn has_conv_kernel(&self, name: &str) -> bool {
        self.dev.has_function(name).is_ok()
    }

    /// Chooses the convolution kernels: `auto` (f32: the register-blocked conv_sgemm
    /// tiles; f16: the pipelined tensor-core conv_tc tiles, and on sm_90 their wgmma
    /// twins conv_wg, where a layer's channels are aligned to 8, else conv_mma_f16), a
    /// family (`conv_sgemm_f32`, `conv_tc_f16`, `conv_wg_f16`, `conv_tma_f16`), or
    /// one kernel for every layer (`conv_simt_f32`, `conv_sgemm128x128_f32`,
    /// `conv_tc64x64_f16`, `conv_mmavec_f16`, ...; see `CONV_KERNELS` in convsel.rs), the
    /// aligned-only ones falling back where a layer is unaligned. Within a family the
    /// tile and split-K are chosen per layer and batch size: measured on the GPU before
    /// a batch size's graph is captured (unless `DGATE_AUTOTUNE=0`), else by a cost
    /// model. The resident plan is dropped: weights are packed per kernel.
    pub fn set_conv_kernel(&mut self, name: &str) -> Result<()> {
        if !convsel::policy_known(name, self.dev.dtype()) {
            let mut names: Vec<&str> = convsel::CONV_KERNELS
                .iter()
                .filter(|k| k.dtype == self.dev.dtype() && k.needs != convsel::Needs::Pair)
                .map(|k| k.name)
                .collect();
            names.insert(0, "auto");
            if self.dev.dtype() == "f32" {
                names.insert(1, "conv_sgemm_f32");
            } else {
                names.splice(1..1, ["conv_tc_f16", "conv_wg_f16", "conv_tma_f16"]);
            }
            return Err(Error::Config(format!(
                "{name} is not a convolution kernel policy for {}; choose one of: {}",
                self.dev.dtype(),
                names.join(", ")
            )));
        }
        self.conv_kernel = name.to_string();
        self.prepared = None;
        Ok(())
    }

    /// Whether convolution tiles are measured per batch size (see [`Self::set_autotune`]).
    pub fn autotune(&self) -> bool {
        self.autotune
    }

    /// Measure each convolution's candidate kernels on the GPU before a batch size's
    /// graph is captured (on by default; `DGATE_AUTOTUNE=0` turns it off), or choose
    /// them by the cost model. Off by default in the emulator, where turning it on
    /// only tests the tuning path (emulated times mean nothing).
    pub fn set_autotune(&mut self, on: bool) {
        self.autotune = on;
        if let Some(p) = self.prepared.as_mut() {
            p.forget_choices();
        }
    }

    /// Whether convolutions ask their weights into L2 before waiting for the previous
    /// kernel (see [`Backend::set_weight_prefetch`]).
    pub fn weight_prefetch(&self) -> bool {
        self.dev.prefetch
    }

    /// Turns CUDA-graph capture and replay on or off (on by default).
    pub fn set_graphs(&mut self, on: bool) {
        self.use_graphs = on && !self.dev.is_emulated();
    }

    /// Uploads `plan`'s weights and allocates buffers for batches up to `max_batch`,
    /// replacing whatever plan was resident. `run` does this on its own when it sees a
    /// different plan (or a larger batch); call it to control when the upload happens
    /// or after changing weights in place.
    pub fn prepare(&mut self, plan: &Plan, max_batch: usize) -> Result<()> {
        self.prepared = None;
        let mut prep = Prepared::new(&self.dev, plan, max_batch.max(1), &self.conv_kernel)?;
        if let Some(f) = self.fuse_override {
            prep.fuse = f;
        }
        self.prepared = Some(prep);
        Ok(())
    }

    fn ensure_prepared(&mut self, plan: &Plan, n: usize) -> Result<()> {
        let key = exec::plan_key(plan);
        let ok = match &self.prepared {
            Some(p) => p.key == key && p.capacity >= n,
            None => false,
        };
        if !ok {
            let cap = self
                .prepared
                .as_ref()
                .filter(|p| p.key == key)
                .map_or(n, |p| p.capacity.max(n));
            self.prepare(plan, cap)?;
        }
        let decisions = exec::decisions(plan);
        if let Some(p) = self.prepared.as_mut() {
            if p.decisions != decisions {
                // Thresholds are baked into captured graphs.
                p.graphs.clear();
                p.decisions = decisions;
            }
        }
        Ok(())
    }

    /// Enqueues one forward pass (images already staged): replays the graph for `n`,
    /// capturing it first if needed, or launches kernel by kernel. The first pass after
    /// tuning a batch size also times the whole pass with the tuned kernels and with the
    /// cost model's, and keeps the faster (see [`exec::PassCheck`]).
    fn launch_pass(&mut self, plan: &Plan, n: usize) -> Result<()> {
        let use_graphs = self.use_graphs;
        let dev = &self.dev;
        // Kernel choices are measured once per batch size, before its graph exists.
        let prep = self
            .prepared
            .as_mut()
            .ok_or_else(|| Error::Cuda("no plan prepared".into()))?;
        let tuned_now =
            self.autotune && !prep.graphs.contains_key(&n) && prep.tune(dev, plan, n)?;
        let stream = match dev.stream() {
            Some(s) if use_graphs => s,
            _ => return prep.enqueue(dev, plan, n),
        };
        if !prep.graphs.contains_key(&n) {
            let graph = capture(dev, stream, prep, plan, n)?;
            let graph = if tuned_now {
                check_tuned_pass(dev, stream, prep, plan, n, graph)?
            } else {
                graph
            };
            prep.graphs.insert(n, graph);
        }
        match prep.graphs.get(&n) {
            Some(g) => {
                g.0.launch()
                    .map_err(|e| Error::Cuda(format!("graph launch: {e}")))
            }
            None => Err(Error::Cuda("graph missing".into())),
        }
    }

    /// Stages `images` (n × 3 × 32 × 32, NCHW) for the next pass.
    fn stage_images(&mut self, images: &[f32], n: usize) -> Result<()> {
        let dev = &self.dev;
        let prep = self
            .prepared
            .as_mut()
            .ok_or_else(|| Error::Cuda("no plan prepared".into()))?;
        dev.upload_bytes(&mut prep.staging, bytemuck::cast_slice(images))?;
        prep.clear_results(dev, n)
    }

    /// Runs `iters` passes on the staged batch and returns the median milliseconds per
    /// pass, timed with CUDA events (for benchmarks; results are left on the device).
    pub fn time_passes(
        &mut self,
        plan: &Plan,
        images: &[f32],
        n: usize,
        iters: usize,
    ) -> Result<f64> {
        check_batch(images, n)?;
        self.ensure_prepared(plan, n)?;
        self.stage_images(images, n)?;
        self.warm_up(plan, n)?;
        // No hold: CUDA events around each replay, as PyTorch's peer times its own.
        self.median_ms(iters, false, |be| be.launch_pass(plan, n))
    }

    /// One pass on the staged batch that tunes and captures, and a second when the
    /// survivors it saw re-choose the post-gate kernels: afterwards a pass at `n` runs
    /// with the kernels it will keep.
    fn warm_up(&mut self, plan: &Plan, n: usize) -> Result<()> {
        self.launch_pass(plan, n)?;
        self.dev.sync()?;
        if self.observe_survivors(plan, n)? {
            self.launch_pass(plan, n)?;
            self.dev.sync()?;
        }
        Ok(())
    }

    /// One pass at batch `n` launched step by step (no graph) with the kernels a graph
    /// would use, timed by a CUDA event after each step (by the wall clock in the
    /// emulator), with each step's samples, FLOPs and bytes.
    ///
    /// On a GPU the steps queue behind `hold_stream_i64`, which keeps the stream busy for
    /// [`PROFILE_HOLD_MS`] while the host launches them, so the GPU then runs them back
    /// to back. Without it, a pass of short kernels (batch 1) is timed at the host's
    /// launch rate, not the GPU's. Should the host take longer than the hold, the
    /// profile says so (`back_to_back` false).
    pub fn profile_pass(&mut self, plan: &Plan, images: &[f32], n: usize) -> Result<Profile> {
        check_batch(images, n)?;
        self.ensure_prepared(plan, n)?;
        self.stage_images(images, n)?;
        // Kernels chosen (and re-chosen for the survivors) as for a timed pass.
        self.warm_up(plan, n)?;
        let dev = &self.dev;
        let prep = self.prepared_mut_ref()?;
        let ev = |e: cudarc::driver::DriverError| Error::Cuda(format!("profile event: {e}"));
        let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
        let mut steps = Vec::new();
        let mut marks = Vec::new();
        let mut walls = Vec::new();
        // The emulator runs each launch before returning: a hold there would only wait.
        let hold_ms = if dev.is_emulated() {
            0.0
        } else {
            PROFILE_HOLD_MS
        };
        if hold_ms > 0.0 {
            dev.hold(hold_ms)?;
        }
        let start = match (dev.context(), dev.stream()) {
            (Some(ctx), Some(stream)) => {
                let e = ctx.new_event(flags).map_err(ev)?;
                e.record(stream).map_err(ev)?;
                Some((ctx.clone(), stream.clone(), e))
            }
            _ => None,
        };
        let t0 = std::time::Instant::now();
        prep.enqueue_with(dev, plan, n, &mut |step| {
            steps.push(step);
            match &start {
                Some((ctx, stream, _)) => {
                    let e = ctx.new_event(flags).map_err(ev)?;
                    e.record(stream).map_err(ev)?;
                    marks.push(e);
                }
                None => walls.push(t0.elapsed().as_secs_f64() * 1e3),
            }
            Ok(())
        })?;
        let launch_ms = t0.elapsed().as_secs_f64() * 1e3;
        dev.sync()?;
        let mut ms = Vec::with_capacity(steps.len());
        match &start {
            Some((_, _, first)) => {
                let mut prev = first;
                for e in &marks {
                    ms.push(prev.elapsed_ms(e).map_err(ev)? as f64);
                    prev = e;
                }
            }
            None => {
                let mut prev = 0.0;
                for &w in &walls {
                    ms.push(w - prev);
                    prev = w;
                }
            }
        }
        let live = prep.live_counts(dev)?;
        let eb = dev.elem_bytes();
        Ok(Profile {
            steps: steps
                .iter()
                .zip(ms)
                .map(|(&step, ms)| OpTime {
                    ms,
                    ..prep.step_work(plan, step, &live, n, eb)
                })
                .collect(),
            launch_ms,
            hold_ms,
            // A margin for the hold's own start and the timer's coarse ticks.
            back_to_back: hold_ms > 0.0 && launch_ms < 0.8 * hold_ms,
        })
    }

    /// Keeps the stream busy for `ms` milliseconds (`hold_stream_i64`): later launches
    /// wait behind it. Returns at once on a GPU; the emulator runs it before returning.
    pub fn hold_stream(&self, ms: f64) -> Result<()> {
        self.dev.hold(ms)
    }

    /// After a pass at batch `n`: lets the resident plan compare the samples each gate
    /// left with what its kernels were chosen for (see `Prepared::observe`). True when
    /// the batch size's kernels will be chosen again at the next pass.
    fn observe_survivors(&mut self, plan: &Plan, n: usize) -> Result<bool> {
        if plan.gates.is_empty() {
            return Ok(false);
        }
        let dev = &self.dev;
        let prep = self
            .prepared
            .as_mut()
            .ok_or_else(|| Error::Cuda("no plan prepared".into()))?;
        let live = prep.live_counts(dev)?;
        Ok(prep.observe(n, &live))
    }

    /// Median milliseconds of `iters` runs of `work` (which enqueues on the stream),
    /// timed with CUDA events (each behind a [`Device::hold`] if `hold`), or with the
    /// wall clock in the emulator.
    fn median_ms(
        &mut self,
        iters: usize,
        hold: bool,
        mut work: impl FnMut(&mut Self) -> Result<()>,
    ) -> Result<f64> {
        let mut times = Vec::with_capacity(iters);
        for _ in 0..iters.max(1) {
            let (ctx, stream) = match (self.dev.context(), self.dev.stream()) {
                (Some(c), Some(s)) => (c.clone(), s.clone()),
                _ => {
                    let t = std::time::Instant::now();
                    work(self)?;
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                    continue;
                }
            };
            let ev = |e: cudarc::driver::DriverError| Error::Cuda(format!("event: {e}"));
            let flags = Some(cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT);
            let start = ctx.new_event(flags).map_err(ev)?;
            let end = ctx.new_event(flags).map_err(ev)?;
            // With `hold`, the launches queue behind a hold, so the time is the GPU's
            // alone: without it, a few-microsecond kernel (batch 1) measures the host's
            // launch call too.
            if hold {
                self.dev.hold(TIMING_HOLD_MS)?;
            }
            start.record(&stream).map_err(ev)?;
            work(self)?;
            end.record(&stream).map_err(ev)?;
            end.synchronize().map_err(ev)?;
            times.push(start.elapsed_ms(&end).map_err(ev)? as f64);
        }
        times.sort_by(|a, b| a.total_cmp(b));
        Ok(times[times.len() / 2])
    }

    // --- single-op access for the self-check ---

    pub(crate) fn op_test_prepare(&mut self, plan: &Plan, n: usize) -> Result<()> {
        self.prepare(plan, n)?;
        let dev = &self.dev;
        let prep = self
            .prepared
            .as_mut()
            .ok_or_else(|| Error::Cuda("no plan prepared".into()))?;
        prep.set_live(dev, n)
    }

    pub(crate) fn op_test_write(
        &mut self,
        plan: &Plan,
        buf: usize,
        nchw: &[f32],
        n: usize,
    ) -> Result<()> {
        let dev = &self.dev;
        let prep = self
            .prepared
            .as_mut()
            .ok_or_else(|| Error::Cuda("no plan prepared".into()))?;
        prep.write_buffer(dev, plan, buf, nchw, n)
    }

    pub(crate) fn op_test_run_stage(&mut self, plan: &Plan, stage: usize, n: usize) -> Result<()> {
        let dev = &self.dev;
        let prep = self.prepared_mut_ref()?;
        prep.enqueue_stage(dev, plan, stage, 0, n)?;
        dev.sync()
    }

    /// Median milliseconds of stage `stage` alone (kernel by kernel, no graph).
    pub(crate) fn op_test_time_stage(
        &mut self,
        plan: &Plan,
        stage: usize,
        n: usize,
        iters: usize,
    ) -> Result<f64> {
        if self.autotune {
            let dev = &self.dev;
            if let Some(prep) = self.prepared.as_mut() {
                prep.tune(dev, plan, n)?;
            }
        }
        self.op_test_run_stage(plan, stage, n)?; // warm-up
        self.median_ms(iters, true, |be| {
            let prep = be.prepared_mut_ref()?;
            prep.enqueue_stage(&be.dev, plan, stage, 0, n)
        })
    }

    /// The conv kernel the resident plan uses for op `op` of stage `stage`.
    /// Gives the resident plan a split-K workspace of `cap` floats followed by a canary
    /// (see `Prepared::test_workspace_with_canary`).
    pub(crate) fn op_test_small_workspace(&mut self, cap: usize, canary: usize) -> Result<()> {
        let dev = &self.dev;
        let prep = self
            .prepared
            .as_mut()
            .ok_or_else(|| Error::Cuda("no plan prepared".into()))?;
        prep.test_workspace_with_canary(dev, cap, canary)
    }

    /// Pretends the device has `sms` multiprocessors from the next `prepare` on (split-K
    /// and the grids of chained kernels are sized from it); returns the previous count.
    pub(crate) fn op_test_sms(&mut self, sms: usize) -> usize {
        std::mem::replace(&mut self.dev.sms, sms.max(1))
    }

    /// How many kernel choices the resident plan has measured.
    pub(crate) fn op_test_measured_choices(&self) -> usize {
        self.prepared.as_ref().map_or(0, |p| p.measured_choices())
    }

    /// Tests only: the `DGATE_FUSE` setting of the resident plan and of those prepared
    /// later, in place of the variable's (`Some(true)`: every DenseNet layer conv_dense
    /// can run fused; see exec.rs). Drops the resident plan's graphs.
    pub(crate) fn op_test_set_fuse(&mut self, fuse: Option<bool>) {
        self.fuse_override = Some(fuse);
        if let Some(p) = self.prepared.as_mut() {
            p.fuse = fuse;
            p.graphs.clear();
        }
    }

    /// Whether the device has kernel `name` (loaded for its architecture).
    pub(crate) fn op_test_has_function(&self, name: &str) -> Result<()> {
        self.dev.has_function(name)
    }

    /// The resident plan's DenseNet layers conv_dense could run, and those it runs at
    /// batch `n`.
    pub(crate) fn op_test_fused_pairs(&self, n: usize) -> (usize, usize) {
        self.prepared.as_ref().map_or((0, 0), |p| p.fused_pairs(n))
    }

    /// The storage type's kernel suffix: `f32` or `f16`.
    pub(crate) fn dtype(&self) -> &'static str {
        self.dev.dtype()
    }

    /// Tuning's checks so far on the resident plan: candidate runs that matched the
    /// reference kernel, and the lines of those that did not.
    pub(crate) fn op_test_checked(&self) -> (usize, Vec<String>) {
        self.prepared
            .as_ref()
            .map_or((0, Vec::new()), |p| (p.verified, p.rejected.clone()))
    }

    /// Replaces tuning's check tolerance on the resident plan (negative: every
    /// candidate but the reference disagrees) and drops its choices and graphs.
    pub(crate) fn op_test_check_tolerance(&mut self, tol: Option<f32>) -> Result<()> {
        let prep = self
            .prepared
            .as_mut()
            .ok_or_else(|| Error::Cuda("no plan prepared".into()))?;
        prep.test_tolerance = tol;
        prep.forget_choices();
        Ok(())
    }

    /// Whether that workspace is zero and its canary untouched.
    pub(crate) fn op_test_workspace_intact(&self) -> Result<bool> {
        self.prepared_mut_ref()?.test_workspace_intact(&self.dev)
    }

    /// Whether the first `floats` of the split-K workspace and every ticket are zero.
    pub(crate) fn op_test_workspace_zero(&self, floats: usize) -> Result<bool> {
        self.prepared_mut_ref()?
            .test_workspace_zero(&self.dev, floats)
    }

    pub(crate) fn op_test_conv_kernel(
        &self,
        plan: &Plan,
        stage: usize,
        op: usize,
        n: usize,
    ) -> Option<String> {
        self.prepared.as_ref()?.conv_kernel(plan, stage, op, n)
    }

    pub(crate) fn op_test_read(&mut self, plan: &Plan, buf: usize, n: usize) -> Result<Vec<f32>> {
        let dev = &self.dev;
        let prep = self.prepared_mut_ref()?;
        prep.read_buffer(dev, plan, buf, n)
    }

    fn prepared_mut_ref(&self) -> Result<&Prepared> {
        self.prepared
            .as_ref()
            .ok_or_else(|| Error::Cuda("no plan prepared".into()))
    }
}

impl Backend for CudaBackend {
    fn set_weight_prefetch(&mut self, on: bool) -> bool {
        if self.dev.prefetch != on {
            self.dev.prefetch = on;
            // Captured graphs hold the launch parameters; the kernels chosen stay.
            if let Some(p) = self.prepared.as_mut() {
                p.graphs.clear();
            }
        }
        true
    }

    fn name(&self) -> String {
        format!(
            "cuda ({}, {}, {})",
            self.dev.name,
            self.dev.arch,
            self.dev.dtype()
        )
    }

    fn run(&mut self, plan: &Plan, images: &[f32], n: usize) -> Result<Vec<SampleResult>> {
        check_batch(images, n)?;
        if n == 0 {
            return Ok(Vec::new());
        }
        self.ensure_prepared(plan, n)?;
        self.stage_images(images, n)?;
        self.launch_pass(plan, n)?;
        self.dev.sync()?;
        let dev = &self.dev;
        let prep = self
            .prepared
            .as_mut()
            .ok_or_else(|| Error::Cuda("no plan prepared".into()))?;
        let (results, live) = prep.results(dev, n)?;
        if !plan.gates.is_empty() {
            prep.observe(n, &live);
        }
        Ok(results)
    }

    fn device_time_ms(
        &mut self,
        plan: &Plan,
        images: &[f32],
        n: usize,
        iters: usize,
    ) -> Result<Option<f64>> {
        self.time_passes(plan, images, n, iters).map(Some)
    }

    fn profile(&mut self, plan: &Plan, images: &[f32], n: usize) -> Result<Option<Profile>> {
        self.profile_pass(plan, images, n).map(Some)
    }
}
