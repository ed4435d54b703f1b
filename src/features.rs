//! Pooled stage features and head logits for a whole data set, computed once on the CPU
//! backend with gates disabled and cached on disk, keyed by the backbone's tensors, the
//! normalisation, the images and the stages asked for. Gate training, sweeps and
//! calibration all work from these, so a sweep never re-runs the network.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::backend::cpu::CpuBackend;
use crate::data::Dataset;
use crate::model::Model;
use crate::weights::Weights;
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct Extracted {
    pub n: usize,
    /// 0-based stages the features belong to.
    pub stages: Vec<usize>,
    pub channels: Vec<usize>,
    /// Per stage, `n × channels` global-average-pooled stage outputs.
    pub features: Vec<Vec<f32>>,
    /// `n × classes` backbone logits.
    pub logits: Vec<f32>,
    pub classes: usize,
}

/// FNV-1a, 64-bit: a stable content hash for cache keys (not for security).
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        for &x in b {
            self.0 ^= x as u64;
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
    pub fn f32s(&mut self, v: &[f32]) -> &mut Self {
        for x in v {
            self.bytes(&x.to_le_bytes());
        }
        self
    }
    pub fn finish(&self) -> u64 {
        self.0
    }
}

/// A key over the backbone (every tensor but the gates), so gated files that share a
/// backbone share cached features.
pub fn backbone_key(w: &Weights) -> u64 {
    let mut names: Vec<&String> = w
        .tensors
        .keys()
        .filter(|k| !k.starts_with("gates."))
        .collect();
    names.sort();
    let mut h = Fnv::default();
    for n in names {
        h.bytes(n.as_bytes()).f32s(&w.tensors[n].data);
    }
    h.finish()
}

/// `$DGATE_CACHE`, else `$XDG_CACHE_HOME/dgate-rt`, else `~/.cache/dgate-rt`.
pub fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DGATE_CACHE") {
        return Some(PathBuf::from(d));
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(d).join("dgate-rt"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/dgate-rt"))
}

const MAGIC: &[u8; 8] = b"DGFEAT01";

fn write_cache(path: &Path, e: &Extracted) -> std::io::Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    f.write_all(MAGIC)?;
    for v in [e.n, e.classes, e.stages.len()] {
        f.write_all(&(v as u64).to_le_bytes())?;
    }
    for (&s, &c) in e.stages.iter().zip(&e.channels) {
        f.write_all(&(s as u64).to_le_bytes())?;
        f.write_all(&(c as u64).to_le_bytes())?;
    }
    for v in e.features.iter().chain(std::iter::once(&e.logits)) {
        f.write_all(bytemuck::cast_slice(v))?;
    }
    f.flush()?;
    drop(f);
    std::fs::rename(tmp, path)
}

fn read_cache(path: &Path) -> Option<Extracted> {
    let b = std::fs::read(path).ok()?;
    if b.len() < 32 || &b[..8] != MAGIC {
        return None;
    }
    let u = |i: usize| -> Option<usize> {
        let s = b.get(8 + 8 * i..16 + 8 * i)?;
        Some(u64::from_le_bytes(s.try_into().ok()?) as usize)
    };
    let (n, classes, k) = (u(0)?, u(1)?, u(2)?);
    let mut stages = Vec::new();
    let mut channels = Vec::new();
    for j in 0..k {
        stages.push(u(3 + 2 * j)?);
        channels.push(u(4 + 2 * j)?);
    }
    let mut off = 8 + 8 * (3 + 2 * k);
    let mut take = |len: usize| -> Option<Vec<f32>> {
        let s = b.get(off..off + 4 * len)?;
        off += 4 * len;
        Some(
            s.chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    };
    let features = channels
        .iter()
        .map(|&c| take(n * c))
        .collect::<Option<Vec<_>>>()?;
    let logits = take(n * classes)?;
    Some(Extracted {
        n,
        stages,
        channels,
        features,
        logits,
        classes,
    })
}

/// Features of `stages` (0-based) and logits for every image of `ds`, from the cache when
/// present. `progress(done, total)` is called after each batch that is computed.
pub fn extract(
    w: &Weights,
    model: &Model,
    ds: &Dataset,
    stages: &[usize],
    cache: Option<&Path>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Extracted> {
    for &s in stages {
        if s >= model.plan.stages.len() {
            return Err(Error::Config(format!(
                "stage {} does not exist: the model has {} stages",
                s + 1,
                model.plan.stages.len()
            )));
        }
    }
    let mut h = Fnv::default();
    h.bytes(&backbone_key(w).to_le_bytes())
        .f32s(&model.normalize.mean)
        .f32s(&model.normalize.std)
        .bytes(&ds.pixels);
    for &s in stages {
        h.bytes(&(s as u64).to_le_bytes());
    }
    let path = cache.map(|d| d.join(format!("features-{:016x}.bin", h.finish())));
    if let Some(e) = path.as_deref().and_then(read_cache) {
        if e.n == ds.len() && e.stages == stages {
            return Ok(e);
        }
    }
    let mut plan = model.plan.clone();
    plan.gates.clear();
    let n = ds.len();
    let channels: Vec<usize> = stages
        .iter()
        .map(|&s| plan.stages[s].output.channels)
        .collect();
    let mut features: Vec<Vec<f32>> = channels
        .iter()
        .map(|&c| Vec::with_capacity(n * c))
        .collect();
    let mut logits = Vec::with_capacity(n * plan.classes);
    let mut cpu = CpuBackend::new();
    let batch = 250;
    let mut start = 0;
    while start < n {
        let m = batch.min(n - start);
        let x = ds.normalized(start, m, &model.normalize);
        let f = cpu.pooled_features(&plan, &x, m, stages)?;
        for (dst, src) in features.iter_mut().zip(f.features) {
            dst.extend(src);
        }
        for r in &f.results {
            logits.extend_from_slice(&r.logits);
        }
        start += m;
        progress(start, n);
    }
    let e = Extracted {
        n,
        stages: stages.to_vec(),
        channels,
        features,
        logits,
        classes: plan.classes,
    };
    if let Some(p) = &path {
        // A cache that cannot be written costs time, not correctness.
        if let Err(err) = write_cache(p, &e) {
            eprintln!(
                "warning: could not write feature cache {}: {err}",
                p.display()
            );
        }
    }
    Ok(e)
}
