from types import SimpleNamespace

import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from dicomvec.io.files import MissingIdentityError, identify, parse_mimic_path


def _header(**tags):
    ds = Dataset()
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    return ds


def test_mimic_path_gives_ids_from_the_path_not_the_header():
    header = _header(SOPInstanceUID="1.2.3", PatientID="X", StudyInstanceUID="9.9",
                     ViewPosition="pa", Rows=10, Columns=12, PhotometricInterpretation="MONOCHROME2")
    record = identify("/data/files/p10/p10000032/s50414267/02aa804e-bde0afdd.dcm", header)
    assert (record.image_id, record.subject_id, record.study_id) == (
        "02aa804e-bde0afdd", "10000032", "50414267")
    assert record.view_position == "PA"
    assert (record.rows, record.columns) == (10, 12)
    assert record.transfer_syntax == "1.2.840.10008.1.2.1"
    assert record.dicom_file == "02aa804e-bde0afdd.dcm"


def test_other_paths_fall_back_to_dicom_uids():
    header = _header(SOPInstanceUID="1.2.3", PatientID="PID", StudyInstanceUID="4.5.6")
    record = identify("gs://bucket/any/where/file.dcm", header)
    assert (record.image_id, record.subject_id, record.study_id) == ("1.2.3", "PID", "4.5.6")


def test_no_identity_is_an_error():
    with pytest.raises(MissingIdentityError):
        identify("/tmp/x.dcm", _header())


def test_parse_mimic_path_rejects_non_mimic():
    assert parse_mimic_path("/a/b/c.dcm") is None
    assert parse_mimic_path("files/p10/p1/s2/abc.dcm")["image_id"] == "abc"
