"""The inputs and outputs of a training run, checked before anything is written.

:func:`prepare_data` opens the image and label volumes, checks them against the options, splits the
sections (``--val-slices`` in the grammar of ``--sections``, :func:`volseg.core.sections.parse_sections`)
and measures the intensities; :func:`check_outputs` makes sure the model and its sibling files can be
written where ``-o`` says.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import zarr

from volseg.core.tiling import check_size
from volseg.errors import InputError, OptionError, OutputError
from volseg.nn.patches import IntensityStats, LabelSummary, intensity_stats, scan_labels, split_sections
from volseg.stages.train.config import TrainConfig, output_paths
from volseg.storage.conventions import require_complete, require_kind
from volseg.storage.paths import local_path, location
from volseg.storage.volumes import open_volume

__all__ = ["TrainData", "check_outputs", "model_path", "prepare_data"]


@dataclass
class TrainData:
    """Opened, validated inputs of a run."""

    image: zarr.Array  # (Z, Y, X)
    labels: zarr.Array
    train_sections: tuple[int, ...]
    val_sections: tuple[int, ...]
    stats: IntensityStats
    summary: LabelSummary
    #: Affinity targets from the label volume's ids (a cell has one id through the stack), not from the
    #: connected regions of each section: the labels hold more than one value outside the positive class.
    instance_ids: bool = False


def prepare_data(config: TrainConfig, stats: IntensityStats | None = None) -> TrainData:
    """Open and check the volumes, split the sections, measure the intensities.

    Every problem is an :class:`~volseg.errors.VolsegError` of one line: a missing volume,
    shapes that differ, a patch size too large or not valid for the depth, a split that leaves
    no training section, an empty label volume, values outside ``label_values``.
    """
    image, labels = _open_inputs(config)
    nz, ny, nx = image.shape
    _check_patch_size(config, ny, nx)
    train_sections, val_sections = split_sections(
        nz, config.val_slices, None if config.val_slices else config.val_fraction
    )
    affinity = config.target == "affinities"
    summary = scan_labels(
        labels, config.foreground, None, config.label_values, name=str(config.labels),
        require_positive=not affinity,
    )  # fmt: skip
    ids = affinity and len(set(summary.values) - set(config.foreground)) > 1
    if affinity and not ids and not any(summary.positive_per_section[z] for z in train_sections):
        raise InputError(
            f"{config.labels}: holds one cell value and no --foreground value {list(config.foreground)} in "
            "the training sections: no cell boundaries to learn affinities from; check --foreground"
        )
    if not affinity and not any(summary.positive_per_section[z] for z in train_sections):
        raise InputError(
            f"{config.labels}: no training section holds a --foreground value {list(config.foreground)}; "
            "check --foreground and --val-slices"
        )
    if stats is None:
        stats = intensity_stats(image, train_sections, seed=config.seed)
    return TrainData(image, labels, train_sections, val_sections, stats, summary, ids)


def _open_inputs(config: TrainConfig) -> tuple[zarr.Array, zarr.Array]:
    if not config.image or not config.labels:
        raise OptionError("train: give the IMAGE and LABELS volumes (arguments, or image/labels in --config)")
    image_vol, labels_vol = open_volume(config.image), open_volume(config.labels)
    require_kind(image_vol, ("image",), "train's IMAGE", "pass the image volume", unknown_ok=True)
    require_kind(
        labels_vol,
        ("label", "mask", "image"),
        "train's LABELS",
        "pass annotations (e.g. 'volseg convert labels.tif labels.zarr --kind label')",
        unknown_ok=True,
    )
    for role, vol in (("IMAGE", image_vol), ("LABELS", labels_vol)):
        require_complete(vol, role)
    image, labels = image_vol.array, labels_vol.array
    if tuple(image.shape) != tuple(labels.shape):
        raise InputError(
            f"{config.labels}: label shape {tuple(labels.shape)} differs from image shape "
            f"{tuple(image.shape)} "
            f"({config.image}); labels must cover the image section for section"
        )
    return image, labels


def _check_patch_size(config: TrainConfig, ny: int, nx: int) -> None:
    divisor = 2**config.model.depth
    if config.patch_size > min(ny, nx):
        largest = (min(ny, nx) // divisor) * divisor
        fix = (
            f"use --patch-size {largest} or less"
            if largest
            else f"use a smaller --depth (sections are {ny} x {nx})"
        )
        raise OptionError(
            f"--patch-size {config.patch_size} is larger than the sections ({ny} x {nx}); {fix}"
        )
    check_size(config.patch_size, divisor, "--patch-size")


def model_path(output: str | os.PathLike[str]) -> Path:
    """``-o``: a local file path with a name (not ``.``, ``..`` or a path ending in ``/``)."""
    path = local_path(output, "-o")
    if path.name in ("", ".", "..") or os.fspath(output).endswith(("/", os.sep)):
        raise OutputError(f"-o {os.fspath(output)!r}: give a model file path such as model.pt")
    return path


def check_outputs(config: TrainConfig) -> dict[str, Path]:
    """The run's output paths (:func:`~volseg.stages.train.config.output_paths`), once they are writable.

    Refused: no ``-o``, a folder as the model, existing outputs without ``--resume`` or
    ``--overwrite``, a folder that cannot be written.
    """
    if not config.output:
        raise OptionError("train: give the output model path with -o MODEL.pt")
    paths = output_paths(model_path(config.output))
    for name in ("image", "labels"):
        if getattr(config, name):  # volumes: local folders or URLs (s3://...)
            location(getattr(config, name), name.upper())
    model = paths["model"]
    if model.is_dir():
        raise OutputError(f"{model}: is a folder; give a model file path such as {model / 'model.pt'}")
    if not config.resume and not config.overwrite:
        existing = [p for p in (paths["model"], paths["last"]) if p.exists()]
        if existing:
            raise OutputError(
                f"{existing[0]}: already exists; pass --overwrite to replace it or --resume to continue "
                "that run"
            )
    try:
        model.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=model.parent):
            pass
    except OSError as exc:
        raise OutputError(
            f"{model}: cannot write to {model.parent} ({exc.strerror or exc}); choose a writable location"
        ) from None
    return paths
