"""The stages of the data flow: convert, synth, train, predict, segment, evaluate, preview.

Each stage reads its inputs lazily, maps :mod:`volseg.core` / :mod:`volseg.nn` functions over blocks and
writes its output through :mod:`volseg.storage`. Stages do not
import each other: a value two stages share is data in :mod:`volseg.storage`.
"""
