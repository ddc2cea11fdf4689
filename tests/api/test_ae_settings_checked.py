"""The AE's implementation identification is checked when set, so nothing
malformed reaches an A-ASSOCIATE-RQ/AC."""

import pytest
from pydicom.uid import UID

from chromanet import AE, uids


@pytest.mark.parametrize("bad", ["", "1.2.a", "01.2", "1." + "2" * 64, "1..2"])
def test_malformed_implementation_class_uid_refused(bad: str) -> None:
    ae = AE()
    before = ae.implementation_class_uid
    with pytest.raises(ValueError):
        ae.implementation_class_uid = bad
    assert ae.implementation_class_uid == before


def test_implementation_class_uid_from_bytes() -> None:
    ae = AE()
    ae.implementation_class_uid = b"1.2.826.0.1"
    assert type(ae.implementation_class_uid) is UID and ae.implementation_class_uid == "1.2.826.0.1"


@pytest.mark.parametrize("bad", ["", "X" * 17, "caf\u00e9", "A\nB"])
def test_malformed_implementation_version_name_refused(bad: str) -> None:
    ae = AE()
    with pytest.raises(ValueError):
        ae.implementation_version_name = bad
    assert ae.implementation_version_name == uids.IMPLEMENTATION_VERSION_NAME
