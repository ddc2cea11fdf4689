"""Query identifiers from command-line keys, shared by the SCU commands and
the load tool."""

from __future__ import annotations

from pydicom import Dataset
from pydicom.datadict import dictionary_VR, tag_for_keyword


def build_identifier(keys: list[str], defaults: dict[str, str]) -> Dataset:
    """``["ContentLabel=HOT*", "ContentDescription="]`` -> a Dataset.

    ``defaults`` are the return keys asked for when the user names none; a key
    given as ``Keyword=`` asks for that key with no matching value. A
    sequence keyword becomes an empty sequence (a universal match).
    """
    ds = Dataset()
    values = dict(defaults)
    for key in keys:
        name, sep, value = key.partition("=")
        if not sep or tag_for_keyword(name) is None:
            raise ValueError(f"bad query key {key!r}: use Keyword=value with a DICOM keyword")
        values[name] = value
    for name, value in values.items():
        if dictionary_VR(tag_for_keyword(name)) == "SQ":
            setattr(ds, name, [])
        else:
            setattr(ds, name, value)
    return ds
