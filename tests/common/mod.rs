#![allow(dead_code)]
//! Where the shared test data lives: `$DGATE_DATA`, else `../shared/data` beside the project.

use std::path::PathBuf;

pub fn data_dir() -> PathBuf {
    if let Ok(d) = std::env::var("DGATE_DATA") {
        return PathBuf::from(d);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

pub fn weights(name: &str) -> PathBuf {
    data_dir().join("weights").join(name)
}

pub fn test_batch() -> PathBuf {
    data_dir().join("cifar10/test_batch.bin")
}

pub fn read_f32(path: &std::path::Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}
