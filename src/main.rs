//! `dgate-rt`: the command line over the library. Flags are parsed and validated here
//! once; all work is the library's; errors become one line on stderr and exit code 1.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use dgate_rt::backend::Precision;
use dgate_rt::data::{parse_thresholds, Dataset};
use dgate_rt::engine::{BackendChoice, Engine, Summary};
use dgate_rt::model::{Model, Normalize};

/// What `bench --help` adds: examples and the CUDA backend's environment settings.
const BENCH_HELP: &str = "Examples:
  dgate-rt bench --random resnet101 --backend cuda --precision f32,f16
  dgate-rt bench --random densenet201 --backend cuda --precision f16 --batch 256 --profile
  dgate-rt bench --random resnet101 --backend cuda --precision f16 --batch 1,256 --profile 1,256
  dgate-rt bench --random densenet201 --backend cuda --precision f16 --batch 1,64 --exits \"\" --weight-prefetch ab
  dgate-rt bench --weights resnet56.safetensors --backend cpu --batch 1,64 --json

CUDA settings (environment; see the README):
  DGATE_CONV=<policy>   convolution kernels: auto (default: each layer's tile and split-K timed on
                        the GPU), conv_tc_f16, conv_wg_f16, conv_tma_f16, conv_sgemm_f32 or one
                        kernel by name
  DGATE_AUTOTUNE=0      choose tiles by a cost model instead of timing them
  DGATE_WGMMA=0         on H100/H200, leave out the Hopper wgmma tiles
  DGATE_TMA=0           on H100/H200, leave out the TMA tiles (conv_tma*) alone
  DGATE_CLUSTER=0       on sm_90+, leave out the cluster-split tiles (conv_tc*cl*) and conv_dense
  DGATE_FUSE=0|1        a DenseNet layer's 1x1 and 3x3 in one conv_dense launch (sm_90+, f16):
                        0 never, 1 always, unset where tuning finds it faster
  DGATE_PDL=1           programmatic dependent launch (sm_90+)
  DGATE_PREFETCH=1      convolutions ask their weights into L2 before waiting for the previous kernel
  DGATE_CARVEOUT=max    every kernel asks for the same shared-memory share of L1 (or 0-100 percent)
  DGATE_CUDA_GRAPHS=0   launch kernel by kernel instead of replaying a CUDA graph
  DGATE_DEBUG=1         print NVRTC compile and tuning times, and tuning's whole-pass check";

#[derive(Parser)]
#[command(
    name = "dgate-rt",
    version,
    about = "Early-exit CNN inference with decision gates (CIFAR ResNets and DenseNets)",
    long_about = "Early-exit CNN inference with decision gates.\n\n\
A decision gate is a linear layer after an early stage; a sample whose gate is confident \
enough exits there, the rest run deeper. dgate-rt loads a PyTorch state_dict saved with \
safetensors, infers the architecture, and runs it on the CPU or on CUDA.\n\n\
Examples:\n  dgate-rt run --weights resnet56.safetensors --data test_batch.bin\n  \
dgate-rt run --weights gated.safetensors --thresholds 1.0,2.0 --json\n  \
dgate-rt info --weights resnet101.safetensors"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Classify images, exiting samples early at gates; prints accuracy, exits, FLOPs, throughput.
    Run(RunArgs),
    /// Describe a model: architecture, stages, gates, FLOPs and parameters.
    Info(ModelArgs),
    /// Latency and throughput in the paper's Table 1 format, full network and with exits.
    #[command(after_help = BENCH_HELP)]
    Bench(BenchArgs),
    /// Train decision gates on a frozen backbone (features cached on disk) and write a gated model.
    TrainGates(TrainArgs),
    /// Evaluate threshold settings on a data set: the paper's Table 1, CSV/JSON, an SVG plot.
    Sweep(SweepArgs),
    /// Choose thresholds under an accuracy-drop or FLOPs budget on a calibration split; write them.
    Calibrate(CalibrateArgs),
    /// Check the CUDA backend against the CPU reference (ops, whole networks, real data); exit 1 on any failure.
    GpuCheck(GpuCheckArgs),
    /// Write a seeded, randomly initialised network (optionally with random gates) to safetensors.
    Init(InitArgs),
}

