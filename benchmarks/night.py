"""A night run at scale: the whole chain through the CLI, as a user runs it, on a stack of >= 1 Gvox.

    python benchmarks/night.py [--depth 64] [--side 4096] [--tiff folder|pages] [--train-steps 600]
                               [--model MODEL.pt] [--quick] [--tmp DIR] [--keep] [--no-doc] [--json FILE]
    python benchmarks/night.py --redoc benchmarks/results/night.json     # only rewrite the docs section

Every stage is a process of its own, started the way a user starts it (``python -m volseg ...``, except
synth, which is this script in a child process), through the small launcher of ``benchmarks/_doc.py``:
wall seconds (interpreter start and imports included), CPU seconds and the peak RSS of the stage's process
tree (``ru_maxrss`` from ``os.wait4``: the largest of the process and the children it waited for).

0. **model**: ``volseg synth`` of a small training stack (seed 1, not the night's stack), then
   ``volseg train`` of the default U-Net (base 16, depth 4) for a fixed number of steps (``--train-steps``:
   work, not time, so the model is the same on any machine of a CPU class) on 128 x 128 patches, batch 4.
   ``--model FILE`` uses a model file instead (for example ``demo-out/model.pt`` from ``volseg demo``).
   Training is set-up: reported, not counted in the night.
1. **synth**: the synthetic stack (``volseg.core.synth.synth_block``, seed 0) written as TIFF pages as a
   microscope delivers them: a folder of one TIFF per section (``--tiff folder``, the default) or one
   multi-page TIFF (``--tiff pages``), section by section, never the whole stack in memory (one section
   of image plus the chunks in flight); beside them the exact truth (cell ids and membranes) as Zarr.
2. **convert**: ``volseg convert PAGES image.zarr --voxel-size 50,4,4``.
3. **predict**: ``volseg predict MODEL image.zarr prob.zarr`` with its defaults.
4. **segment**: ``volseg segment prob.zarr cells.zarr`` with its defaults (2-D seeded watershed).
5. **evaluate**: ``volseg evaluate`` of the probabilities against the truth membranes (pixel and ISBI
   scores) and of the cells against the truth cells (instance scores).

The same chain runs twice: on ``--depth`` sections and on depth / 4 sections (the first depth / 4 sections
of the same stack: synth generates them with the same global shape), and each stage's peak RSS is compared
(memory flat in depth: the ratio stays near 1). The depth / 4 outputs are also compared with the first
depth / 4 sections of the full outputs (the stages work section by section, so they should be equal).

Then, on the depth / 4 stack, predict and segment are each started again into a new output, killed with
SIGKILL (the whole process group) once their completion record (``OUT/.volseg/done``, read through
``volseg.storage.volumes``) holds half of the blocks, and rerun with the same command (segment: plus
``--resume``, as its message says); the resumed output is compared bit for bit, every pyramid level,
with the uninterrupted depth / 4 output of the chain (same input, same command).

The report (``benchmarks/results/night.json``, the ``## Night run`` section of ``docs/benchmarks.md``)
says which stage bounds the night and projects a 1000 x 8192 x 8192 stack: on this machine (linear in
voxels, each stage at its measured Mvox/s), on N = 10 and 100 such machines through dask (predict and
segment divide by N: they scale by blocks; convert and evaluate are one process each in volseg today; the
night with convert divided by N too is shown as the ideal), and on a GPU from ``benchmarks/results/gpu.json``
where it exists (predict only; the other stages run on the CPU).

``--quick``: 12 x 1024 x 1024 and 20 training steps, 4 to 7 minutes on the shared 2-core machine, to check
the script end to end (three blocks in the depth / 4 stack, enough to kill a run in the middle). The default
size takes hours there (about 2.5 to 4, from the rates of an 8 x 2048 x 2048 run). Disk: about 4 bytes per
voxel of the stack (TIFF pages, image, probabilities, cells and truth, both depths), 5 GB at the default.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import machine, run_measured, write_doc_section  # noqa: E402

SCRIPT = Path(__file__).resolve()
ROOT = SCRIPT.parents[1]
RESULTS = ROOT / "benchmarks" / "results"
HEADING = "Night run"

SEED, TRAIN_SEED = 0, 1
VOXEL_SIZE = (50, 4, 4)
TARGET = (1000, 8192, 8192)
#: The chain, in order; synth stands in for the microscope (it is not part of a user's night).
STAGES = ("synth", "convert", "predict", "segment", "evaluate-prob", "evaluate-cells")
USER_STAGES = STAGES[1:]
#: What a user runs on a whole stack; evaluate needs truth, which a whole stack rarely has.
NIGHT_STAGES = ("convert", "predict", "segment")
#: Stages volseg runs block by block across machines (dask scheduler or ``--part K/N``); the others are one
#: process each.
SCALE_BY_BLOCKS = ("predict", "segment")
MACHINES = (10, 100)


# --------------------------------------------------------------------------- projection (pure)
def project(
    rates: Mapping[str, float],
    voxels: float,
    machines: int = 1,
    scaling: Collection[str] | None = None,
) -> dict[str, float]:
    """Seconds per stage for ``voxels`` at each stage's measured Mvox/s (linear in voxels), on ``machines``
    machines: a stage in ``scaling`` (None: every stage) divides by ``machines``, the others run on one."""
    if machines < 1:
        raise ValueError(f"machines {machines}: at least 1")
    out = {}
    for name, rate in rates.items():
        if not rate > 0:
            raise ValueError(f"stage {name}: rate {rate} Mvox/s is not positive")
        seconds = voxels / (rate * 1e6)
        out[name] = seconds / machines if scaling is None or name in scaling else seconds
    return out


def bound(seconds: Mapping[str, float]) -> str:
    """The stage that takes the longest."""
    return max(seconds, key=lambda k: seconds[k])


def totals(seconds: Mapping[str, float]) -> dict[str, Any]:
    """The night (convert, predict, segment) and the night with every section evaluated: seconds, bound."""
    night = {k: seconds[k] for k in NIGHT_STAGES}
    return {
        "night_seconds": sum(night.values()),
        "night_bound": bound(night),
        "with_evaluate_seconds": sum(seconds.values()),
        "with_evaluate_bound": bound(seconds),
    }


def projections(rates: Mapping[str, float], gpu_predict: float | None) -> dict[str, Any]:
    """The 1000 x 8192 x 8192 projections of the report, over the stages a user runs (not synth)."""
    voxels = float(np.prod(TARGET))
    user = {k: rates[k] for k in USER_STAGES}
    one = project(user, voxels)
    r: dict[str, Any] = {
        "shape": list(TARGET),
        "voxels": voxels,
        "this_machine": {"seconds": one, **totals(one)},
        "machines": {},
    }
    for n in MACHINES:
        today = project(user, voxels, n, SCALE_BY_BLOCKS)
        ideal = project(user, voxels, n)
        r["machines"][str(n)] = {"seconds": today, **totals(today), "if_every_stage_by_blocks": totals(ideal)}
    if gpu_predict:
        gpu = {**one, "predict": voxels / (gpu_predict * 1e6)}
        r["gpu"] = {"predict_mvox_per_s": gpu_predict, "seconds": gpu, **totals(gpu)}
    else:
        r["gpu"] = "not measured"
    return r


def gpu_figure(results: Path = RESULTS) -> tuple[float | None, str]:
    """Predict's end-to-end Mvox/s on a GPU from ``gpu.json`` (``benchmarks/gpu.py``) where it was measured
    on a CUDA device, and where it comes from; ``(None, "not measured")`` otherwise."""
    path = results / "gpu.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, "not measured"
    plan = data.get("plan") or data.get("predict", {}).get("plan") or {}
    device, rate = str(plan.get("device", "")), data.get("end_to_end_mvox_per_s")
    if not isinstance(rate, (int, float)) or not rate > 0 or not device.startswith("cuda"):
        return None, "not measured"
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    return float(rate), f"{where}, {device}, {data.get('date', 'undated')}"


# --------------------------------------------------------------------------------- synth pages
def synth_pages(spec: dict[str, Any]) -> dict[str, Any]:
    """Sections ``0 .. depth-1`` of a stack of ``full_shape`` as TIFF pages, and the truth as Zarr.

    Runs in a child process (``--synth-worker``). Each section is made chunk by chunk (threads), the image
    section assembled and written as one TIFF page, the truth chunks written as they come."""
    import tifffile

    from volseg.core.resources import available_cores
    from volseg.core.synth import MEMBRANE, synth_block
    from volseg.stages.synth import CONVENTION, LABEL_CONVENTION
    from volseg.storage.volumes import create_volume

    out, depth, full = Path(spec["out"]), int(spec["depth"]), tuple(spec["full_shape"])
    chunk, layout = int(spec["chunk"]), spec["tiff"]
    _, y, x = full
    shape, chunks = (depth, y, x), (1, min(chunk, y), min(chunk, x))
    common: dict[str, Any] = {"voxel_size": VOXEL_SIZE, "extra": {"night": spec}}
    cells = create_volume(out / "truth-cells.zarr", shape, np.uint32, chunks, kind="label", **common)
    common["extra"] = {
        **common["extra"],
        "label_convention": LABEL_CONVENTION,
        "convention": CONVENTION.to_dict(),
    }
    membranes = create_volume(out / "truth-membranes.zarr", shape, np.uint8, chunks, kind="mask", **common)
    grid = [(iy, ix) for iy in range(math.ceil(y / chunks[1])) for ix in range(math.ceil(x / chunks[2]))]
    section = np.empty((y, x), np.uint8)

    def one(z: int, iy: int, ix: int) -> int:
        region = cells.block_region((z, iy, ix))
        size, origin = [r.stop - r.start for r in region], [r.start for r in region]
        image, ids, mem = synth_block(size, spec["seed"], origin, full)
        section[region[1], region[2]] = image[0]
        cells.write_block((z, iy, ix), ids, fsync=False)
        membranes.write_block((z, iy, ix), mem, fsync=False)
        return int(np.count_nonzero(mem == MEMBRANE))

    membrane = 0
    if layout == "folder":
        (out / "pages").mkdir(parents=True)
        writer = None
    else:
        writer = tifffile.TiffWriter(out / "stack.tif", bigtiff=depth * y * x > 2**32 - 2**25)
    try:
        with ThreadPoolExecutor(available_cores()) as pool:
            for z in range(depth):
                membrane += sum(pool.map(lambda ij, z=z: one(z, *ij), grid))
                if writer is None:
                    tifffile.imwrite(
                        out / "pages" / f"section_{z:05d}.tif", section, photometric="minisblack"
                    )
                else:
                    writer.write(section, contiguous=True, photometric="minisblack")
    finally:
        if writer is not None:
            writer.close()
    cells.mark_complete()
    membranes.mark_complete()
    return {"membrane_fraction": membrane / float(np.prod(shape))}


# ------------------------------------------------------------------------------------ running
def volseg(*args: Any) -> list[str]:
    return [sys.executable, "-m", "volseg", *map(str, args)]


def shown(argv: Sequence[str], work: Path) -> str:
    """The command as a user would type it, with the scratch folder as ``$WORK``."""
    argv = list(argv)
    if argv[1:3] == ["-m", "volseg"]:
        argv = ["volseg", *argv[3:]]
    elif len(argv) > 1 and argv[1] == str(SCRIPT):
        argv = ["python benchmarks/night.py", *argv[2:3], "..."]
    return " ".join(a.replace(str(work), "$WORK") for a in argv)


def shown_path(path: Path) -> str:
    """``path`` relative to the checkout where it lies inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


