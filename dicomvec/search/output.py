"""Render a ``SearchResult`` for people (a ranked table) or programs (JSON)."""
from __future__ import annotations

import json
import textwrap

from dicomvec.search.engine import ImageResult, SearchResult


def to_json(result: SearchResult) -> str:
    return json.dumps(result.to_dict(), indent=2, ensure_ascii=False)


def _query_line(result: SearchResult) -> str:
    request = result.request
    query = f'"{request.text}"' if request.text else request.image or \
        f"stored image {request.like}"
    line = (f"{request.kind}: {query}  |  provider {result.provider} ({result.embedding_model})"
            f"  |  {result.table} @ {result.sink}  |  k={request.k}")
    if request.view:
        line += f"  |  view={request.view.upper()}"
    if result.store_key:
        line += (f"\nmodel: {result.embedding_model} ({result.store_key}), table "
                 f"{result.qualified_table or result.table}")
    if not result.semantic:
        line += "\nNOTE: non-semantic descriptor, not CLIP: scores measure pixel likeness only"
    via = result.via or {}
    if via.get("reports_table"):
        line += (f"\nvia reports: {via['reports_table']}.{via['vector_column']} "
                 f"({via['vector_storage']}); {via['reports_considered']} nearest reports; "
                 f"ranked by {via['ranking']}")
        if via.get("unreadable_vectors_skipped"):
            line += (f"\nNOTE: {via['unreadable_vectors_skipped']} stored vectors were "
                     "unreadable or of another length and were skipped")
    elif via.get("ranking"):
        line += f"\nranked by {via['ranking']}"
    return line


def _wrapped(label: str, text: str, width: int = 100) -> str:
    if not text:
        return f"      {label}: (no such section)"
    return textwrap.fill(text, width=width, initial_indent=f"      {label}: ",
                         subsequent_indent=" " * (8 + len(label)))


def to_text(result: SearchResult) -> str:
    lines = [_query_line(result)]
    if not result.results and (result.via or {}).get("reports_table"):
        lines.append(f"no results: no images in {result.table} belong to the studies of the "
                     f"{result.via['reports_considered']} nearest reports"
                     + (f" (view {result.request.view})" if result.request.view else ""))
        return "\n".join(lines)
    if not result.results:
        lines.append(f"no results: {result.table} has no rows with a "
                     f"{result.store_key or result.provider} vector"
                     + (f" and view {result.request.view.upper()}" if result.request.view
                        else ""))
        return "\n".join(lines)
    if isinstance(result.results[0], ImageResult):
        # columns as wide as their longest value: DICOM UIDs (outside the MIMIC layout) run
        # to 64 characters
        hits = [item.hit for item in result.results]
        iw = max([44] + [len(h.ImageID) for h in hits])
        vw = max([8] + [len(h.ViewPosition or "-") for h in hits])
        sw = max([9] + [len(h.SubjectID) for h in hits])
        lines.append(f"{'rank':>4}  {'score':>7}  {'ImageID':<{iw}}  {'view':<{vw}}  "
                     f"{'subject':<{sw}}  study")
        for item in result.results:
            hit = item.hit
            lines.append(f"{item.rank:>4}  {hit.score:>7.4f}  {hit.ImageID:<{iw}}  "
                         f"{hit.ViewPosition or '-':<{vw}}  {hit.SubjectID:<{sw}}  {hit.StudyID}")
            if item.joined:
                if item.report is None:
                    lines.append("      (no report stored for this study)")
                elif not (item.report.Impression or item.report.Findings):
                    lines.append(_wrapped("REPORT (no sections, tail)",
                                          item.report.EmbeddedText))
                elif item.report.Impression == item.report.Findings:
                    lines.append(_wrapped("FINDINGS AND IMPRESSION", item.report.Impression))
                else:
                    lines.append(_wrapped("IMPRESSION", item.report.Impression))
                    lines.append(_wrapped("FINDINGS", item.report.Findings))
    else:
        tw = max([10] + [len(item.hit.StudyID) for item in result.results])
        sw = max([9] + [len(item.hit.SubjectID) for item in result.results])
        lines.append(f"{'rank':>4}  {'score':>7}  {'study':<{tw}}  {'subject':<{sw}}  "
                     "embedded text")
        for item in result.results:
            hit = item.hit
            # another tool's table has no EmbeddedText: show its IMPRESSION (else FINDINGS)
            text = hit.EmbeddedText or hit.Impression or hit.Findings
            text = text if len(text) <= 90 else text[:87] + "..."
            lines.append(f"{item.rank:>4}  {hit.score:>7.4f}  {hit.StudyID:<{tw}}  "
                         f"{hit.SubjectID:<{sw}}  {text}")
    return "\n".join(lines)
