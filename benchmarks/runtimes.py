"""Forward speed of the default U-Net in torch eager, ONNX Runtime and OpenVINO, side by side in one run.

Issue 11 asked whether another runtime is >= 1.3x faster than torch on a class of CPU at equal output. For
each tile (512, 1024, 2048) and each process layout (one process of all threads, or one process per core of
one thread each, run at once) every runtime is measured in a fresh process, in rounds that alternate them,
so that a drift of the machine's load falls on all of them alike. Each process builds the same model (seed 0,
fp32), warms up with one call, then times calls for ``--seconds`` (at least two). A separate step compares the
outputs of the three runtimes on one input per tile (max absolute difference of the logits against torch).

Writes ``benchmarks/results/runtimes.json`` and the table in ``docs/benchmarks.md``. Needs the optional
runtimes (``pip install -e ".[runtimes]"``); a runtime that is not installed is left out and said so.

    python benchmarks/runtimes.py --rounds 2 --seconds 3
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _doc import machine, write_doc_section  # noqa: E402

RUNTIMES = ("torch", "onnxruntime", "openvino")


def _model():
    import torch

    from volseg.nn.unet import UNet, UNetConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return UNet(UNetConfig()).eval()


def _input(tile: int) -> np.ndarray:
    return np.random.default_rng(0).random((1, 1, tile, tile), dtype=np.float32)


def export(tile: int, folder: Path) -> Path:
    """The default U-Net as ONNX at a fixed ``tile`` (static shapes suit OpenVINO and ONNX Runtime)."""
    import torch

    path = folder / f"unet-{tile}.onnx"
    if not path.exists():
        x = torch.from_numpy(_input(tile))
        torch.onnx.export(_model(), (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    return path


def _runner(runtime: str, onnx: Path, threads: int):
    """A function running one forward on a numpy input, for ``runtime`` with ``threads`` threads."""
    if runtime == "torch":
        import torch

        torch.set_num_threads(threads)
        model = _model().to(memory_format=torch.channels_last)

        def run(x: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                t = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
                return model(t).numpy()

        return run
    if runtime == "onnxruntime":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {"x": x})[0]
    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    config["PERFORMANCE_HINT"] = "LATENCY"
    compiled = ov.Core().compile_model(str(onnx), "CPU", config)
    return lambda x: compiled([x])[0]


def worker(runtime: str, tile: int, threads: int, seconds: float, onnx: Path) -> dict:
    run, x = _runner(runtime, onnx, threads), _input(tile)
    run(x)  # warm-up: kernels are chosen on the first call
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        run(x)
        n += 1
    return {"calls": n, "seconds": time.perf_counter() - start}


def measure(runtime: str, tile: int, layout: str, cores: int, seconds: float, onnx: Path) -> float:
    """Output Mvox/s of one layout: ``1x{cores}`` (one process) or ``{cores}x1`` (one per core, at once)."""
    procs, threads = (1, cores) if layout.startswith("1x") else (cores, 1)
    argv = [sys.executable, __file__, "--worker", runtime, "--tile", str(tile), "--threads", str(threads)]
    argv += ["--seconds", str(seconds), "--onnx", str(onnx)]
    running = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True) for _ in range(procs)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in running]
    return sum(r["calls"] * tile * tile / r["seconds"] for r in results) / 1e6


def agreement(tile: int, onnx: Path, present: list[str]) -> dict[str, float]:
    """Max absolute difference of each runtime's logits from torch's on one input."""
    x = _input(tile)
    ref = _runner("torch", onnx, 2)(x)
    return {rt: float(np.abs(_runner(rt, onnx, 2)(x) - ref).max()) for rt in present if rt != "torch"}


def run(args: argparse.Namespace) -> dict:
    from volseg.core.resources import available_cores

    present = [rt for rt in RUNTIMES if rt == "torch" or importlib.util.find_spec(rt) is not None]
    cores = available_cores()
    layouts = [f"1x{cores}"] + ([f"{cores}x1"] if cores > 1 else [])
    speeds: dict[str, list[float]] = {}
    diffs: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        onnx = {t: export(t, Path(tmp)) for t in args.tiles}
        for t in args.tiles:
            diffs[str(t)] = agreement(t, onnx[t], present)
        for _ in range(args.rounds):
            for t in args.tiles:
                for layout in layouts:
                    for rt in present:  # alternating: every runtime once per round, in the same order
                        key = f"{rt} {t} {layout}"
                        speeds.setdefault(key, []).append(
                            measure(rt, t, layout, cores, args.seconds, onnx[t])
                        )
                        print(f"{key}: {speeds[key][-1]:.3f} Mvox/s", file=sys.stderr, flush=True)
    return {
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
        "runtimes": present,
        "missing": [rt for rt in RUNTIMES if rt not in present],
        "tiles": args.tiles,
        "layouts": layouts,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "mvox_per_s": speeds,
        "max_abs_diff_vs_torch": diffs,
    }


def table(res: dict) -> str:
    lines = [
        "| tile | layout | " + " | ".join(f"{rt} Mvox/s" for rt in res["runtimes"]) + " | best / torch |",
        "| --- | --- | " + " | ".join("---" for _ in res["runtimes"]) + " | --- |",
    ]
    for t in res["tiles"]:
        for layout in res["layouts"]:
            best = {rt: max(res["mvox_per_s"][f"{rt} {t} {layout}"]) for rt in res["runtimes"]}
            cells = [
                f"{min(res['mvox_per_s'][f'{rt} {t} {layout}']):.2f}-{best[rt]:.2f}" for rt in res["runtimes"]
            ]
            ratio = max(best.values()) / best["torch"]
            lines.append(f"| {t} | {layout} | " + " | ".join(cells) + f" | {ratio:.2f} |")
    m = res["machine"]
    diffs = "; ".join(
        f"{t}: " + ", ".join(f"{k} {v:.1e}" for k, v in d.items())
        for t, d in res["max_abs_diff_vs_torch"].items()
    )
    lines += [
        "",
        f"`python benchmarks/runtimes.py --rounds {res['rounds']} --seconds {res['seconds']:g}` "
        f"({res['date']}): "
        "the default U-Net (base 16, depth 4, fp32, random weights, seed 0), one 1-channel tile per call, "
        f"ranges over {res['rounds']} alternating rounds. Layout `1xN`: one process of N threads; `Nx1`: N "
        f"processes of one thread at once (their output summed). Max |logit difference| from torch: {diffs}. "
        f"Machine: {m['cpu']}, class {m.get('cpu_class')}, {m['cores']} cores, torch {m.get('torch', '?')}."
        + (f" Not installed: {', '.join(res['missing'])}." if res["missing"] else ""),
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiles", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--worker")
    p.add_argument("--tile", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--onnx", type=Path)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.tile, args.threads, args.seconds, args.onnx)))
        return
    res = run(args)
    out = HERE / "results" / "runtimes.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    write_doc_section("## runtimes\n\n" + table(res) + "\n", "runtimes")
    print(table(res))


if __name__ == "__main__":
    main()
