"""The search page: a Flask app over ``dicomvec.search.run_search``, the engine ``dicomvec
search`` uses (no second implementation: every query below is a ``SearchRequest``).

Routes (all GET unless said; server-rendered HTML, no JavaScript, nothing from another host):

* ``/``: the query forms (text, DICOM upload), filters, and a glimpse of the archive.
* ``/search?text=…`` text → image/report; ``/search?like=ImageID`` image → image/report from a
  stored image ("more like this"); ``POST /search`` with a DICOM file: image → image/report.
  Filters: ``k``, ``view``, ``target`` (images|reports), ``via=1`` (``--via-reports``).
* ``/image/<ImageID>``: larger rendering, header fields, the study's report, nearest images.
* ``/render/<ImageID>.png?size=thumb|large``: the ingestion rendering of a stored image.

Safety: a file is opened only when it is the stored ``ImagePath`` of an ImageID looked up in the
store (``search.browse.image_info``) or the temporary copy of an upload (in the server's own
temporary folder, deleted after the query, never beside the archive). Uploads above
``max_upload`` bytes are refused (413). With a ``token`` every request must carry it (``?token=``
once, then a cookie; or ``Authorization: Bearer``); without one, only requests addressed to the
loopback host are served (a DNS-rebinding page cannot read the archive).
"""
from __future__ import annotations

import base64
import dataclasses
import hmac
import logging
import os
import tempfile
import time
from typing import Optional
from urllib.parse import urlencode

from flask import Flask, Response, abort, g, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from dicomvec.defaults import SEARCH_K, SEARCH_TARGETS
from dicomvec.errors import UserError, first_line
from dicomvec.io.providers import TextNotSupportedError, create_provider
from dicomvec.search import SearchRequest, run_search
from dicomvec.search import browse
from dicomvec.search.results import ImageResult
from dicomvec.serve.images import SIZES, Renderer, header_fields

log = logging.getLogger(__name__)

#: the largest k the page asks for
MAX_K = 100
#: images on the home page and neighbours on an image's page
GLIMPSE, NEIGHBOURS = 24, 8
COOKIE = "dicomvec_token"
#: views always offered in the filter (those stored are added)
COMMON_VIEWS = ("PA", "AP", "LATERAL", "LL")


@dataclasses.dataclass
class ServeSettings:
    """How the page runs: ``options`` (``DicomvecOptions``: sink, provider, preprocessing), the
    reports table and ``--via-reports`` settings as for ``dicomvec search``."""

    options: object
    reports_table: Optional[str] = None
    reports_schema: Optional[str] = None
    text_settings: object = None  # OpenAISettings when --via-reports was given
    token: Optional[str] = None
    allowed_hosts: tuple = ()
    max_upload: int = 64 << 20
    cache_bytes: int = 64 << 20