def parse_json(text: str) -> dict[str, Any]:
    try:
        found = json.loads(text)
    except ValueError:
        return {}
    return found if isinstance(found, dict) else {}


def stage(name: str, argv: list[str], voxels: float, work: Path) -> tuple[dict[str, Any], str]:
    print(f"  {name}: {shown(argv, work)}", flush=True)
    usage, printed = run_measured(argv)
    rec = {
        "command": shown(argv, work),
        "seconds": round(usage["seconds"], 3),
        "cpu_seconds": round(usage["cpu_seconds"], 2),
        "peak_rss_mb": round(usage["peak_rss_mb"], 1),
        "mvox_per_s": round(voxels / usage["seconds"] / 1e6, 4),
    }
    print(
        f"    {rec['seconds']:.1f} s, {rec['mvox_per_s']:.3f} Mvox/s, {rec['peak_rss_mb']:.0f} MiB",
        flush=True,
    )
    return rec, printed


def predict_argv(model: Path, image: Path, out: Path) -> list[str]:
    return volseg("predict", model, image, out, "--no-progress", "--json")


def segment_argv(prob: Path, out: Path) -> list[str]:
    return volseg("segment", prob, out, "--json")


def chain(work: Path, name: str, depth: int, full: tuple[int, int, int], tiff: str, model: Path) -> dict:
    """Synth, convert, predict, segment, evaluate on ``depth`` sections of ``full``, each measured."""
    folder = work / name
    shape = (depth, *full[1:])
    voxels = float(np.prod(shape))
    print(f"chain {name}: {' x '.join(map(str, shape))} ({voxels / 1e6:.1f} Mvox)", flush=True)
    stages: dict[str, Any] = {}
    spec = {"out": str(folder), "depth": depth, "full_shape": list(full), "chunk": 1024, "tiff": tiff}
    spec["seed"] = SEED
    stages["synth"], printed = stage(
        "synth", [sys.executable, str(SCRIPT), "--synth-worker", json.dumps(spec)], voxels, work
    )
    stages["synth"]["summary"] = parse_json(printed.strip().splitlines()[-1])
    src = folder / ("pages" if tiff == "folder" else "stack.tif")
    img, prob, cells = folder / "image.zarr", folder / "prob.zarr", folder / "cells.zarr"
    vs = ",".join(map(str, VOXEL_SIZE))
    stages["convert"], _ = stage(
        "convert", volseg("convert", src, img, "--voxel-size", vs, "--no-progress"), voxels, work
    )
    stages["predict"], printed = stage("predict", predict_argv(model, img, prob), voxels, work)
    summary = parse_json(printed)
    plan = summary.pop("plan", {})
    keep = ("tile", "halo", "backend", "streams", "parallel", "torch_threads", "precision", "block_shape")
    stages["predict"]["summary"] = {
        **{k: summary.get(k) for k in ("blocks_total", "blocks_written", "blocks_empty", "mvox_per_s")},
        "compute_seconds": summary.get("compute_seconds"),
        **{k: plan.get(k) for k in keep},
        "memory_total_mb": round(plan.get("memory_total", 0) / 2**20),
        "chosen_by": plan.get("choice", {}).get("source"),
    }
    stages["segment"], printed = stage("segment", segment_argv(prob, cells), voxels, work)
    stages["segment"]["summary"] = parse_json(printed)
    for key, pred, truth in (
        ("evaluate-prob", prob, folder / "truth-membranes.zarr"),
        ("evaluate-cells", cells, folder / "truth-cells.zarr"),
    ):
        report = folder / f"report-{key}.json"
        stages[key], _ = stage(key, volseg("evaluate", pred, truth, "--json", report), voxels, work)
        scores = json.loads(report.read_text()).get("overall", {})
        stages[key]["scores"] = {k: v for k, v in scores.items() if isinstance(v, (int, float))}
    total = sum(s["seconds"] for s in stages.values())
    for s in stages.values():
        s["share"] = round(s["seconds"] / total, 4)
    return {"shape": list(shape), "voxels": voxels, "total_seconds": round(total, 2), "stages": stages}


