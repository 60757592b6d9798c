"""``dicomvec serve``: the search page in a browser, on the engine of `dicomvec search`.

Examples::

    dicomvec serve                                   # after ./run_local.sh: http://127.0.0.1:8765/
    dicomvec serve --sink postgresql://dicomvec@db/dicomvec --provider nvclip
    dicomvec serve --host 0.0.0.0 --sink iris://dicomvec@db:1972/USER --provider nvclip

Text, uploaded DICOM and "more like this" queries; thumbnails rendered from each stored image's
DICOM with the pipeline's normalization; an image's page with its header, report and nearest
images. Binds 127.0.0.1; bound to any other address it asks for a token printed at start.
"""
from __future__ import annotations

import argparse
import ipaddress
import sys

HOST, PORT = "127.0.0.1", 8765
MAX_UPLOAD_MB, CACHE_MB = 64, 64
TOKEN_ENV = "DICOMVEC_SERVE_TOKEN"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="the search page in a browser (text/DICOM/more-like-this → images)",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1] + "\n\n" + DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter, add_help=False)
    from dicomvec.commands.pipeline_flags import add_help_flags
    add_help_flags(parser, beam=False)
    web = parser.add_argument_group("server")
    web.add_argument("--host", default=HOST,
                     help="address to bind; any non-loopback address requires a token "
                          f"(printed at start, or ${TOKEN_ENV})")
    web.add_argument("--port", type=int, default=PORT, help="port (0: any free port)")
    web.add_argument("--require-token", action="store_true",
                     help="ask for the token on loopback too (shared machines)")
    web.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB,
                     help="largest DICOM upload accepted, MB")
    web.add_argument("--cache-mb", type=float, default=CACHE_MB,
                     help="memory for rendered thumbnails (least recently used dropped), MB")
    from dicomvec.commands.search import add_reports_flags
    add_reports_flags(parser)
    parser.set_defaults(func=run, passthrough=True)


DESCRIPTION = """Store, provider and preprocessing flags are those of `dicomvec search` (and
`dicomvec run`): serve with the flags the archive was ingested with. The store must exist.
Uploads are kept in a private temporary folder only for the query; a file is opened only when
it is a stored image's path (looked up by ImageID)."""


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run(args, extra) -> int:
    import os
    import secrets

    from dicomvec.errors import UserError
    from dicomvec.commands.search import reports_request, search_options
    try:
        import flask  # noqa: F401
    except ImportError:
        raise UserError("dicomvec serve needs Flask: pip install 'flask>=3.0'") from None
    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    if args.max_upload_mb <= 0 or args.cache_mb < 0:
        raise UserError("--max-upload-mb must be positive and --cache-mb not negative")
    options = search_options(extra, prog="dicomvec serve",
                             own_flags=getattr(args, "own_flags", ()))
    options.sink_config().images().dialect.check_reachable(must_exist=True)
    from dicomvec.search import SearchRequest
    probe, text_settings = reports_request(SearchRequest(text="x"), args, options)
    if text_settings is not None:
        from dicomvec.io.providers.openai_client import api_key
        api_key(text_settings.model)  # a missing key is said now, not on the first query

    token = None
    if args.require_token or not is_loopback(args.host):
        token = os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(24)
    from dicomvec.serve.app import ServeSettings, create_app
    from werkzeug.serving import make_server
    try:
        server = make_server(args.host, args.port, None, threaded=True)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") \
            from None
    port = server.server_port
    shown = f"[{args.host}]" if ":" in args.host else args.host
    hosts = () if token else tuple(f"{h}:{port}" for h in
                                   {shown.lower(), "localhost", "127.0.0.1", "[::1]"})
    settings = ServeSettings(options=options, reports_table=probe.reports_table,
                             reports_schema=probe.reports_schema, text_settings=text_settings,
                             token=token, allowed_hosts=hosts,
                             max_upload=int(args.max_upload_mb * (1 << 20)),
                             cache_bytes=int(args.cache_mb * (1 << 20)))
    app = create_app(settings)
    server.app = app
    from dicomvec.pipeline import preflight
    preflight.announce_destination(options.provider_config(), "uploaded query images' pixels")
    url = f"http://{shown}:{port}/"
    print(f"dicomvec serve: {url}" + (f"?token={token}" if token else ""), flush=True)
    if token:
        print("  the token is required for every request (it is patient data): keep the URL "
              "private", flush=True)
    sink = options.sink_config()
    print(f"  {sink.table} @ {sink.redacted}, provider {options.provider}; Ctrl-C stops",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        import shutil
        shutil.rmtree(app.extensions["dicomvec"]["upload_dir"], ignore_errors=True)
    print("dicomvec serve: stopped", file=sys.stderr)
    return 0
