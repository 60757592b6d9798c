"""``dicomvec dead-letters summary DIR``: counts by generation, stage and error type."""
from __future__ import annotations

import collections


def register(subparsers) -> None:
    parser = subparsers.add_parser("dead-letters", help="inspect Parquet dead letters")
    actions = parser.add_subparsers(dest="action", required=True)
    summary = actions.add_parser("summary", help="counts by generation / stage / error type")
    summary.add_argument("directory", help="the --dead-letter folder of earlier runs (must exist)")
    summary.set_defaults(func=run_summary)


def summary_table(rows) -> str:
    counts = collections.Counter((r["run_id"], r["stage"], r["error_type"]) for r in rows)
    if not counts:
        return "no dead letters"
    width = max(len("generation"), *(len(k[0]) for k in counts))
    lines = [f"{'generation':<{width}}  {'stage':<10} {'error type':<28} {'files':>7}"]
    for (run_id, stage, error_type), n in sorted(counts.items()):
        lines.append(f"{run_id:<{width}}  {stage:<10} {error_type:<28} {n:>7}")
    lines.append(f"{'total':<{width}}  {'':<10} {'':<28} {sum(counts.values()):>7}")
    return "\n".join(lines)


def run_summary(args, extra) -> int:
    from dicomvec.pipeline.preflight import require_dead_letter_folder
    require_dead_letter_folder(args.directory)
    from dicomvec.io.dead_letter import read_dead_letters
    print(summary_table(read_dead_letters(args.directory)))
    return 0
