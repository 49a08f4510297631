"""Fuzz the CLI's error contract with a large budget: the generators of tests/test_fuzz.py, more cases.

    python benchmarks/fuzz.py [--cases 300] [--minutes 20] [--families model,tiff] [--keep DIR] [--no-doc]
    python benchmarks/fuzz.py --doc-only     # the doc section again, from benchmarks/results/fuzz.json

Every family (tests/fuzz_support.py) runs ``--cases`` cases, or stops when its share of ``--minutes``
is spent: mutated model files -> predict, TOML configs -> train, TIFFs -> convert, zarr.json
metadata -> info / predict / segment / evaluate / preview, option strings for every option of
every command, and outputs that alias inputs. A case passes with exit 0, or with exit 2, one
``volseg: error:`` line, no traceback and nothing left that looks complete; inputs must stay
unchanged. Failures are grouped by root cause; the first case of each is kept under
``DIR/failures`` (default: a new temporary folder) to reproduce it.

Writes ``benchmarks/results/fuzz.json`` and the ``## Fuzz results`` section of
``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the generators live beside the test that runs them
sys.path.insert(0, str(ROOT / "benchmarks"))

import _doc  # noqa: E402
from fuzz_support import CASE_TIMEOUT_S, FAMILIES, SEED, Workspace, run_family  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "fuzz.json"
DOC = ROOT / "docs" / "reliability.md"
HEADING = "Fuzz results"
WHAT = {
    "model": "model files: random bytes, bit flips, truncations, zip members, pickled code, payload edits",
    "config": "`train --config` TOML: wrong types, unknown keys, huge numbers, broken syntax, binary",
    "tiff": "`convert` TIFFs: truncated, bit flips, IFD entries, random bytes, odd dtypes and ranks",
    "zarr": "zarr.json of real volumes -> info, predict, segment, evaluate, preview",
    "options": "a nasty string for every value option of every command",
    "paths": "outputs that are or sit inside an input (with --overwrite too), wrong inputs, URLs",
    "corpus": "every distinct failure found so far, as a concrete case (all of them, whatever --cases)",
}


def run(args: argparse.Namespace, scratch: Path) -> dict:
    families = [f.strip() for f in args.families.split(",") if f.strip()] if args.families else list(FAMILIES)
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    start = time.perf_counter()
    ws = Workspace(scratch)
    share = args.minutes * 60 / len(families) if args.minutes else None
    results = []
    for family in families:
        try:
            res = run_family(ws, family, cases=args.cases, seconds=share)
        except Exception as exc:  # a bug of the generator itself: report it, run the other families
            print(f"fuzz family {family!r}: the generator failed: {exc!r}", flush=True)
            results.append(
                {
                    "family": family,
                    "cases": 0,
                    "accepted": 0,
                    "refused": 0,
                    "seconds": 0.0,
                    "failures": [],
                    "error": repr(exc),
                }
            )
            continue
        print(res.summary(), flush=True)
        results.append(res.to_dict())
    return {
        "date": dt.date.today().isoformat(),
        "machine": _doc.machine(),
        "seed": SEED,
        "cases_per_family": args.cases,
        "minutes": args.minutes,
        "case_timeout_s": CASE_TIMEOUT_S,
        "seconds": round(time.perf_counter() - start, 1),
        "kept": str(ws.keep),
        "families": results,
    }


def markdown(res: dict) -> str:
    m = res["machine"]
    total = sum(f["cases"] for f in res["families"])
    lines = [
        f"## {HEADING}",
        "",
        "<!-- written by benchmarks/fuzz.py; this section is replaced on each run -->",
        "",
        f"`python benchmarks/fuzz.py --cases {res['cases_per_family']} --minutes {res['minutes']}` "
        f"({res['date']}, seed {res['seed']}): {total} cases in {res['seconds']:.0f} s. Machine: "
        f"{m['cores']} cores ({m['cpu']}), Python {m['python']}"
        + (f", torch {m['torch']}" if "torch" in m else "")
        + f". A case that ran past {res['case_timeout_s']:.0f} s counts as a failure.",
        "",
        "| family | what is mutated | cases | accepted (exit 0) | refused (exit 2) | distinct failures | s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for f in res["families"]:
        lines.append(
            f"| {f['family']} | {WHAT.get(f['family'], '')} | {f['cases']} | {f['accepted']} "
            f"| {f['refused']} | {len(f['failures'])} | {f['seconds']:.0f} |"
        )
    kinds = [(f["family"], x["kind"], x["count"]) for f in res["families"] for x in f["failures"]]
    kinds += [
        (f["family"], f"the generator itself failed: {f['error']}", 0)
        for f in res["families"]
        if "error" in f
    ]
    lines.append("")
    if kinds:
        lines.append("Distinct failures (root cause, cases that hit it):")
        lines.append("")
        lines += [f"- {family}: `{kind.replace('`', chr(39))}` ({count})" for family, kind, count in kinds]
    else:
        lines.append("No case broke the contract.")
    lines += ["", "Raw results, with the first reproduction of each failure: `benchmarks/results/fuzz.json`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=300, help="cases per family (default 300)")
    ap.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget for all families; 0: none")
    ap.add_argument("--families", default="", help=f"comma-separated subset of {','.join(FAMILIES)}")
    ap.add_argument(
        "--keep", type=Path, help="folder for the workspace and the failing cases (default: temp)"
    )
    ap.add_argument("--no-doc", action="store_true", help="do not touch docs/reliability.md")
    ap.add_argument("--doc-only", action="store_true", help="rewrite the doc section from the last results")
    args = ap.parse_args()
    if args.doc_only:
        res = json.loads(RESULT.read_text())
    else:
        scratch = args.keep or Path(tempfile.mkdtemp(prefix="volseg-fuzz-"))
        scratch.mkdir(parents=True, exist_ok=True)
        res = run(args, scratch)
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(res, indent=2, default=str) + "\n")
    text = markdown(res)
    print(text)
    print(f"failing cases kept under {res['kept']}")
    if not args.no_doc:
        _doc.DOC = DOC  # write_doc_section edits the module's page; this script owns a section of another
        _doc.write_doc_section(text, HEADING)


if __name__ == "__main__":
    main()