def train_model(work: Path, steps: int, quick: bool) -> tuple[Path, dict[str, Any]]:
    """A small synthetic training stack and the default U-Net trained on it for ``steps`` steps."""
    shape = (4, 256, 256) if quick else (8, 512, 512)
    data, model = work / "train-synth", work / "model.pt"
    print(f"model: train {steps} steps on {' x '.join(map(str, shape))} (seed {TRAIN_SEED})", flush=True)
    argv = volseg("synth", data, "--shape", ",".join(map(str, shape)), "--seed", TRAIN_SEED, "--no-progress")
    synth, _ = stage("train-synth", argv, float(np.prod(shape)), work)
    argv = volseg(
        "train", data / "image.zarr", data / "membranes.zarr", "-o", model, "--foreground", "0",
        "--val-slices", f"{shape[0] - 1}:{shape[0]}", "--steps", steps, "--patch-size", 128,
        "--batch-size", 4, "--warmup-steps", max(1, steps // 10), "--val-every", steps, "--seed", 0,
        "--no-progress",
    )  # fmt: skip
    train, printed = stage("train", argv, float(np.prod(shape)), work)
    train.pop("mvox_per_s")
    train["steps"] = steps
    train["printed"] = printed.strip().splitlines()[-2:]
    return model, {
        "source": "trained here",
        "architecture": "default U-Net (base 16, depth 4)",
        "train_stack": list(shape),
        "patch": 128,
        "batch": 4,
        "synth": synth,
        "train": train,
    }


# -------------------------------------------------------------------------------- kill -9 test
def blocks_done(path: Path) -> int:
    """Entries of the completion record of ``path`` (0 while the volume is not created yet)."""
    from volseg.storage.volumes import open_volume

    try:
        return len(open_volume(path).done_blocks())
    except Exception:  # noqa: BLE001 - not created yet, or half-created: nothing done
        return 0


def kill_and_resume(
    name: str, argv: list[str], rerun: list[str], out: Path, reference: Path, work: Path
) -> dict[str, Any]:
    """Start ``argv``, SIGKILL its process group once half of the reference's blocks are recorded done,
    run ``rerun``, and compare ``out`` bit for bit with ``reference``."""
    total = blocks_done(reference)
    rec: dict[str, Any] = {"command": shown(argv, work), "rerun": shown(rerun, work), "blocks_total": total}
    if total < 2:
        return {**rec, "skipped": f"{total} block(s): too few to kill a run in the middle"}
    target = total // 2
    print(f"  kill -9 {name} at {target} of {total} blocks: {shown(argv, work)}", flush=True)
    with open(work / f"kill-{name}.log", "w") as log:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    start, done = time.perf_counter(), 0
    while proc.poll() is None:
        done = blocks_done(out)
        if done >= target:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.2)
    status = proc.wait()
    rec.update(
        killed=status == -signal.SIGKILL,
        exit_status=status,
        killed_after_seconds=round(time.perf_counter() - start, 2),
        blocks_done_at_kill=blocks_done(out),
    )
    if not rec["killed"]:  # it ended by itself before half was done: say how
        rec["log_tail"] = (work / f"kill-{name}.log").read_text()[-2000:]
    usage, printed = run_measured(rerun)
    summary = parse_json(printed)
    rec["rerun_seconds"] = round(usage["seconds"], 2)
    rec["rerun_peak_rss_mb"] = round(usage["peak_rss_mb"], 1)
    rec["rerun_summary"] = {
        k: summary[k]
        for k in ("blocks_skipped", "blocks_written", "resumed_blocks", "blocks")
        if k in summary
    }
    rec["equal"] = same_volume(out, reference)
    print(
        f"    killed {rec['killed']} with {rec['blocks_done_at_kill']} of {total} done; rerun "
        f"{rec['rerun_seconds']:.1f} s; bitwise equal: {rec['equal']['equal']}",
        flush=True,
    )
    return rec


