"""`simmoe claims`: put the rules of thumb about MoE training cost to the test; write docs/claims.md."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from simmoe.errors import SimmoeError

EXIT_INPUT = 2


def claims_cmd(
    quick: Annotated[bool, typer.Option("--quick", help="A few minutes on 2 cores: fewer steps and draws, analytical "
                                                        "network where the claim is not about the network.")] = False,
    only: Annotated[Optional[list[int]], typer.Option("--only", help="Claim numbers to check (repeatable, or "
                                                                    "several after one --only). Default: all 12.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", help="Folder of claims.parquet (default results/claims/).")] = None,
    doc: Annotated[Optional[str], typer.Option("--doc", help="Markdown report (default docs/claims.md of the "
                                                             "repository; DIR/claims.md with --only).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdicts and numbers as JSON on stdout.")] = False,
    extra: Annotated[Optional[list[str]], typer.Argument(hidden=True)] = None,
) -> None:
    """Check the twelve rules of thumb about MoE training cost (docs/claims.md) with simmoe's own engine, forecast,
    routing, memory and network models; write docs/claims.md, docs/img/claims-*.png and DIR/claims.parquet."""
    from simmoe import __version__
    from simmoe.claims import MODULES, Context, run_claims
    from simmoe.claims.report import draw_plots, markdown, write_parquet, write_text_atomic
    from simmoe.errors import InputError
    from simmoe.paths import REPO_ROOT

    numbers = list(only or []) + [int(x) for x in (extra or []) if x.isdigit()]
    bad = [n for n in numbers if n not in MODULES] + [x for x in (extra or []) if not x.isdigit()]
    try:
        if bad:
            raise InputError("unknown claim", field="--only", value=bad[0], allowed="1..12")
        out_dir = Path(out) if out else Path("results") / "claims"
        # A partial run (--only) never overwrites the published report unless --doc says so.
        doc_path = Path(doc) if doc else (out_dir / "claims.md" if numbers else REPO_ROOT / "docs" / "claims.md")
        img_dir = doc_path.parent / "img"
        ctx = Context(quick=quick, out_dir=out_dir, img_dir=img_dir)

        def progress(n: int, res) -> None:  # noqa: ANN001
            if not as_json:
                typer.echo(f"claim {n:>2}: {res.verdict:<16} ({res.wall_s:.1f} s) {res.title}", err=True)

        t0 = time.perf_counter()
        results = run_claims(ctx, numbers or None, progress=progress)
        wall = time.perf_counter() - t0
        command = "simmoe claims" + (" --quick" if quick else "") + (
            " --only " + " ".join(map(str, sorted(numbers))) if numbers else "")
        draw_plots(results, img_dir, doc_path.parent)
        meta = {"simmoe_version": __version__, "mode": ctx.mode, "command": command, "wall_s": f"{wall:.1f}",
                "schema": "simmoe.claims claims.parquet v1"}
        pq_path = write_parquet(results, out_dir / "claims.parquet", mode=ctx.mode, metadata=meta)
        write_text_atomic(doc_path, markdown(results, mode=ctx.mode, command=command, wall_s=wall, version=__version__))
    except SimmoeError as err:
        typer.echo(f"error: {err}", err=True)
        raise typer.Exit(EXIT_INPUT) from None
    if as_json:
        typer.echo(json.dumps({"mode": ctx.mode, "wall_s": wall, "doc": str(doc_path), "claims_parquet": str(pq_path),
                               "claims": [{"claim": r.number, "title": r.title, "verdict": r.verdict,
                                           "finding": r.finding, "wall_s": r.wall_s,
                                           "metrics": {m.name: m.value for m in r.metrics}} for r in results]},
                              indent=2, default=str))
    else:
        typer.echo(f"wrote {doc_path}, {pq_path} ({wall:.0f} s)", err=sys.stderr.isatty())


def register(app: typer.Typer) -> None:
    app.command("claims")(claims_cmd)
