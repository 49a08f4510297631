"""Where data lives: OME-Zarr volumes, completion records, provenance, pyramids, TIFF/PNG stacks, conventions,
atomic writes and paths.

Imports :mod:`volseg.core` and :mod:`volseg.errors`; never torch.
"""
