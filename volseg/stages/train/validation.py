"""Validation on the held-out sections, scored as ``volseg predict`` + ``volseg evaluate`` would score them.

:class:`Validator` runs whole held-out sections through :func:`volseg.nn.inference.infer_padded` (the
function predict applies to each block) and :func:`validation_metrics` scores the probabilities with
the pixel error, Dice and the ISBI 2012 V_rand / V_info. An affinity model is scored on the boundary map
of its in-plane nearest-neighbour affinities (:func:`volseg.core.affinities.boundaries_from_affinities`,
``1 - min`` over a pixel's pairs) against the membranes of the truth; a truth of cell ids has its
membranes where an id meets another (or background) in y or x.
"""

from __future__ import annotations

import numpy as np
import torch

from volseg.core.affinities import boundaries_from_affinities
from volseg.core.isbi import isbi_scores
from volseg.core.metrics import ConfusionCounts
from volseg.core.tiling import PAD_MODE
from volseg.nn.inference import InferOptions, infer_padded, pad_block
from volseg.nn.patches import positive_mask
from volseg.nn.unet import UNet
from volseg.stages.train.config import TrainConfig
from volseg.stages.train.data import TrainData

__all__ = ["Validator", "id_boundaries", "section_runs", "validation_metrics"]


def validation_metrics(prob: np.ndarray, positive: np.ndarray, foreground_kind: str) -> dict[str, float]:
    """Pixel error, Dice and the ISBI 2012 V_rand / V_info of probabilities ``(Z, Y, X)``.

    ``pixel_error`` (the share of misclassified pixels) and ``dice`` are taken at 0.5,
    ``pixel_error_best`` at the best of the thresholds 0.1 .. 0.9; ``pixel_error_isbi`` is the
    challenge's pixel error (1 - the best F-score of cell pixels). The ISBI scores take a
    membrane probability and the membrane truth: with ``foreground_kind="boundary"`` those
    are ``prob`` and ``positive``; with ``"object"`` they are ``1 - prob`` and ``~positive``
    (the objects play the cells).
    """
    if foreground_kind == "boundary":
        membrane, truth_membrane = prob, positive
    else:
        membrane, truth_membrane = 1.0 - prob, ~positive
    isbi = isbi_scores(membrane, truth_membrane)
    at_half = ConfusionCounts.from_arrays(prob, positive, 0.5)
    best = min(ConfusionCounts.from_arrays(prob, positive, t / 10).pixel_error for t in range(1, 10))
    return {
        "pixel_error": float(at_half.pixel_error),
        "pixel_error_best": float(best),
        "pixel_error_isbi": float(isbi["pixel_error_isbi"]),
        "dice": float(at_half.dice),
        "v_rand": float(isbi["v_rand"]),
        "v_info": float(isbi["v_info"]),
        "v_rand_threshold": float(isbi["v_rand_threshold"]),
        "v_info_threshold": float(isbi["v_info_threshold"]),
    }


class Validator:
    """Whole held-out sections through :func:`volseg.nn.inference.infer_padded`, the function predict uses.

    Each run of consecutive held-out sections is read once with ``context`` real neighbours
    (mirrored beyond the stack ends, :data:`volseg.core.tiling.PAD_MODE`) and padded by the
    default mirrored edge in y and x, exactly as a whole-volume prediction would see it.
    """

    def __init__(self, data: TrainData, config: TrainConfig, device: torch.device, precision: str) -> None:
        self.sections = data.val_sections
        self.kind = config.foreground_kind
        self.normalization = data.stats.normalization
        self.options = InferOptions(tile=512, batch_size=4, precision=precision, device=str(device))
        nz = data.image.shape[0]
        c = config.model.context
        self.blocks: list[np.ndarray] = []  # runs of held-out sections with c real (or mirrored) neighbours
        for z0, z1 in section_runs(self.sections):
            lo, hi = max(0, z0 - c), min(nz, z1 + c)
            raw = np.asarray(data.image[lo:hi])
            self.blocks.append(np.pad(raw, ((c - (z0 - lo), c - (hi - z1)), (0, 0), (0, 0)), mode=PAD_MODE))
        labels = np.stack([np.asarray(data.labels[z]) for z in self.sections])
        self.positive = positive_mask(labels, config.foreground)
        self.offsets = None
        if config.target == "affinities":
            from volseg.core.affinities import parse_offsets

            self.offsets = parse_offsets(config.offsets)
            self.options = InferOptions(
                tile=512, batch_size=4, precision=precision, device=str(device), activation="sigmoid"
            )
            membrane = self.positive if config.foreground_kind == "boundary" else ~self.positive
            if data.instance_ids:  # membranes of a truth of ids: where an id meets another in y or x
                membrane = membrane | id_boundaries(np.where(membrane, 0, labels))
            self.positive = membrane
            self.kind = "boundary"  # the boundary map of the affinities is scored as a membrane map

    def __call__(self, model: UNet) -> dict[str, float]:
        halo, edge = int(model.halo), self.options.edge_for(model)
        margins = ((edge, edge), (edge, edge))
        probs = [
            infer_padded(model, pad_block(raw, edge), halo, self.options, self.normalization, margins)
            for raw in self.blocks
        ]
        if self.offsets is not None:  # (C, Z, Y, X) affinities -> a membrane map (Z, Y, X)
            prob = boundaries_from_affinities(np.concatenate(probs, axis=1), self.offsets)
            return validation_metrics(prob, self.positive, self.kind)
        return validation_metrics(np.concatenate(probs), self.positive, self.kind)


def id_boundaries(ids: np.ndarray) -> np.ndarray:
    """Pixels of ``(Z, Y, X)`` cell ids that are background (0) or meet another id in y or x."""
    out = ids == 0
    for axis in (1, 2):
        lo = tuple(slice(None, -1) if a == axis else slice(None) for a in range(3))
        hi = tuple(slice(1, None) if a == axis else slice(None) for a in range(3))
        differ = ids[lo] != ids[hi]
        out[lo] |= differ
        out[hi] |= differ
    return out


def section_runs(sections: tuple[int, ...]) -> list[tuple[int, int]]:
    """Runs of consecutive sections as ``[start, stop)`` pairs: ``(3, 4, 5, 9)`` -> ``[(3, 6), (9, 10)]``."""
    runs: list[tuple[int, int]] = []
    for z in sections:
        if runs and runs[-1][1] == z:
            runs[-1] = (runs[-1][0], z + 1)
        else:
            runs.append((z, z + 1))
    return runs
