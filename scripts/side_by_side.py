#!/usr/bin/env python3
"""dgate-rt against PyTorch, side by side, from one device call's logs.

Reads what scripts/device-run.sh wrote (its combined device-run.log, or the separate
bench-*.md, pdl-bench-*.md, peer-*.log and compile-*.log) and prints, as Markdown:

  - per model, every batch size and precision: dgate-rt's device time next to each
    PyTorch mode measured in the same call, and the ratio to the best of them;
  - early exit: dgate-rt's speed-up over its own full network against the FLOP ideal,
    next to PyTorch's boolean-index early exit;
  - where a bench ran with --weight-prefetch ab, its A/B rows;
  - issue 5's targets, each met or not, with the figures that decide it.

Only figures from the given logs are used, so nothing is compared across calls.

    python3 scripts/side_by_side.py target/device/device-run.log
    python3 scripts/side_by_side.py "$OUT"/bench-*.md "$OUT"/peer-*.log "$OUT"/compile-*.log
"""
import json
import os
import re
import sys

# dgate-rt bench's row: | config | batch | GFLOPs/sample | exits | ms/batch | ms/sample | device ms/batch | TFLOP/s |
ROW = re.compile(
    r"^\| (?P<arch>.+?) (?P<prec>f32|f16) (?P<kind>full|exits [^|]+?) \| (?P<batch>\d+) \| (?P<gflops>[\d.]+) \| "
    r"(?P<exits>[^|]*?) \| (?P<wall>[\d.]+) \| [\d.]+ \| (?P<device>[\d.]+) \| [\d.]+ \|$"
)
# A row of `dgate-rt bench --weight-prefetch ab`'s table (read only under its heading).
AB_ROW = re.compile(
    r"^\| (?P<config>[^|]+?) \| (?P<batch>\d+) \| (?P<off>[\d.]+) \| (?P<on>[^|]+?) \| (?P<off2>[^|]+?) \| "
    r"(?P<ratio>[^|]+?) \| (?P<err>[^|]+?) \| (?P<check>ok|FAIL) \|$"
)
# Names in dgate-rt's tables and the peer's --name.
MODELS = {"ResNet-101": "resnet101", "DenseNet-BC-201": "densenet201"}
TITLES = {"resnet101": "ResNet-101", "densenet201": "DenseNet-201"}
PEER_MODES = {
    "f32": [("eager fp32", "PyTorch eager"), ("cuda graph fp32", "PyTorch CUDA graph")],
    "f16": [
        ("eager fp16", "PyTorch eager"),
        ("cuda graph fp16", "PyTorch CUDA graph"),
        ("torch.compile fp16", "torch.compile"),
    ],
}


def parse(paths):
    """dgate-rt rows {(model, prec, kind, batch, pdl): row}, peer {(model, mode, batch): ms}, checks, cards,
    and the weight-prefetch A/B rows [(config, batch, off, on, off again, on/off, logit err, check)]."""
    ours, peer, checks, cards, ab = {}, {}, [], set(), []
    for path in paths:
        pdl = os.path.basename(path).startswith("pdl-")
        in_ab = False
        with open(path, errors="replace") as f:
            for line in f:
                line = line.rstrip("\n")
                if line.startswith("== ["):
                    pdl = "DGATE_PDL=1" in line
                    in_ab = False
                    continue
                if line.startswith("#"):
                    in_ab = line.startswith("### weight prefetch A/B")
                    continue
                if in_ab:
                    m = AB_ROW.match(line)
                    if m:
                        row = list(m.groups())
                        if pdl:
                            row[0] += " (DGATE_PDL=1)"
                        ab.append(row)
                    continue
                m = re.match(r"^backend: cuda \(([^,]+),", line)
                if m:
                    cards.add(m.group(1))
                m = ROW.match(line)
                if m:
                    model = MODELS.get(m.group("arch"), m.group("arch"))
                    kind = "full" if m.group("kind") == "full" else "exits"
                    key = (model, m.group("prec"), kind, int(m.group("batch")), pdl)
                    ours[key] = {
                        "device": float(m.group("device")),
                        "wall": float(m.group("wall")),
                        "gflops": float(m.group("gflops")),
                        "exits": m.group("exits").strip(),
                    }
                    continue
                if line.startswith("{"):
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue
                    if "device" in r:
                        cards.add(r["device"])
                    if "check" in r:
                        checks.append(r)
                    elif "ms" in r and "mode" in r:
                        mode = "early exit" if r["mode"].startswith("early exit") else r["mode"]
                        if mode == "early exit":
                            mode += " " + r["mode"].split()[2]  # fp32 / fp16
                        peer[(r["model"], mode, int(r["batch"]))] = float(r["ms"])
    return ours, peer, checks, cards, ab


def order(model):
    return list(TITLES).index(model) if model in TITLES else len(TITLES)


def fmt(x, digits=3):
    return "" if x is None else f"{x:.{digits}f}"