#[derive(Args)]
struct GpuCheckArgs {
    /// Parts to run, always in this order: ops (every kernel and small networks against
    /// the reference), nets (random ResNet-101 and DenseNet-201 against the CPU backend),
    /// real (pretrained ResNet-56 on the CIFAR-10 test set), timing (latency and
    /// per-layer tables; checks nothing, so a time limit that cuts it loses no check).
    #[arg(long, default_value = "ops,nets,real,timing", value_name = "PART,..")]
    parts: String,
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Batch sizes to time.
    #[arg(long, default_value = "1,64,256", value_name = "N,..")]
    batch: String,
    /// Precisions to time (f16 needs CUDA).
    #[arg(long, default_value = "f32", value_name = "f32,f16")]
    precision: String,
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    backend: String,
    /// Also time with gates, thresholds set so these fractions of the batch exit at each
    /// gate (random networks get random gates after stages 1 and 2). Empty: full network only.
    #[arg(long, default_value = "0.5,0.3", value_name = "F1,F2")]
    exits: String,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed runs per row (the median is reported).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Also profile one pass per configuration step by step: time, TFLOP/s and GB/s per
    /// layer shape, slowest first (CUDA only). At the largest batch, or at the listed
    /// batch sizes (each one of --batch), e.g. `--profile 1,256`.
    #[arg(long, value_name = "N,..", num_args = 0..=1, default_missing_value = "largest")]
    profile: Option<String>,
    /// The convolutions' weight prefetch into L2 before each waits for the previous
    /// kernel (CUDA): on, off, or ab: each full-network row at batch 64 or less is timed
    /// again with it on, then off, in the same process with the same kernels, after a
    /// check that it changes no logit beyond rounding; their table follows the main one.
    /// Unset: as DGATE_PREFETCH says (on if 1).
    #[arg(long, value_parser = ["on", "off", "ab"], value_name = "on|off|ab")]
    weight_prefetch: Option<String>,
}

#[derive(Args)]
struct DataArgs {
    /// CIFAR-10 binary batch file(s).
    #[arg(long, value_name = "FILE", num_args = 1..)]
    data: Vec<PathBuf>,
    /// Use at most N images.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// Feature cache directory (default: $DGATE_CACHE, $XDG_CACHE_HOME/dgate-rt or ~/.cache/dgate-rt).
    #[arg(long, value_name = "DIR")]
    cache: Option<PathBuf>,
    /// Do not read or write the feature cache.
    #[arg(long)]
    no_cache: bool,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
struct TrainArgs {
    /// The backbone (any gates in it are replaced).
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// 1-based stages to place gates after.
    #[arg(long, default_value = "1,2", value_name = "S1,S2")]
    after: String,
    /// hinge: one-vs-rest hinge loss, exit when max score >= t (the paper's);
    /// ce: softmax cross-entropy, exit when max probability >= t.
    #[arg(long, default_value = "hinge", value_parser = ["hinge", "ce"])]
    loss: String,
    /// L2 penalty lambda on the gate weights.
    #[arg(long, default_value_t = 1e-4)]
    lambda: f32,
    #[arg(long, default_value_t = 30)]
    epochs: usize,
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to write the gated model.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args)]
struct SweepArgs {
    /// Gated model(s); several files (e.g. hinge and ce gates on one backbone) give one curve each.
    #[arg(long, value_name = "FILE", num_args = 1.., required = true)]
    weights: Vec<PathBuf>,
    #[command(flatten)]
    data: DataArgs,
    /// Threshold settings to tabulate, `;`-separated (e.g. "1,2;2.5,2.5"). Default: the
    /// paper's dg(1.0, 2.0) and dg(2.5, 2.5) for hinge gates, and points of the trade-off curve.
    #[arg(long, value_name = "T1,T2;..", allow_hyphen_values = true)]
    configs: Option<String>,
    /// Candidate thresholds per gate for the trade-off curve.
    #[arg(long, default_value_t = 200)]
    candidates: usize,
    /// Rows of the trade-off curve to tabulate.
    #[arg(long, default_value_t = 8)]
    curve_rows: usize,
    /// Also run the network for each tabulated setting to time it (and check that the run's
    /// accuracy equals the simulated one).
    #[arg(long)]
    time: bool,
    /// Write the table as CSV to FILE.
    #[arg(long, value_name = "FILE")]
    csv: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Write an SVG plot of accuracy against GFLOPs (one curve per file) to FILE.
    #[arg(long, value_name = "FILE")]
    plot: Option<PathBuf>,
}

