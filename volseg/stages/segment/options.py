"""segment's options and result: what decides the labels, and what a run reports."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from volseg.cluster import ClusterSpec, load_cluster
from volseg.core.segmentation import METHODS as SEGMENT_KERNELS
from volseg.core.segmentation import MODES, SEEDS
from volseg.errors import OptionError
from volseg.storage.files import json_ready

__all__ = [
    "CLUSTER_RETRIES",
    "AFFINITY_METHODS",
    "INPUT_KINDS",
    "METHODS",
    "SCHEDULERS",
    "SegmentOptions",
    "SegmentResult",
    "check_cluster",
    "check_run_options",
]

SCHEDULERS = ("threads", "processes", "synchronous")
#: segment's methods: the 2-D kernels of :mod:`volseg.core.segmentation`, and agglomeration of affinities.
METHODS = (*SEGMENT_KERNELS, "agglo", "mws")
#: The methods that read an affinity volume (c, z, y, x) (:mod:`volseg.stages.segment.graph`).
AFFINITY_METHODS = ("agglo", "mws")
INPUT_KINDS = ("probability", "mask")


@dataclass(frozen=True)
class SegmentOptions:
    """How to turn a boundary (membrane) probability map into cells.

    Attributes
    ----------
    mode
        ``"2d"``: each section on its own (default); ``"3d"``: 3-D connected components
        consistent across blocks.
    method
        2-D only: ``"watershed"`` (seeded, default) or ``"cc"`` (connected components of
        the interior). 3-D always uses connected components. ``"agglo"`` reads an affinity
        volume ``(c, z, y, x)`` instead: fragments and mean-affinity agglomeration with global
        ids (:mod:`volseg.stages.segment.graph`), in 2-D or, linked across sections, in 3-D;
        ``"mws"`` the mutex watershed of each block (with a halo as long as the offsets reach),
        joined across block faces by mean affinity (``pip install "volseg[mws]"``).
    seeds
        Watershed seeds: ``"distance"`` (the tops of the distance transform of the interior,
        default) or ``"hminima"`` (h-minima of the smoothed boundary map).
    threshold
        A pixel whose smoothed boundary probability is below this is cell interior.
    sigma
        Gaussian smoothing of the boundary map in y and x, in pixels (0: none).
    min_distance
        Smallest distance in pixels between two distance-transform seeds.
    distance_h
        Distance-transform seeds are the maxima at least this many pixels higher than the
        saddle to a higher maximum (h-maxima of the distance transform).
    h
        Depth of the h-minima, in probability units (0..1).
    min_size
        Segments smaller than this (pixels in 2-D, voxels in 3-D) are dropped; in 2-D
        watershed mode their pixels go to the neighbouring cells.
    keep_boundaries
        2-D watershed: flood only the interior, so membranes stay 0 (default: the
        whole section is flooded and cells tile it).
    relabel
        2-D: consecutive ids over the volume (a second pass) instead of sparse ids.
        3-D ids are always consecutive.
    invert
        ``True``: the input is a cell (interior) probability, ``False``: a membrane
        probability, ``None``: read the convention from the input's metadata.
    merge_threshold
        ``agglo``: regions merge while the mean affinity across their face is at least this
        (higher: more, smaller cells).
    fragment_threshold
        ``agglo``: fragments are the in-plane connected components of the voxel pairs whose
        affinity is at least this (at least ``merge_threshold``).
    """

    mode: str = "2d"
    method: str = "watershed"
    seeds: str = "distance"
    threshold: float = 0.5
    sigma: float = 1.0
    min_distance: int = 8
    distance_h: float = 6.0
    h: float = 0.1
    min_size: int = 20
    keep_boundaries: bool = False
    relabel: bool = False
    invert: bool | None = None
    merge_threshold: float = 0.5
    fragment_threshold: float = 0.7

    def __post_init__(self) -> None:
        _choice("mode", self.mode, MODES)
        _choice("method", self.method, METHODS)
        for name in ("merge_threshold", "fragment_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                flag = "--" + name.replace("_", "-")
                raise OptionError(
                    f"{flag} {getattr(self, name)}: must lie strictly between 0 and 1, e.g. 0.5"
                )
        if self.fragment_threshold < self.merge_threshold:
            raise OptionError(
                f"--fragment-threshold {self.fragment_threshold} is below --merge-threshold "
                f"{self.merge_threshold}: give a fragment threshold at least the merge threshold, e.g. 0.7"
            )
        _choice("seeds", self.seeds, SEEDS)
        if not 0.0 < self.threshold < 1.0:
            raise OptionError(f"--threshold {self.threshold}: must lie strictly between 0 and 1, e.g. 0.5")
        if not 0 <= self.sigma <= 100:
            raise OptionError(f"--sigma {self.sigma}: use 0 (no smoothing) to 100 pixels, e.g. 1")
        if not 1 <= self.min_distance <= 10_000:
            raise OptionError(f"--min-distance {self.min_distance}: use 1 to 10000 pixels, e.g. 8")
        if not 0 < self.distance_h <= 10_000:
            raise OptionError(f"--distance-h {self.distance_h}: must be > 0 pixels (up to 10000), e.g. 2")
        if not 0.0 < self.h < 1.0:
            raise OptionError(
                f"--h {self.h}: must lie strictly between 0 and 1 (probability units), e.g. 0.1"
            )
        if not 0 <= self.min_size <= 2**62:
            raise OptionError(f"--min-size {self.min_size}: must be >= 0")

    def record(self) -> dict[str, Any]:
        """The options that decide the output (compared when a run is resumed)."""
        return dataclasses.asdict(self)


def _choice(name: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise OptionError(f"--{name} {value!r}: use one of {', '.join(allowed)}")


@dataclass(frozen=True)
class SegmentResult:
    """What a segment run wrote.

    Attributes
    ----------
    path
        The label volume.
    mode
        ``"2d"`` or ``"3d"``.
    ids
        ``"sparse"`` (2-D: section ``z`` owns ids ``z * Y * X + 1 ...``) or ``"consecutive"``.
    labels
        The number of ids (consecutive), or the upper end of the sparse id range.
    dtype
        The labels' dtype (``uint32``, or ``uint64`` for 2**32 voxels or more).
    blocks
        Output blocks in all (of the part's share with ``part``).
    resumed_blocks
        Blocks (of the part's share) that an earlier run had written already.
    part
        ``"K/N"`` for a ``--part`` run, else ``None``.
    complete
        Whether the output is complete: always for a run without ``part``; for a part, whether it was
        the last to finish (or found the output complete).
    """

    path: str
    mode: str
    ids: str
    labels: int | None
    dtype: str
    blocks: int
    resumed_blocks: int
    part: str | None = None
    complete: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data, the keys in the order of the fields (``part``, ``complete``: parts only)."""
        data = dataclasses.asdict(self)
        if self.part is None:
            del data["part"], data["complete"]
        return json_ready(data)


def check_run_options(
    chunks: Sequence[int] | None,
    overwrite: bool,
    resume: bool,
    scheduler: str | None,
    workers: int | None,
    input_kind: str | None,
) -> None:
    """Refuse run settings that cannot work, naming the flag, before anything is opened or created."""
    if chunks is not None and (len(chunks) != 3 or min(chunks) < 1):
        raise OptionError(f"--chunks {tuple(chunks)}: expected three positive sizes (z, y, x)")
    if overwrite and resume:
        raise OptionError("--overwrite and --resume exclude each other: choose one")
    if scheduler is not None and scheduler not in SCHEDULERS:
        raise OptionError(
            f"--scheduler {scheduler!r}: use one of {', '.join(SCHEDULERS)} (or a distributed.Client)"
        )
    if workers is not None and not 1 <= workers <= 1024:
        raise OptionError(f"--workers {workers}: use 1 to 1024")
    if input_kind is not None and input_kind not in INPUT_KINDS:
        raise OptionError(f"--input-kind {input_kind!r}: use one of {', '.join(INPUT_KINDS)}")


#: Retries of a failing block on a cluster when the cluster file does not set them.
CLUSTER_RETRIES = 2


def check_cluster(
    cluster: str | os.PathLike[str] | None, scheduler: str | None, workers: int | None
) -> ClusterSpec | None:
    """The checked ``--cluster`` file (:func:`volseg.cluster.load_cluster`), or ``None`` without one."""
    if cluster is None:
        return None
    if scheduler is not None or workers is not None:
        flag = "--scheduler" if scheduler is not None else "--workers"
        raise OptionError(f"--cluster and {flag} exclude each other: the cluster file names the workers")
    return load_cluster(cluster)
