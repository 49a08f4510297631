"""The network: U-Net, model files, device and precision runtime, tiled inference, patch sampling.

Imports :mod:`volseg.storage` (model files record conventions and are written atomically), :mod:`volseg.core`
and :mod:`volseg.errors`. torch is imported here and in the stages, nowhere below.
"""