#[derive(Args)]
struct CalibrateArgs {
    /// Gated model.
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    #[command(flatten)]
    data: DataArgs,
    /// Largest accuracy drop allowed against the backbone without gates, in percentage points.
    #[arg(long, value_name = "POINTS", conflicts_with = "max_gflops")]
    max_drop: Option<f64>,
    /// Largest average GFLOPs per image allowed (maximises accuracy under it).
    #[arg(long, value_name = "GFLOPS")]
    max_gflops: Option<f64>,
    /// Images used to choose thresholds (default: the first half of the data).
    #[arg(long, value_name = "A..B")]
    calib: Option<String>,
    /// Images the result is reported on (default: the second half).
    #[arg(long, value_name = "A..B")]
    report: Option<String>,
    #[arg(long, default_value_t = 1000)]
    candidates: usize,
    /// Write the model with the chosen thresholds in its metadata to FILE.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InitArgs {
    /// resnet18/34/50/101/152, resnet20/32/44/56/110, densenet121/169/201/161.
    #[arg(long, value_name = "ARCH")]
    arch: String,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Add random gates after these 1-based stages (e.g. 1,2).
    #[arg(long, value_name = "S1,S2")]
    gates: Option<String>,
    /// Output file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Args, Clone)]
struct ModelArgs {
    /// PyTorch state_dict in safetensors (names as PyTorch wrote them; `module.` is stripped).
    /// Without it, a seeded randomly initialised network (see --random) is used.
    #[arg(long, value_name = "FILE")]
    weights: Option<PathBuf>,
    /// Architecture to initialise randomly when no --weights is given
    /// (resnet18/34/50/101/152, resnet20/32/44/56/110, densenet121/169/201/161).
    #[arg(long, value_name = "ARCH", default_value = "resnet101")]
    random: String,
    /// Seed for --random.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Per-channel mean on the 0..1 scale, overriding the file's `normalize_mean` (e.g. 0.4914,0.4822,0.4465).
    #[arg(long, value_name = "R,G,B")]
    mean: Option<String>,
    /// Per-channel std on the 0..1 scale, overriding the file's `normalize_std`.
    #[arg(long, value_name = "R,G,B")]
    std: Option<String>,
    /// Gate thresholds, one per gate, overriding the file's `thresholds` (`inf`: never exit, the gate not computed; `-inf`: always).
    #[arg(long, value_name = "T1,T2,..", allow_hyphen_values = true)]
    thresholds: Option<String>,
    /// Print one JSON document instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// CIFAR-10 binary batch file(s) (official layout, 3073-byte records). Default: the
    /// test batch under $DGATE_DATA or ../shared/data, else seeded random images.
    #[arg(long, value_name = "FILE", num_args = 1..)]
    data: Vec<PathBuf>,
    /// Use at most N images.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
    /// auto: CUDA when a GPU, driver and NVRTC are present, else CPU (with a notice).
    #[arg(long, default_value = "auto", value_parser = ["auto", "cpu", "cuda"])]
    backend: String,
    /// Storage precision on CUDA (accumulation is f32); the CPU computes in f32.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16"])]
    precision: String,
    /// Images per batch.
    #[arg(long, default_value_t = 256, value_name = "N")]
    batch: usize,
    /// Also report every input (index, class, exit gate, score, logits), in input order.
    #[arg(long)]
    per_sample: bool,
    /// No progress on stderr.
    #[arg(long, short)]
    quiet: bool,
}

mod gate_cmds;

fn parse3(s: &str, what: &str) -> Result<[f32; 3]> {
    let v: Vec<f32> = s
        .split(',')
        .map(|x| {
            x.trim()
                .parse::<f32>()
                .with_context(|| format!("--{what}: `{x}` is not a number"))
        })
        .collect::<Result<_>>()?;
    if v.len() != 3 {
        bail!(
            "--{what} needs 3 comma-separated values (R,G,B), got {}",
            v.len()
        );
    }
    Ok([v[0], v[1], v[2]])
}

fn load_model(a: &ModelArgs) -> Result<(Model, bool)> {
    let (mut model, random) = match &a.weights {
        Some(p) => (Model::load(p)?, false),
        None => (
            Model::from_weights(&dgate_rt::zoo::random(&a.random, a.seed)?)?,
            true,
        ),
    };
    if a.mean.is_some() || a.std.is_some() {
        let mean = a
            .mean
            .as_deref()
            .map(|s| parse3(s, "mean"))
            .transpose()?
            .unwrap_or(model.normalize.mean);
        let std = a
            .std
            .as_deref()
            .map(|s| parse3(s, "std"))
            .transpose()?
            .unwrap_or(model.normalize.std);
        if std.iter().any(|&x| x <= 0.0 || !x.is_finite()) {
            bail!("--std values must be positive");
        }
        model.normalize = Normalize { mean, std };
        model.normalize_source = "command line".into();
    }
    if let Some(t) = &a.thresholds {
        let t = parse_thresholds(t).map_err(|e| anyhow::anyhow!("--thresholds: {e}"))?;
        model.plan.set_thresholds(&t).context("--thresholds")?;
    }
    Ok((model, random))
}

/// `$DGATE_DATA`, else `../shared/data` (the project's test data beside its root).
fn data_root() -> PathBuf {
    std::env::var_os("DGATE_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("../shared/data"))
}

fn default_data() -> Option<PathBuf> {
    let p = data_root().join("cifar10/test_batch.bin");
    p.exists().then_some(p)
}

fn info(a: &ModelArgs) -> Result<()> {
    let (model, random) = load_model(a)?;
    let plan = &model.plan;
    let mut cum = 0u64;
    let stages: Vec<serde_json::Value> = plan
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            cum += s.flops;
            serde_json::json!({"stage": i + 1, "name": s.name, "gflops": s.flops as f64 / 1e9,
                "cumulative_gflops": cum as f64 / 1e9, "params": s.params,
                "output": [s.output.channels, s.out_h, s.out_w]})
        })
        .collect();
    let gates: Vec<serde_json::Value> = plan
        .gates
        .iter()
        .enumerate()
        .map(|(k, g)| {
            serde_json::json!({"gate": k + 1, "after_stage": g.after_stage + 1, "features": g.input.channels,
                "threshold": json_f32(g.threshold), "loss": g.rule.as_str(),
                "gflops_if_exit": plan.flops_for_exit(Some(k)) as f64 / 1e9})
        })
        .collect();
    if a.json {
        let doc = serde_json::json!({"file": model.file, "arch": plan.arch, "untrained": random, "classes": plan.classes,
            "params": model.params, "gflops": plan.backbone_flops() as f64 / 1e9, "stages": stages, "gates": gates,
            "normalize": model.normalize, "normalize_source": model.normalize_source});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!("file        {}", model.file);
    println!(
        "arch        {}{}",
        plan.arch,
        if random {
            "  [randomly initialised, untrained]"
        } else {
            ""
        }
    );
    println!("classes     {}", plan.classes);
    println!(
        "params      {:.2} M ({})",
        model.params as f64 / 1e6,
        model.params
    );
    println!(
        "GFLOPs      {:.3} per image (2 x MACs of conv and linear layers)",
        plan.backbone_flops() as f64 / 1e9
    );
    println!(
        "normalize   mean {:?} std {:?} ({})",
        model.normalize.mean, model.normalize.std, model.normalize_source
    );
    println!();
    println!("stage  name              output          GFLOPs   cumulative   params");
    cum = 0;
    for (i, s) in plan.stages.iter().enumerate() {
        cum += s.flops;
        println!(
            "{:>5}  {:<16}  {:>4}x{:>2}x{:<2}      {:>7.3}   {:>10.3}   {:>7.2} M",
            i + 1,
            s.name,
            s.output.channels,
            s.out_h,
            s.out_w,
            s.flops as f64 / 1e9,
            cum as f64 / 1e9,
            s.params as f64 / 1e6
        );
    }
    println!(
        "{:>5}  {:<16}  {:>4} classes     {:>7.6}",
        "head",
        "pool+linear",
        plan.classes,
        plan.head_flops() as f64 / 1e9
    );
    println!();
    if plan.gates.is_empty() {
        println!("gates       none (add gates with `dgate-rt train-gates`)");
    }
    for (k, g) in plan.gates.iter().enumerate() {
        println!(
            "gate {}      after stage {}, {} features, {} loss, threshold {}, {:.3} GFLOPs for a sample that exits here",
            k + 1,
            g.after_stage + 1,
            g.input.channels,
            g.rule.as_str(),
            g.threshold,
            plan.flops_for_exit(Some(k)) as f64 / 1e9
        );
    }
    Ok(())
}

fn json_f32(x: f32) -> serde_json::Value {
    if x.is_finite() {
        serde_json::json!(x)
    } else {
        serde_json::json!(x.to_string())
    }
}

fn run(a: &RunArgs) -> Result<()> {
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let (model, random) = load_model(&a.model)?;
    let choice = BackendChoice::parse(&a.backend).context("--backend")?;
    let precision = Precision::parse(&a.precision).context("--precision")?;
    let mut engine = Engine::new(model, choice, precision)?;
    if let Some(n) = &engine.fallback_notice {
        eprintln!("notice: {n}");
    }
    if random {
        eprintln!(
            "notice: no --weights given: running a randomly initialised, untrained {} (seed {}); its predictions are meaningless",
            a.model.random, a.model.seed
        );
    }
    let data: Vec<PathBuf> = if a.data.is_empty() {
        default_data().into_iter().collect()
    } else {
        a.data.clone()
    };
    let (ds, data_desc, labelled) = if data.is_empty() {
        let n = a.limit.unwrap_or(256);
        let mut rng = dgate_rt::zoo::Rng::new(a.model.seed);
        let pixels = (0..n * dgate_rt::data::IMAGE)
            .map(|_| (rng.next_u64() & 0xff) as u8)
            .collect();
        eprintln!("notice: no --data given and no CIFAR-10 test batch found: using {n} seeded random images (no labels)");
        (
            Dataset {
                pixels,
                labels: vec![0; n],
            },
            format!("{n} random images"),
            false,
        )
    } else {
        let ds = Dataset::load_cifar(&data, a.limit)?;
        let names: Vec<String> = data.iter().map(|p| p.display().to_string()).collect();
        (ds, names.join(", "), true)
    };
    let n = ds.len();
    let mut results = Vec::with_capacity(n);
    let progress = !a.quiet && std::io::stderr().is_terminal();
    let t0 = Instant::now();
    let mut start = 0;
    while start < n {
        let m = a.batch.min(n - start);
        let x = ds.normalized(start, m, &engine.model.normalize);
        results.extend(engine.run(&x, m)?);
        start += m;
        if progress {
            eprint!("\r{start}/{n} images, {:.1} s", t0.elapsed().as_secs_f64());
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    if progress {
        eprintln!();
    }
    let plan = &engine.model.plan;
    let summary = Summary::new(plan, &results, labelled.then_some(&ds.labels[..]));
    if a.model.json {
        let mut doc = serde_json::json!({
            "model": {"file": engine.model.file, "arch": plan.arch, "untrained": random},
            "backend": engine.backend_name(), "data": data_desc,
            "thresholds": plan.gates.iter().map(|g| json_f32(g.threshold)).collect::<Vec<_>>(),
            "summary": summary, "seconds": secs, "images_per_second": n as f64 / secs,
        });
        if a.per_sample {
            doc["per_sample"] = results
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    serde_json::json!({"index": i, "class": r.class, "exit_gate": r.exit.map(|g| g + 1),
                        "score": json_f32(r.score), "logits": r.logits, "label": labelled.then(|| ds.labels[i])})
                })
                .collect();
        }
        println!("{}", serde_json::to_string(&doc)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "model       {}{}",
        plan.arch,
        if random { " [random, untrained]" } else { "" }
    )?;
    writeln!(out, "backend     {}", engine.backend_name())?;
    writeln!(out, "data        {data_desc}: {n} images")?;
    if plan.gates.is_empty() {
        writeln!(out, "gates       none")?;
    } else {
        let t: Vec<String> = plan
            .gates
            .iter()
            .map(|g| format!("{}", g.threshold))
            .collect();
        writeln!(
            out,
            "thresholds  {} ({} gates)",
            t.join(","),
            plan.gates[0].rule.as_str()
        )?;
    }
    if let (Some(acc), Some(c)) = (summary.accuracy_pct, summary.correct) {
        writeln!(out, "accuracy    {acc:.2}% ({c}/{n})")?;
    }
    if !plan.gates.is_empty() {
        let mut parts: Vec<String> = summary
            .exit_fraction
            .iter()
            .enumerate()
            .map(|(k, f)| format!("gate {}: {:.2}%", k + 1, 100.0 * f))
            .collect();
        parts.push(format!("head: {:.2}%", 100.0 * summary.head_fraction));
        writeln!(out, "exits       {}", parts.join("  "))?;
    }
    writeln!(
        out,
        "GFLOPs      {:.4} per image on average, full network {:.4} ({:.1}%)",
        summary.avg_gflops,
        summary.full_gflops,
        100.0 * summary.avg_gflops / summary.full_gflops
    )?;
    writeln!(
        out,
        "throughput  {:.1} images/s ({secs:.3} s, batch {})",
        n as f64 / secs,
        a.batch
    )?;
    if a.per_sample {
        writeln!(out, "\nindex  class  exit  score      logits")?;
        for (i, r) in results.iter().enumerate() {
            let l: Vec<String> = r.logits.iter().map(|x| format!("{x:.4}")).collect();
            let exit = r.exit.map_or("head".to_string(), |g| format!("g{}", g + 1));
            writeln!(
                out,
                "{i:>5}  {:>5}  {exit:>4}  {:>9.4}  {}",
                r.class,
                r.score,
                l.join(" ")
            )?;
        }
    }
    Ok(())
}

fn parse_list<T: std::str::FromStr>(s: &str, flag: &str) -> Result<Vec<T>> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            x.trim()
                .parse::<T>()
                .map_err(|_| anyhow::anyhow!("--{flag}: `{}` is not valid", x.trim()))
        })
        .collect()
}

