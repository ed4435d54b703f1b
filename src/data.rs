//! Inputs: CIFAR-10 binary batches (official layout), normalisation, threshold lists.

use std::path::Path;

use crate::model::Normalize;
use crate::{Error, Result};

/// Bytes per record of a CIFAR-10 binary file: a label, then an image.
pub const RECORD: usize = 1 + 3 * 32 * 32;
/// Values per image: 3 channels (R, G, B planes) of 32×32.
pub const IMAGE: usize = 3 * 32 * 32;

/// Images as raw `u8` CHW planes plus labels, in file order.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    /// `len() × IMAGE` bytes: each image's R, G and B 32×32 planes, row-major.
    pub pixels: Vec<u8>,
    /// One label `0..9` per image.
    pub labels: Vec<u8>,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Reads one or more CIFAR-10 `.bin` files (in the order given), at most `limit` images.
    pub fn load_cifar(paths: &[impl AsRef<Path>], limit: Option<usize>) -> Result<Dataset> {
        let mut ds = Dataset::default();
        for p in paths {
            let p = p.as_ref();
            if limit.is_some_and(|l| ds.len() >= l) {
                break;
            }
            let bytes = std::fs::read(p).map_err(|e| Error::io(p, e))?;
            ds.append_cifar_bytes(&bytes, &p.display().to_string(), limit)?;
        }
        Ok(ds)
    }

    /// Appends the records of a CIFAR-10 binary file held in memory (`name` is used in
    /// errors), stopping when the data set holds `limit` images.
    pub fn append_cifar_bytes(
        &mut self,
        bytes: &[u8],
        name: &str,
        limit: Option<usize>,
    ) -> Result<()> {
        if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
            return Err(Error::Data {
                path: name.into(),
                msg: format!(
                    "size {} bytes is not a whole number of CIFAR-10 records ({RECORD} bytes: 1 label + 3×32×32 pixels)",
                    bytes.len()
                ),
            });
        }
        for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
            if limit.is_some_and(|l| self.len() >= l) {
                break;
            }
            if rec[0] > 9 {
                return Err(Error::Data {
                    path: name.into(),
                    msg: format!("record {i} has label {}, expected 0..9", rec[0]),
                });
            }
            self.labels.push(rec[0]);
            self.pixels.extend_from_slice(&rec[1..]);
        }
        Ok(())
    }

    /// Images `[start, end)` as a new data set.
    pub fn range(&self, start: usize, end: usize) -> Result<Dataset> {
        if start >= end || end > self.len() {
            return Err(Error::Config(format!(
                "image range {start}..{end} is empty or beyond the {} images",
                self.len()
            )));
        }
        Ok(Dataset {
            pixels: self.pixels[start * IMAGE..end * IMAGE].to_vec(),
            labels: self.labels[start..end].to_vec(),
        })
    }

    /// Normalised f32 NCHW images `[start, start + n)`.
    pub fn normalized(&self, start: usize, n: usize, norm: &Normalize) -> Vec<f32> {
        normalize_u8(&self.pixels[start * IMAGE..(start + n) * IMAGE], norm)
    }
}

/// `x = (p/255 − mean)/std` per channel over CHW images.
pub fn normalize_u8(pixels: &[u8], norm: &Normalize) -> Vec<f32> {
    let mut out = Vec::with_capacity(pixels.len());
    for img in pixels.chunks(IMAGE) {
        for (c, plane) in img.chunks(32 * 32).enumerate() {
            let (m, s) = (norm.mean[c], norm.std[c]);
            out.extend(plane.iter().map(|&p| (p as f32 / 255.0 - m) / s));
        }
    }
    out
}

/// Parses `1.0,2.5,inf,-inf` into thresholds.
pub fn parse_thresholds(s: &str) -> std::result::Result<Vec<f32>, String> {
    s.split(',')
        .map(|x| {
            let x = x.trim();
            let v = match x {
                "inf" | "+inf" | "infinity" => f32::INFINITY,
                "-inf" | "-infinity" => f32::NEG_INFINITY,
                _ => x
                    .parse::<f32>()
                    .map_err(|_| format!("`{x}` is not a number, inf or -inf"))?,
            };
            if v.is_nan() {
                return Err("NaN is not a threshold".into());
            }
            Ok(v)
        })
        .collect()
}