def main():
    paths = sys.argv[1:]
    if not paths or any(p in ("-h", "--help") for p in paths):
        sys.exit(__doc__)
    for p in paths:
        if not os.path.isfile(p):
            sys.exit(f"side_by_side: {p}: no such file")
    ours, peer, checks, cards, ab = parse(paths)
    if not ours:
        sys.exit("side_by_side: no dgate-rt bench rows in " + ", ".join(paths))
    print(f"Card: {', '.join(sorted(cards)) or 'unknown'}. dgate-rt: device ms (CUDA events around the replayed graph);")
    print("PyTorch: medians of its own event timings, same call. Ratio < 1: dgate-rt is faster.\n")
    for c in checks:
        print(f"PyTorch logit check against dgate-rt ({c.get('model')}): max |diff| {c['max_abs_diff']:.2e}, "
              f"{'ok' if c.get('ok') else 'FAILED'}")
    targets = []
    models = sorted({k[0] for k in ours}, key=order)
    for model in models:
        title = TITLES.get(model, model)
        pdl_any = any(k[0] == model and k[4] for k in ours)
        head = ["batch", "precision", "dgate-rt device ms"] + (["with DGATE_PDL=1"] if pdl_any else [])
        head += ["PyTorch eager", "PyTorch CUDA graph", "torch.compile", "dgate-rt / best PyTorch"]
        print(f"\n## {title}\n")
        print("| " + " | ".join(head) + " |")
        print("| " + " | ".join("---:" if i != 1 else "---" for i in range(len(head))) + " |")
        for (mdl, prec, kind, batch, pdl), r in sorted(ours.items(), key=lambda kv: (kv[0][1] == "f16", kv[0][3])):
            if mdl != model or kind != "full" or pdl:
                continue
            cells = [str(batch), prec, fmt(r["device"])]
            if pdl_any:
                p = ours.get((model, prec, "full", batch, True))
                cells.append(fmt(p["device"]) if p else "")
            best = None
            by_label = {}
            for mode, label in PEER_MODES[prec]:
                ms = peer.get((model, mode, batch))
                by_label[label] = ms
                if ms is not None and (best is None or ms < best[0]):
                    best = (ms, label)
            cells += [fmt(by_label.get("PyTorch eager")), fmt(by_label.get("PyTorch CUDA graph")),
                      fmt(by_label.get("torch.compile"))]
            cells.append(f"{r['device'] / best[0]:.2f} (vs {best[1]})" if best else "")
            print("| " + " | ".join(cells) + " |")
            # Issue 5's targets: f16 at most torch.compile's time; f32 at most eager f32's.
            if prec == "f16":
                ref = by_label.get("torch.compile")
                targets.append((f"{title} f16 batch {batch}: at most torch.compile's time", r["device"], ref))
            else:
                ref = by_label.get("PyTorch eager")
                targets.append((f"{title} f32 batch {batch}: at most PyTorch eager f32's time", r["device"], ref))
    print("\n## Early exit (thresholds set for the fractions shown)\n")
    print("| model | precision | batch | exits | full ms | with exits ms | speed-up | FLOP ideal | "
          "PyTorch early exit ms | PyTorch eager full ms |")
    print("| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (model, prec, kind, batch, pdl), r in sorted(ours.items(), key=lambda kv: (order(kv[0][0]), kv[0][1], kv[0][3])):
        full = ours.get((model, prec, "full", batch, pdl))
        if kind != "exits" or pdl or full is None:
            continue
        speed = full["device"] / r["device"]
        ideal = full["gflops"] / r["gflops"]
        pt = peer.get((model, f"early exit fp{prec[1:]}", batch))
        eager = peer.get((model, f"eager fp{prec[1:]}", batch))
        print(f"| {TITLES.get(model, model)} | {prec} | {batch} | {r['exits']} | {fmt(full['device'])} | "
              f"{fmt(r['device'])} | {speed:.2f}x | {ideal:.2f}x | {fmt(pt)} | {fmt(eager)} |")
        if batch == 256:
            targets.append((f"{TITLES.get(model, model)} {prec} early exit at batch 256: at least 90% of the FLOP "
                            f"ideal ({0.9 * ideal:.2f}x)", 0.9 * ideal, speed))
    if ab:
        print("\n## Weight prefetch A/B (DGATE_PREFETCH=1; same process, same kernels)\n")
        print("| config | batch | off ms | on ms | off again ms | on / off | logits max err | check |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for row in ab:
            print("| " + " | ".join(row) + " |")
    print("\n## Issue 5's targets\n")
    print("| target | met? | dgate-rt | reference |")
    print("| --- | --- | ---: | ---: |")
    for what, ours_v, ref in targets:
        if ref is None:
            print(f"| {what} | not measured | {fmt(ours_v)} ms | |")
        elif "early exit" in what:
            # (needed, measured): met when the measured speed-up reaches the needed one.
            print(f"| {what} | {'yes' if ref >= ours_v else 'no'} | {ref:.2f}x | {ours_v:.2f}x needed |")
        else:
            print(f"| {what} | {'yes' if ours_v <= ref else 'no'} | {fmt(ours_v)} ms | {fmt(ref)} ms |")


if __name__ == "__main__":
    main()
