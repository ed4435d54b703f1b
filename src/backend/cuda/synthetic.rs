//! Plans with random weights for checks and timings: small networks that exercise
//! every op, gates and compaction (option-A ResNet, DenseNet with channel windows),
//! and ResNet-style Bottleneck networks of any depth (`[3, 4, 23, 3]`: ResNet-101).

use super::reference::Rng;
use crate::plan::{Buffer, Conv, ExitRule, Gate, Head, Op, Plan, PreAct, Stage, View};

pub fn buf(channels: usize, h: usize, w: usize) -> Buffer {
    Buffer { channels, h, w }
}

pub fn view(buf: usize, offset: usize, channels: usize) -> View {
    View {
        buf,
        offset,
        channels,
    }
}

#[allow(clippy::too_many_arguments)]
pub fn conv_op(
    rng: &mut Rng,
    input: View,
    output: View,
    hw: usize,
    r: usize,
    stride: usize,
    pre: Option<PreAct>,
    residual: Option<View>,
    relu: bool,
) -> Op {
    let pad = r / 2;
    let out_hw = (hw + 2 * pad - r) / stride + 1;
    let (c, k) = (input.channels, output.channels);
    let scale = (2.0 / (c * r * r) as f32).sqrt() * 1.2;
    Op::Conv(Conv {
        input,
        output,
        in_h: hw,
        in_w: hw,
        out_h: out_hw,
        out_w: out_hw,
        kernel: r,
        stride,
        pad,
        weight: rng.vec(k * c * r * r, scale),
        bias: rng.vec(k, 0.1),
        pre,
        residual,
        relu,
    })
}

pub fn random_pre(rng: &mut Rng, c: usize) -> PreAct {
    PreAct {
        scale: (0..c).map(|_| 0.8 + 0.4 * rng.uniform()).collect(),
        shift: rng.vec(c, 0.2),
        relu: true,
    }
}

pub fn stage(name: &str, ops: Vec<Op>, output: View, hw: usize) -> Stage {
    Stage {
        name: name.into(),
        ops,
        output,
        out_h: hw,
        out_w: hw,
        flops: 0,
        params: 0,
    }
}

pub fn gate(
    rng: &mut Rng,
    after: usize,
    input: View,
    hw: usize,
    classes: usize,
    rule: ExitRule,
) -> Gate {
    Gate {
        after_stage: after,
        input,
        h: hw,
        w: hw,
        weight: rng.vec(
            classes * input.channels,
            2.0 / (input.channels as f32).sqrt(),
        ),
        bias: rng.vec(classes, 0.2),
        threshold: 0.0,
        rule,
    }
}

/// A plan whose only stage is `op` over `buffers` (ids from 1; buffer 0 is the
/// unused 3×32×32 input the plan format requires).
pub fn single_op_plan(mut buffers: Vec<Buffer>, op: Op) -> Plan {
    buffers.insert(0, buf(3, 32, 32));
    let out = buffers[1].clone();
    Plan {
        arch: "op-test".into(),
        classes: 1,
        buffers,
        input: View {
            buf: 0,
            offset: 0,
            channels: 3,
        },
        stages: vec![Stage {
            name: "op".into(),
            ops: vec![op],
            output: View {
                buf: 1,
                offset: 0,
                channels: out.channels,
            },
            out_h: out.h,
            out_w: out.w,
            flops: 0,
            params: 0,
        }],
        gates: vec![],
        head: Head {
            input: View {
                buf: 0,
                offset: 0,
                channels: 3,
            },
            h: 32,
            w: 32,
            pre: None,
            weight: vec![0.0; 3],
            bias: vec![0.0],
        },
    }
}

