//! Reading (and writing) PyTorch `state_dict`s saved with safetensors.
//!
//! Tensor names are kept as PyTorch wrote them, less a leading `module.` (DataParallel).
//! Float tensors (F32, F16, BF16, F64) are converted to f32 and checked for NaN and
//! infinity; integer tensors (`num_batches_tracked`) are kept only for round-tripping.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};

use crate::{Error, Result};

/// A float tensor converted to f32.
#[derive(Clone, Debug)]
pub struct Tensor {
    /// Dimensions, outermost first (PyTorch order).
    pub shape: Vec<usize>,
    /// Row-major values, all finite.
    pub data: Vec<f32>,
}

/// A raw tensor as stored, for writing a file back with its tensors unchanged.
#[derive(Clone, Debug)]
struct RawTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// The tensors and metadata of one safetensors file.
#[derive(Clone, Debug)]
pub struct Weights {
    /// Where the tensors came from, for error messages.
    pub file: String,
    /// Float tensors by name (leading `module.` stripped).
    pub tensors: HashMap<String, Tensor>,
    /// The header's `__metadata__` (e.g. `normalize_mean`, `gate_after`, `thresholds`).
    pub metadata: BTreeMap<String, String>,
    raw: BTreeMap<String, RawTensor>,
}

fn to_f32(file: &str, name: &str, view: &TensorView<'_>) -> Result<Option<Vec<f32>>> {
    let b = view.data();
    let v: Vec<f32> = match view.dtype() {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| {
                let mut a = [0u8; 8];
                a.copy_from_slice(c);
                f64::from_le_bytes(a) as f32
            })
            .collect(),
        Dtype::I64 | Dtype::I32 | Dtype::U8 | Dtype::I8 | Dtype::BOOL => return Ok(None),
        other => {
            return Err(Error::Tensor {
                file: file.into(),
                tensor: name.into(),
                msg: format!("unsupported dtype {other:?}"),
            })
        }
    };
    if let Some(i) = v.iter().position(|x| !x.is_finite()) {
        return Err(Error::Tensor {
            file: file.into(),
            tensor: name.into(),
            msg: format!("element {i} is {} (weights must be finite)", v[i]),
        });
    }
    Ok(Some(v))
}

impl Weights {
    /// No tensors, no metadata.
    pub fn empty() -> Self {
        Weights {
            file: String::new(),
            tensors: HashMap::new(),
            metadata: BTreeMap::new(),
            raw: BTreeMap::new(),
        }
    }

    /// Reads and parses a safetensors file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::from_bytes(&bytes, &path.display().to_string())
    }

    /// Parses a safetensors image held in memory; `file` names it in errors.
    pub fn from_bytes(bytes: &[u8], file: &str) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| Error::Safetensors {
            file: file.into(),
            msg: e.to_string(),
        })?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(bytes).map_err(|e| Error::Safetensors {
                file: file.into(),
                msg: e.to_string(),
            })?;
        let metadata: BTreeMap<String, String> = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let mut tensors = HashMap::new();
        let mut raw = BTreeMap::new();
        for (name, view) in st.tensors() {
            let key = name.strip_prefix("module.").unwrap_or(&name).to_string();
            if let Some(data) = to_f32(file, &key, &view)? {
                tensors.insert(
                    key.clone(),
                    Tensor {
                        shape: view.shape().to_vec(),
                        data,
                    },
                );
            }
            raw.insert(
                key,
                RawTensor {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    bytes: view.data().to_vec(),
                },
            );
        }
        Ok(Weights {
            file: file.into(),
            tensors,
            metadata,
            raw,
        })
    }

    /// Whether a float tensor `name` exists.
    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn err(&self, tensor: &str, msg: String) -> Error {
        Error::Tensor {
            file: self.file.clone(),
            tensor: tensor.into(),
            msg,
        }
    }

    /// The tensor `name`, or an error naming it.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| self.err(name, "missing".into()))
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn shaped(&self, name: &str, shape: &[usize]) -> Result<&Tensor> {
        let t = self.get(name)?;
        if t.shape != shape {
            return Err(self.err(
                name,
                format!("has shape {:?}, expected {:?}", t.shape, shape),
            ));
        }
        Ok(t)
    }

    /// The tensor `name`, which must have `rank` dimensions.
    pub fn ranked(&self, name: &str, rank: usize) -> Result<&Tensor> {
        let t = self.get(name)?;
        if t.shape.len() != rank {
            return Err(self.err(
                name,
                format!("has shape {:?}, expected {rank} dimensions", t.shape),
            ));
        }
        Ok(t)
    }

    /// Adds or replaces an f32 tensor (used for trained gates).
    pub fn insert(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) {
        let bytes = data.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.raw.insert(
            name.into(),
            RawTensor {
                dtype: Dtype::F32,
                shape: shape.clone(),
                bytes,
            },
        );
        self.tensors.insert(name.into(), Tensor { shape, data });
    }

    /// Removes every tensor whose name starts with `prefix`.
    pub fn remove_prefix(&mut self, prefix: &str) {
        self.tensors.retain(|k, _| !k.starts_with(prefix));
        self.raw.retain(|k, _| !k.starts_with(prefix));
    }

    /// Serialises all tensors (as originally stored, new ones as F32) and the metadata.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let views: Vec<(String, TensorView<'_>)> = self
            .raw
            .iter()
            .map(|(k, r)| {
                TensorView::new(r.dtype, r.shape.clone(), &r.bytes)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| self.err(k, e.to_string()))
            })
            .collect::<Result<_>>()?;
        let meta: HashMap<String, String> = self.metadata.clone().into_iter().collect();
        safetensors::serialize(views, &Some(meta)).map_err(|e| Error::Safetensors {
            file: self.file.clone(),
            msg: e.to_string(),
        })
    }

    /// Writes [`Weights::to_bytes`] to `path`.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let bytes = self.to_bytes()?;
        std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
    }
}
