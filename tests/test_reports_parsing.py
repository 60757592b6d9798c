"""Report parsing: MIMIC-CXR layouts (with and without sections) → sections and embedded text."""
from __future__ import annotations

import pytest

from dicomvec.reports import (TOKEN_BUDGET, ReportParseError, estimate_tokens, parse_report,
                              parse_report_path, split_sections)
from dicomvec.reports.samples import sample_texts, write_sample_reports

PATH = "/data/mimic-cxr/files/p10/p10000032/s50414267.txt"


@pytest.fixture(scope="module")
def samples():
    return sample_texts()


def test_identity_comes_from_the_mimic_path():
    assert parse_report_path(PATH) == ("10000032", "50414267")
    assert parse_report_path("gs://bucket/files/p19/p19449049/s56250954.txt") == \
        ("19449049", "56250954")
    assert parse_report_path("files/p10/p10000032/s50414267/x.dcm") is None
    with pytest.raises(ReportParseError, match="not a MIMIC-CXR report path"):
        parse_report("FINDINGS: clear.", "reports/notes.txt")


def test_findings_and_impression_are_split_and_impression_leads(samples):
    report = parse_report(samples["s_findings_impression"], PATH)
    assert (report.subject_id, report.study_id) == ("10000032", "50414267")
    assert report.impression == "Right lower lobe consolidation concerning for pneumonia."
    assert report.findings.startswith("There is a new focal consolidation in the right lower")
    assert report.findings.endswith("The imaged upper abdomen is unremarkable.")
    assert "INDICATION" not in report.findings and "productive cough" not in report.findings
    assert report.text_source == "impression+findings"
    assert report.embedded_text.startswith(report.impression + " There is a new focal")
    assert estimate_tokens(report.embedded_text) <= TOKEN_BUDGET


def test_impression_only_and_findings_only(samples):
    impression_only = parse_report(samples["s_impression_only"], PATH)
    assert impression_only.findings == ""
    assert impression_only.impression.startswith("Moderate cardiomegaly")
    assert impression_only.text_source == "impression"
    assert impression_only.embedded_text == impression_only.impression

    findings_only = parse_report(samples["s_findings_only"], PATH)
    assert findings_only.impression == ""
    assert findings_only.text_source == "findings"
    assert findings_only.embedded_text == findings_only.findings
    assert "Preoperative" not in findings_only.embedded_text


def test_combined_findings_and_impression_header_fills_both(samples):
    report = parse_report(samples["s_findings_and_impression"], PATH)
    assert report.findings == report.impression
    assert report.impression.startswith("Hyperinflated lungs")


def test_report_without_sections_embeds_its_tail(samples):
    report = parse_report(samples["s_no_sections"], PATH)
    assert report.findings == "" and report.impression == ""
    assert report.text_source == "tail"
    assert report.embedded_text.endswith("There is a small left pleural effusion. "
                                         "No pneumothorax is seen.")
    assert "___" not in report.embedded_text
    assert estimate_tokens(report.embedded_text) <= TOKEN_BUDGET


def test_wet_read_tail_comes_from_the_final_report(samples):
    report = parse_report(samples["s_wet_read"], PATH)
    assert report.text_source == "tail"
    assert "telephone" not in report.embedded_text
    assert report.embedded_text.endswith("The left lung is clear.")


def test_long_impression_is_cut_to_the_token_budget_at_its_start(samples):
    report = parse_report(samples["s_long_impression"], PATH)
    assert estimate_tokens(report.impression) > TOKEN_BUDGET
    assert estimate_tokens(report.embedded_text) <= TOKEN_BUDGET
    assert report.impression.startswith(report.embedded_text)
    assert len(report.embedded_text.split()) >= 30  # cut by words, not to nothing


def test_every_sample_fits_the_budget_and_never_embeds_the_indication(samples):
    assert len(samples) >= 6
    for name, text in samples.items():
        report = parse_report(text, PATH)
        assert report.embedded_text, name
        assert estimate_tokens(report.embedded_text) <= TOKEN_BUDGET, name
        assert "INDICATION" not in report.embedded_text, name


def test_empty_report_is_an_error():
    with pytest.raises(ReportParseError, match="no text"):
        parse_report("  \n FINAL REPORT \n ___ \n", PATH)


def test_token_estimate_is_never_below_the_word_count():
    text = "Moderate cardiomegaly with pulmonary vascular congestion, 7 mm nodule."
    assert estimate_tokens(text) >= len(text.split()) + 2  # comma, period, digits


def test_split_sections_keeps_the_preamble_and_merges_repeats():
    sections = split_sections("Intro line.\nFINDINGS: one.\nIMPRESSION: two.\nFINDINGS: three.")
    assert sections[""] == "Intro line."
    assert sections["FINDINGS"] == "one. three."
    assert sections["IMPRESSION"] == "two."


def test_sample_reports_are_laid_next_to_study_folders(tmp_path):
    for study in ("p10/p10000001/s50000001", "p10/p10000001/s50000002", "p12/p12000003/s50000003"):
        (tmp_path / study).mkdir(parents=True)
    written = write_sample_reports(tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in written) == [
        "p10/p10000001/s50000001.txt", "p10/p10000001/s50000002.txt",
        "p12/p12000003/s50000003.txt"]
    for path in written:
        report = parse_report(path.read_text(), str(path))
        assert report.study_id == path.stem[1:]
    assert write_sample_reports(tmp_path) == []  # existing reports are kept
    with pytest.raises(ValueError, match="no MIMIC-layout study folders"):
        write_sample_reports(tmp_path / "p10" / "p10000001" / "s50000001")


def test_sample_reports_ship_in_the_sdist(tmp_path):
    """Beam's --setup_file builds an sdist: the sample texts must travel with the package."""
    import subprocess
    import sys
    import tarfile
    from pathlib import Path
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                   cwd=repo, check=True, capture_output=True)
    (archive,) = tmp_path.glob("dicomvec-*.tar.gz")
    names = tarfile.open(archive).getnames()
    for name in sample_texts():
        assert any(n.endswith(f"dicomvec/reports/samples/{name}.txt") for n in names), name
