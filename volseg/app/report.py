"""Human-readable terminal output shared by commands (rich tables, sizes)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


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
    s = Table(title=f"scores on held-out sections {scores.get('sections', '')}", show_header=True)
    s.add_column("what")
    s.add_column("value", justify="right")
    for key in ("pixel_error", "dice", "v_rand", "v_info"):
        if isinstance(prob.get(key), (int, float)):
            s.add_row(f"membrane probabilities: {key}", f"{prob[key]:.4f}")
    for key in ("adapted_rand_error", "voi_split", "voi_merge"):
        if isinstance(cells.get(key), (int, float)):
            s.add_row(f"cells: {key}", f"{cells[key]:.4f}")
    train = summary.get("train", {})
    if train:
        s.add_row("training steps", str(train.get("steps")))
    console.print(s)
    o = Table(title="outputs", show_header=False, box=None)
    for name, path in summary["outputs"].items():
        o.add_row(name, path)
    console.print(o)