/// A small He et al. ResNet: 16/32/64 channels, one BasicBlock per stage, option-A
/// shortcuts, gates after stages 0 (hinge) and 1 (ce).
pub fn tiny_resnet(seed: u64, classes: usize) -> Plan {
    let mut rng = Rng::new(seed);
    // buffers: 0 input; per resolution a, t, b (block in, mid, out) and s (shortcut)
    let mut buffers = vec![buf(3, 32, 32)];
    let mut stages = Vec::new();
    let widths = [16usize, 32, 64];
    let mut prev = View {
        buf: 0,
        offset: 0,
        channels: 3,
    };
    let mut hw = 32;
    for (si, &w) in widths.iter().enumerate() {
        let base = buffers.len();
        let stride = if si == 0 { 1 } else { 2 };
        let ohw = hw / stride;
        for _ in 0..4 {
            buffers.push(buf(w, ohw, ohw));
        }
        let (a, t, b, s) = (
            view(base, 0, w),
            view(base + 1, 0, w),
            view(base + 2, 0, w),
            view(base + 3, 0, w),
        );
        let mut ops = Vec::new();
        let block_in = if si == 0 {
            ops.push(conv_op(&mut rng, prev, a, 32, 3, 1, None, None, true));
            a
        } else {
            prev
        };
        ops.push(conv_op(
            &mut rng, block_in, t, hw, 3, stride, None, None, true,
        ));
        let shortcut = if si == 0 {
            a
        } else {
            ops.push(Op::ShortcutA {
                input: prev,
                output: s,
                in_h: hw,
                in_w: hw,
                stride: 2,
                pad_before: (w - prev.channels) / 2,
            });
            s
        };
        ops.push(conv_op(
            &mut rng,
            t,
            b,
            ohw,
            3,
            1,
            None,
            Some(shortcut),
            true,
        ));
        stages.push(stage(&format!("layer{}", si + 1), ops, b, ohw));
        prev = b;
        hw = ohw;
    }
    let gates = vec![
        gate(&mut rng, 0, stages[0].output, 32, classes, ExitRule::Hinge),
        gate(&mut rng, 1, stages[1].output, 16, classes, ExitRule::Ce),
    ];
    let head = Head {
        input: prev,
        h: hw,
        w: hw,
        pre: None,
        weight: rng.vec(classes * prev.channels, 2.0 / (prev.channels as f32).sqrt()),
        bias: rng.vec(classes, 0.1),
    };
    Plan {
        arch: "tiny-resnet".into(),
        classes,
        buffers,
        input: View {
            buf: 0,
            offset: 0,
            channels: 3,
        },
        stages,
        gates,
        head,
    }
}

/// A small DenseNet-BC: growth `growth` (3 gives unaligned channel windows), two layers per block, new channels written in front
/// of the block buffer (windows, no copies), transitions with pre-activated 1×1 convs
/// and 2×2 average pools, gates after the transitions, pre-activated head.
/// Two DenseNet-BC layers (pre-activated 1x1 from 256 and 288 channels into 128, its
/// batch norm folded in, ReLU; 3x3 onto 32 channels) on an `hw x hw` map (16, 8 or 4),
/// after stride-2 3x3 convolutions down from the 32x32 image, and a head: the layers that
/// conv_dense_cl8_f16 (conv_dense_halo_cl8_f16 at 16x16) fuses, with one and two k-tiles a block of its cluster and empty
/// ranges, no gates.
pub fn dense_layers_plan(seed: u64, hw: usize) -> Plan {
    assert!(
        hw < 32,
        "dense_layers_plan reaches its map by stride-2 convolutions from 32x32"
    );
    let mut rng = Rng::new(seed);
    let (first, k, layers) = (256, 32, 2);
    let total = first + layers * k;
    let mut buffers = vec![buf(3, 32, 32)];
    let mut ops = Vec::new();
    let (mut from, mut size) = (view(0, 0, 3), 32);
    while size > hw {
        let last = size / 2 == hw;
        let to = if last {
            buffers.push(buf(total, hw, hw));
            view(buffers.len() - 1, total - first, first)
        } else {
            buffers.push(buf(32, size / 2, size / 2));
            view(buffers.len() - 1, 0, 32)
        };
        ops.push(conv_op(&mut rng, from, to, size, 3, 2, None, None, true));
        from = to;
        size /= 2;
    }
    let block = buffers.len() - 1;
    buffers.push(buf(4 * k, hw, hw));
    let tmp = buffers.len() - 1;
    for l in 0..layers {
        let have = first + l * k;
        let pre = random_pre(&mut rng, have);
        ops.push(conv_op(
            &mut rng,
            view(block, total - have, have),
            view(tmp, 0, 4 * k),
            hw,
            1,
            1,
            Some(pre),
            None,
            true,
        ));
        ops.push(conv_op(
            &mut rng,
            view(tmp, 0, 4 * k),
            view(block, total - have - k, k),
            hw,
            3,
            1,
            None,
            None,
            false,
        ));
    }
    let full = view(block, 0, total);
    let classes = 10;
    Plan {
        arch: format!("dense-layers {hw}x{hw}"),
        classes,
        buffers,
        input: view(0, 0, 3),
        stages: vec![stage("dense", ops, full, hw)],
        gates: Vec::new(),
        head: Head {
            input: full,
            h: hw,
            w: hw,
            pre: Some(random_pre(&mut rng, total)),
            weight: rng.vec(classes * total, 2.0 / (total as f32).sqrt()),
            bias: rng.vec(classes, 0.1),
        },
    }
}

