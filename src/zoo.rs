//! Randomly initialised members of the supported families, named as PyTorch names them,
//! for running without a trained file and for benchmarks. Initialisation is seeded,
//! He-normal for convolutions, with batch-norm statistics drawn near identity and the
//! last BN of each residual branch scaled down so that 100-layer nets stay finite.

use crate::weights::Weights;
use crate::{Error, Result};

/// Deterministic splitmix64 stream with Box-Muller normals.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x9E37_79B9_7F4A_7C15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    pub fn normal(&mut self) -> f32 {
        let u1 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let u2 = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        ((-2.0 * (u1 + 1e-300).ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }
}

/// The architectures `random` knows.
pub const NAMES: &[&str] = &[
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "densenet121",
    "densenet169",
    "densenet201",
    "densenet161",
];

struct Gen {
    w: Weights,
    rng: Rng,
}

impl Gen {
    fn conv(&mut self, name: &str, out: usize, inp: usize, k: usize) {
        let std = (2.0 / (inp * k * k) as f32).sqrt();
        let data = (0..out * inp * k * k)
            .map(|_| self.rng.normal() * std)
            .collect();
        self.w
            .insert(&format!("{name}.weight"), vec![out, inp, k, k], data);
    }
    fn bn(&mut self, name: &str, c: usize, gamma: f32) {
        let g = (0..c)
            .map(|_| gamma * (1.0 + 0.1 * self.rng.normal()))
            .collect();
        let b = (0..c).map(|_| 0.1 * self.rng.normal()).collect();
        let m = (0..c).map(|_| 0.1 * self.rng.normal()).collect();
        let v = (0..c).map(|_| 0.5 + self.rng.uniform()).collect();
        self.w.insert(&format!("{name}.weight"), vec![c], g);
        self.w.insert(&format!("{name}.bias"), vec![c], b);
        self.w.insert(&format!("{name}.running_mean"), vec![c], m);
        self.w.insert(&format!("{name}.running_var"), vec![c], v);
    }
    fn linear(&mut self, name: &str, out: usize, inp: usize) {
        let std = (1.0 / inp as f32).sqrt();
        let w = (0..out * inp).map(|_| self.rng.normal() * std).collect();
        let b = (0..out).map(|_| 0.01 * self.rng.normal()).collect();
        self.w.insert(&format!("{name}.weight"), vec![out, inp], w);
        self.w.insert(&format!("{name}.bias"), vec![out], b);
    }
}

