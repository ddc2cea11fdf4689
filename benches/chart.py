"""PNG chart of an end-to-end benchmark run (``benches/e2e.py``'s JSON).

    python benches/chart.py [bench-results/e2e.json] [-o bench-results/e2e.png]

One panel per workload: the median rate of each pairing as a bar, the
min-max of the repeats as an error bar, the ratio to the pynetdicom +
TCP_NODELAY median printed on the bar. Rates are on a log scale (they span
three orders of magnitude between pairings). Needs matplotlib, which is not
a chromanet dependency: ``pip install matplotlib`` (or the ``bench`` extra).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

COLOURS = {
    "cn-async": "#1f77b4",
    "cn-blocking": "#6baed6",
    "pyn-nodelay": "#d62728",
    "pyn-default": "#ff9896",
    "dcmtk": "#2ca02c",
    "cn-async>pyn": "#9467bd",
    "pyn>cn": "#c5b0d5",
}


def draw(rows: list[dict[str, Any]], out: Path, title: str = "") -> Path:
    """Draw the chart of ``rows`` (the JSON's ``results``) into ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r.get("median")]
    order = list(dict.fromkeys(r["workload"] for r in done))
    if not order:
        raise ValueError("no results with a median to draw")
    cols = min(3, len(order))
    nrows = math.ceil(len(order) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.6 * nrows), squeeze=False)
    for ax in axes.flat[len(order):]:
        ax.set_visible(False)
    for ax, workload in zip(axes.flat, order):
        mine = [r for r in done if r["workload"] == workload]
        base = next((r["median"] for r in mine if r["pairing"] == "pyn-nodelay"), None)
        x = range(len(mine))
        medians = [r["median"] for r in mine]
        low = [r["median"] - r["min"] for r in mine]
        high = [r["max"] - r["median"] for r in mine]
        ax.bar(x, medians, yerr=[low, high], capsize=3,
               color=[COLOURS.get(r["pairing"], "#7f7f7f") for r in mine])
        ax.set_yscale("log")
        ax.set_xticks(list(x))
        ax.set_xticklabels([r["pairing"] for r in mine], rotation=30, ha="right", fontsize=8)
        ax.set_title(mine[0]["workload_label"], fontsize=9)
        ax.set_ylabel(mine[0]["unit"], fontsize=8)
        ax.tick_params(axis="y", labelsize=8)
        for i, r in enumerate(mine):
            label = f"{r['median']:,.0f}"
            if base and r["pairing"] != "pyn-nodelay":
                label += f"\n{r['median'] / base:.2g}x"
            ax.annotate(label, (i, r["median"]), textcoords="offset points", xytext=(0, 3), ha="center",
                        va="bottom", fontsize=7)
        ax.margins(y=0.25)
    fig.suptitle(title or "chromanet end-to-end (median of repeats, min-max bars; ratio to pynetdicom+NODELAY)",
                 fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def draw_or_explain(rows: list[dict[str, Any]], out: Path, title: str = "") -> str:
    """Draw if matplotlib is importable; a one-line note either way (never raises ImportError)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (f"chart: not drawn, matplotlib is not installed in {sys.prefix} "
                f"(pip install matplotlib, or pip install -e '.[bench]'); the numbers are in the JSON")
    try:
        draw(rows, out, title)
    except ValueError as exc:
        return f"chart: not drawn ({exc})"
    return f"chart: {out}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", nargs="?", type=Path, default=HERE.parent / "bench-results" / "e2e.json")
    p.add_argument("-o", "--out", type=Path, default=None, help="PNG file (default: the JSON's name, .png)")
    args = p.parse_args(argv)
    data = json.loads(args.json.read_text())
    meta = data.get("meta", {})
    title = (f"chromanet end-to-end, {meta.get('started', '')}, {meta.get('cpus', '?')} CPUs "
             f"(median, min-max bars; ratio to pynetdicom+NODELAY)")
    note = draw_or_explain(data["results"], args.out or args.json.with_suffix(".png"), title)
    print(note)
    return 1 if "not drawn" in note else 0


if __name__ == "__main__":
    sys.exit(main())
