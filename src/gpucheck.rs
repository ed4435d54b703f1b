//! End-to-end checks of a backend against the CPU reference, for `dgate-rt gpu-check`:
//! real data (the pretrained ResNet-56 on the 10,000 CIFAR-10 test images), randomly
//! initialised ResNet-101 and DenseNet-201 logits, and exits with compaction under
//! thresholds that make every exit point busy. Each check prints one line and its verdict.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use crate::backend::cpu::CpuBackend;
use crate::backend::{Backend, Precision};
use crate::data::Dataset;
use crate::engine::{BackendChoice, Engine};
use crate::model::Model;
use crate::plan::{decide, Plan};
use crate::zoo::{self, Rng};
use crate::{Error, Result};

fn io(e: std::io::Error) -> Error {
    Error::Input(format!("report: {e}"))
}

/// ‖a − b‖ / ‖b‖ over all logits.
fn rel_err(a: &[Vec<f32>], b: &[Vec<f32>]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        for (p, q) in x.iter().zip(y) {
            num += ((p - q) as f64).powi(2);
            den += (*q as f64).powi(2);
        }
    }
    (num / den.max(1e-30)).sqrt()
}

/// Makes the engine under test for a model and precision.
pub type MakeEngine<'a> = &'a dyn Fn(Model, Precision) -> Result<Engine>;

/// The CUDA engine, for [`MakeEngine`].
pub fn cuda_engine(model: Model, p: Precision) -> Result<Engine> {
    Engine::new(model, BackendChoice::Cuda, p)
}

/// The pretrained ResNet-56 on all test images: f32 predictions equal the CPU's on at least
/// 9,998 of 10,000; f16 accuracy within 0.1 point of the CPU's.
pub fn resnet56_real(report: &mut dyn Write, data: &Path, engine: MakeEngine) -> Result<bool> {
    let model = Model::load(data.join("weights/resnet56.safetensors"))?;
    let ds = Dataset::load_cifar(&[data.join("cifar10/test_batch.bin")], None)?;
    let n = ds.len();
    let x = ds.normalized(0, n, &model.normalize);
    let t0 = Instant::now();
    let mut cpu_res = Vec::with_capacity(n);
    let mut cpu = CpuBackend::new();
    for s in (0..n).step_by(500) {
        let m = 500.min(n - s);
        cpu_res.extend(cpu.run(&model.plan, &x[s * 3072..(s + m) * 3072], m)?);
    }
    let cpu_s = t0.elapsed().as_secs_f64();
    let acc = |r: &[crate::plan::SampleResult]| {
        r.iter()
            .zip(&ds.labels)
            .filter(|(r, &y)| r.class == y as usize)
            .count() as f64
            / n as f64
            * 100.0
    };
    let cpu_acc = acc(&cpu_res);
    writeln!(
        report,
        "resnet56 cpu: accuracy {cpu_acc:.2}% on {n} images ({cpu_s:.1} s)"
    )
    .map_err(io)?;
    let mut ok = true;
    for p in [Precision::F32, Precision::F16] {
        let mut e = engine(model.clone(), p)?;
        let mut res = Vec::with_capacity(n);
        let t0 = Instant::now();
        for s in (0..n).step_by(500) {
            let m = 500.min(n - s);
            res.extend(e.run(&x[s * 3072..(s + m) * 3072], m)?);
        }
        let secs = t0.elapsed().as_secs_f64();
        let same = res
            .iter()
            .zip(&cpu_res)
            .filter(|(a, b)| a.class == b.class)
            .count();
        let err = rel_err(
            &res.iter().map(|r| r.logits.clone()).collect::<Vec<_>>(),
            &cpu_res.iter().map(|r| r.logits.clone()).collect::<Vec<_>>(),
        );
        let a = acc(&res);
        let pass = match p {
            Precision::F32 => same >= n - 2 && err <= 1e-4,
            Precision::F16 => (a - cpu_acc).abs() <= 0.1,
        };
        ok &= pass;
        writeln!(
            report,
            "resnet56 {}: {} ({}): same class as cpu on {same}/{n}, accuracy {a:.2}% (cpu {cpu_acc:.2}%), logit rel err {err:.2e} ({secs:.2} s incl. first-use setup)",
            if p == Precision::F32 { "f32" } else { "f16" },
            if pass { "PASS" } else { "FAIL" },
            e.backend_name()
        )
        .map_err(io)?;
    }
    Ok(ok)
}

fn images(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n * 3072).map(|_| rng.normal()).collect()
}

