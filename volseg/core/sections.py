"""Choosing sections of a volume from text such as ``"0,5,10"``, ``"0:30:5"`` or ``"-3:"``.

Shared by the commands that take ``--sections`` (evaluate, preview), so no stage imports another.
"""

from __future__ import annotations

from volseg.errors import OptionError

__all__ = ["parse_sections"]


def parse_sections(text: str | None, n_sections: int, option: str = "sections") -> tuple[int, ...] | None:
    """Parse ``"0,5,10"``, ``"0:30:5"``, ``"-3:"`` or ``"0,10:12"`` into indices within ``n_sections``.

    ``option`` names the argument in error messages (the CLI shows its flag).
    Ranges follow Python slices (``A:B`` is A..B-1, an optional step, negative numbers
    count from the end). The order is kept and repeats are dropped; ``None`` or an empty
    text gives ``None`` (the caller's default).
    """
    if text is None or not str(text).strip():
        return None
    picked: list[int] = []
    for item in filter(None, (part.strip() for part in str(text).split(","))):
        try:
            if ":" in item:
                parts = [int(p) if p.strip() else None for p in item.split(":")]
                if len(parts) > 3 or parts[-1] == 0 and len(parts) == 3:
                    raise ValueError
                ends = [v for v in parts[:2] if v is not None]
                if any(not -n_sections <= v <= n_sections for v in ends):
                    raise OptionError(
                        f"{option} {text!r}: range {item} reaches outside the volume's 0..{n_sections - 1}",
                        argument=option,
                    )
                picked.extend(range(n_sections)[slice(*parts)])
                continue
            index = int(item)
        except OptionError:
            raise
        except ValueError:
            raise OptionError(
                f"{option} {text!r}: expected indices like 0,5,10 or a range like 0:30:5",
                argument=option,
            ) from None
        if not -n_sections <= index < n_sections:
            raise OptionError(
                f"{option} {text!r}: section {index} is outside the volume's 0..{n_sections - 1}",
                argument=option,
            )
        picked.append(index % n_sections)
    if not picked:
        raise OptionError(
            f"{option} {text!r}: selects no section of the volume's {n_sections} (0..{n_sections - 1})",
            argument=option,
        )
    return tuple(dict.fromkeys(picked))
