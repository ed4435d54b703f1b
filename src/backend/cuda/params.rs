//! Launch-parameter structs, mirrored field for field in `kernels/common.cuh`.
//! Device pointers travel as `u64` (`CUdeviceptr`); a null pointer means "absent".
//! Their sizes are passed to NVRTC as `-DDGATE_SIZEOF_*` and checked there by
//! `static_assert`, so a mismatch fails every compile, with or without a GPU.

use cudarc::driver::DeviceRepr;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ConvParams {
    pub input: u64,
    pub out: u64,
    pub weight: u64,
    pub bias: u64,
    pub residual: u64,
    pub pre_scale: u64,
    pub pre_shift: u64,
    pub count: u64,
    pub workspace: u64,
    /// Split-K: a counter per output tile (see splitk_finish in conv.cu), zero between uses.
    pub tickets: u64,
    /// conv_tma: the tensor maps of the input view and the weights (two 128-byte
    /// CUtensorMaps in device memory), else 0.
    pub tma: u64,
    pub in_stride: i32,
    pub in_off: i32,
    pub c: i32,
    pub out_stride: i32,
    pub out_off: i32,
    pub k: i32,
    pub res_stride: i32,
    pub res_off: i32,
    pub h: i32,
    pub w: i32,
    pub p: i32,
    pub q: i32,
    pub r: i32,
    pub stride: i32,
    pub pad: i32,
    pub pre_relu: i32,
    pub relu: i32,
    pub ldw: i32,
    /// Floats of `workspace` split-K may use; more live outputs than this undo the
    /// split on the device (conv_k_range in conv.cu).
    pub ws_cap: i32,
    /// Output tiles `tickets` can count; more undo the split on the device.
    pub n_tickets: i32,
    /// 128-byte lines of `weight` the kernel asks into L2 before it waits for the
    /// previous kernel (`DGATE_PREFETCH=1`); 0: none.
    pub weight_lines: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct ShortcutParams {
    pub input: u64,
    pub out: u64,
    pub count: u64,
    pub in_stride: i32,
    pub in_off: i32,
    pub c: i32,
    pub out_stride: i32,
    pub out_off: i32,
    pub k: i32,
    pub h: i32,
    pub w: i32,
    pub p: i32,
    pub q: i32,
    pub stride: i32,
    pub pad_before: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PoolParams {
    pub input: u64,
    pub out: u64,
    pub pre_scale: u64,
    pub pre_shift: u64,
    pub count: u64,
    pub in_stride: i32,
    pub in_off: i32,
    pub c: i32,
    pub out_stride: i32,
    pub out_off: i32,
    pub h: i32,
    pub w: i32,
    pub p: i32,
    pub q: i32,
    pub pre_relu: i32,
    /// Channels a thread moves at once: 16 bytes' worth where both views allow, else 1.
    pub vec: i32,
    pub pad0: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct GapLinearParams {
    pub input: u64,
    pub weight: u64,
    pub bias: u64,
    pub pre_scale: u64,
    pub pre_shift: u64,
    pub count: u64,
    pub idx: u64,
    pub keep: u64,
    pub out_class: u64,
    pub out_exit: u64,
    pub out_score: u64,
    pub out_logits: u64,
    pub in_stride: i32,
    pub in_off: i32,
    pub c: i32,
    pub hw: i32,
    pub classes: i32,
    pub pre_relu: i32,
    /// 0: hinge (max score), 1: ce (max softmax probability).
    pub rule: i32,
    /// Gate index written as the exit of leaving samples; -1 for the head.
    pub exit_id: i32,
    pub threshold: f32,
    pub is_gate: i32,
    /// Channels per pooling load: 1, 4 (f32) or 8 (f16).
    pub vec: i32,
    /// Pixel groups pooled in parallel.
    pub groups: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CompactParams {
    pub keep: u64,
    pub count_in: u64,
    pub count_out: u64,
    pub idx_in: u64,
    pub idx_out: u64,
    pub src_of: u64,
    pub buf: u64,
    pub scratch: u64,
    pub stride: i32,
    pub off: i32,
    pub c: i32,
    pub hw: i32,
    pub n_max: i32,
    /// Elements a compaction thread moves at once: 16 bytes' worth where the view's
    /// width, offset and stride are multiples of it, else 1.
    pub vec: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PackParams {
    pub images: u64,
    pub out: u64,
    pub count: u64,
    pub idx: u64,
    pub n: i32,
    pub out_stride: i32,
    pub out_off: i32,
    pub hw: i32,
    pub c: i32,
    pub pad0: i32,
}

/// A view of `rows` pixels x `c` channels (pixel stride `stride`, first channel `off`)
/// in `a` (and, for `diff_max`, the same view in `b`): the checks a tuning run makes
/// of a candidate kernel's output against a reference kernel's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct CheckParams {
    pub a: u64,
    pub b: u64,
    /// diff_max: two u32, max |a - b| and max |b| as f32 bits (NaN counts as largest).
    pub out: u64,
    pub rows: i32,
    pub c: i32,
    pub stride: i32,
    pub off: i32,
    pub seed: u32,
    pub pad0: i32,
}

/// conv_dense (conv.cu): a DenseNet layer's 1x1 and 3x3 in one launch, each half as its
/// own launch would pass it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct DenseParams {
    pub one: ConvParams,
    pub three: ConvParams,
}

/// How long `hold_stream_i64` (batch.cu) keeps its stream busy.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct HoldParams {
    pub ns: i64,
}

// SAFETY: plain `#[repr(C)]` data (integers, floats, device addresses), laid out as
// the CUDA structs of the same name; the sizes are checked at kernel compile time.
unsafe impl DeviceRepr for ConvParams {}
unsafe impl DeviceRepr for DenseParams {}
unsafe impl DeviceRepr for ShortcutParams {}
unsafe impl DeviceRepr for PoolParams {}
unsafe impl DeviceRepr for GapLinearParams {}
unsafe impl DeviceRepr for CompactParams {}
unsafe impl DeviceRepr for PackParams {}
unsafe impl DeviceRepr for CheckParams {}
unsafe impl DeviceRepr for HoldParams {}

/// `(macro name, Rust size)` of every mirrored struct, for the NVRTC defines.
pub fn sizes() -> [(&'static str, usize); 25] {
    use std::mem::size_of;
    [
        ("DGATE_SIZEOF_CONV", size_of::<ConvParams>()),
        ("DGATE_SIZEOF_DENSE", size_of::<DenseParams>()),
        ("DGATE_SIZEOF_SHORTCUT", size_of::<ShortcutParams>()),
        ("DGATE_SIZEOF_POOL", size_of::<PoolParams>()),
        ("DGATE_SIZEOF_GAP_LINEAR", size_of::<GapLinearParams>()),
        ("DGATE_SIZEOF_COMPACT", size_of::<CompactParams>()),
        ("DGATE_SIZEOF_PACK", size_of::<PackParams>()),
        ("DGATE_SIZEOF_CHECK", size_of::<CheckParams>()),
        ("DGATE_SIZEOF_HOLD", size_of::<HoldParams>()),
        // The pipelined tensor-core kernels' shared-memory ring, which the host sizes.
        ("DGATE_TC_STAGES", super::convsel::TC_STAGES),
        ("DGATE_TC_LDS", super::convsel::TC_LDS),
        ("DGATE_TC_WG64_STAGES", super::convsel::TC_WG64_STAGES),
        ("DGATE_HALO_MAXP128", super::convsel::HALO_MAXP128),
        ("DGATE_HALO_MAXP64", super::convsel::HALO_MAXP64),
        ("DGATE_TC_EPI_PAD", super::convsel::TC_EPI_PAD),
        ("DGATE_DENSE_SMEM", super::convsel::DENSE_SMEM as usize),
        (
            "DGATE_DENSE_HALO_SMEM",
            super::convsel::DENSE_HALO_SMEM as usize,
        ),
        // conv_tma's ring, and its shared memory as the host sizes it.
        ("DGATE_TMA_STAGES32", super::convsel::TMA_STAGES32),
        (
            "DGATE_TMA_SMEM32",
            super::convsel::tma_smem(32, super::convsel::TMA_STAGES32) as usize,
        ),
        ("DGATE_TMA_STAGES256", super::convsel::TMA_STAGES256),
        (
            "DGATE_TMA_SMEM256",
            super::convsel::tma_smem(256, super::convsel::TMA_STAGES256) as usize,
        ),
        ("DGATE_TMA_STAGES128", super::convsel::TMA_STAGES128),
        ("DGATE_TMA_STAGES64", super::convsel::TMA_STAGES64),
        (
            "DGATE_TMA_SMEM128",
            super::convsel::tma_smem(128, super::convsel::TMA_STAGES128) as usize,
        ),
        (
            "DGATE_TMA_SMEM64",
            super::convsel::tma_smem(64, super::convsel::TMA_STAGES64) as usize,
        ),
    ]
}
