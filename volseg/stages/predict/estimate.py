"""How long a planned run will take here: a short measured probe of the run's own model, tile and batch.

``predict --dry-run`` reports it before any block is computed. The probe times the forward pass on one
batch of input windows (tile + 2 x halo) on the plan's device and precision for about a second; the
estimate is the pending blocks' computed pixels (output voxels x the plan's compute overhead) at that
rate. It leaves out reading, writing and dask's overhead, which the end-to-end benchmark measures
(docs/benchmarks.md), so it is a lower bound of the wall time.
"""

from __future__ import annotations

import math
from dataclasses import replace

from torch import nn

from volseg.nn.probe import forward_speed
from volseg.stages.predict.plan import Plan

__all__ = ["with_estimate"]


def with_estimate(plan: Plan, model: nn.Module, seconds: float = 1.0) -> Plan:
    """``plan`` with ``estimate_seconds`` and the ``probe`` it came from."""
    window = plan.tile + 2 * plan.halo
    probe = forward_speed(
        model,
        tile=window,
        batch=plan.batch_size,
        device=plan.device,
        precision=plan.precision,
        seconds=seconds,
    )
    share = len(plan.pending) / max(plan.n_blocks, 1)
    computed = math.prod(plan.out_shape) * plan.compute_overhead * share
    rate = probe["mvox_per_s"] * 1e6
    return replace(plan, estimate_seconds=round(computed / rate, 1) if rate > 0 else None, probe=probe)
