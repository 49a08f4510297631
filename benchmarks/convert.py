"""volseg convert against the naive way, on a generated multi-page TIFF of at least 1 GB.

    python benchmarks/convert.py [--shape 64,4096,4096] [--chunks 1,1024,1024] [--codec blosc-zstd]
                                 [--repeat 2] [--tmp DIR] [--keep] [--no-doc]

1. Writes a (Z, Y, X) uint8 stack page by page with tifffile (one contiguous series, never the
   whole stack in memory): smooth EM-like texture plus noise, so that it compresses about as
   badly as real EM does.
2. Runs, each in its own subprocess, alternating, ``--repeat`` times:
   (a) ``python -m volseg convert SRC OUT --no-progress``: streamed band by band, every block
       fsynced and recorded as done;
   (b) the naive way: ``tifffile.imread`` of the whole stack, then one ``zarr`` write of the whole
       array with the same chunks and codec (no fsync, no completion record).
   Time is the child's wall time, interpreter start and imports included; CPU time and peak
   RSS are the child's own (``os.wait4``, measured from a small launcher process). Both read
   the stack from the page cache (it was just written), so the comparison is of the conversion,
   not of the source disk.
3. Checks that both outputs hold the same values (every 8th section), writes
   ``benchmarks/results/convert.json`` and the ``## convert`` section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _doc import machine, run_measured, write_doc_section  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "convert.json"

NAIVE = """
import json, sys
import tifffile, zarr
from volseg.storage.volumes import parse_codec
src, out, chunks, codec = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
data = tifffile.imread(src)
arr = zarr.create_array(out, shape=data.shape, dtype=data.dtype, chunks=chunks,
                        compressors=parse_codec(codec), fill_value=0, dimension_names=("z", "y", "x"))