/// A seeded, randomly initialised network named like `resnet101` or `densenet201`,
/// with 10 classes.
pub fn random(name: &str, seed: u64) -> Result<Weights> {
    let mut w = Weights::empty();
    w.file = format!("<random {name}, seed {seed}>");
    let mut g = Gen {
        w,
        rng: Rng::new(seed),
    };
    g.w.metadata.insert(
        "arch".into(),
        format!("{name} (random init, seed {seed}, untrained)"),
    );
    let classes = 10;
    match name {
        "resnet18" | "resnet34" | "resnet50" | "resnet101" | "resnet152" => {
            let (bottleneck, blocks): (bool, [usize; 4]) = match name {
                "resnet18" => (false, [2, 2, 2, 2]),
                "resnet34" => (false, [3, 4, 6, 3]),
                "resnet50" => (true, [3, 4, 6, 3]),
                "resnet101" => (true, [3, 4, 23, 3]),
                _ => (true, [3, 8, 36, 3]),
            };
            let exp = if bottleneck { 4 } else { 1 };
            g.conv("conv1", 64, 3, 3);
            g.bn("bn1", 64, 1.0);
            let mut cin = 64;
            for (l, &nb) in blocks.iter().enumerate() {
                let planes = 64 << l;
                for i in 0..nb {
                    let p = format!("layer{}.{i}", l + 1);
                    let stride = if l > 0 && i == 0 { 2 } else { 1 };
                    if bottleneck {
                        g.conv(&format!("{p}.conv1"), planes, cin, 1);
                        g.bn(&format!("{p}.bn1"), planes, 1.0);
                        g.conv(&format!("{p}.conv2"), planes, planes, 3);
                        g.bn(&format!("{p}.bn2"), planes, 1.0);
                        g.conv(&format!("{p}.conv3"), planes * 4, planes, 1);
                        g.bn(&format!("{p}.bn3"), planes * 4, 0.2);
                    } else {
                        g.conv(&format!("{p}.conv1"), planes, cin, 3);
                        g.bn(&format!("{p}.bn1"), planes, 1.0);
                        g.conv(&format!("{p}.conv2"), planes, planes, 3);
                        g.bn(&format!("{p}.bn2"), planes, 0.2);
                    }
                    if stride != 1 || cin != planes * exp {
                        g.conv(&format!("{p}.shortcut.0"), planes * exp, cin, 1);
                        g.bn(&format!("{p}.shortcut.1"), planes * exp, 1.0);
                    }
                    cin = planes * exp;
                }
            }
            g.linear("linear", classes, cin);
        }
        "resnet20" | "resnet32" | "resnet44" | "resnet56" | "resnet110" => {
            let depth: usize = name[6..]
                .parse()
                .map_err(|_| Error::Config(format!("bad name {name}")))?;
            let n = (depth - 2) / 6;
            g.conv("conv1", 16, 3, 3);
            g.bn("bn1", 16, 1.0);
            let mut cin = 16;
            for l in 0..3 {
                let planes = 16 << l;
                for i in 0..n {
                    let p = format!("layer{}.{i}", l + 1);
                    g.conv(&format!("{p}.conv1"), planes, cin, 3);
                    g.bn(&format!("{p}.bn1"), planes, 1.0);
                    g.conv(&format!("{p}.conv2"), planes, planes, 3);
                    g.bn(&format!("{p}.bn2"), planes, 0.2);
                    cin = planes;
                }
            }
            g.linear("linear", classes, cin);
        }
        "densenet121" | "densenet169" | "densenet201" | "densenet161" => {
            let (k, blocks): (usize, [usize; 4]) = match name {
                "densenet121" => (32, [6, 12, 24, 16]),
                "densenet169" => (32, [6, 12, 32, 32]),
                "densenet201" => (32, [6, 12, 48, 32]),
                _ => (48, [6, 12, 36, 24]),
            };
            let mut c = 2 * k;
            g.conv("conv1", c, 3, 3);
            for (d, &nl) in blocks.iter().enumerate() {
                for i in 0..nl {
                    let p = format!("dense{}.{i}", d + 1);
                    g.bn(&format!("{p}.bn1"), c, 1.0);
                    g.conv(&format!("{p}.conv1"), 4 * k, c, 1);
                    g.bn(&format!("{p}.bn2"), 4 * k, 1.0);
                    g.conv(&format!("{p}.conv2"), k, 4 * k, 3);
                    c += k;
                }
                if d + 1 < blocks.len() {
                    let out = c / 2;
                    g.bn(&format!("trans{}.bn", d + 1), c, 1.0);
                    g.conv(&format!("trans{}.conv", d + 1), out, c, 1);
                    c = out;
                }
            }
            g.bn("bn", c, 1.0);
            g.linear("linear", classes, c);
        }
        _ => {
            return Err(Error::Config(format!(
                "unknown architecture `{name}`; known: {}",
                NAMES.join(", ")
            )));
        }
    }
    Ok(g.w)
}

/// Adds seeded random gates after the given 1-based stages (`gate_after` metadata,
/// hinge rule, thresholds left unset); the widths are read from the model itself.
pub fn add_random_gates(w: &mut Weights, after: &[usize], seed: u64) -> Result<()> {
    let model = crate::model::Model::from_weights(w)?;
    let mut rng = Rng::new(seed ^ 0x6A7E);
    let classes = model.plan.classes;
    for (k, &s) in after.iter().enumerate() {
        let st = model.plan.stages.get(s.wrapping_sub(1)).ok_or_else(|| {
            Error::Config(format!(
                "no stage {s}: the model has {} stages",
                model.plan.stages.len()
            ))
        })?;
        let c = st.output.channels;
        let wt = (0..classes * c)
            .map(|_| rng.normal() / (c as f32).sqrt())
            .collect();
        let b = (0..classes).map(|_| 0.1 * rng.normal()).collect();
        w.insert(&format!("gates.{k}.weight"), vec![classes, c], wt);
        w.insert(&format!("gates.{k}.bias"), vec![classes], b);
    }
    let list: Vec<String> = after.iter().map(|s| s.to_string()).collect();
    w.metadata.insert("gate_after".into(), list.join(","));
    w.metadata.insert("gate_loss".into(), "hinge".into());
    Ok(())
}
