"""Human-readable terminal output shared by commands (rich tables, sizes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

from volseg.core.units import human_bytes

if TYPE_CHECKING:
    from volseg.stages.evaluate import EvaluateResult

console = Console(highlight=False)


def print_info(data: dict[str, Any]) -> None:
    """Print ``volume_info`` output as a two-column table."""
    t = Table(show_header=False, box=None, pad_edge=False)
    t.add_column(style="bold")
    t.add_column()
    zyx = lambda v: " x ".join(str(x) for x in v)  # noqa: E731
    comp = data["completion"]
    rows = [
        ("path", data["path"]),
        ("kind", data["kind"]),
        ("shape (z, y, x)", zyx(data["shape"])),
        *(
            [("channels", f"{data['channels']} (axes c, z, y, x; offsets {offsets_text(data)})")]
            if data.get("channels")
            else []
        ),
        ("dtype", data["dtype"]),
        ("chunks", zyx(data["chunks"]) + (f"  (shards {zyx(data['shards'])})" if data["shards"] else "")),
        ("codec", data["codec"]),
        (
            "size",
            f"{human_bytes(data['stored_bytes'])} stored / {human_bytes(data['raw_bytes'])} raw"
            + (f"  ({data['ratio']}x)" if data["ratio"] else ""),
        ),
        ("voxel size", f"{zyx(data['voxel_size'])} {data['unit']}"),
        ("levels", ", ".join(data["levels"])),
        ("status", comp["status"]),
        (
            "blocks done",
            f"{comp['blocks_done']} / {comp['blocks_total']}  (block {zyx(comp['block_shape'])})",
        ),
        ("sections done", f"{comp['sections_done']} / {comp['sections_total']}"),
    ]
    if comp.get("parts"):  # an output written by --part K/N jobs (segment: pass 1's units, then blocks)

        def share(p: dict) -> str:
            units = f"pass 1 {p['units_done']}/{p['units']}, " if "units" in p else ""
            return f"{p['part']}: {units}{p['blocks_done']}/{p['blocks']} blocks"

        rows.append(("parts", ", ".join(share(p) for p in comp["parts"])))
    if comp.get("chunks_missing"):
        rows.append(
            (
                "chunks missing",
                f"{comp['chunks_missing']} (e.g. {', '.join(comp.get('missing_examples', []))}): the volume "
                "is damaged; restore it or write it again",
            )
        )
    # Provenance is whatever the volume's writer stored: shown as text, never trusted to have a shape.
    prov = data.get("provenance") if isinstance(data.get("provenance"), dict) else {}
    if prov.get("created"):
        rows.append(("created", prov["created"]))
    command = prov.get("command")
    if command:
        rows.append(("command", " ".join(map(str, command)) if isinstance(command, list) else str(command)))
    sources = prov.get("sources") if isinstance(prov.get("sources"), list) else []
    for src in sources[:5]:
        if isinstance(src, dict):
            size = src.get("size", 0)
            size_text = human_bytes(size) if isinstance(size, (int, float)) else str(size)
            rows.append(("source", f"{src.get('path', '?')} ({size_text}, {src.get('mtime', '?')})"))
        else:
            rows.append(("source", str(src)))
    if len(sources) > 5:
        rows.append(("", f"... and {len(sources) - 5} more sources"))
    versions = prov.get("versions")
    if isinstance(versions, dict) and versions:
        rows.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    for k, v in rows:
        t.add_row(k, str(v))
    console.print(t)


#: The demo's score rows, with the definition of each pixel error (docs/metrics.md).
_DEMO_ROWS = (
    ("pixel_error", "membrane pixel error (share misclassified at p >= 0.5)"),
    ("pixel_error_isbi", "membrane pixel error, ISBI (1 - best F over thresholds)"),
    ("dice", "membrane Dice (p >= 0.5)"),
    ("v_rand", "V_rand (best threshold)"),
    ("v_info", "V_info (best threshold)"),
    ("cells:adapted_rand_error", "cells: adapted Rand error"),
    ("cells:voi_split", "cells: VOI split"),
    ("cells:voi_merge", "cells: VOI merge"),
)


def print_demo_summary(summary: dict[str, Any]) -> None:
    """Where each output is, the scores, and the time each stage took."""
    t = Table(title="volseg demo", show_header=True)
    t.add_column("stage")
    t.add_column("seconds", justify="right")
    for stage, secs in summary["seconds"].items():
        t.add_row(stage, f"{secs:.1f}")
    t.add_row("total", f"{sum(summary['seconds'].values()):.1f}", style="bold")
    console.print(t)
    scores = summary.get("scores", {})
    prob, cells = scores.get("probabilities", {}), scores.get("cells", {})
    trivial = scores.get("trivial", {})
    s = Table(title=f"scores on held-out sections {scores.get('sections', '')}", show_header=True)
    s.add_column("what")
    s.add_column("value", justify="right")
    s.add_column("trivial answer", justify="right")
    for key, what in _DEMO_ROWS:
        source = cells if key.startswith("cells:") else prob
        value = source.get(key.removeprefix("cells:"))
        if isinstance(value, (int, float)):
            base = trivial.get(key)
            s.add_row(what, f"{value:.4f}", f"{base:.4f}" if isinstance(base, (int, float)) else "")
    train = summary.get("train", {})
    if train:
        s.add_row("training steps", str(train.get("steps")), "")
    console.print(s)
    if summary.get("learned") is not None:
        from volseg.app.demo import LEARNED_MARGIN

        verdict = "learned" if summary["learned"] else "did NOT learn"
        console.print(
            f"the model {verdict}: its pixel error must be at most {LEARNED_MARGIN:g} of the trivial "
            "answer's (everything is cell) and its membrane Dice at least 0.5"
        )
    o = Table(title="outputs", show_header=False, box=None)
    for name, path in summary["outputs"].items():
        o.add_row(name, path)
    console.print(o)


# ------------------------------------------------------------------------ evaluate
_BINARY_COLUMNS = (
    ("pixel_error", "pixel error"),
    ("pixel_error_isbi", "ISBI pixel error"),
    ("dice", "Dice"),
    ("iou", "IoU"),
    ("v_rand", "V_rand"),
    ("v_info", "V_info"),
)
_INSTANCE_COLUMNS = (
    ("adapted_rand_error", "adapted Rand error"),
    ("voi_split", "VOI split"),
    ("voi_merge", "VOI merge"),
    ("cremi_score", "CREMI score"),
    ("v_rand", "V_rand"),
    ("v_info", "V_info"),
)
MAX_ROWS = 40


def print_report(report: EvaluateResult) -> None:
    """Print an evaluation: one row per section (at most :data:`MAX_ROWS`), then the overall row."""
    columns = _BINARY_COLUMNS if report.kind == "binary" else _INSTANCE_COLUMNS
    columns = tuple(c for c in columns if c[0] in report.overall)
    table = Table(title=f"{report.pred} vs {report.truth}", title_justify="left")
    table.add_column("section", justify="right")
    for _, name in columns:
        table.add_column(name, justify="right")
    rows = report.sections
    for row in rows[:MAX_ROWS]:
        table.add_row(str(row["section"]), *(_score(row.get(key)) for key, _ in columns))
    if len(rows) > MAX_ROWS:
        table.add_row(f"... {len(rows) - MAX_ROWS} more", *("" for _ in columns))
    table.add_section()
    table.add_row("[bold]all[/bold]", *(f"[bold]{_score(report.overall.get(k))}[/bold]" for k, _ in columns))
    console.print(table)
    for line in _worst_objects(report):
        console.print(line)
    console.print(_report_footer(report))


def _worst_objects(report: EvaluateResult) -> list[str]:
    """A line each for the worst split truth object and the worst merging segment (--json lists more)."""
    lists = report.objects or {}
    lines = []
    for key, what, count in (("splits", "split", "segments"), ("merges", "merge", "truth_objects")):
        part = lists.get(key) or {}
        listed = part.get("listed") or []
        if not listed:
            continue
        o, box = listed[0], listed[0].get("bbox")
        where = f" at {', '.join(f'{ax} {a}:{b}' for ax, (a, b) in box.items())}" if box else ""
        owner = "truth object" if key == "splits" else "segment"
        lines.append(
            f"worst {what}: {owner} {o['id']} ({o['voxels']} voxels, {o[count]} "
            f"{count.replace('_', ' ')}, VOI {what} {o[f'voi_{what}']:.4f}){where}; "
            f"{part.get(f'{what}_objects')} of {part.get('objects')} {what}"
        )
    return lines


def _score(value: float | int | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _report_footer(report: EvaluateResult) -> str:
    from volseg.stages.evaluate import span_text

    o = report.overall
    parts = [
        f"{report.kind} evaluation of {len(report.sections_scored)} sections",
        f"foreground {','.join(map(str, report.foreground))} ({report.foreground_kind})",
    ]
    if report.kind == "binary" and "v_rand_threshold" in o:
        parts.append(
            f"best thresholds: V_rand {o['v_rand_threshold']:.1f}, V_info {o['v_info_threshold']:.1f}"
        )
    if report.kind == "instance":
        parts.append(f"{report.instance_mode} ids; truth: {report.truth_cells}")
    region, at = report.region, report.offsets.get("truth")
    whole = at is not None and [[a, a + n] for a, n in zip(at, report.truth_shape, strict=True)]
    if region and [region[ax] for ax in "zyx"] != whole:
        span = span_text([region[ax] for ax in "zyx"])
        starts = ", ".join(f"{ax} {v}" for ax, v in zip("zyx", report.offsets["pred"], strict=True))
        parts.append(f"scored the overlap {span} of the truth (the prediction starts at {starts})")
    parts.append(f"{report.seconds} s")
    return "; ".join(parts)


def offsets_text(data: dict) -> str:
    """A channel volume's recorded offsets as ``dz,dy,dx; ...`` (or "not recorded")."""
    offsets = (data.get("attributes") or {}).get("offsets")
    if not isinstance(offsets, list):
        return "not recorded"
    return "; ".join(",".join(str(v) for v in o) for o in offsets if isinstance(o, list))