/// Runs one `gpu-check` part; an error or a panic in it is reported as a failure
/// (`false`), so that the later parts still run.
fn guarded_part(what: &str, f: impl FnOnce() -> dgate_rt::Result<bool>) -> bool {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => {
            println!("FAIL {what} stopped: {e}");
            false
        }
        Err(_) => {
            println!("FAIL {what} panicked (see above)");
            false
        }
    }
}

fn gpu_check(a: &GpuCheckArgs) -> Result<()> {
    let parts = parse_list::<String>(&a.parts, "parts")?;
    if let Some(bad) = parts
        .iter()
        .find(|p| !["ops", "nets", "real", "timing"].contains(&p.as_str()))
    {
        bail!("--parts: unknown part {bad:?} (choose from ops, nets, real, timing)");
    }
    let has = |p: &str| parts.iter().any(|x| x == p);
    let data = data_root();
    dgate_rt::backend::cuda::CudaBackend::new(Precision::F32).context("gpu-check needs a GPU")?;
    let mut out = std::io::stdout();
    let mut ok = true;
    if has("ops") {
        println!("== ops and synthetic networks against the reference");
        ok &= guarded_part("op self-check", || {
            dgate_rt::backend::cuda::selfcheck::gpu_check(&mut std::io::stdout())
        });
    }
    if has("nets") {
        println!("== whole networks against the CPU backend");
        ok &= dgate_rt::gpucheck::random_nets(&mut out, &dgate_rt::gpucheck::cuda_engine)?;
    }
    if has("real") {
        println!(
            "== pretrained ResNet-56 on the CIFAR-10 test set ({})",
            data.display()
        );
        ok &= dgate_rt::gpucheck::resnet56_real(&mut out, &data, &dgate_rt::gpucheck::cuda_engine)?;
    }
    if has("timing") {
        println!("== latency and per-layer tables (timing only)");
        ok &= guarded_part("timing", || {
            dgate_rt::backend::cuda::selfcheck::gpu_timing(&mut std::io::stdout())
        });
    }
    if !ok {
        bail!("gpu-check: some checks FAILED (see above)");
    }
    println!("gpu-check: all checks passed ({})", parts.join(", "));
    Ok(())
}

