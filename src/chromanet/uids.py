"""UIDs chromanet uses by name, and the checks for UIDs and AE titles.

This module is a leaf (it imports nothing from chromanet) so that every layer
can use it. Names of SOP classes and transfer syntaxes follow pydicom /
pynetdicom keywords, so code moving over from pynetdicom reads the same.

Only the UIDs the engine itself needs are here; the full registry of SOP
classes belongs to the services layer.
"""

from __future__ import annotations

__all__ = [
    "APPLICATION_CONTEXT_NAME",
    "ImplicitVRLittleEndian",
    "ExplicitVRLittleEndian",
    "DeflatedExplicitVRLittleEndian",
    "ExplicitVRBigEndian",
    "DEFAULT_TRANSFER_SYNTAXES",
    "Verification",
    "ColorPaletteStorage",
    "ColorPaletteInformationModelFind",
    "ColorPaletteInformationModelMove",
    "ColorPaletteInformationModelGet",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "validate_uid",
    "validate_ae_title",
]

#: The DICOM Application Context Name (PS3.7 Annex A), the only one defined.
APPLICATION_CONTEXT_NAME = "1.2.840.10008.3.1.1.1"

# Transfer syntaxes (PS3.5 section 10).
ImplicitVRLittleEndian = "1.2.840.10008.1.2"
ExplicitVRLittleEndian = "1.2.840.10008.1.2.1"
DeflatedExplicitVRLittleEndian = "1.2.840.10008.1.2.1.99"
ExplicitVRBigEndian = "1.2.840.10008.1.2.2"

#: Transfer syntaxes proposed for a context when none are given. Same members
#: and order as pynetdicom's ``DEFAULT_TRANSFER_SYNTAXES``: Implicit VR Little
#: Endian first, because it is the one every DICOM AE must support (PS3.5
#: 10.1), then Explicit VR Little Endian, Deflated, and Explicit VR Big Endian
#: (retired, but still proposed by pynetdicom and accepted by old peers).
DEFAULT_TRANSFER_SYNTAXES: tuple[str, ...] = (
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
)

# SOP classes (PS3.4).
Verification = "1.2.840.10008.1.1"
ColorPaletteStorage = "1.2.840.10008.5.1.4.39.1"
ColorPaletteInformationModelFind = "1.2.840.10008.5.1.4.39.2"
ColorPaletteInformationModelMove = "1.2.840.10008.5.1.4.39.3"
ColorPaletteInformationModelGet = "1.2.840.10008.5.1.4.39.4"

#: SOP Instance UIDs of the eight well-known Color Palettes (PS3.6 Annex A:
#: Hot Iron, PET, Hot Metal Blue, PET 20 Step, Spring, Summer, Fall, Winter).
WELL_KNOWN_PALETTE_UIDS = frozenset(f"1.2.840.10008.1.5.{n}" for n in range(1, 9))

#: chromanet's Implementation Class UID (PS3.7 D.3.3.2). A UUID-derived UID
#: (PS3.5 B.2, root 2.25) generated once for this project; it never changes.
IMPLEMENTATION_CLASS_UID = "2.25.241842705298940886862995710319256704116"

#: chromanet's Implementation Version Name (PS3.7 D.3.3.2): 1 to 16 characters.
IMPLEMENTATION_VERSION_NAME = "CHROMANET_010"

_MAX_UID_LENGTH = 64
_MAX_AE_TITLE_LENGTH = 16


def validate_uid(uid: object) -> bool:
    """Return whether ``uid`` is a well-formed UID (PS3.5 section 9.1).

    A UID is 1 to 64 characters: components of the digits 0-9 separated by
    single dots; a component does not start with 0 unless it is "0" itself.
    Anything that is not a ``str`` is not a UID.
    """
    if not isinstance(uid, str) or not 0 < len(uid) <= _MAX_UID_LENGTH:
        return False
    for component in uid.split("."):
        # isdecimal() would accept non-ASCII digits such as "٣"; the UID
        # repertoire is ASCII 0-9 only.
        if not component or not component.isascii() or not component.isdigit():
            return False
        if len(component) > 1 and component[0] == "0":
            return False
    return True


def validate_ae_title(title: object) -> str:
    """Check an AE title and return it without its insignificant spaces.

    PS3.5 (AE value representation) and PS3.8 (9.3.2): 1 to 16 characters of
    the default character repertoire (ASCII 0x20-0x7E), no backslash, no
    control characters; leading and trailing spaces are not significant, and
    a title made only of spaces is not a title.

    Raises TypeError for a non-str and ValueError, naming the problem, for an
    invalid title.
    """
    if not isinstance(title, str):
        raise TypeError(f"an AE title must be a str, not {type(title).__name__}")
    stripped = title.strip(" ")
    if not stripped:
        raise ValueError(f"AE title {title!r} is empty or only spaces")
    if len(stripped) > _MAX_AE_TITLE_LENGTH:
        raise ValueError(
            f"AE title {title!r} has {len(stripped)} significant characters, more than {_MAX_AE_TITLE_LENGTH}"
        )
    for position, char in enumerate(stripped):
        code = ord(char)
        if code < 0x20 or code > 0x7E:
            raise ValueError(
                f"AE title {title!r} has character U+{code:04X} at position {position}, "
                "outside the default repertoire (or a control character)"
            )
        if char == "\\":
            raise ValueError(f"AE title {title!r} has a backslash at position {position}")
    return stripped
