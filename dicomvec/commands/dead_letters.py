"""``dicomvec dead-letters summary DIR``: counts by generation, stage and error type.

Each line shows the dead-letter rows and the distinct files they name; re-running over the same
broken files writes a new generation each time, so the total line gives both the rows and the
distinct files over every generation (what ``reprocess`` would take, each path once).
"""
from __future__ import annotations

import collections


def register(subparsers) -> None:
    parser = subparsers.add_parser("dead-letters", help="inspect Parquet dead letters")
    actions = parser.add_subparsers(dest="action", required=True)
    summary = actions.add_parser("summary", help="counts by generation / stage / error type")
    summary.add_argument("directory", help="the --dead-letter folder of earlier runs (must exist)")
    summary.set_defaults(func=run_summary)


def summary_table(rows) -> str:
    rows = list(rows)
    counts = collections.Counter((r["run_id"], r["stage"], r["error_type"]) for r in rows)
    if not counts:
        return "no dead letters"
    files = collections.defaultdict(set)
    for r in rows:
        files[(r["run_id"], r["stage"], r["error_type"])].add(r["path"])
    width = max(len("generation"), *(len(k[0]) for k in counts))
    lines = [f"{'generation':<{width}}  {'stage':<10} {'error type':<28} {'rows':>7} "
             f"{'files':>7}"]
    for key, n in sorted(counts.items()):
        run_id, stage, error_type = key
        lines.append(f"{run_id:<{width}}  {stage:<10} {error_type:<28} {n:>7} "
                     f"{len(files[key]):>7}")
    distinct = len({r["path"] for r in rows})
    lines.append(f"total over {len({r['run_id'] for r in rows})} generations: rows: {len(rows)}, "
                 f"distinct files: {distinct} (reprocess takes each file once)")
    return "\n".join(lines)


def run_summary(args, extra) -> int:
    from dicomvec.pipeline.preflight import require_dead_letter_folder
    require_dead_letter_folder(args.directory)
    from dicomvec.io.dead_letter import read_dead_letters
    print(summary_table(read_dead_letters(args.directory)))
    return 0
