"""``dicomvec dead-letters summary DIR``: counts by generation, stage and error type.

Each line shows the dead-letter rows and the distinct files they name; re-running over the same
broken files writes a new generation each time, so the total line gives both the rows and the
distinct files over every generation (what ``reprocess`` would take, each path once).
"""
from __future__ import annotations

import collections


ACTIONS = {"summary": "counts by generation / stage / error type"}


def register(subparsers) -> None:
    parser = subparsers.add_parser("dead-letters", help="inspect Parquet dead letters")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    summary = actions.add_parser("summary", help=ACTIONS["summary"],
                                 description="Dead-letter rows and distinct files by generation, "
                                 "stage and error type. A bucket folder (s3://…) takes Beam's S3 "
                                 "options (--s3_endpoint_url, --s3_region_name, …).")
    summary.add_argument("directory", help="the --dead-letter folder of earlier runs (must exist)")
    summary.set_defaults(func=run_summary, passthrough=True)
    parser.set_defaults(func=no_action)


def no_action(args, extra) -> int:
    from dicomvec.errors import UsageError
    listed = "; ".join(f"{name} ({what})" for name, what in ACTIONS.items())
    raise UsageError(f"dead-letters needs an action: {listed}; e.g. dicomvec dead-letters "
                     "summary DEAD_LETTER_DIR")


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
    generations = len({r["run_id"] for r in rows})
    lines.append(f"total over {generations} generation{'' if generations == 1 else 's'}: "
                 f"rows: {len(rows)}, distinct files: {distinct} (reprocess takes each file once)")
    return "\n".join(lines)


def run_summary(args, extra) -> int:
    from dicomvec.commands.pipeline_flags import check_flags
    check_flags(extra, "dicomvec dead-letters summary",  # Beam's options: S3 settings
                own_flags=getattr(args, "own_flags", ()))
    from dicomvec.pipeline.preflight import require_dead_letter_folder
    require_dead_letter_folder(args.directory)
    if "://" in args.directory:  # a bucket folder: read through Beam's filesystem, as reprocess
        from apache_beam.io.filesystems import FileSystems
        from apache_beam.options.pipeline_options import PipelineOptions
        from dicomvec.io.object_storage import check_s3_paths
        options = PipelineOptions(list(extra))
        FileSystems.set_options(options)
        check_s3_paths([args.directory], options)  # credentials, bucket: one line
    from dicomvec.io.dead_letter import read_dead_letters
    print(summary_table(read_dead_letters(args.directory)))
    return 0
