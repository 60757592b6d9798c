"""``dicomvec search``: text → image, image → image, image/text → report, from the shell.

Examples::

    dicomvec search --text "right lower lobe consolidation" --provider nvclip --k 10 --view PA
    dicomvec search --image scan.dcm --sink sqlite:///out/dicomvec.db --with-reports \
        --contact-sheet results.png
    dicomvec search --image scan.dcm --provider nvclip --target reports --json
    OPENAI_API_KEY=... dicomvec search --text "pleural effusion" --via-reports \
        --sink iris://dicomvec@db:1972/USER    # their OpenAI-embedded reports, read only

The query image goes through the ingestion's decode/normalize/resize code with the same flags
(``--image-size``, ``--normalization``, ``--image-format``) as ``dicomvec run``. User errors
(a text query with the non-semantic ``thumbnail`` provider, an unreadable query image, a missing
table) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import sys

from dicomvec.defaults import (CONTACT_SHEET_COLUMNS, REPORTS_TABLE, SEARCH_K,
                               SEARCH_TARGETS as TARGETS, TEXT_MAX_ATTEMPTS, TEXT_MODEL,
                               TEXT_TIMEOUT_S, TEXT_URL)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search", help="search the stored vectors (text/image → image/report)",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1] + "\n\n" + DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    from dicomvec.commands.pipeline_flags import add_help_flags
    add_help_flags(parser, beam=False)
    query = parser.add_argument_group("query (exactly one)")
    query.add_argument("--text", help="free-text query (semantic providers only: openclip, nvclip)")
    query.add_argument("--image", help="DICOM file to find similar images (or reports) for")
    query.add_argument("--like", metavar="IMAGE_ID",
                       help="a stored image's ImageID: search with its stored vector (of "
                            "--provider), nothing re-embedded, its file not needed")
    search = parser.add_argument_group("search")
    search.add_argument("--target", choices=TARGETS, default="images",
                        help="table to search: images (default) or reports (FINDINGS/"
                             "IMPRESSION text vectors)")
    search.add_argument("--k", type=int, default=SEARCH_K,
                        help=f"number of results (default {SEARCH_K})")
    search.add_argument("--view", help="only images with this ViewPosition (PA, AP, LATERAL...)")
    search.add_argument("--with-reports", action="store_true",
                        help="show each image hit's study report (FINDINGS/IMPRESSION)")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--contact-sheet", metavar="PNG",
                        help="also write the image hits as a PNG grid (thumbnail, rank, score, "
                             "ImageID, view)")
    search.add_argument("--columns", type=int, default=CONTACT_SHEET_COLUMNS,
                        help="contact sheet columns")
    parser.set_defaults(func=run, passthrough=True)
    add_reports_flags(parser)


def add_reports_flags(parser) -> None:
    """The reports table to read (ours or another tool's) and ``--via-reports`` with the
    OpenAI-compatible model that embedded it."""
    reports = parser.add_argument_group(
        "reports table (read only; may be another tool's, e.g. OpenAI-embedded)",
        f"--reports-table NAME (a store flag, as for `dicomvec reports`; default "
        f"{REPORTS_TABLE}) names it")
    reports.add_argument("--reports-schema", default=None,
                         help="its schema (default: --sink-schema; SQLite has none)")
    reports.add_argument("--via-reports", action="store_true",
                         help="text → image through the reports' own vectors: embed --text with "
                              "--text-model (OpenAI-compatible API, key from OPENAI_API_KEY), "
                              "find the nearest reports, return their studies' images")
    reports.add_argument("--text-model", default=TEXT_MODEL,
                         help=f"model that embedded the reports (default {TEXT_MODEL})")
    reports.add_argument("--text-url", default=None,
                         help=f"OpenAI-compatible base URL (default: $OPENAI_BASE_URL, else "
                              f"{TEXT_URL})")
    reports.add_argument("--text-dimensions", type=int, default=None,
                         help="send OpenAI's `dimensions` (only if the reports were embedded "
                              "shortened; default: the model's full length)")
    reports.add_argument("--text-timeout", type=float, default=TEXT_TIMEOUT_S,
                         help="read timeout per embeddings request, s (default "
                              f"{TEXT_TIMEOUT_S:g})")
    reports.add_argument("--text-max-attempts", type=int, default=TEXT_MAX_ATTEMPTS,
                         help="attempts per request; 429/5xx/timeouts are retried (default "
                              f"{TEXT_MAX_ATTEMPTS})")


DESCRIPTION = """Store, provider and preprocessing flags are those of `dicomvec run`
(query with the flags the archive was ingested with). The store must exist: a missing SQLite
file or a server that refuses the login is one line and exit status 2, and nothing is created.
A query image in a bucket (--image s3://BUCKET/KEY.dcm) takes Beam's S3 options
(--s3_endpoint_url URL, --s3_region_name NAME); credentials come from the environment."""


def search_options(extra, paths=(), prog: str = "dicomvec search", embeds: bool = True,
                   own_flags=()):
    """The store, provider and preprocessing flags after the command's own flags (``extra``),
    checked strictly (an unknown flag is an error with a suggestion among these and
    ``own_flags``, the command's own options; never dropped), and the
    provider's preflight (when the command ``embeds``: a ``--like`` query only reads a stored
    vector). ``paths``: files the command will read (``--image``).

    dicomvec's own flags alone → ``FlagValues`` (Beam is not imported: a local search starts in
    a fraction of the time). Beam's options do not apply here except its S3 options, for a
    query image or stored images in a bucket (``--s3_endpoint_url``, ``--s3_region_name``,
    ...): any other flag, a bucket path in ``paths`` or ``--gcs-emulator-host`` → the
    ``DicomvecOptions`` (Beam) with Beam's filesystems set up for this process."""
    from dicomvec.commands.pipeline_flags import dicomvec_parser
    from dicomvec.io.open_path import has_scheme
    from dicomvec.pipeline import preflight
    known, rest = dicomvec_parser(prog).parse_known_args(list(extra))
    if rest or known.gcs_emulator_host or any(has_scheme(p) for p in paths if p):
        options = _beam_options(extra, prog, own_flags)
    else:
        from dicomvec.pipeline.options import FlagValues
        options = FlagValues(**vars(known))
    if embeds:
        preflight.check_provider(options.provider_config())  # the sink: checked by the caller
    return options


def _beam_options(extra, prog: str, own_flags=()):
    """``DicomvecOptions`` for ``extra`` (dicomvec's flags and Beam's S3 options only), with
    Beam's filesystems and the GCS emulator set for this process."""
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import S3Options

    from dicomvec.commands.pipeline_flags import strict_parser, check_flags
    s3_parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    S3Options._add_argparse_args(s3_parser)
    s3_flags, rest = s3_parser.parse_known_args(extra)
    check_flags(rest, prog, dicomvec_only=True, own_flags=own_flags)
    from dicomvec.pipeline.options import DicomvecOptions
    known, _ = strict_parser(prog, dicomvec_only=True).parse_known_args(rest)
    options = DicomvecOptions(flags=[], **vars(known), **vars(s3_flags))
    FileSystems.set_options(options)
    from dicomvec.io.object_storage import storage_settings
    from dicomvec.io.remote import use_gcs_emulator
    use_gcs_emulator(storage_settings(options))  # --gcs_emulator_host: this process
    return options


def reports_request(request, args, options):
    """``request`` with the reports table (``--reports-table`` or the one of the provider's
    vector length, ``--reports-schema``) and
    ``--via-reports``, and the ``OpenAISettings`` for it (None without it)."""
    import dataclasses
    request = dataclasses.replace(request, via_reports=args.via_reports,
                                  reports_table=options.sink_config().reports_table,
                                  reports_schema=args.reports_schema)
    if not args.via_reports:
        return request, None
    import os
    from dicomvec.io.providers.openai_client import OpenAISettings
    return request, OpenAISettings(
        url=args.text_url or os.environ.get("OPENAI_BASE_URL") or TEXT_URL,
        model=args.text_model, dimensions=args.text_dimensions, timeout_s=args.text_timeout,
        max_attempts=args.text_max_attempts)


def run(args, extra) -> int:
    from dicomvec.errors import UserError
    from dicomvec.search import output
    from dicomvec.search.engine import SearchRequest, run_search

    # the sink: checked by run_search
    options = search_options(extra, [args.image], embeds=not args.like,
                             own_flags=getattr(args, "own_flags", ()))
    from dicomvec.io.open_path import has_scheme
    if has_scheme(args.image):  # a bucket
        from dicomvec.io.object_storage import check_s3_paths
        check_s3_paths([args.image], options)  # one line now, not minutes of Beam retries
    request = SearchRequest(text=args.text, image=args.image, like=args.like,
                            target=args.target, k=args.k,
                            view=args.view, with_reports=args.with_reports)
    request, text_settings = reports_request(request, args, options)
    if args.contact_sheet and args.target != "images":
        raise UserError("--contact-sheet shows image hits; it needs --target images")
    if args.columns < 1:
        raise UserError("--columns must be at least 1")
    from dicomvec.pipeline import preflight
    preflight.announce_destination(options.provider_config(),
                                   "the query image's pixels" if args.image else "")
    result = run_search(request, options, text_settings)
    print(output.to_json(result) if args.json else output.to_text(result))
    if args.contact_sheet:
        if not result.results:
            raise UserError("no results: nothing to put on the contact sheet")
        from dicomvec.search.contact_sheet import write_contact_sheet
        width, height = write_contact_sheet(result, args.contact_sheet, args.columns,
                                            options.normalization)
        print(f"contact sheet: {args.contact_sheet} ({width}×{height} px, "
              f"{len(result.results)} hits)", file=sys.stderr if args.json else sys.stdout)
    return 0
