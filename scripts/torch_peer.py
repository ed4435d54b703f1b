#!/usr/bin/env python3
"""The PyTorch peer for dgate-rt's benchmarks.

Builds the same architectures as dgate-rt from the same safetensors file (names and shapes
decide the architecture, as in src/model.rs), checks that its logits match dgate-rt's on the
same images, then times PyTorch: eager fp32/fp16 (channels_last, cudnn.benchmark), a CUDA
graph at batch 1, torch.compile (inductor, BN folded by freezing, fp16, channels_last;
mode reduce-overhead, which adds CUDA graphs, at every batch unless --compile-mode says
otherwise) and early exit with boolean-index compaction at given exit
fractions. Prints one JSON object per measurement and a table at the end.

    python3 scripts/torch_peer.py --weights r101.safetensors --device cuda --batch 1,64,256
    python3 scripts/torch_peer.py --weights r101.safetensors --device cpu --threads 2 --batch 1
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file
from safetensors import safe_open


def count(sd, fmt):
    i = 0
    while fmt.format(i) in sd:
        i += 1
    return i


class Block(nn.Module):
    """BasicBlock or Bottleneck with projection, option-A or identity shortcut."""

    def __init__(self, sd, p, stride):
        super().__init__()
        self.bottleneck = f"{p}.conv3.weight" in sd
        n = 3 if self.bottleneck else 2
        self.stride = stride
        for c in range(1, n + 1):
            w = sd[f"{p}.conv{c}.weight"]
            k = w.shape[2]
            s = stride if (c == 2 if self.bottleneck else c == 1) else 1
            setattr(self, f"conv{c}", nn.Conv2d(w.shape[1], w.shape[0], k, s, k // 2, bias=False))
            setattr(self, f"bn{c}", nn.BatchNorm2d(w.shape[0]))
        self.n = n
        cin = sd[f"{p}.conv1.weight"].shape[1]
        cout = sd[f"{p}.conv{n}.weight"].shape[0]
        self.pad = 0
        if f"{p}.shortcut.0.weight" in sd:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        else:
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != cout:
                self.pad = (cout - cin) // 2

    def forward(self, x):
        out = x
        for c in range(1, self.n + 1):
            out = getattr(self, f"bn{c}")(getattr(self, f"conv{c}")(out))
            if c < self.n:
                out = F.relu(out)
        if self.pad:
            sc = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad, self.pad))
        else:
            sc = self.shortcut(x)
        return F.relu(out + sc)


class ResNet(nn.Module):
    def __init__(self, sd):
        super().__init__()
        w = sd["conv1.weight"]
        self.conv1 = nn.Conv2d(3, w.shape[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w.shape[0])
        self.nlayers = count(sd, "layer{}.0.conv1.weight".replace("{}", "{0}")) if False else 0
        L = 0
        while f"layer{L + 1}.0.conv1.weight" in sd:
            L += 1
        self.nlayers = L
        for l in range(1, L + 1):
            nb = count(sd, f"layer{l}.{{}}.conv1.weight")
            setattr(self, f"layer{l}", nn.Sequential(*[Block(sd, f"layer{l}.{i}", 2 if (l > 1 and i == 0) else 1) for i in range(nb)]))
        head = "linear" if "linear.weight" in sd else "fc"
        lw = sd[f"{head}.weight"]
        setattr(self, head, nn.Linear(lw.shape[1], lw.shape[0]))
        self.head = head

    def stages(self):
        st = []
        for l in range(1, self.nlayers + 1):
            mods = ([self.conv1, self.bn1, nn.ReLU()] if l == 1 else []) + [getattr(self, f"layer{l}")]
            st.append(nn.Sequential(*mods))
        return st

    def classifier(self, x):
        return getattr(self, self.head)(x.mean((2, 3)))

    def forward(self, x):
        for s in self.stages():
            x = s(x)
        return self.classifier(x)


class DenseLayer(nn.Module):
    def __init__(self, cin, mid, k):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, k, 3, 1, 1, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.bn = nn.BatchNorm2d(cin)
        self.conv = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x):
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(self, sd):
        super().__init__()
        w = sd["conv1.weight"]
        self.conv1 = nn.Conv2d(3, w.shape[0], 3, 1, 1, bias=False)
        D = 0
        while f"dense{D + 1}.0.conv1.weight" in sd:
            D += 1
        self.blocks = D
        for d in range(1, D + 1):
            n = count(sd, f"dense{d}.{{}}.conv1.weight")
            layers = []
            for i in range(n):
                c1 = sd[f"dense{d}.{i}.conv1.weight"]
                c2 = sd[f"dense{d}.{i}.conv2.weight"]
                layers.append(DenseLayer(c1.shape[1], c1.shape[0], c2.shape[0]))
            setattr(self, f"dense{d}", nn.Sequential(*layers))
            if d < D:
                t = sd[f"trans{d}.conv.weight"]
                setattr(self, f"trans{d}", Transition(t.shape[1], t.shape[0]))
        c = sd["bn.weight"].shape[0]
        self.bn = nn.BatchNorm2d(c)
        lw = sd["linear.weight"]
        self.linear = nn.Linear(lw.shape[1], lw.shape[0])

    def stages(self):
        st = []
        for d in range(1, self.blocks + 1):
            mods = ([self.conv1] if d == 1 else []) + [getattr(self, f"dense{d}")]
            if d < self.blocks:
                mods.append(getattr(self, f"trans{d}"))
            st.append(nn.Sequential(*mods))
        return st

    def classifier(self, x):
        return self.linear(F.relu(self.bn(x)).mean((2, 3)))

    def forward(self, x):
        for s in self.stages():
            x = s(x)
        return self.classifier(x)


def build(path):
    sd = {k[len("module."):] if k.startswith("module.") else k: v for k, v in load_file(path).items()}
    with safe_open(path, "pt") as f:
        meta = f.metadata() or {}
    gates = []
    k = 0
    while f"gates.{k}.weight" in sd:
        gates.append((sd.pop(f"gates.{k}.weight"), sd.pop(f"gates.{k}.bias")))
        k += 1
    after = [int(s) for s in meta.get("gate_after", ",".join(str(i + 1) for i in range(k))).split(",") if s.strip()][:k]
    if "layer1.0.conv1.weight" in sd:
        model = ResNet(sd)
    elif "dense1.0.conv1.weight" in sd:
        model = DenseNet(sd)
    else:
        sys.exit(f"{path}: architecture not supported by the peer")
    model.load_state_dict({k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}, strict=True)
    model.eval()
    mean = [float(x) for x in meta.get("normalize_mean", "0.4914,0.4822,0.4465").split(",")]
    std = [float(x) for x in meta.get("normalize_std", "0.2470,0.2435,0.2616").split(",")]
    return model, gates, after, mean, std


def gated_forward(model, stages, gates, after, thresholds, x):
    """Early exit with boolean-index compaction, as a PyTorch user would write it."""
    n = x.shape[0]
    out = torch.empty(n, dtype=torch.long, device=x.device)
    idx = torch.arange(n, device=x.device)
    g = 0
    for s, stage in enumerate(stages):
        x = stage(x)
        if g < len(gates) and after[g] == s + 1:
            w, b = gates[g]
            scores = x.float().mean((2, 3)) @ w.t() + b
            conf, cls = scores.max(1)
            ex = conf >= thresholds[g]
            out[idx[ex]] = cls[ex]
            keep = ~ex
            x, idx = x[keep], idx[keep]
            g += 1
            if x.shape[0] == 0:
                return out
    out[idx] = model.classifier(x).float().argmax(1)
    return out


def thresholds_for(model, stages, gates, after, x, fractions):
    """Per-gate thresholds making fractions[k] of the batch leave at gate k."""
    n = x.shape[0]
    t = []
    g = 0
    left = n
    with torch.no_grad():
        for s, stage in enumerate(stages):
            x = stage(x)
            if g < len(gates) and g < len(fractions) and after[g] == s + 1:
                w, b = gates[g]
                conf = (x.float().mean((2, 3)) @ w.t() + b).max(1).values
                want = min(round(fractions[g] * n), left)
                order = torch.argsort(conf, descending=True)
                thr = conf[order[want - 1]].item() if want > 0 else float("inf")
                t.append(thr)
                keep = conf < thr
                x = x[keep]
                left -= want
                g += 1
    return t


def median_ms(fn, warmup, runs, cuda):
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    ts = []
    for _ in range(runs):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--batch", default="1,64,256")
    ap.add_argument("--exits", default="0.5,0.3", help="exit fractions per gate for the early-exit rows")
    ap.add_argument("--modes", default="eager32,eager16,graph,compile,exit32,exit16")
    ap.add_argument("--compile-batches", default="1,256", help="batch sizes that get torch.compile (30-100 s each)")
    ap.add_argument("--compile-mode", default="reduce-overhead",
                    choices=["reduce-overhead", "batch1-graphs"],
                    help="reduce-overhead: CUDA graphs at every batch (the strongest peer, and one "
                         "whose time does not depend on the host's speed); batch1-graphs: only at "
                         "batch 1, the default mode above it (how runs before 2026-11-28 measured)")
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--check-with", help="dgate-rt binary: compare logits on the same images first")
    ap.add_argument("--data", help="CIFAR-10 .bin for the logit check (else random images)")
    ap.add_argument("--name", default=None)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    cuda = dev.type == "cuda"
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model, gates, after, mean, std = build(a.weights)
    name = a.name or os.path.basename(a.weights)
    model = model.to(dev)
    gates = [(w.to(dev), b.to(dev)) for w, b in gates]
    rows = []

    def emit(row):
        row["model"] = name
        row["device"] = torch.cuda.get_device_name() if cuda else f"cpu ({torch.get_num_threads()} threads)"
        print(json.dumps(row), flush=True)
        rows.append(row)

    if a.check_with:
        n = 16
        if a.data:
            raw = open(a.data, "rb").read(n * 3073)
            px = torch.tensor(list(raw), dtype=torch.uint8).view(n, 3073)[:, 1:].float().view(n, 3, 32, 32) / 255
            x = (px - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
            args = ["--data", a.data]
        else:
            sys.exit("--check-with needs --data")
        out = subprocess.run([a.check_with, "run", "--weights", a.weights, *args, "--limit", str(n), "--backend", "cpu",
                              "--thresholds", ",".join(["inf"] * len(gates)) if gates else "inf", "--json", "--per-sample", "-q"]
                             if gates else [a.check_with, "run", "--weights", a.weights, *args, "--limit", str(n),
                                            "--backend", "cpu", "--json", "--per-sample", "-q"],
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"dgate-rt failed: {out.stderr}")
        theirs = torch.tensor([r["logits"] for r in json.loads(out.stdout)["per_sample"]])
        with torch.no_grad():
            ours = model.float()(x.to(dev)).float().cpu()
        diff = (ours - theirs).abs().max().item()
        scale = theirs.abs().max().item()
        emit({"check": "logits vs dgate-rt cpu", "images": n, "max_abs_diff": diff, "max_abs_logit": scale,
              "ok": diff <= 1e-3 * max(1.0, scale)})

    batches = [int(b) for b in a.batch.split(",")]
    fractions = [float(f) for f in a.exits.split(",") if f.strip()]
    modes = a.modes.split(",")
    gen = torch.Generator().manual_seed(0)
    for n in batches:
        x32 = torch.randn(n, 3, 32, 32, generator=gen).to(dev)
        with torch.no_grad():
            if "eager32" in modes:
                m = model.float().to(memory_format=torch.channels_last)
                xc = x32.contiguous(memory_format=torch.channels_last)
                emit({"mode": "eager fp32", "batch": n, "ms": median_ms(lambda: m(xc), a.warmup, a.runs, cuda)})
            if cuda and "eager16" in modes:
                m = model.half().to(memory_format=torch.channels_last)
                xh = x32.half().contiguous(memory_format=torch.channels_last)
                emit({"mode": "eager fp16", "batch": n, "ms": median_ms(lambda: m(xh), a.warmup, a.runs, cuda)})
                model.float()
            if cuda and "graph" in modes and n == 1:
                for dt, label in ((torch.float32, "fp32"), (torch.float16, "fp16")):
                    m = model.to(dt).to(memory_format=torch.channels_last)
                    xs = x32.to(dt).contiguous(memory_format=torch.channels_last)
                    s = torch.cuda.Stream()
                    s.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(s):
                        for _ in range(3):
                            m(xs)
                    torch.cuda.current_stream().wait_stream(s)
                    g = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(g):
                        m(xs)
                    emit({"mode": f"cuda graph {label}", "batch": n, "ms": median_ms(g.replay, a.warmup, a.runs, cuda)})
                model.float()
            for label, dt in (("exit32", torch.float32), ("exit16", torch.float16)):
                if label not in modes or not gates or not fractions or (dt == torch.float16 and not cuda):
                    continue
                m = model.to(dt).to(memory_format=torch.channels_last)
                st = m.stages()
                xs = x32.to(dt).contiguous(memory_format=torch.channels_last)
                t = thresholds_for(m, st, gates, after, xs, fractions)
                fn = lambda: gated_forward(m, st, gates, after, t, xs)
                emit({"mode": f"early exit {'fp32' if dt == torch.float32 else 'fp16'} {'/'.join(f'{100*f:.0f}' for f in fractions)}%",
                      "batch": n, "thresholds": t, "ms": median_ms(fn, a.warmup, a.runs, cuda)})
                model.float()
        if cuda and "compile" in modes and str(n) in a.compile_batches.split(","):
            import torch._inductor.config as ic
            ic.freezing = True
            torch._dynamo.reset()
            m = model.half().to(memory_format=torch.channels_last)
            xh = x32.half().contiguous(memory_format=torch.channels_last)
            t0 = time.time()
            graphs = a.compile_mode == "reduce-overhead" or n == 1
            cm = torch.compile(m, mode="reduce-overhead" if graphs else None)
            with torch.no_grad():
                for _ in range(3):
                    cm(xh)
                torch.cuda.synchronize()
                ct = time.time() - t0
                emit({"mode": "torch.compile fp16", "batch": n, "compile_s": ct, "cuda_graphs": graphs,
                      "ms": median_ms(lambda: cm(xh), a.warmup, a.runs, cuda)})
            model.float()
    print("\n| model | mode | batch | ms/batch | ms/sample |\n| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        if "ms" in r:
            print(f"| {r['model']} | {r['mode']} | {r['batch']} | {r['ms']:.3f} | {r['ms'] / r['batch']:.4f} |")


if __name__ == "__main__":
    main()