pub fn tiny_densenet(seed: u64, classes: usize, growth: usize) -> Plan {
    let mut rng = Rng::new(seed);
    let k = growth;
    let layers = 2;
    let mut buffers = vec![buf(3, 32, 32)];
    let mut stages = Vec::new();
    let mut block_in_ch = 8; // stem width
    let mut hw = 32;
    // Stem writes into the back of block 1's buffer.
    let mut block_buf = buffers.len();
    buffers.push(buf(block_in_ch + layers * k, hw, hw));
    let mut pending_stem = Some(conv_op(
        &mut rng,
        view(0, 0, 3),
        view(block_buf, layers * k, block_in_ch),
        32,
        3,
        1,
        None,
        None,
        false,
    ));
    for bi in 0..3 {
        let total = block_in_ch + layers * k;
        let tmp = buffers.len();
        buffers.push(buf(4 * k, hw, hw));
        let mut ops: Vec<Op> = pending_stem.take().into_iter().collect();
        for l in 0..layers {
            let have = block_in_ch + l * k;
            let inp = view(block_buf, total - have, have);
            let pre1 = random_pre(&mut rng, have);
            ops.push(conv_op(
                &mut rng,
                inp,
                view(tmp, 0, 4 * k),
                hw,
                1,
                1,
                Some(pre1),
                None,
                false,
            ));
            let pre2 = random_pre(&mut rng, 4 * k);
            let new = view(block_buf, total - have - k, k);
            ops.push(conv_op(
                &mut rng,
                view(tmp, 0, 4 * k),
                new,
                hw,
                3,
                1,
                Some(pre2),
                None,
                false,
            ));
        }
        let full = view(block_buf, 0, total);
        if bi == 2 {
            stages.push(stage(&format!("dense{}", bi + 1), ops, full, hw));
            let head = Head {
                input: full,
                h: hw,
                w: hw,
                pre: Some(random_pre(&mut rng, total)),
                weight: rng.vec(classes * total, 2.0 / (total as f32).sqrt()),
                bias: rng.vec(classes, 0.1),
            };
            let gates = vec![
                gate(&mut rng, 0, stages[0].output, 16, classes, ExitRule::Hinge),
                gate(&mut rng, 1, stages[1].output, 8, classes, ExitRule::Hinge),
            ];
            return Plan {
                arch: "tiny-densenet".into(),
                classes,
                buffers,
                input: view(0, 0, 3),
                stages,
                gates,
                head,
            };
        }
        // Transition: pre-activated 1x1 conv to half the channels, then 2x2 pool into
        // the back of the next block's buffer.
        let half = total / 2;
        let tbuf = buffers.len();
        buffers.push(buf(half, hw, hw));
        let pre = random_pre(&mut rng, total);
        ops.push(conv_op(
            &mut rng,
            full,
            view(tbuf, 0, half),
            hw,
            1,
            1,
            Some(pre),
            None,
            false,
        ));
        let next_buf = buffers.len();
        buffers.push(buf(half + layers * k, hw / 2, hw / 2));
        let out = view(next_buf, layers * k, half);
        ops.push(Op::AvgPool2 {
            input: view(tbuf, 0, half),
            output: out,
            in_h: hw,
            in_w: hw,
            pre: None,
        });
        stages.push(stage(
            &format!("dense{}+trans{}", bi + 1, bi + 1),
            ops,
            out,
            hw / 2,
        ));
        block_buf = next_buf;
        block_in_ch = half;
        hw /= 2;
    }
    unreachable!("the loop returns at its last block")
}

/// A CIFAR ResNet with ImageNet-style Bottleneck blocks (`blocks` per layer, widths
/// 64/128/256/512 × 4, strides 1/2/2/2, projection shortcuts), random weights, gates
/// after stages 0 and 1 with infinite thresholds (no exits). `[3, 4, 23, 3]` is
/// ResNet-101's shape. Stage `s` is layer `s + 1`; the stem belongs to stage 0.
pub fn resnet_bottleneck_plan(blocks: [usize; 4], classes: usize, seed: u64) -> Plan {
    bottleneck_plan(blocks, 64, classes, seed)
}