class PageError(Exception):
    """A query the page cannot answer: shown on the page with ``status``."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def create_app(settings: ServeSettings) -> Flask:
    options = settings.options
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload
    app.config["MAX_FORM_MEMORY_SIZE"] = 1 << 20
    provider = create_provider(options.provider_config())  # name/model/semantic; never set up
    renderer = Renderer(options.normalization, settings.cache_bytes)
    upload_dir = tempfile.mkdtemp(prefix="dicomvec-serve-")
    app.extensions["dicomvec"] = {"renderer": renderer, "upload_dir": upload_dir,
                                  "settings": settings}

    def base_request(**fields) -> SearchRequest:
        return SearchRequest(reports_table=settings.reports_table,
                             reports_schema=settings.reports_schema, **fields)

    def text_mode() -> dict:
        """Whether text queries can run and, when not, why (the engine's own words)."""
        if settings.text_settings is not None:
            return {"ok": True, "why": None, "via": True}
        if provider.semantic:
            return {"ok": True, "why": None, "via": False}
        return {"ok": False, "via": False,
                "why": f"text search needs a semantic model: the {provider.name!r} provider "
                       "is a non-semantic image descriptor with no text embedding; use "
                       "--provider nvclip (or --via-reports with your reports' own vectors)"}

    @app.context_processor
    def common():
        return {"provider": provider, "text": text_mode(), "max_k": MAX_K,
                "targets": SEARCH_TARGETS, "sink": options.sink_config().redacted,
                "table": options.sink_config().table,
                "max_upload_mb": settings.max_upload / (1 << 20),
                "summary": _summary}

    # -- access -----------------------------------------------------------------------------
    @app.before_request
    def guard():
        g.started = time.monotonic()
        if settings.token is None:
            if settings.allowed_hosts and request.host.lower() not in settings.allowed_hosts:
                abort(421, "this server answers only on its loopback address")
            g.allowed = True
            return None
        given = request.args.get("token") or request.cookies.get(COOKIE) or \
            _bearer(request.headers.get("Authorization", ""))
        if not given:
            raise PageError("this server needs its token: open the URL `dicomvec serve` printed "
                            "at start (…/?token=…)", 401)
        if not hmac.compare_digest(given.encode(), settings.token.encode()):
            raise PageError("wrong token", 403)
        if request.method == "GET" and "token" in request.args:  # into a cookie, off the URL
            rest = {k: v for k, v in request.args.items(multi=True) if k != "token"}
            target = request.path + ("?" + urlencode(rest) if rest else "")
            response = redirect(target, 303)
            response.set_cookie(COOKIE, settings.token, httponly=True, samesite="Strict")
            return response
        g.allowed = True
        return None

    @app.after_request
    def headers(response: Response):
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; img-src 'self' data:; style-src 'self'; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")
        if "Cache-Control" not in response.headers:
            response.headers["Cache-Control"] = "no-store"
        return response

    def error_page(message: str, status: int):
        """The error page; the query forms (which list the store's views) only for a caller
        who got past the token and host checks."""
        context = {"form": _form(), "views": _views()} if g.get("allowed") else {}
        return render_template("error.html", message=message, status=status, **context), status

    @app.errorhandler(PageError)
    def page_error(exc: PageError):
        return error_page(str(exc), exc.status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        message = exc.description or exc.name
        if exc.code == 413:
            message = (f"the upload is larger than the limit of {_mb(settings.max_upload)} "
                       "(--max-upload-mb)")
        return error_page(message, exc.code)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("serve: %s %s failed", request.method, request.path)
        return error_page(f"internal error: {type(exc).__name__}: {first_line(exc)}", 500)

    # -- pages ------------------------------------------------------------------------------
    @app.get("/")
    def index():
        view = _view(request.args.get("view"))
        images, problem = [], None
        try:
            images = browse.archive_page(options, provider.store_key, GLIMPSE, view)
            counts = browse.archive_counts(options)
        except Exception as exc:
            problem, counts = (f"cannot read {options.sink_config().table}: "
                               f"{first_line(exc)}", {})
        return render_template("index.html", images=images, counts=counts, problem=problem,
                               form=_form(view=view), views=_views())

    @app.route("/search", methods=["GET", "POST"])
    def search():
        k = _k(request.values.get("k"))
        view = _view(request.values.get("view"))
        target = request.values.get("target") or "images"
        if target not in SEARCH_TARGETS:
            raise PageError(f"target must be one of {', '.join(SEARCH_TARGETS)}")
        if target == "reports":
            view = None
        via = request.values.get("via") == "1"
        text = (request.values.get("text") or "").strip()
        like = (request.values.get("like") or "").strip()
        form = _form(text=text, k=k, view=view, target=target, via=via)
        query, upload_path = {}, None
        try:
            if request.method == "POST":
                upload = request.files.get("dicom")
                if upload is None or not upload.filename:
                    raise PageError("choose a DICOM file to upload")
                upload_path = _save_upload(upload, upload_dir)
                fields = {"image": upload_path}
                query = {"kind": "upload", "name": os.path.basename(upload.filename)[:200],
                         "picture": _data_url(renderer.render_path(upload_path, SIZES["thumb"]))}
            elif like:
                info = browse.image_info(options, like, provider.store_key)
                if info is None:
                    raise PageError(f"no stored image {like!r} with a {provider.name} vector",
                                    404)
                fields = {"like": info.ImageID}  # its stored vector: the file is not read
                query = {"kind": "like", "info": info}
            elif text:
                if via and settings.text_settings is None:
                    raise PageError("the via-reports route is not configured: start "
                                    "`dicomvec serve --via-reports` (OPENAI_API_KEY set)")
                fields = {"text": text, "via_reports": via}
                query = {"kind": "text", "text": text}
            else:
                return redirect(url_for("index"))
            with_reports = target == "images" and browse.reports_available(
                options, base_request(text="x"))
            search_request = base_request(k=k, view=view, target=target,
                                          with_reports=with_reports, **fields)
            try:
                result = run_search(search_request, options,
                                    settings.text_settings if via else None)
            except (UserError, TextNotSupportedError, ValueError) as exc:
                raise PageError(first_line(exc)) from None
        except PageError as exc:
            status = exc.status
            return render_template("results.html", form=form, views=_views(), query=query,
                                   result=None, error=str(exc), with_reports=False), status
        finally:
            if upload_path:
                _remove(upload_path)
        return render_template("results.html", form=form, views=_views(), query=query,
                               result=result, error=None, with_reports=with_reports,
                               images=target == "images", seconds=time.monotonic() - g.started)

    @app.get("/image/<image_id>")
    def image(image_id: str):
        info = browse.image_info(options, image_id, provider.store_key)
        if info is None:
            raise PageError(f"no stored image {image_id!r} with a {provider.name} vector", 404)
        fields, unreadable = header_fields(info.ImagePath)
        lookup = base_request(text="x")
        report = None
        if browse.reports_available(options, lookup):
            report = browse.report_of(options, lookup, info.StudyID)
            if report is not None and report.SubjectID and report.SubjectID != info.SubjectID:
                report = None  # a StudyID clash: never another subject's report
        neighbours, problem = [], None
        try:
            result = run_search(base_request(like=info.ImageID, k=NEIGHBOURS + 1), options)
            neighbours = [r for r in result.results if r.hit.ImageID != info.ImageID][:NEIGHBOURS]
        except (UserError, TextNotSupportedError, ValueError) as exc:
            problem = first_line(exc)
        return render_template("image.html", info=info, fields=fields, unreadable=unreadable,
                               report=report, neighbours=neighbours, problem=problem,
                               form=_form(), views=_views())

    @app.get("/render/<image_id>.png")
    def render(image_id: str):
        size = SIZES.get(request.args.get("size", "thumb"))
        if size is None:
            raise PageError(f"size must be one of {', '.join(SIZES)}")
        info = browse.image_info(options, image_id, provider.store_key)
        if info is None:
            response = Response(renderer.placeholder(size), status=404, mimetype="image/png")
            response.headers["X-Dicomvec-Placeholder"] = "unknown image"
            return response
        data, ok = renderer.png(info, size)
        response = Response(data, mimetype="image/png")
        response.headers["Cache-Control"] = "private, max-age=600"
        if not ok:
            response.headers["X-Dicomvec-Placeholder"] = "file unavailable"
        return response

    def _views():
        try:
            stored = browse.views(options, provider.store_key)
        except Exception:
            stored = []
        return list(dict.fromkeys([*COMMON_VIEWS, *stored]))

    return app


# -- helpers -----------------------------------------------------------------------------------
def _bearer(header: str) -> Optional[str]:
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def _mb(n: int) -> str:
    return f"{n / (1 << 20):g} MB"


def _k(value) -> int:
    if value in (None, ""):
        return SEARCH_K
    try:
        k = int(value)
    except ValueError:
        raise PageError(f"k must be a whole number, got {value[:20]!r}") from None
    if not 1 <= k <= MAX_K:
        raise PageError(f"k must be between 1 and {MAX_K}")
    return k


def _view(value) -> Optional[str]:
    value = (value or "").strip().upper()
    if not value:
        return None
    if len(value) > 20 or not all(c.isalnum() or c in " _-" for c in value):
        raise PageError("view must be a ViewPosition such as PA, AP or LATERAL")
    return value


def _form(text: str = "", k: int = SEARCH_K, view: Optional[str] = None,
          target: str = "images", via: bool = False) -> dict:
    return {"text": text, "k": k, "view": view or "", "target": target, "via": via}


def _save_upload(upload, folder: str) -> str:
    """The upload as a temporary file in the server's own folder (deleted after the query)."""
    handle, path = tempfile.mkstemp(suffix=".dcm", dir=folder)
    with os.fdopen(handle, "wb") as out:
        upload.save(out)
    if os.path.getsize(path) == 0:
        _remove(path)
        raise PageError("the uploaded file is empty")
    return path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _data_url(png: Optional[bytes]) -> Optional[str]:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode()


def _summary(item) -> str:
    """A result's report in one paragraph: IMPRESSION, else FINDINGS, else the embedded text."""
    report = getattr(item, "report", None) if isinstance(item, ImageResult) else item.hit
    if report is None:
        return ""
    return report.Impression or report.Findings or report.EmbeddedText or ""