fn init(a: &InitArgs) -> Result<()> {
    let mut w = dgate_rt::zoo::random(&a.arch, a.seed)?;
    if let Some(g) = &a.gates {
        dgate_rt::zoo::add_random_gates(&mut w, &parse_list::<usize>(g, "gates")?, a.seed)?;
    }
    w.save(&a.out)?;
    eprintln!(
        "wrote {} ({}, seed {}, untrained)",
        a.out.display(),
        a.arch,
        a.seed
    );
    Ok(())
}

fn bench(a: &BenchArgs) -> Result<()> {
    let batches: Vec<usize> = parse_list(&a.batch, "batch")?;
    let exits: Vec<f64> = parse_list(&a.exits, "exits")?;
    if batches.is_empty() || batches.contains(&0) {
        bail!("--batch needs positive sizes");
    }
    let maxn = *batches.iter().max().unwrap_or(&1);
    let profiled: Vec<usize> = match a.profile.as_deref() {
        None => Vec::new(),
        Some("largest") => vec![maxn],
        Some(list) => {
            let p: Vec<usize> = parse_list(list, "profile")?;
            if let Some(n) = p.iter().find(|n| !batches.contains(n)) {
                bail!(
                    "--profile {list}: batch {n} is not one of --batch {}",
                    a.batch
                );
            }
            p
        }
    };
    let mut weights = match &a.model.weights {
        Some(p) => dgate_rt::weights::Weights::load(p)?,
        None => dgate_rt::zoo::random(&a.model.random, a.model.seed)?,
    };
    if a.model.weights.is_none() && !exits.is_empty() {
        let g: Vec<usize> = (1..=exits.len()).collect();
        dgate_rt::zoo::add_random_gates(&mut weights, &g, a.model.seed)?;
    }
    let choice = BackendChoice::parse(&a.backend).context("--backend")?;
    let mut rows = Vec::new();
    let mut rng = dgate_rt::zoo::Rng::new(a.model.seed + 1);
    let x: Vec<f32> = (0..maxn * dgate_rt::data::IMAGE)
        .map(|_| rng.normal())
        .collect();
    let mut backend_name = String::new();
    let mut profiles = Vec::new();
    // The weight-prefetch A/B rows, and whether the backend has no prefetch.
    let mut ab = Vec::new();
    let mut prefetch_none = false;
    for p in a.precision.split(',') {
        let precision = Precision::parse(p.trim())
            .with_context(|| format!("--precision: `{p}` is not f32 or f16"))?;
        let model = Model::from_weights(&weights)?;
        let mut engine = Engine::new(model, choice, precision)?;
        if let Some(n) = &engine.fallback_notice {
            eprintln!("notice: {n}");
        }
        backend_name = engine.backend_name();
        if let Some(w) = a.weight_prefetch.as_deref() {
            if !engine.set_weight_prefetch(w == "on") {
                if !prefetch_none {
                    eprintln!(
                        "notice: --weight-prefetch {w}: {} has no weight prefetch (CUDA only)",
                        engine.backend_name()
                    );
                }
                prefetch_none = true;
            }
        }
        let name = engine
            .model
            .plan
            .arch
            .split(' ')
            .next()
            .unwrap_or("model")
            .to_string();
        let gates = engine.model.plan.gates.len();
        for &n in &batches {
            let xb = &x[..n * dgate_rt::data::IMAGE];
            engine.set_thresholds(&vec![f32::INFINITY; gates])?;
            let cfg = format!("{name} {p} full");
            if !a.model.json {
                eprintln!("timing {cfg}, batch {n}");
            }
            // One row per configuration; a profile at the batch sizes asked for.
            let mut measure = |engine: &mut Engine, cfg: String| -> Result<()> {
                rows.push(dgate_rt::bench::measure(
                    engine, &cfg, xb, n, a.warmup, a.runs,
                )?);
                if profiled.contains(&n) {
                    profiles.push((cfg, n, engine.profile(xb, n)?));
                }
                Ok(())
            };
            measure(&mut engine, cfg.clone())?;
            if a.weight_prefetch.as_deref() == Some("ab") && n <= 64 {
                let tol = match precision {
                    Precision::F32 => 1e-3,
                    Precision::F16 => 5e-2,
                };
                if !a.model.json {
                    eprintln!("timing {cfg}, batch {n} with the weight prefetch off, on, off");
                }
                ab.extend(dgate_rt::bench::prefetch_ab(
                    &mut engine,
                    &cfg,
                    (xb, n),
                    a.runs,
                    tol,
                )?);
            }
            if !exits.is_empty() && gates > 0 {
                let t = dgate_rt::bench::thresholds_for_fractions(&mut engine, xb, n, &exits)?;
                let pct: Vec<String> = exits.iter().map(|f| format!("{:.0}", 100.0 * f)).collect();
                let cfg = format!("{name} {p} exits {}%", pct.join("/"));
                if !a.model.json {
                    eprintln!("timing {cfg}, batch {n} (thresholds {t:?})");
                }
                measure(&mut engine, cfg)?;
            }
        }
    }
    if a.model.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "backend": backend_name,
                "rows": rows,
                "weight_prefetch_ab": ab,
                "profiles": profiles
                    .iter()
                    .map(|(c, n, p)| match p {
                        Some(p) => serde_json::json!({
                            "config": c, "batch": n, "steps": p.steps, "launch_ms": p.launch_ms,
                            "hold_ms": p.hold_ms, "back_to_back": p.back_to_back,
                        }),
                        None => serde_json::json!({"config": c, "batch": n, "steps": null}),
                    })
                    .collect::<Vec<_>>(),
            }))?
        );
    } else {
        println!("backend: {backend_name}\n");
        print!("{}", dgate_rt::bench::table(&rows));
        if a.weight_prefetch.as_deref() == Some("ab") {
            println!("\n### weight prefetch A/B (same process, same kernels; device ms)\n");
            if prefetch_none {
                println!("(this backend has no weight prefetch; CUDA only)");
            } else {
                print!("{}", dgate_rt::bench::prefetch_table(&ab));
            }
        }
        for (cfg, n, p) in &profiles {
            println!("\n### profile: {cfg}, batch {n}\n");
            match p {
                Some(profile) => print!("{}", dgate_rt::bench::profile_table(profile)),
                None => println!("(this backend cannot profile step by step; CUDA only)"),
            }
        }
    }
    if let Some(bad) = ab.iter().find(|r| !r.ok) {
        bail!(
            "the weight prefetch changed the results: {}, batch {}: logits differ by {:.2e} \
             (normalised) from the pass without it (see the A/B table)",
            bad.config,
            bad.batch,
            bad.max_err
        );
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let r = match &cli.cmd {
        Cmd::Run(a) => run(a),
        Cmd::Info(a) => info(a),
        Cmd::Bench(a) => bench(a),
        Cmd::Init(a) => init(a),
        Cmd::GpuCheck(a) => gpu_check(a),
        Cmd::TrainGates(a) => gate_cmds::train(a),
        Cmd::Sweep(a) => gate_cmds::sweep(a),
        Cmd::Calibrate(a) => gate_cmds::calibrate(a),
    };
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
