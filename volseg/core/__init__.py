"""Pure array code: no paths, no files, no torch.

Imports only :mod:`volseg.errors` and other ``core`` modules. Functions here take arrays and values and
return arrays and values; they raise errors about values (naming the argument), never about CLI flags.
"""