/// [`resnet_bottleneck_plan`] with stem and first-layer width `width` instead of 64
/// (small widths for the CPU emulator).
pub fn bottleneck_plan(blocks: [usize; 4], width: usize, classes: usize, seed: u64) -> Plan {
    let mut rng = Rng::new(seed);
    let mut buffers = vec![buf(3, 32, 32), buf(width, 32, 32)];
    let mut prev = view(1, 0, width);
    let mut pending = vec![conv_op(
        &mut rng,
        view(0, 0, 3),
        prev,
        32,
        3,
        1,
        None,
        None,
        true,
    )];
    let mut stages = Vec::new();
    let mut hw = 32;
    for (li, &nb) in blocks.iter().enumerate() {
        let mid = width << li;
        let out_ch = mid * 4;
        let stride = if li == 0 { 1 } else { 2 };
        let ohw = hw / stride;
        let base = buffers.len();
        buffers.push(buf(out_ch, ohw, ohw)); // ping
        buffers.push(buf(out_ch, ohw, ohw)); // pong
        buffers.push(buf(mid, hw, hw)); // conv1 out of a strided block
        buffers.push(buf(mid, ohw, ohw)); // conv1 out
        buffers.push(buf(mid, ohw, ohw)); // conv2 out
        buffers.push(buf(out_ch, ohw, ohw)); // projection shortcut
        let mut ops = std::mem::take(&mut pending);
        let mut x = prev;
        let mut x_hw = hw;
        for bi in 0..nb {
            let s = if bi == 0 { stride } else { 1 };
            let t1 = if x_hw != ohw {
                view(base + 2, 0, mid)
            } else {
                view(base + 3, 0, mid)
            };
            let t2 = view(base + 4, 0, mid);
            let out = view(base + (bi % 2), 0, out_ch);
            ops.push(conv_op(&mut rng, x, t1, x_hw, 1, 1, None, None, true));
            ops.push(conv_op(&mut rng, t1, t2, x_hw, 3, s, None, None, true));
            let shortcut = if bi == 0 {
                let sc = view(base + 5, 0, out_ch);
                ops.push(conv_op(&mut rng, x, sc, x_hw, 1, s, None, None, false));
                sc
            } else {
                x
            };
            // Keep the residual stream bounded over 30-odd blocks of random weights.
            let mut c3 = conv_op(&mut rng, t2, out, ohw, 1, 1, None, Some(shortcut), true);
            if let Op::Conv(c) = &mut c3 {
                c.weight.iter_mut().for_each(|w| *w *= 0.3);
            }
            ops.push(c3);
            x = out;
            x_hw = ohw;
        }
        stages.push(stage(&format!("layer{}", li + 1), ops, x, ohw));
        prev = x;
        hw = ohw;
    }
    let mut gates = vec![
        gate(&mut rng, 0, stages[0].output, 32, classes, ExitRule::Hinge),
        gate(&mut rng, 1, stages[1].output, 16, classes, ExitRule::Hinge),
    ];
    for g in &mut gates {
        g.threshold = f32::INFINITY;
    }
    let head = Head {
        input: prev,
        h: hw,
        w: hw,
        pre: None,
        weight: rng.vec(classes * prev.channels, 1.0 / (prev.channels as f32).sqrt()),
        bias: rng.vec(classes, 0.1),
    };
    Plan {
        arch: format!("resnet-bottleneck{blocks:?}-random"),
        classes,
        buffers,
        input: view(0, 0, 3),
        stages,
        gates,
        head,
    }
}

/// FLOPs per sample of each stage's convolutions (2 × MACs).
pub fn stage_conv_flops(plan: &Plan) -> Vec<f64> {
    plan.stages
        .iter()
        .map(|s| {
            s.ops
                .iter()
                .map(|op| match op {
                    Op::Conv(c) => {
                        2.0 * (c.output.channels
                            * c.input.channels
                            * c.kernel
                            * c.kernel
                            * c.out_h
                            * c.out_w) as f64
                    }
                    _ => 0.0,
                })
                .sum()
        })
        .collect()
}