arr[...] = data
"""


def make_stack(path: Path, shape: tuple[int, int, int], seed: int = 0) -> None:
    """EM-like sections: membranes-ish sine texture drifting with z, plus shot noise."""
    z, y, x = shape
    rng = np.random.default_rng(seed)
    yy = np.linspace(0, 24 * np.pi, y, dtype=np.float32)[:, None]
    xx = np.linspace(0, 24 * np.pi, x, dtype=np.float32)[None, :]
    noise = rng.integers(0, 48, (y, x), dtype=np.uint8)
    with tifffile.TiffWriter(path, bigtiff=z * y * x > 2**32 - 2**25) as tw:
        for k in range(z):
            base = np.sin(yy + 0.1 * k) * np.cos(xx - 0.07 * k)  # (Y, X) float32
            section = (base * 80 + 128).astype(np.uint8)
            section += np.roll(noise, 97 * k, axis=1)  # new noise per section, cheaply
            tw.write(section, contiguous=True, photometric="minisblack")


def run_child(argv: list[str]) -> dict:
    """Run one process; its wall time, CPU time and its own peak RSS."""
    return run_measured(argv)[0]


def same_values(a_path: Path, b_path: Path, step: int = 8) -> bool:
    import zarr

    a = zarr.open_array(a_path / "0" if (a_path / "0").is_dir() else a_path, mode="r")
    b = zarr.open_array(b_path / "0" if (b_path / "0").is_dir() else b_path, mode="r")
    return a.shape == b.shape and all(np.array_equal(a[z], b[z]) for z in range(0, a.shape[0], step))


def markdown(res: dict) -> str:
    m, (z, y, x) = res["machine"], res["shape"]
    load = m["load_average_at_start"][0]
    busy = f" It was shared: load average {load} when the run started." if load > 0.5 * m["cores"] else ""
    lines = [
        "## convert",
        "",
        f"`python benchmarks/convert.py` ({res['date']}): a {z} x {y} x {x} uint8 multi-page TIFF "
        f"({res['stack_bytes'] / 1e9:.2f} GB, one contiguous series, in the page cache) to OME-Zarr, chunks "
        f"{' x '.join(map(str, res['chunks']))}, codec `{res['codec']}`. Each method ran {res['repeat']} "
        "times, each in a process of its own, the two alternating; the table gives its fastest and its "
        "median time, least CPU time (user + system) and largest peak RSS. "
        f"Machine: {m['cores']} cores ({m['cpu']}), Python {m['python']}.{busy}",
        "",
        "| method | seconds | MB/s | median MB/s | CPU seconds | peak RSS (MiB) | peak RSS / stack |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, label in (
        ("volseg", "`volseg convert` (streamed, fsync per block, completion record)"),
        ("naive", "naive: `tifffile.imread`, then one zarr write of the whole array"),
    ):
        r = res["best"][name]
        share = 100 * r["peak_rss_mb"] * 2**20 / res["stack_bytes"]
        median = statistics.median(x["mb_per_s"] for x in res["runs"][name])
        lines.append(
            f"| {label} | {r['seconds']:.1f} | {r['mb_per_s']:.0f} | {median:.0f} | {r['cpu_seconds']:.1f} "
            f"| {r['peak_rss_mb']:.0f} | {share:.1f} % |"
        )
    spread = "; ".join(
        f"{name} {min(r['seconds'] for r in runs):.1f} to {max(r['seconds'] for r in runs):.1f} s"
        for name, runs in res["runs"].items()
    )
    lines += [
        "",
        f"Run-to-run spread of the wall time: {spread}. "
        f"Both outputs hold the same values: {'yes' if res['outputs_equal'] else 'NO'}. Times include "
        f"interpreter start and imports; MB/s counts 10^6 bytes. Of volseg's peak RSS, "
        f"{res['import_rss_mb']:.0f} MiB is the interpreter with its imports; the rest is its read buffers "
        f"(at most one band, {res['band_mb']:.0f} MiB here; from this uncompressed TIFF it reads a few "
        "rows of chunks at a time) and the chunks being compressed. "
        "Raw runs: `benchmarks/results/convert.json`.",
    ]
    if t := res.get("targets"):
        met = lambda ok: "met" if ok else "not met"  # noqa: E731
        lines += [
            "",
            f"Targets: throughput at least the naive way's: fastest runs {met(t['throughput_ge_naive'])}, "
            f"medians {met(t.get('median_throughput_ge_naive', False))}; peak RSS under 10 % of the "
            f"stack: {met(t['peak_rss_lt_10pct_of_stack'])}.",
        ]
    return "\n".join(lines) + "\n"


def import_rss_mb() -> float:
    """Peak RSS of a process that only imports what ``volseg convert`` imports."""
    code = "import volseg.app.cli, volseg.stages.convert, rich.progress"
    return run_child([sys.executable, "-c", code])["peak_rss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="64,4096,4096", help="stack shape Z,Y,X (uint8; default 1.07 GB)")
    ap.add_argument("--chunks", default="1,1024,1024")
    ap.add_argument("--codec", default="blosc-zstd")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tmp", type=Path, default=None, help="scratch folder (default: the system temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    ap.add_argument("--no-doc", action="store_true", help="do not touch docs/benchmarks.md")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    chunks = [int(v) for v in args.chunks.split(",")]
    scratch = Path(tempfile.mkdtemp(prefix="volseg-bench-convert-", dir=args.tmp))
    info = machine()
    try:
        src = scratch / "stack.tif"
        t = time.perf_counter()
        make_stack(src, shape)  # type: ignore[arg-type]
        print(
            f"wrote {src} ({src.stat().st_size / 1e9:.2f} GB) in {time.perf_counter() - t:.1f} s", flush=True
        )
        nbytes = int(np.prod(shape))
        runs: dict[str, list[dict]] = {"volseg": [], "naive": []}
        argv = {
            "volseg": lambda out: [
                sys.executable,
                "-m",
                "volseg",
                "convert",
                str(src),
                str(out),
                "--chunks",
                args.chunks,
                "--codec",
                args.codec,
                "--no-progress",
            ],
            "naive": lambda out: [
                sys.executable,
                "-c",
                NAIVE,
                str(src),
                str(out),
                json.dumps(chunks),
                args.codec,
            ],
        }
        for i in range(args.repeat):
            for name in ("naive", "volseg") if i % 2 else ("volseg", "naive"):
                out = scratch / f"{name}.zarr"
                shutil.rmtree(out, ignore_errors=True)
                r = run_child(argv[name](out))
                r["mb_per_s"] = nbytes / 1e6 / r["seconds"]
                runs[name].append(r)
                print(
                    f"{name:7s} run {i + 1}: {r['seconds']:.2f} s, {r['mb_per_s']:.0f} MB/s, "
                    f"peak RSS {r['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
        equal = same_values(scratch / "volseg.zarr", scratch / "naive.zarr")
        res = {
            "date": time.strftime("%Y-%m-%d"),
            "shape": list(shape),
            "dtype": "uint8",
            "stack_bytes": nbytes,
            "chunks": chunks,
            "codec": args.codec,
            "repeat": args.repeat,
            "band_mb": chunks[0] * shape[1] * shape[2] / 2**20,
            "import_rss_mb": import_rss_mb(),
            "runs": runs,
            # fastest run, and the largest peak RSS of any run
            "best": {
                k: {
                    "seconds": min(r["seconds"] for r in v),
                    "mb_per_s": max(r["mb_per_s"] for r in v),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in v),
                    "cpu_seconds": min(r["cpu_seconds"] for r in v),
                }
                for k, v in runs.items()
            },
            "outputs_equal": equal,
            "machine": info,
        }
        med = {k: statistics.median(r["mb_per_s"] for r in v) for k, v in runs.items()}
        res["targets"] = {
            "throughput_ge_naive": res["best"]["volseg"]["mb_per_s"] >= res["best"]["naive"]["mb_per_s"],
            "median_throughput_ge_naive": med["volseg"] >= med["naive"],
            "peak_rss_lt_10pct_of_stack": res["best"]["volseg"]["peak_rss_mb"] * 2**20 < 0.1 * nbytes,
        }
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text(json.dumps(res, indent=2) + "\n")
        if not args.no_doc:
            write_doc_section(markdown(res), "convert")
        print(json.dumps({"best": res["best"], "targets": res["targets"], "outputs_equal": equal}, indent=2))
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
