"""Cross-modal search over the stored vectors: text → image, image → image, image → report,
with an optional join to each study's report, JSON output and a PNG contact sheet."""
from dicomvec.search.engine import run_search
from dicomvec.search.results import ImageResult, ReportResult, SearchRequest, SearchResult

__all__ = ["ImageResult", "ReportResult", "SearchRequest", "SearchResult", "run_search"]
