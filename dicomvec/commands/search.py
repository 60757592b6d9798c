"""``dicomvec search``: text → image, image → image, image/text → report, from the shell.

Examples::

    dicomvec search --text "right lower lobe consolidation" --provider nvclip --k 10 --view PA
    dicomvec search --image scan.dcm --sink sqlite:///out/dicomvec.db --with-reports \
        --contact-sheet results.png
    dicomvec search --image scan.dcm --provider nvclip --target reports --json

The query image goes through the ingestion's decode/normalize/resize code with the same flags
(``--image-size``, ``--normalization``, ``--image-format``) as ``dicomvec run``. User errors
(a text query with the non-semantic ``thumbnail`` provider, an unreadable query image, a missing
table) print one line and exit 2.
"""
from __future__ import annotations

import argparse
import sys

TARGETS = ("images", "reports")  # = dicomvec.search.engine.TARGETS (imported lazily: Beam)


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "search", help="search the stored vectors (text/image → image/report)",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1] + "\n\n" + DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    from dicomvec.commands.pipeline_flags import add_help_flags
    add_help_flags(parser, beam=False)
    query = parser.add_argument_group("query (exactly one)")
    query.add_argument("--text", help="free-text query (semantic providers only, e.g. nvclip)")
    query.add_argument("--image", help="DICOM file to find similar images (or reports) for")
    search = parser.add_argument_group("search")
    search.add_argument("--target", choices=TARGETS, default="images",
                        help="table to search: images (default) or reports (FINDINGS/"
                             "IMPRESSION text vectors)")
    search.add_argument("--k", type=int, default=10, help="number of results (default 10)")
    search.add_argument("--view", help="only images with this ViewPosition (PA, AP, LATERAL...)")
    search.add_argument("--with-reports", action="store_true",
                        help="show each image hit's study report (FINDINGS/IMPRESSION)")
    search.add_argument("--json", action="store_true", help="print JSON instead of a table")
    search.add_argument("--contact-sheet", metavar="PNG",
                        help="also write the image hits as a PNG grid (thumbnail, rank, score, "
                             "ImageID, view)")
    search.add_argument("--columns", type=int, default=5, help="contact sheet columns")
    parser.set_defaults(func=run, passthrough=True)


DESCRIPTION = """Store, provider and preprocessing flags are those of `dicomvec run`
(query with the flags the archive was ingested with). The store must exist: a missing SQLite
file or a server that refuses the login is one line and exit status 2, and nothing is created."""


def pipeline_options(extra):
    """The ``DicomvecOptions`` for the flags after the search flags (strict: unknown flags are
    an error with a suggestion, not silently dropped; Beam's options do not apply here)."""
    from dicomvec.commands.pipeline_flags import strict_parser, check_flags
    check_flags(extra, "dicomvec search", dicomvec_only=True)
    from dicomvec.pipeline.options import DicomvecOptions
    known, _ = strict_parser("dicomvec search", dicomvec_only=True).parse_known_args(extra)
    return DicomvecOptions(flags=[], **vars(known))


def run(args, extra) -> int:
    from dicomvec.errors import UserError
    from dicomvec.search import output
    from dicomvec.search.engine import SearchRequest, run_search

    options = pipeline_options(extra)
    from dicomvec.pipeline import preflight
    preflight.check_provider(options.provider_config())  # the sink: checked by run_search
    request = SearchRequest(text=args.text, image=args.image, target=args.target, k=args.k,
                            view=args.view, with_reports=args.with_reports)
    if args.contact_sheet and args.target != "images":
        raise UserError("--contact-sheet shows image hits; it needs --target images")
    if args.columns < 1:
        raise UserError("--columns must be at least 1")
    result = run_search(request, options)
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