def same_volume(a: Path, b: Path, sections: int | None = None) -> dict[str, Any]:
    """Whether ``a`` and ``b`` hold the same values (every pyramid level, or level 0 of the first
    ``sections`` sections), section by section; and where they first differ."""
    from volseg.storage.volumes import open_volume

    va, vb = open_volume(a), open_volume(b)
    levels = ["0"] if sections is not None else va.levels
    if sections is None and va.levels != vb.levels:
        return {"equal": False, "why": f"levels {va.levels} != {vb.levels}"}
    for level in levels:
        xa, xb = va.level(int(level)), vb.level(int(level))
        n = sections if sections is not None else xa.shape[0]
        if (
            xa.dtype != xb.dtype
            or (sections is None and xa.shape != xb.shape)
            or xa.shape[1:] != xb.shape[1:]
        ):
            return {"equal": False, "why": f"level {level}: {xa.shape} {xa.dtype} != {xb.shape} {xb.dtype}"}
        for z in range(n):
            sa, sb = np.asarray(xa[z]), np.asarray(xb[z])
            if not np.array_equal(sa, sb):
                return {
                    "equal": False,
                    "why": f"level {level} section {z}: {int((sa != sb).sum())} voxels differ",
                }
    return {"equal": True, "levels": levels, "sections": sections if sections is not None else va.shape[0]}


