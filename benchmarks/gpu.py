"""End-to-end prediction on a GPU: a synthetic 64 x 4096 x 4096 stack through ``volseg predict``, as JSON.

Run by ``benchmarks/gpu.sh`` after the ``gpu`` tests. The model is the default U-Net (base 16, depth 4;
random weights, seed 0: speed does not depend on the weights), the image smooth random noise written chunk by
chunk (its content does not change the speed either). Reports the end-to-end output Mvox/s of
``volseg.predict`` with its defaults for the device (precision auto, the GPU batch), the plan, and the forward
ceiling of the same model on the plan's windows, measured in the same run.

    python benchmarks/gpu.py                                   # on the GPU machine
    python benchmarks/gpu.py --shape 2,256,256 --device cpu    # the non-GPU parts, in seconds (tests do this)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _doc import machine  # noqa: E402


def write_image(path: Path, shape: tuple[int, int, int], chunk: int = 1024) -> Path:
    """Smooth uint8 noise ``(Z, Y, X)`` in chunks of one section x ``chunk``^2, written by a thread pool."""
    from scipy import ndimage as ndi

    from volseg.core.resources import available_cores
    from volseg.storage.volumes import create_volume

    vol = create_volume(path, shape, np.uint8, (1, chunk, chunk), voxel_size=(50, 4, 4))

    def one(index: tuple[int, ...]) -> None:
        region = vol.block_region(index)
        rng = np.random.default_rng(list(index))
        noise = rng.normal(128, 40, [s.stop - s.start for s in region]).astype(np.float32)
        vol.write_block(index, np.clip(ndi.gaussian_filter(noise, (0, 2, 2)), 0, 255).astype(np.uint8))

    with ThreadPoolExecutor(available_cores()) as pool:
        list(pool.map(one, vol.block_ids()))
    vol.mark_complete()
    return path


def model_file(path: Path) -> Path:
    import torch

    from volseg.nn.modelfile import save_model
    from volseg.nn.unet import UNet, UNetConfig
    from volseg.storage.conventions import Convention

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = UNet(UNetConfig())
    save_model(
        path, model, normalization={"mode": "meanstd", "mean": 128.0, "std": 40.0},
        convention=Convention(foreground=(0,), foreground_kind="boundary"),
        provenance={}, metrics={}, train_config={},
    )  # fmt: skip
    return path


def run(shape: tuple[int, int, int], device: str, folder: Path) -> dict:
    from volseg.nn.modelfile import load_model
    from volseg.nn.probe import forward_speed, runtime_summary
    from volseg.stages.predict import predict

    t0 = time.perf_counter()
    image = write_image(folder / "image.zarr", shape)
    model = model_file(folder / "model.pt")
    written = time.perf_counter() - t0
    plan = predict(model, image, folder / "prob.zarr", device=device, dry_run=True)
    result = predict(model, image, folder / "prob.zarr", device=device)
    window = plan.tile + 2 * plan.halo
    ceiling = forward_speed(
        load_model(model, device=device), window, plan.batch_size, device=device, precision=plan.precision
    )
    end_to_end = result.voxels / result.seconds / 1e6
    return {
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "runtime": runtime_summary(),
        "shape": list(shape),
        "seconds_to_write_inputs": round(written, 1),
        "plan": {k: v for k, v in plan.to_dict().items() if k not in ("identity", "settings")},
        "predict": result.to_dict(),
        "end_to_end_mvox_per_s": round(end_to_end, 2),
        "forward_ceiling": ceiling,
        # the ceiling counts window pixels; output voxels per second at that rate divide by the overhead
        "ratio_to_ceiling": round(end_to_end * plan.compute_overhead / ceiling["mvox_per_s"], 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="64,4096,4096")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", type=Path, default=HERE / "results" / "gpu.json")
    p.add_argument(
        "--work", type=Path, default=None, help="Folder for the volumes (default: a temporary one)."
    )
    args = p.parse_args()
    shape = tuple(int(v) for v in args.shape.split(","))
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        res = run(shape, args.device, Path(tmp))  # type: ignore[arg-type]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    print(json.dumps({k: res[k] for k in ("shape", "end_to_end_mvox_per_s", "ratio_to_ceiling")}))


if __name__ == "__main__":
    main()