/// Thresholds halfway between neighbouring confidences, so that rounding cannot move a
/// sample across one: about `q[k]` of the samples reaching gate k leave there.
fn midpoint_thresholds(plan: &Plan, x: &[f32], n: usize, q: &[f64]) -> Result<Vec<f32>> {
    let stages: Vec<usize> = plan.gates.iter().map(|g| g.after_stage).collect();
    let f = CpuBackend::new().pooled_features(plan, x, n, &stages)?;
    let mut alive: Vec<usize> = (0..n).collect();
    let mut t = Vec::new();
    for (k, g) in plan.gates.iter().enumerate() {
        let c = g.input.channels;
        let s = crate::backend::cpu::linear(&f.features[k], n, c, &g.weight, &g.bias);
        let classes = plan.classes;
        let conf = |i: usize| decide(&s[i * classes..(i + 1) * classes], g.rule).1;
        let mut v: Vec<f32> = alive.iter().map(|&i| conf(i)).collect();
        v.sort_by(|a, b| b.total_cmp(a));
        let m = ((q[k] * v.len() as f64) as usize).clamp(1, v.len().saturating_sub(1).max(1));
        let th = if v.len() > m {
            0.5 * (v[m - 1] + v[m])
        } else {
            f32::NEG_INFINITY
        };
        t.push(th);
        alive.retain(|&i| conf(i) < th);
    }
    Ok(t)
}

/// Random ResNet-101 / DenseNet-201 with random gates after stages 1 and 2: logits
/// without exits within tolerance of the CPU's, and with exits the CPU's exit stage and
/// class for every sample, in input order.
pub fn random_nets(report: &mut dyn Write, engine: MakeEngine) -> Result<bool> {
    let mut ok = true;
    for (arch, n) in [("resnet101", 24usize), ("densenet201", 24)] {
        let mut w = zoo::random(arch, 1)?;
        zoo::add_random_gates(&mut w, &[1, 2], 1)?;
        let mut model = Model::from_weights(&w)?;
        let x = images(n, 2);
        model.plan.set_thresholds(&[f32::INFINITY; 2])?;
        let full_cpu = CpuBackend::new().run(&model.plan, &x, n)?;
        let t = midpoint_thresholds(&model.plan, &x, n, &[0.4, 0.35])?;
        let mut gated = model.plan.clone();
        gated.set_thresholds(&t)?;
        let gated_cpu = CpuBackend::new().run(&gated, &x, n)?;
        for p in [Precision::F32, Precision::F16] {
            let mut e = engine(model.clone(), p)?;
            e.set_thresholds(&[f32::INFINITY; 2])?;
            let full = e.run(&x, n)?;
            let err = rel_err(
                &full.iter().map(|r| r.logits.clone()).collect::<Vec<_>>(),
                &full_cpu
                    .iter()
                    .map(|r| r.logits.clone())
                    .collect::<Vec<_>>(),
            );
            let tol = if p == Precision::F32 { 1e-4 } else { 1e-2 };
            e.set_thresholds(&t)?;
            let g = e.run(&x, n)?;
            let exits_match = g
                .iter()
                .zip(&gated_cpu)
                .filter(|(a, b)| a.exit == b.exit)
                .count();
            let class_match = g
                .iter()
                .zip(&gated_cpu)
                .filter(|(a, b)| a.class == b.class)
                .count();
            let mut counts = [0usize; 3];
            for r in &gated_cpu {
                counts[r.exit.unwrap_or(2)] += 1;
            }
            // f16 may legitimately flip a sample whose confidence is near a threshold.
            let need = if p == Precision::F32 { n } else { n - n / 8 };
            let pass = err <= tol && g.len() == n && exits_match >= need && class_match >= need;
            ok &= pass;
            writeln!(
                report,
                "{arch} {}: {}: logits rel err {err:.2e} (tol {tol:.0e}); with exits (cpu: {}/{}/{} at gate 1/gate 2/head) exit stage equal on {exits_match}/{n}, class on {class_match}/{n}",
                if p == Precision::F32 { "f32" } else { "f16" },
                if pass { "PASS" } else { "FAIL" },
                counts[0],
                counts[1],
                counts[2]
            )
            .map_err(io)?;
        }
    }
    Ok(ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checks themselves pass when the "device" is the CPU again (f16 requests run in f32).
    #[test]
    fn checks_pass_on_the_reference_itself() {
        let cpu = |m: Model, _p: Precision| Engine::new(m, BackendChoice::Cpu, Precision::F32);
        let mut out = Vec::new();
        assert!(
            random_nets(&mut out, &cpu).unwrap(),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let text = String::from_utf8_lossy(&out);
        assert_eq!(text.matches("PASS").count(), 4, "{text}");
    }
}
