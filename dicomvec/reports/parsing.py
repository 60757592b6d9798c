"""MIMIC-CXR free-text reports → sections → the text sent to a CLIP text tower.

In: the report text and its path (``files/pXX/p<subject>/s<study>.txt``). Out: a ``Report``
with SubjectID and StudyID (from the path), the FINDINGS and IMPRESSION sections (empty when the
report has none) and ``embedded_text``, the part of the report that is embedded.

Which text is embedded, and why
-------------------------------
CLIP-family text towers (NV-CLIP included) read at most 77 BPE tokens, start and end markers
included; anything longer is cut (or refused) by the model, not by us, so the vector would
silently describe only the opening of a long report. A MIMIC report opens with EXAMINATION,
INDICATION, TECHNIQUE and COMPARISON paragraphs that say why the film was taken, not what it
shows. So dicomvec embeds, within a conservative token budget (``TOKEN_BUDGET``):

1. the IMPRESSION (the radiologist's summary: short, diagnostic, phrased like a search query),
   then, while budget remains, the FINDINGS sentences after it;
2. else the FINDINGS;
3. else (reports without either section, e.g. wet reads or free-form notes) the TAIL of the
   report, the last sentences that fit: in MIMIC the conclusion sits at the end, while the head
   holds the indication.

Cutting happens at sentence boundaries when possible; ``___`` de-identification marks are
removed. The exact text sent is stored in the EmbeddedText column, so what a vector means is
never a guess.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Optional, Tuple

from dicomvec.defaults import CLIP_CONTEXT_TOKENS

#: CLIP's context is 77 tokens including <start> and <end>. ``estimate_tokens`` over-counts
#: (about one token per 4 letters; real BPE needs one per common word), which is the margin.
CONTEXT_TOKENS = CLIP_CONTEXT_TOKENS
TOKEN_BUDGET = CONTEXT_TOKENS - 2

_MIMIC_REPORT_PATH = re.compile(r"(?:^|/)p(?P<subject>\d+)/s(?P<study>\d+)\.txt$", re.IGNORECASE)
# "FINDINGS:" / "IMPRESSION:" / "FINDINGS AND IMPRESSION:" at the start of a line
_HEADER = re.compile(r"^[ \t]*(?P<name>[A-Z][A-Z /&()\-]{1,40}?)[ \t]*:", re.MULTILINE)
_FINDINGS_NAMES = {"FINDINGS", "FINDING", "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION"}
_IMPRESSION_NAMES = {"IMPRESSION", "IMPRESSIONS", "CONCLUSION", "CONCLUSIONS",
                     "FINDINGS AND IMPRESSION", "FINDINGS/IMPRESSION"}
# CLIP's pre-tokenizer: letters runs, single digits, runs of other non-space characters
_PRETOKEN = re.compile(r"[A-Za-z]+|\d|[^\sA-Za-z\d]+")
# a sentence ends at . ! ? followed by space, but not after an enumeration such as "1."
_SENTENCE_END = re.compile(r"(?<![0-9][.])(?<=[.!?])\s+")
_PLACEHOLDER = re.compile(r"_{2,}")
_BANNER = re.compile(r"^[ \t]*FINAL REPORT[ \t]*$", re.MULTILINE)


class ReportParseError(ValueError):
    """The file is not a usable report (no identity in its path, or no text at all)."""


@dataclasses.dataclass(frozen=True)
class Report:
    """One parsed report; ``embedded_text`` is what goes to the text tower."""

    path: str
    subject_id: str
    study_id: str
    findings: str
    impression: str
    embedded_text: str
    text_source: str  # "impression", "impression+findings", "findings" or "tail"


def parse_report_path(path: str) -> Optional[Tuple[str, str]]:
    """``(subject_id, study_id)`` for ``.../p<subject>/s<study>.txt``, else None."""
    match = _MIMIC_REPORT_PATH.search(path.replace("\\", "/"))
    return (match["subject"], match["study"]) if match else None


def _clean(text: str) -> str:
    text = re.sub(r"\s+", " ", _PLACEHOLDER.sub(" ", text))
    return re.sub(r" (?=[.,;:])", "", text).strip()


def split_sections(text: str) -> Dict[str, str]:
    """Upper-case ``NAME:`` headers → their cleaned body text ('' for the preamble, key '')."""
    sections: Dict[str, str] = {}
    matches = list(_HEADER.finditer(text))
    preamble_end = matches[0].start() if matches else len(text)
    sections[""] = _clean(text[:preamble_end])
    for index, match in enumerate(matches):
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        name = re.sub(r"\s+", " ", match["name"]).strip()
        body = _clean(text[match.end():end])
        if name in sections and sections[name]:
            sections[name] = f"{sections[name]} {body}".strip()
        else:
            sections[name] = body
    return sections


def _first_section(sections: Dict[str, str], names) -> str:
    for name, body in sections.items():
        if name in names and body:
            return body
    return ""


def estimate_tokens(text: str) -> int:
    """A conservative estimate of CLIP BPE tokens (without start/end markers).

    Each pre-token (a word, a digit, a punctuation character) is at least one BPE token; long,
    rare words (medical terms) split into several, counted here as one per 4 letters. This is
    never below the nvclip provider's own estimate, so the provider never has to cut a report
    text further and EmbeddedText stays exactly what was embedded.
    """
    return sum(-(-len(piece) // 4) if piece.isalpha() else 1 if piece.isdigit() else len(piece)
               for piece in _PRETOKEN.findall(text))


def _sentences(text: str) -> List[str]:
    return [s for s in _SENTENCE_END.split(text) if s]


def _truncate_words(text: str, budget: int, from_end: bool = False) -> str:
    words = text.split()
    if from_end:
        words = words[::-1]
    kept: List[str] = []
    for word in words:
        if estimate_tokens(" ".join(kept + [word])) > budget:
            break
        kept.append(word)
    return " ".join(kept[::-1] if from_end else kept)


def fit_head(text: str, budget: int) -> str:
    """The leading sentences of ``text`` that fit ``budget`` tokens; when the first sentence
    alone is too long, its leading words."""
    kept: List[str] = []
    for sentence in _sentences(text):
        if estimate_tokens(" ".join(kept + [sentence])) > budget:
            if not kept:
                return _truncate_words(text, budget)
            break
        kept.append(sentence)
    return " ".join(kept)


def fit_tail(text: str, budget: int) -> str:
    """The trailing sentences of ``text`` that fit ``budget`` tokens (words if none fits)."""
    kept: List[str] = []
    for sentence in reversed(_sentences(text)):
        if estimate_tokens(" ".join([sentence] + kept)) > budget:
            break
        kept.insert(0, sentence)
    return " ".join(kept) if kept else _truncate_words(text, budget, from_end=True)


def choose_embedded_text(findings: str, impression: str, full_text: str,
                         budget: int = TOKEN_BUDGET) -> Tuple[str, str]:
    """``(text, source)``: IMPRESSION (+ FINDINGS while budget remains), else FINDINGS, else the
    tail of the report. See the module docstring for why."""
    if impression:
        text = fit_head(impression, budget)
        remaining = budget - estimate_tokens(text)
        if findings and findings != impression and remaining >= 8:
            extra = fit_head(findings, remaining - 1)
            if extra and estimate_tokens(f"{text} {extra}") <= budget:
                return f"{text} {extra}", "impression+findings"
        return text, "impression"
    if findings:
        return fit_head(findings, budget), "findings"
    return fit_tail(full_text, budget), "tail"


def parse_report(text: str, path: str, budget: int = TOKEN_BUDGET) -> Report:
    """Parse one report. Raises ``ReportParseError`` for a path without MIMIC identity or a
    report with no text."""
    identity = parse_report_path(path)
    if identity is None:
        raise ReportParseError(f"not a MIMIC-CXR report path (.../p<subject>/s<study>.txt): "
                               f"{path}")
    banners = list(_BANNER.finditer(text))
    sections = split_sections(_BANNER.sub("", text))
    findings = _first_section(sections, _FINDINGS_NAMES)
    impression = _first_section(sections, _IMPRESSION_NAMES)
    body = _clean(" ".join(body for body in sections.values() if body))
    if not body:
        raise ReportParseError("report has no text")
    # the tail fallback reads the final report, not a wet read written before its banner
    final = _clean(text[banners[-1].end():]) if banners else body
    embedded, source = choose_embedded_text(findings, impression, final or body, budget)
    if not embedded:
        raise ReportParseError("report has no text that fits the text model")
    return Report(path=path, subject_id=identity[0], study_id=identity[1], findings=findings,
                  impression=impression, embedded_text=embedded, text_source=source)
