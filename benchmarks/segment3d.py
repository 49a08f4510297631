"""Synthetic 3-D benchmark of the segmentation methods, with throughput beside predict's.

    python benchmarks/segment3d.py [--shape 32,1024,1024] [--model MODEL.pt | --train-steps 600]
                                   [--quick] [--tmp DIR] [--no-doc] [--json FILE]

Every measured stage is a process of its own started as a user starts it (``python -m volseg ...``,
through ``benchmarks/_doc.py``'s launcher: wall seconds, CPU seconds, peak RSS of the process):

1. ``volseg synth`` of the stack (seed 0): the image, and the exact 3-D truth (cells keep their ids
   through the sections; the membrane band is background).
2. **affinities of the truth** (this script in a child process, section by section): the 9 default offsets,
   ``0.1 + 0.8 * target + 0.1 * n`` with ``n`` Gaussian noise of sd 1 smoothed by sigma 1 px in y and x and
   renormalised (sd 1), clipped to [0, 1], stored as uint8, a channel volume ``(c, z, y, x)``; and the
   boundary map of the same affinities (``1 - min`` over each pixel's in-plane pairs) as a probability
   volume, so that the boundary methods get the same information. These stand in for a model's
   affinities: no affinity model is trained here, the figures measure the methods, not a model.
3. ``volseg predict`` of a boundary model (``--model``, else the default U-Net trained here for
   ``--train-steps`` on a small synthetic stack, as ``benchmarks/night.py`` does) on the same image: the
   throughput that segmentation must keep up with on the same machine.
4. ``volseg segment`` with each method: ``agglo`` 3-D (fragments linked across sections) and 2-D, and
   ``mws`` 3-D (the mutex watershed of each block, joined across faces) on the affinities; the 2-D
   seeded watershed (the default) and 3-D connected components on the boundary map; and the default
   watershed on the model's probabilities.
5. ``volseg evaluate --instance-mode 3d`` of each against the 3-D truth: adapted Rand error, VOI split and
   merge, CREMI score, V_rand.

Results: ``benchmarks/results/segment3d.json`` and the ``## segment3d`` section of ``docs/benchmarks.md``.
``--quick``: 8 x 256 x 256 and 20 training steps, to check the script end to end (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import machine, run_measured, write_doc_section  # noqa: E402

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEADING = "segment3d"
SEED = 0
NOISE = 0.1
QUICK = {"shape": (8, 256, 256), "train_steps": 20}


# ----------------------------------------------------------------------- the affinities (child)
def affinity_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """The truth, its noisy affinities and their boundary map, written section by section."""
    import scipy.ndimage as ndi

    from volseg.core.affinities import (
        affinities,
        boundaries_from_affinities,
        default_offsets,
        synth_instances,
    )
    from volseg.storage.volumes import create_volume, open_volume

    work = Path(spec["work"])
    cells, membranes = (
        open_volume(work / "synth" / "cells.zarr"),
        open_volume(work / "synth" / "membranes.zarr"),
    )
    shape, offsets = cells.shape, default_offsets()
    chunks = (1, min(512, shape[1]), min(512, shape[2]))
    common = {"voxel_size": cells.voxel_size}
    truth = create_volume(work / "truth.zarr", shape, np.uint32, chunks, kind="label", **common)
    affs = create_volume(
        work / "affs.zarr", shape, np.uint8, chunks, channels=len(offsets), kind="affinity",
        extra={"offsets": [list(o) for o in offsets], "benchmark": spec}, **common,
    )  # fmt: skip
    prob = create_volume(
        work / "prob.zarr", shape, np.uint8, chunks, kind="probability",
        extra={"values": {"dtype": "uint8", "scale": 1 / 255, "offset": 0.0},
               "convention": {"scale": 1 / 255, "offset": 0.0, "foreground": [0],
                              "foreground_kind": "boundary"}},
        **common,
    )  # fmt: skip
    before = None
    for z in range(shape[0]):
        ids = synth_instances(np.asarray(cells.array[z : z + 1]), np.asarray(membranes.array[z : z + 1]))
        stack = ids if before is None else np.concatenate([before, ids])
        target, _ = affinities(stack, offsets, dtype=np.float32)
        target = target[:, -1:]  # this section's pairs (with the one before it, where there is one)
        rng = np.random.default_rng([SEED, z])
        noise = ndi.gaussian_filter(rng.normal(size=target.shape).astype(np.float32), (0, 0, 1, 1))
        noise /= max(float(noise.std()), 1e-6)
        values = np.clip(0.1 + 0.8 * target + NOISE * noise, 0, 1)
        stored = np.rint(values * 255).astype(np.uint8)
        boundary = boundaries_from_affinities(stored.astype(np.float32) / 255, offsets)
        for iy in range(truth.block_grid[1]):
            for ix in range(truth.block_grid[2]):
                b = (z, iy, ix)
                r = truth.block_region(b)
                truth.write_block(b, ids[(slice(None), r[1], r[2])], fsync=False)
                affs.write_block(b, stored[(slice(None), slice(None), r[1], r[2])], fsync=False)
                prob.write_block(
                    b, np.rint(boundary[(slice(None), r[1], r[2])] * 255).astype(np.uint8), fsync=False
                )
        before = ids
    for vol in (truth, affs, prob):
        vol.mark_complete()
    return {"offsets": [list(o) for o in offsets], "noise": NOISE}


# ----------------------------------------------------------------------------------- running
def volseg(*args: Any) -> list[str]:
    return [sys.executable, "-m", "volseg", *map(str, args)]


def shown(argv: list[str], work: Path) -> str:
    argv = (
        ["volseg", *argv[3:]] if argv[1:3] == ["-m", "volseg"] else ["python benchmarks/segment3d.py", "..."]
    )
    return " ".join(a.replace(str(work), "$WORK") for a in argv)


def stage(name: str, argv: list[str], voxels: float, work: Path) -> tuple[dict[str, Any], str]:
    print(f"  {name}: {shown(argv, work)}", flush=True)
    usage, printed = run_measured(argv)
    rec = {
        "command": shown(argv, work),
        "seconds": round(usage["seconds"], 3),
        "cpu_seconds": round(usage["cpu_seconds"], 2),
        "peak_rss_mb": round(usage["peak_rss_mb"], 1),
        "mvox_per_s": round(voxels / usage["seconds"] / 1e6, 4),
        "cpu_seconds_per_mvox": round(usage["cpu_seconds"] / (voxels / 1e6), 3),
    }
    print(
        f"    {rec['seconds']:.1f} s, {rec['mvox_per_s']:.3f} Mvox/s, {rec['peak_rss_mb']:.0f} MiB",
        flush=True,
    )
    return rec, printed


SCORES = ("adapted_rand_error", "voi_split", "voi_merge", "cremi_score", "v_rand", "v_info")


def scored(cells: Path, truth: Path, work: Path, voxels: float) -> dict[str, Any]:
    report = cells.with_suffix(".json")
    rec, _ = stage(
        "evaluate", volseg("evaluate", cells, truth, "--instance-mode", "3d", "--json", report), voxels, work
    )
    overall = json.loads(report.read_text())["overall"]
    return {"evaluate_seconds": rec["seconds"], **{k: overall.get(k) for k in SCORES}}


METHODS = (
    # name, input, options, what it is
    (
        "agglo 3d",
        "affs.zarr",
        ("--method", "agglo", "--mode", "3d"),
        "affinities: fragments linked across sections",
    ),
    ("agglo 2d", "affs.zarr", ("--method", "agglo", "--mode", "2d"), "affinities: each section on its own"),
    ("mws 3d", "affs.zarr", ("--method", "mws", "--mode", "3d"), "affinities: mutex watershed per block"),
    ("watershed 2d (default)", "prob.zarr", (), "boundary map of the affinities"),
    ("cc 3d", "prob.zarr", ("--mode", "3d"), "boundary map of the affinities"),
    ("watershed 2d on the model", "prob-model.zarr", (), "the model's membrane probabilities"),
)


def train_model(work: Path, steps: int, quick: bool) -> tuple[Path, dict[str, Any]]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("night_benchmark", SCRIPT.parent / "night.py")
    night = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = night
    spec.loader.exec_module(night)  # type: ignore[union-attr]
    return night.train_model(work, steps, quick)


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    shape = tuple(args.shape)
    voxels = float(np.prod(shape))
    r: dict[str, Any] = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "quick": args.quick}
    r["shape"], r["voxels"] = list(shape), voxels
    if args.model:
        model, r["model"] = args.model, {"source": str(args.model)}
    else:
        model, r["model"] = train_model(work, args.train_steps, args.quick)
    stages: dict[str, Any] = {}
    stages["synth"], _ = stage(
        "synth",
        volseg("synth", work / "synth", "--shape", ",".join(map(str, shape)), "--seed", SEED,
               "--no-progress"),
        voxels, work,
    )  # fmt: skip
    spec = {"work": str(work), "shape": list(shape)}
    stages["affinities"], printed = stage(
        "affinities", [sys.executable, str(SCRIPT), "--affinity-worker", json.dumps(spec)], voxels, work
    )
    r["affinities"] = json.loads(printed.strip().splitlines()[-1])
    stages["predict"], _ = stage(
        "predict",
        volseg("predict", model, work / "synth" / "image.zarr", work / "prob-model.zarr", "--no-progress",
               "--json"),
        voxels, work,
    )  # fmt: skip
    r["stages"] = stages
    methods = {}
    for name, source, options, what in METHODS:
        out = work / f"cells-{name.split()[0]}-{len(methods)}.zarr"
        rec, _ = stage(name, volseg("segment", work / source, out, *options, "--json"), voxels, work)
        rec.update(input=what, **scored(out, work / "truth.zarr", work, voxels))
        rec["vs_predict"] = round(rec["mvox_per_s"] / stages["predict"]["mvox_per_s"], 3)
        methods[name] = rec
    r["methods"] = methods
    return r


def doc_section(r: dict[str, Any]) -> str:
    m = r["machine"]
    shape = " x ".join(map(str, r["shape"]))
    p = r["stages"]["predict"]
    lines = [
        f"## {HEADING}",
        "",
        f"`python benchmarks/segment3d.py` ({r['date']}"
        f"{', --quick: a check, not figures' if r['quick'] else ''}): a synthetic {shape} stack "
        f"({r['voxels'] / 1e6:.1f} Mvox) with its exact 3-D truth. Machine: {m['cpu']}, "
        f"{m['cores']} cores, CPU class **{m['cpu_class']}**, load average at the start "
        f"{m['load_average_at_start']}.",
        "",
        "The affinities are those of the truth with noise (`0.1 + 0.8 * target + 0.1 * smoothed noise`, "
        "9 default offsets, uint8), not a model's; the boundary methods read the boundary map of the same "
        "affinities. So the scores compare the methods on equal information, and the throughput is that of "
        "the methods. Scores are 3-D (`evaluate --instance-mode 3d`): the 2-D methods, which do not link "
        "sections, are scored as 3-D objects too.",
        "",
        f"Predict (the default model, trained {r['model'].get('train', {}).get('steps', '?')} steps here, "
        f"defaults) on the same image: **{p['mvox_per_s']:.3f} Mvox/s** "
        f"({p['cpu_seconds_per_mvox']:.2f} CPU s per Mvox, "
        f"{p['peak_rss_mb']:.0f} MiB peak RSS).",
        "",
        "| method | input | Mvox/s | vs predict | CPU s per Mvox | peak RSS MiB | adapted Rand error "
        "| VOI split | VOI merge | CREMI | V_rand |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, s in r["methods"].items():
        lines.append(
            f"| {name} | {s['input']} | {s['mvox_per_s']:.3f} | {s['vs_predict']:.2f} | "
            f"{s['cpu_seconds_per_mvox']:.2f} | {s['peak_rss_mb']:.0f} | {s['adapted_rand_error']:.4f} | "
            f"{s['voi_split']:.3f} | {s['voi_merge']:.3f} | {s['cremi_score']:.4f} | {s['v_rand']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=(32, 1024, 1024))
    ap.add_argument("--model", type=Path, default=None, help="a boundary model file (else one is trained)")
    ap.add_argument("--train-steps", type=int, default=600)
    ap.add_argument("--quick", action="store_true", help=f"{QUICK['shape']}, {QUICK['train_steps']} steps")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch folder (a temporary one inside it)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--no-doc", action="store_true", help="do not write docs/benchmarks.md")
    ap.add_argument("--json", type=Path, default=None, help="results file (default benchmarks/results/...)")
    ap.add_argument("--affinity-worker", default=None, help=argparse.SUPPRESS)
    return ap


def main() -> None:
    args = parser().parse_args()
    if args.affinity_worker:
        print(json.dumps(affinity_worker(json.loads(args.affinity_worker))))
        return
    if args.quick:
        args.shape, args.train_steps = QUICK["shape"], QUICK["train_steps"]
    if args.model is not None and not args.model.is_file():
        raise SystemExit(f"--model {args.model}: no such file; give a model written by 'volseg train'")
    work = Path(tempfile.mkdtemp(prefix="volseg-segment3d-", dir=args.tmp))
    try:
        r = run(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    target = args.json or RESULTS / ("segment3d-quick.json" if args.quick else "segment3d.json")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(r, indent=2) + "\n")
    print(doc_section(r))
    if not args.no_doc and not args.quick:
        write_doc_section(doc_section(r), HEADING)


if __name__ == "__main__":
    main()
