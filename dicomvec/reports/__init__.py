"""Radiology reports: parse MIMIC-CXR report files and choose the text a CLIP text tower sees."""
from dicomvec.reports.parsing import (TOKEN_BUDGET, Report, ReportParseError,
                                      choose_embedded_text, estimate_tokens, parse_report,
                                      parse_report_path, split_sections)

__all__ = ["TOKEN_BUDGET", "Report", "ReportParseError", "choose_embedded_text",
           "estimate_tokens", "parse_report", "parse_report_path", "split_sections"]