# ------------------------------------------------------------------------------------- report
def memory_flat(full: dict[str, Any], quarter: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k in STAGES:
        a, b = full["stages"][k]["peak_rss_mb"], quarter["stages"][k]["peak_rss_mb"]
        out[k] = {"peak_rss_mb": a, "quarter_peak_rss_mb": b, "ratio": round(a / b, 3)}
    return out


def hours(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def derive(r: dict[str, Any]) -> None:
    """The figures computed from the measured runs: memory ratios, bounds, projections."""
    full = r["runs"]["full"]["stages"]
    r["memory_flat"] = memory_flat(r["runs"]["full"], r["runs"]["quarter"])
    r["bound"] = bound({k: full[k]["seconds"] for k in NIGHT_STAGES})
    r["bound_all"] = bound({k: full[k]["seconds"] for k in STAGES})
    rate, r["gpu_source"] = gpu_figure()
    r["projection"] = projections({k: full[k]["mvox_per_s"] for k in STAGES}, rate)


def doc_section(r: dict[str, Any]) -> str:
    m, full, quarter = r["machine"], r["runs"]["full"], r["runs"]["quarter"]
    zyx = lambda v: " x ".join(map(str, v))  # noqa: E731
    mem, st = r["memory_flat"], full["stages"]
    model = r["model"]
    steps = f", {model['train']['steps']} training steps" if "train" in model else ""
    lines = [
        f"## {HEADING}",
        "",
        f"`python benchmarks/night.py{' --quick' if r['quick'] else ''}` ({r['date']}): the whole chain "
        f"through the CLI, each stage a process of its own, on a synthetic stack of {zyx(full['shape'])} "
        f"({full['voxels'] / 1e9:.3f} Gvox) delivered as TIFF pages ({r['tiff']}). Model: {model['source']}, "
        f"{model['architecture']}{steps}. Machine: {m['cpu']} (class {m['cpu_class']}), {m['cores']} cores, "
        f"Python {m['python']}; load average {m['load_average_at_start'][0]} at the start, "
        f"{r['load_average_at_end'][0]} at the end (the machine is shared).",
    ]
    if r["quick"]:
        lines += [
            "",
            f"**A `--quick` run ({zyx(full['shape'])}), to check the script: not the night size.** The "
            "figures below are of that run; a run at the default size (64 x 4096 x 4096) replaces them.",
        ]
    elif full["voxels"] < 1e9:
        lines += [
            "",
            f"**A run of {full['voxels'] / 1e9:.3f} Gvox ({zyx(full['shape'])}): smaller than the night "
            "(at least 1 Gvox).** A run at the default size (64 x 4096 x 4096) replaces these figures.",
        ]
    lines += [
        "",
        "| stage | seconds | Mvox/s | CPU seconds | peak RSS MiB | share | peak RSS MiB at depth / 4 "
        "| ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for k in STAGES:
        s = st[k]
        lines.append(
            f"| {k} | {s['seconds']:.1f} | {s['mvox_per_s']:.3f} | {s['cpu_seconds']:.1f} | "
            f"{s['peak_rss_mb']:.0f} | {100 * s['share']:.1f} % | {mem[k]['quarter_peak_rss_mb']:.0f} | "
            f"{mem[k]['ratio']:.2f} |"
        )
    lines.append(f"| total | {full['total_seconds']:.1f} | | | | 100 % | | |")
    p = st["predict"]["summary"]
    prob, cells = st["evaluate-prob"]["scores"], st["evaluate-cells"]["scores"]
    nan = float("nan")
    lines += [
        "",
        "Seconds are the wall time of the stage's process (interpreter start and imports included); Mvox/s "
        "is the stack's voxels over them; peak RSS is `ru_maxrss` of the stage's process tree; the ratio "
        f"is the peak RSS on {zyx(full['shape'])} over that on {zyx(quarter['shape'])} (the first sections "
        "of the same stack): memory is flat in depth where it stays near 1. Of the stages a user runs on a "
        f"whole stack (convert, predict, segment), **{r['bound']}** bounds the night "
        f"({100 * st[r['bound']]['share']:.0f} % of the run)"
        + ("" if r["bound_all"] == r["bound"] else f"; of all six stages, {r['bound_all']}")
        + f". predict ran "
        f"tile {p['tile']}, {p['backend']}, {p['streams']} forwards at once (chosen by: {p['chosen_by']}), "
        f"{p['mvox_per_s']} Mvox/s by its own count (after start-up and model load). Scores against the "
        f"synthetic truth: probabilities pixel error {prob.get('pixel_error', nan):.4f}, V_rand "
        f"{prob.get('v_rand', nan):.4f}; cells adapted Rand error "
        f"{cells.get('adapted_rand_error', nan):.4f}.",
        "",
        "| kill -9 in the middle (depth / 4 stack) | blocks done at the kill | rerun seconds | blocks the "
        "rerun kept | resumed output bitwise equal to the uninterrupted one |",
        "| --- | --- | --- | --- | --- |",
    ]
    for k, v in r["kill"].items():
        if "skipped" in v:
            lines.append(f"| {k} | {v['skipped']} | | | |")
            continue
        kept = v["rerun_summary"].get("blocks_skipped", v["rerun_summary"].get("resumed_blocks", "?"))
        equal = "yes" if v["equal"]["equal"] else f"NO: {v['equal'].get('why')}"
        killed = "" if v["killed"] else f" (NOT killed: it exited with {v['exit_status']} first)"
        lines.append(
            f"| {k} | {v['blocks_done_at_kill']} of {v['blocks_total']}{killed} | {v['rerun_seconds']:.1f} "
            f"| {kept} | {equal} |"
        )
    prefix = ", ".join(f"{k} {'yes' if v['equal'] else 'NO'}" for k, v in r["prefix_equal"].items())
    lines += [
        "",
        "Killed with SIGKILL (the process group) once the completion record held half of the blocks (rounded "
        "down), then "
        "the same command again (segment: with `--resume`, as its message asks); the uninterrupted reference "
        "is the depth / 4 chain's own output (same input, same command), compared at every pyramid level. "
        f"The depth / 4 outputs equal the first sections of the full run's: {prefix}.",
        "",
    ]
    pr = r["projection"]
    one = pr["this_machine"]
    lines += [
        f"Projected to {zyx(pr['shape'])} ({pr['voxels'] / 1e9:.1f} Gvox), linear in voxels at each stage's "
        "Mvox/s above (synth left out: a user's stack comes from the microscope):",
        "",
        "| stage | this machine | " + " | ".join(f"{n} machines" for n in MACHINES) + " |",
        "| --- | --- | " + " | ".join("---" for _ in MACHINES) + " |",
    ]
    ns = [pr["machines"][str(n)] for n in MACHINES]
    for k in USER_STAGES:
        lines.append(
            f"| {k} | {hours(one['seconds'][k])} | " + " | ".join(hours(x["seconds"][k]) for x in ns)
        )
        lines[-1] += " |"
    both = lambda t, key: f"{hours(t[f'{key}_seconds'])} ({t[f'{key}_bound']})"  # noqa: E731
    ideal = [x["if_every_stage_by_blocks"] for x in ns]
    lines += [
        f"| **the night**: convert + predict + segment (bound) | {both(one, 'night')} | "
        + " | ".join(both(x, "night") for x in ns)
        + " |",
        f"| with every section evaluated (bound) | {both(one, 'with_evaluate')} | "
        + " | ".join(both(x, "with_evaluate") for x in ns)
        + " |",
        "| the night if convert too were split by sections | | "
        + " | ".join(both(x, "night") for x in ideal)
        + " |",
        "",
        "On N machines through dask, predict and segment divide by N: they scale by blocks (a dask cluster "
        "or `--part K/N` job arrays), assuming every machine runs at this one's rate, the storage keeps up "
        "and scheduling costs nothing; convert is one process, and evaluate one command (its sections are "
        "dask tasks, but the CLI has no scheduler option), so both stay on one machine (the last row: if "
        "convert were split too).",
        "",
    ]
    gpu = pr["gpu"]
    if isinstance(gpu, dict):
        lines.append(
            f"On one GPU machine (predict at {gpu['predict_mvox_per_s']:.1f} Mvox/s from {r['gpu_source']}; "
            f"the other stages at this CPU's rates): the night {both(gpu, 'night')}."
        )
    else:
        lines.append("On a GPU: not measured (no GPU figure in `benchmarks/results`).")
    if r["quick"]:
        lines.append(
            "At the `--quick` size the start-up of each process (interpreter, imports, model load) weighs on "
            "every rate, so these projections are not the night's."
        )
    lines += ["", f"Raw figures: `{r['json_name']}`."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------- main
def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--depth", type=int, default=64, help="sections of the stack (default 64)")
    ap.add_argument("--side", type=int, default=4096, help="section side in pixels (default 4096)")
    ap.add_argument("--tiff", choices=("folder", "pages"), default="folder",
                    help="folder: one TIFF per section; pages: one multi-page TIFF")  # fmt: skip
    ap.add_argument("--train-steps", type=int, default=600, help="training steps of the model (default 600)")
    ap.add_argument("--model", type=Path, default=None, help="use this model file instead of training one")
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_TEXT}: check the script")
    ap.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: the system temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    ap.add_argument("--json", type=Path, default=None, help="results file (default: results/night.json)")
    ap.add_argument("--redoc", type=Path, default=None, metavar="RESULTS",
                    help="only rewrite the docs section from a results file, running nothing")  # fmt: skip
    ap.add_argument("--synth-worker", default=None, help=argparse.SUPPRESS)
    return ap


QUICK = {"depth": 12, "side": 1024, "train_steps": 20}
QUICK_TEXT = f"{QUICK['depth']} x {QUICK['side']} x {QUICK['side']}, {QUICK['train_steps']} training steps"


def check(args: argparse.Namespace) -> None:
    if args.quick:
        for k, v in QUICK.items():
            setattr(args, k, v)
    if args.depth < 8:
        raise SystemExit(f"--depth {args.depth}: at least 8 (the depth / 4 run needs 2 sections or more)")
    if args.side < 256:
        raise SystemExit(f"--side {args.side}: at least 256 px")
    if args.train_steps < 1:
        raise SystemExit(f"--train-steps {args.train_steps}: at least 1")
    if args.model is not None and not args.model.is_file():
        raise SystemExit(f"--model {args.model}: no such file; give a model written by 'volseg train'")


def run(args: argparse.Namespace, work: Path, r: dict[str, Any]) -> None:
    """Everything measured, into ``r``."""
    full = (args.depth, args.side, args.side)
    if args.model is not None:
        model = args.model.resolve()
        r["model"] = {"source": f"given ({args.model})", "architecture": "as trained"}
    else:
        model, r["model"] = train_model(work, args.train_steps, args.quick)
    # depth / 4 first: it fails fast, and its outputs are the references of the kill -9 runs
    r["runs"]["quarter"] = chain(work, "quarter", args.depth // 4, full, args.tiff, model)
    q = work / "quarter"
    print("kill -9 and resume, on the depth / 4 stack", flush=True)
    prob, cells = q / "prob-killed.zarr", q / "cells-killed.zarr"
    again = predict_argv(model, q / "image.zarr", prob)
    r["kill"] = {
        "predict": kill_and_resume("predict", again, again, prob, q / "prob.zarr", work),
        "segment": kill_and_resume(
            "segment",
            segment_argv(q / "prob.zarr", cells),
            [*segment_argv(q / "prob.zarr", cells), "--resume"],
            cells,
            q / "cells.zarr",
            work,
        ),
    }
    r["runs"]["full"] = chain(work, "full", args.depth, full, args.tiff, model)
    r["prefix_equal"] = {
        name: same_volume(q / name, work / "full" / name, sections=args.depth // 4)
        for name in ("truth-cells.zarr", "image.zarr", "prob.zarr", "cells.zarr")
    }
    derive(r)


def main() -> None:
    args = parser().parse_args()
    if args.synth_worker:
        print(json.dumps(synth_pages(json.loads(args.synth_worker))))
        return
    if args.redoc:
        r = json.loads(args.redoc.read_text())
        r["json_name"] = shown_path(args.redoc)
        derive(r)
        section = doc_section(r)
        print(section)
        if not args.no_doc:
            write_doc_section(section, HEADING)
        return
    check(args)
    work = Path(tempfile.mkdtemp(prefix="volseg-night-", dir=args.tmp))
    target = args.json or RESULTS / "night.json"
    r: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "quick": args.quick,
        "shape": [args.depth, args.side, args.side],
        "tiff": {"folder": "a folder of one TIFF per section", "pages": "one multi-page TIFF"}[args.tiff],
        "json_name": shown_path(target),
        "runs": {},
    }
    started = time.perf_counter()
    try:
        run(args, work, r)
    except BaseException as exc:
        r["error"] = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        r["seconds"] = round(time.perf_counter() - started, 1)
        r["load_average_at_end"] = [round(v, 2) for v in os.getloadavg()]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(r, indent=2, default=str) + "\n")
        print(f"wrote {target}", flush=True)
        if args.keep:
            print(f"kept {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    section = doc_section(r)
    print(section)
    if not args.no_doc:
        write_doc_section(section, HEADING)


if __name__ == "__main__":
    main()
