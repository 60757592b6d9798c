"""``--contact-sheet``: the top image hits as one PNG grid, because people would rather look
than read.

Each cell holds the hit's image (taken through the ingestion decode/normalize/resize path at
``THUMB`` pixels, so it shows what the model saw) and a caption: rank and score, ImageID, view
and study. A header band names the query. Grid: ``columns`` cells per row (fewer when there are
fewer hits), as many rows as needed; ``sheet_size`` gives the exact pixel size. An image that
cannot be read any more (moved, corrupt) gets a grey placeholder cell, never a failure.
"""
from __future__ import annotations

import io
import logging
import math
from typing import List, Sequence, Tuple

from PIL import Image, ImageDraw, ImageFont

from dicomvec.defaults import CONTACT_SHEET_COLUMNS, NORMALIZATION
from dicomvec.search.engine import ImageResult, SearchResult

log = logging.getLogger(__name__)

THUMB = 192
PAD = 6
CAPTION = 56
HEADER = 26
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
ACCENT = (255, 196, 64)


def grid_shape(n: int, columns: int) -> Tuple[int, int]:
    """(columns, rows) for ``n`` cells."""
    if n < 1:
        raise ValueError("a contact sheet needs at least one hit")
    cols = max(1, min(columns, n))
    return cols, math.ceil(n / cols)


def sheet_size(n: int, columns: int = 5) -> Tuple[int, int]:
    """(width, height) in pixels of the sheet for ``n`` hits."""
    cols, rows = grid_shape(n, columns)
    cell_w, cell_h = THUMB + 2 * PAD, THUMB + CAPTION + 2 * PAD
    return cols * cell_w, HEADER + rows * cell_h


def _thumbnail(path: str, normalization: str) -> Image.Image:
    from dicomvec.search.queries import image_record
    try:
        record = image_record(path, THUMB, normalization, "png")
        with Image.open(io.BytesIO(record.encoded)) as im:
            return im.convert("RGB").resize((THUMB, THUMB))
    except Exception as exc:  # a missing image must not lose the sheet
        log.warning("contact sheet: no thumbnail for %s: %s", path, exc)
        cell = Image.new("RGB", (THUMB, THUMB), (90, 90, 90))
        ImageDraw.Draw(cell).text((10, THUMB // 2 - 6), "image unavailable", fill=TEXT,
                                  font=ImageFont.load_default())
        return cell


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "...", font=font) > width:
        text = text[:-1]
    return text + "..."


def _split_id(draw: ImageDraw.ImageDraw, image_id: str, font, width: int) -> List[str]:
    """The ImageID on one line, or two (split at the dash nearest the middle) when too wide."""
    if draw.textlength(image_id, font=font) <= width or "-" not in image_id:
        return [image_id, ""]
    dashes = [i for i, c in enumerate(image_id) if c == "-"]
    cut = min(dashes, key=lambda i: abs(i - len(image_id) / 2))
    return [image_id[:cut + 1], image_id[cut + 1:]]


def render(result: SearchResult, columns: int = CONTACT_SHEET_COLUMNS,
           normalization: str = NORMALIZATION,
           thumbnails: Sequence[Image.Image] | None = None) -> Image.Image:
    """The sheet as a PIL image (``thumbnails`` overrides loading, for tests)."""
    items: List[ImageResult] = [r for r in result.results if isinstance(r, ImageResult)]
    if not items:
        raise ValueError("--contact-sheet needs image results (the search found none)")
    width, height = sheet_size(len(items), columns)
    cols, _ = grid_shape(len(items), columns)
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    request = result.request
    query = f'"{request.text}"' if request.text else \
        (request.image or request.like).rsplit("/", 1)[-1]
    header = (f"{request.kind.replace('→', '->')}: {query}   provider {result.provider}   "
              f"top {len(items)}")
    draw.text((PAD, 7), _fit(draw, header, font, width - 2 * PAD), fill=TEXT, font=font)
    cell_w, cell_h = THUMB + 2 * PAD, THUMB + CAPTION + 2 * PAD
    for index, item in enumerate(items):
        x = (index % cols) * cell_w + PAD
        y = HEADER + (index // cols) * cell_h + PAD
        thumb = thumbnails[index] if thumbnails is not None else \
            _thumbnail(item.hit.ImagePath, normalization)
        sheet.paste(thumb.convert("RGB").resize((THUMB, THUMB)), (x, y))
        hit = item.hit
        lines = [(f"#{item.rank}  score {hit.score:.4f}", ACCENT),
                 *[(part, TEXT) for part in _split_id(draw, hit.ImageID, font, THUMB)],
                 (f"view {hit.ViewPosition or '-'}  study {hit.StudyID}", TEXT)]
        for line_no, (text, colour) in enumerate(lines):
            draw.text((x, y + THUMB + 2 + 13 * line_no), _fit(draw, text, font, THUMB),
                      fill=colour, font=font)
    return sheet


def write_contact_sheet(result: SearchResult, path: str, columns: int = 5,
                        normalization: str = NORMALIZATION) -> Tuple[int, int]:
    """Render and save as PNG; returns the (width, height) written."""
    sheet = render(result, columns, normalization)
    sheet.save(path, format="PNG", optimize=True)
    return sheet.size
