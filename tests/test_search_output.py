"""``dicomvec search``'s table stays in line when IDs are long DICOM UIDs (issue 24)."""
from __future__ import annotations

from dicomvec.io.stores.tables import Hit
from dicomvec.search.engine import ImageResult, SearchRequest, SearchResult
from dicomvec.search.output import to_text


def test_columns_stay_aligned_with_64_character_uids():
    uid = "1.2.826.0.1.3680043.8.498." + "1234567890" * 3 + "12345678"  # 64 characters
    assert len(uid) == 64
    subject, study = "PATIENT-" + "7" * 40, "STUDY-" + "9" * 58
    hits = [Hit(uid, subject, study, "/a.dcm", "PA", "thumbnail", 0.9),
            Hit("4700374c-d0dbc74d-abbe90b0-00b37868-64e6f5f0", "18506242", "56369616",
                "/b.dcm", "LATERAL", "thumbnail", 0.8)]
    result = SearchResult(SearchRequest(image="/q.dcm"), "thumbnail", "m", False, "sqlite:///x",
                          "MIMICCXRImages", [ImageResult(i + 1, h) for i, h in enumerate(hits)])
    table = [line for line in to_text(result).splitlines() if line.startswith(("rank", "   "))]
    header = table[0]
    for column in ("view", "subject", "study"):
        starts = {line.index(value) for line, value in zip(
            table[1:], [{"view": "PA", "subject": subject, "study": study}[column],
                        {"view": "LATERAL", "subject": "18506242", "study": "56369616"}[column]])}
        assert starts == {header.index(column)}, (column, "\n".join(table))
