"""Identifiers of the Color Palette Information Model, turned into SQL.

PS3.4 X.6.1.2 (Table X.6-1) defines one entity and these keys:

==============================  ===========  =====  ======  ==========================
Attribute                       Tag          Match  Return  Matching types
==============================  ===========  =====  ======  ==========================
Specific Character Set          (0008,0005)  -      1C      never matched (C.2.2.2)
SOP Class UID                   (0008,0016)  R      1       single value
SOP Instance UID                (0008,0018)  U      1       single value, list of UID
Content Label (CS)              (0070,0080)  R      1       single value, wild card, universal
Content Description (LO)        (0070,0081)  -      2       return only
Content Creator's Name (PN)     (0070,0084)  -      2       return only
Alternate Content Description   (0070,0087)  -      3       return only, with >Content
Sequence                                                    Description and >Language Code
                                                            Sequence (>>Code Value, >>Coding
                                                            Scheme Designator, >>Coding Scheme
                                                            Version, >>Code Meaning)
==============================  ===========  =====  ======  ==========================

C-FIND follows the Basic Worklist "Worklist" search method (X.4.1, K.4.1):
one response per matching palette, with every key of the request, the
matching keys included, filled from the index (K.2.2.1.2).

Decisions, with the part of the standard behind each:

* Single value matching (C.2.2.2.1) is an exact, case-sensitive comparison.
  Content Label is CS, whose leading and trailing spaces are not significant
  (PS3.5 6.2), so both sides are compared without them.
* Wild card matching (C.2.2.2.4) applies to Content Label: ``*`` is any run
  of characters, ``?`` exactly one, and the match is case sensitive (only PN
  is exempt). In SQLite it becomes a ``GLOB``, which is case sensitive and
  uses the label index for a literal prefix. ``GLOB`` has one more special
  character than DICOM, ``[``, which is escaped as ``[[]``; the SQL ``LIKE``
  characters ``%`` and ``_`` are plain characters in ``GLOB``, so labels such
  as ``HOT_IRON`` match themselves only. In PostgreSQL it becomes a ``LIKE``
  (case sensitive there) with ``%``, ``_`` and the escape ``\\`` escaped
  (``wildcard_to_like``). A value of only ``*`` is universal.
* Universal matching (C.2.2.2.3): a zero-length key matches everything and
  asks for the value to be returned.
* SOP Instance UID accepts a list of UIDs (C.2.2.2.2) in C-FIND too. Table
  X.6-1 names single value matching only; a list is a superset that no
  conforming SCU can be hurt by, and it is the form C-GET/C-MOVE use.
* UIDs are never wild-carded (C.2.2.2.4 excludes UI): ``*`` in a UID is a
  character that no UID contains, so it matches nothing.
* More than one value for a key that takes a single value (Content Label,
  SOP Class UID) has no defined meaning without Multiple Value Matching
  extended negotiation (C.2.2.2.8), which we do not accept: failure 0xA900.
* Query/Retrieve Level (0008,0052) "shall not be present" (X.4.1, X.4.2,
  X.4.3). Its presence means the identifier is not one of this SOP class:
  failure 0xA900 "Identifier does not match SOP Class" (K.4.1.1.4 /
  C.4.1.1.4 status tables), with the tag as Offending Element.
* A key outside Table X.6-1 (an "optional key" to the worklist method) is
  returned zero-length, and every pending response of that C-FIND carries
  0xFF01 "one or more Optional Keys were not supported". The same status
  answers a value given for a return-only key (Content Description, Content
  Creator's Name, the sequence's items): it is not matched; the stored value
  is returned.
* Return keys absent from a stored palette come back zero-length (type 2
  semantics; the type 3 sequence as an empty sequence).
* Alternate Content Description Sequence (C.2.2.2.6, K.2.2.1.2 note 4):
  zero-length, or one empty item, returns every item with the sub-keys of
  the table; one item naming sub-keys returns those sub-keys only. A request
  with more than one item is malformed (C.2.2.2.6 asks for a single item):
  0xA900.
* Specific Character Set (C.2.2.2, K.4.1.1.3) is never matched. pydicom
  decodes the request with it, the index holds Unicode text, and matching is
  between Unicode strings, so the request's and the palette's character sets
  need not agree. Content Label is CS (default repertoire), the only text key
  matched. See ``chromanet.archive.response`` for the character set of the
  responses.
* PN: Content Creator's Name is return-only, so no PN matching is done.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any, Iterable, NamedTuple

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue

from chromanet import uids
from chromanet.errors import ChromanetError
from chromanet.status import Status

__all__ = [
    "ArchiveError",
    "IdentifierError",
    "ReturnKey",
    "FindPlan",
    "Condition",
    "plan_find",
    "retrieve_uids",
    "render_sqlite",
    "render_postgresql",
    "wildcard_to_glob",
    "wildcard_to_like",
]

# C-FIND / C-GET / C-MOVE statuses used here (PS3.4 C.4.1.1.4, K.4.1.1.4, C.4.2.1.5).
PENDING = int(Status.PENDING)
PENDING_OPTIONAL_KEYS_NOT_SUPPORTED = int(Status.PENDING_WARNING)
IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS = int(Status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS)
# A C-FIND identifier with an element that cannot be decoded (a sequence
# whose item is cut short, say: pydicom converts such an element only when
# it is first read, so the engine's decode before the handler let it by).
IDENTIFIER_UNDECODABLE = int(Status.FIND_IDENTIFIER_DECODE_FAILED)

# Tags of the information model.
SPECIFIC_CHARACTER_SET = 0x00080005
LANGUAGE_CODE_SEQUENCE = 0x00080006
SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
QUERY_RETRIEVE_LEVEL = 0x00080052
CODE_VALUE = 0x00080100
CODING_SCHEME_DESIGNATOR = 0x00080102
CODING_SCHEME_VERSION = 0x00080103
CODE_MEANING = 0x00080104
TIMEZONE_OFFSET_FROM_UTC = 0x00080201
CONTENT_LABEL = 0x00700080
CONTENT_DESCRIPTION = 0x00700081
CONTENT_CREATOR_NAME = 0x00700084
ALTERNATE_CONTENT_DESCRIPTION_SEQUENCE = 0x00700087

#: Columns of a C-FIND's rows, in this order (see ``index.py``); those no
#: return key asks for are selected as NULL (``selected_columns``).
ROW_COLUMNS = (
    "sop_class_uid",
    "sop_instance_uid",
    "content_label",
    "content_description",
    "content_creator_name",
    "alternate_descriptions",
    "specific_character_set",
    "ascii_only",
)
COL_SOP_CLASS_UID = 0
COL_SOP_INSTANCE_UID = 1
COL_CONTENT_LABEL = 2
COL_CONTENT_DESCRIPTION = 3
COL_CONTENT_CREATOR_NAME = 4
COL_ALTERNATE_DESCRIPTIONS = 5
COL_SPECIFIC_CHARACTER_SET = 6
COL_ASCII_ONLY = 7

# Top-level keys of Table X.6-1: tag -> (VR, row column).
MODEL_KEYS: dict[int, tuple[str, int]] = {
    SOP_CLASS_UID: ("UI", COL_SOP_CLASS_UID),
    SOP_INSTANCE_UID: ("UI", COL_SOP_INSTANCE_UID),
    CONTENT_LABEL: ("CS", COL_CONTENT_LABEL),
    CONTENT_DESCRIPTION: ("LO", COL_CONTENT_DESCRIPTION),
    CONTENT_CREATOR_NAME: ("PN", COL_CONTENT_CREATOR_NAME),
    ALTERNATE_CONTENT_DESCRIPTION_SEQUENCE: ("SQ", COL_ALTERNATE_DESCRIPTIONS),
}
#: Sub-keys of an Alternate Content Description Sequence item.
ALTERNATE_ITEM_KEYS: dict[int, str] = {LANGUAGE_CODE_SEQUENCE: "SQ", CONTENT_DESCRIPTION: "LO"}
#: Sub-keys of a Language Code Sequence item (the coded entry macro of X.6-1).
CODE_ITEM_KEYS: dict[int, str] = {
    CODE_VALUE: "SH",
    CODING_SCHEME_DESIGNATOR: "SH",
    CODING_SCHEME_VERSION: "SH",
    CODE_MEANING: "LO",
}
# Present in a request but neither matched nor returned as keys.
_NOT_KEYS = {SPECIFIC_CHARACTER_SET, TIMEZONE_OFFSET_FROM_UTC}


class ArchiveError(ChromanetError):
    """A request the archive cannot answer; ``status`` is the failure to send.

    ``comment`` is for Error Comment (0000,0902) (at most 64 characters) and
    ``offending_tags`` for Offending Element (0000,0901).
    """

    def __init__(self, status: int, comment: str, offending_tags: Iterable[int] = ()) -> None:
        super().__init__(f"0x{status:04X}: {comment}")
        self.status = status
        self.comment = comment[:64]
        self.offending_tags = tuple(offending_tags)


class IdentifierError(ArchiveError):
    """The identifier is not one this SOP class can answer (bad keys or values)."""


# A sub-template: None = every sub-key of the table that the stored item has;
# otherwise the requested sub-keys in tag order, each (tag, VR, sub-template).
Template = tuple[tuple[int, str, "Template | None"], ...] | None


@dataclass(frozen=True, slots=True)
class ReturnKey:
    """One element of every response identifier.

    ``column`` indexes the row (``ROW_COLUMNS``); None means a key we do not
    support, returned zero-length. ``template`` shapes the sequence.
    """

    tag: int
    vr: str
    column: int | None
    template: Template = None


class Condition(NamedTuple):
    """One matching key as the index must test it, in no SQL dialect.

    ``kind``: ``"equal"`` (``value`` a string), ``"any"`` (``value`` a tuple
    of strings: list of UID matching) or ``"wildcard"`` (``value`` the DICOM
    wild card text, ``*`` and ``?``). Each backend renders the conditions in
    its own SQL (``render_sqlite``, ``render_postgresql``). A NamedTuple: one
    is made per matching key of every C-FIND, and a frozen dataclass costs
    several times as much to build.
    """

    column: str
    kind: str
    value: Any


def render_sqlite(conditions: Iterable[Condition]) -> tuple[str, tuple[Any, ...]]:
    """The conditions as an SQLite ``WHERE`` clause with ``?`` parameters."""
    clauses: list[str] = []
    params: list[Any] = []
    for c in conditions:
        if c.kind == "equal":
            clauses.append(f"{c.column} = ?")
            params.append(c.value)
        elif c.kind == "any":
            clauses.append(f"{c.column} IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(list(c.value)))
        else:
            clauses.append(f"{c.column} GLOB ?")
            params.append(wildcard_to_glob(c.value))
    return (" AND ".join(clauses) if clauses else "1"), tuple(params)


def render_postgresql(conditions: Iterable[Condition]) -> tuple[str, tuple[Any, ...]]:
    """The conditions as a PostgreSQL ``WHERE`` clause with ``$n`` parameters.

    The text columns are ``COLLATE "C"`` (see ``archive.postgres``), so
    ``=`` and ``LIKE`` are byte-exact and case sensitive, as in SQLite.
    """
    clauses: list[str] = []
    params: list[Any] = []
    for c in conditions:
        n = len(params) + 1
        if c.kind == "equal":
            clauses.append(f"{c.column} = ${n}")
            params.append(c.value)
        elif c.kind == "any":
            clauses.append(f"{c.column} = ANY(${n}::text[])")
            params.append(list(c.value))
        else:
            clauses.append(f"{c.column} LIKE ${n}")
            params.append(wildcard_to_like(c.value))
    return (" AND ".join(clauses) if clauses else "TRUE"), tuple(params)


@dataclass(frozen=True, slots=True)
class FindPlan:
    """What one C-FIND asks: the matching conditions and the response shape.

    ``where`` and ``params`` are the conditions rendered for SQLite once,
    when planned (the embedded index's hot path).
    """

    where: str
    params: tuple[Any, ...]
    keys: tuple[ReturnKey, ...]
    status: int
    request_charset: tuple[str, ...] | None
    wants_sequence: bool
    conditions: tuple[Condition, ...] = ()


#: Columns a C-FIND reads whatever its keys: the UID (which names the
#: match), and what decides the response's character set.
_ALWAYS_READ = frozenset({COL_SOP_INSTANCE_UID, COL_SPECIFIC_CHARACTER_SET, COL_ASCII_ONLY})


def selected_columns(plan: FindPlan) -> tuple[str, ...]:
    """``ROW_COLUMNS`` for ``plan``'s query, NULL in place of each column no
    return key reads: a C-FIND for UIDs and labels does not make a Python
    string per row of every description and creator name it will not send
    (about a third of the query's time for 10,000 matches on SQLite)."""
    return _columns_for(tuple([key.column for key in plan.keys]))


@functools.lru_cache(maxsize=64)
def _columns_for(read: tuple[int | None, ...]) -> tuple[str, ...]:
    """``selected_columns`` by the columns the return keys read (a few
    shapes of query recur: made once each, not per C-FIND)."""
    wanted = _ALWAYS_READ.union(column for column in read if column is not None)
    return tuple(name if k in wanted else "NULL" for k, name in enumerate(ROW_COLUMNS))


def wildcard_to_like(value: str) -> str:
    """A DICOM wild card value as a PostgreSQL ``LIKE`` pattern (escape ``\\``).

    ``%``, ``_`` and the backslash are literal in DICOM and special in LIKE:
    each is escaped with a backslash; then ``*`` becomes ``%`` and ``?`` ``_``.
    """
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def wildcard_to_glob(value: str) -> str:
    """A DICOM wild card value (``*``, ``?``) as an SQLite GLOB pattern.

    DICOM has no escape for its wild cards; GLOB's only other special
    character, ``[``, is made literal as ``[[]``.
    """
    return value.replace("[", "[[]")


def _values(elem: DataElement) -> list[Any]:
    value = elem.value
    if value is None or value == "":
        return []
    if isinstance(value, (MultiValue, list, tuple)):
        return [v for v in value]
    return [value]


def _text(value: Any) -> str:
    return str(value).strip(" ")


# The longest value each VR allows (PS3.5 Table 6.2-1, in characters); a
# matching value may not be longer (a range of dates or times is two values
# and a hyphen). Text VRs without a limit are capped too: no key is that long.
_MAX_VALUE_LENGTH = {
    "AE": 16, "AS": 4, "CS": 16, "DA": 18, "DS": 16, "DT": 54, "IS": 12, "LO": 64, "LT": 10240,
    "PN": 64 * 3 + 2, "SH": 16, "ST": 1024, "TM": 28, "UC": 1024, "UI": 64, "UR": 1024, "UT": 1024,
}


def _check_key(elem: DataElement, tag: int) -> None:
    """Failure 0xA900 for what cannot be in an identifier at all: command
    or file meta elements, or a value longer than its VR allows."""
    if (tag >> 16) in (0x0000, 0x0002):
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "command or file meta element in the identifier", [tag]
        )
    limit = _MAX_VALUE_LENGTH.get(_element_vr(elem))
    if limit is None or elem.VR == "SQ":
        return
    for value in _values(elem):
        if len(str(value)) > limit:
            raise IdentifierError(
                IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                f"({tag >> 16:04X},{tag & 0xFFFF:04X}) value longer than its VR allows",
                [tag],
            )


# Raw elements plan_find reads itself (``_elements``): pydicom's conversion
# of one of these costs ~25 us, more than the rest of a one-match plan. UI,
# AE, AS and CS values are stripped of trailing spaces and NULs and then
# split, as pydicom's converters do; the text VRs split first, then each
# value is stripped.
_STRIPPED_THEN_SPLIT = frozenset({"UI", "AE", "AS", "CS"})
_SPLIT_THEN_STRIPPED = frozenset({"LO", "SH", "ST", "LT", "UT", "UC"})
_ESCAPE = 0x1B  # ISO 2022 code extension: the bytes are not plain ASCII text


class _Plain:
    """An identifier element whose value was read from its raw ASCII bytes
    (the ``tag``, ``VR`` and ``value`` of the DataElement pydicom would make)."""

    __slots__ = ("tag", "VR", "value")

    def __init__(self, tag: int, vr: str, value: str | list[str]) -> None:
        self.tag = tag
        self.VR = vr
        self.value = value


# tag -> dictionary VR (None: private or unknown) for the implicit VR
# identifiers' elements: pydicom's look-up costs more than the rest of _plain.
_DICTIONARY_VRS: dict[int, str | None] = {}


def _dictionary_vr(tag: int) -> str | None:
    try:
        return _DICTIONARY_VRS[tag]
    except KeyError:
        pass
    vr: str | None
    if tag & 0x10000:  # private: no dictionary VR
        vr = None
    else:
        try:
            vr = dictionary_VR(tag)
        except KeyError:
            vr = None
    if len(_DICTIONARY_VRS) < 4096:
        _DICTIONARY_VRS[tag] = vr
    return vr


def _plain(raw: RawDataElement, tag: int) -> _Plain | None:
    """``raw`` (with tag ``tag``) as a _Plain when it is one of the simple
    text VRs in ASCII, else None (pydicom converts it)."""
    data = b"" if raw.value is None else raw.value  # None: zero length
    if not isinstance(data, bytes) or not data.isascii() or _ESCAPE in data:
        return None
    vr = raw.VR
    if vr is None:
        vr = _dictionary_vr(tag)
        if vr is None:
            return None
    text = data.decode("ascii")
    if vr in _STRIPPED_THEN_SPLIT:
        values = text.rstrip(" \x00").split("\\")
    elif vr in _SPLIT_THEN_STRIPPED:
        values = [value.rstrip("\x00 ") for value in text.split("\\")]
    else:
        return None
    return _Plain(tag, vr, values[0] if len(values) == 1 else values)


def _elements(identifier: Dataset) -> list[Any]:
    """The identifier's elements in tag order, as iterating it gives them,
    the simple raw ones read without pydicom's conversion (``_plain``).

    ``items()`` gives the elements as they are held, raw or converted; a
    raw element of no value (zero length) is read here too, where
    ``get_item`` would have pydicom convert it first."""
    held = [(int(tag), elem) for tag, elem in identifier.items()]
    held.sort(key=_first)
    out: list[Any] = []
    for tag, elem in held:
        plain = _plain(elem, tag) if type(elem) is RawDataElement else None
        if plain is not None:
            out.append(plain)
            continue
        try:
            out.append(identifier[tag])
        except Exception as exc:  # pydicom's conversion of what the peer sent
            raise _undecodable(tag, exc) from exc
    return out


def _undecodable(tag: int, exc: Exception) -> IdentifierError:
    """The failure for an identifier element that cannot be decoded: the
    peer's bytes, not our error, so a status (0xC310) and no traceback."""
    return IdentifierError(
        IDENTIFIER_UNDECODABLE, f"({tag >> 16:04X},{tag & 0xFFFF:04X}) not decodable: {exc}", [tag]
    )


def _element(identifier: Dataset, tag: int) -> Any:
    """The element ``tag`` of the identifier (None when absent), read as
    ``_elements`` reads it: a simple raw one without pydicom's conversion."""
    if tag not in identifier:
        return None
    held = identifier.get_item(tag)
    if type(held) is RawDataElement:
        plain = _plain(held, tag)
        if plain is not None:
            return plain
    return identifier[tag]


def _first(pair: tuple[int, Any]) -> int:
    return pair[0]


def _uid(value: Any) -> str:
    return str(value).strip(" \x00")


def _request_charset(elem: Any) -> tuple[str, ...] | None:
    """The request's Specific Character Set, from its element (or None)."""
    if elem is None:
        return None
    values = tuple(_text(v) for v in _values(elem))
    return values or None


def _element_vr(elem: DataElement) -> str:
    vr = elem.VR
    if vr and "or" not in vr:
        return str(vr)
    try:
        return str(dictionary_VR(elem.tag)).split(" or ")[0]
    except KeyError:
        return "UN"


def _code_template(elem: DataElement) -> tuple[Template, bool]:
    """Template for Language Code Sequence; second value: something unsupported."""
    items = list(elem.value or ())
    if not items or len(items[0]) == 0:
        return None, len(items) > 1
    unsupported = len(items) > 1
    keys: list[tuple[int, str, Template | None]] = []
    for sub in items[0]:
        tag = int(sub.tag)
        if tag in CODE_ITEM_KEYS:
            keys.append((tag, CODE_ITEM_KEYS[tag], None))
            unsupported |= bool(_values(sub))  # a value: matching not supported
        elif (tag & 0xFFFF) != 0:
            keys.append((tag, _element_vr(sub), None))
            unsupported = True
    return tuple(sorted(keys)), unsupported


def _alternate_template(elem: DataElement) -> tuple[Template, bool]:
    items = list(elem.value or ())
    if len(items) > 1:
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "Alternate Content Description Sequence: more than one item",
            [int(elem.tag)],
        )
    if not items or len(items[0]) == 0:
        return None, False
    unsupported = False
    keys: list[tuple[int, str, Template | None]] = []
    for sub in items[0]:
        tag = int(sub.tag)
        if tag == LANGUAGE_CODE_SEQUENCE:
            template, bad = _code_template(sub)
            keys.append((tag, "SQ", template))
            unsupported |= bad
        elif tag == CONTENT_DESCRIPTION:
            keys.append((tag, "LO", None))
            unsupported |= bool(_values(sub))
        elif (tag & 0xFFFF) != 0:
            keys.append((tag, _element_vr(sub), None))
            unsupported = True
    return tuple(sorted(keys, key=lambda k: k[0])), unsupported


def _single(elem: DataElement, name: str) -> str | None:
    values = _values(elem)
    if len(values) > 1:
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"{name}: more than one value", [int(elem.tag)]
        )
    return values[0] if values else None


def plan_find(identifier: Dataset) -> FindPlan:
    """Check a C-FIND identifier and turn it into an SQL condition and a shape.

    Raises IdentifierError for an identifier this SOP class cannot answer.
    """
    if QUERY_RETRIEVE_LEVEL in identifier.keys():
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "Query/Retrieve Level shall not be present (PS3.4 X.4.1)",
            [QUERY_RETRIEVE_LEVEL],
        )
    conditions: list[Condition] = []
    keys: list[ReturnKey] = []
    unsupported = False
    wants_sequence = False
    charset_element = None
    for elem in _elements(identifier):
        tag = int(elem.tag)
        _check_key(elem, tag)
        if tag in _NOT_KEYS or (tag & 0xFFFF) == 0:
            if tag == SPECIFIC_CHARACTER_SET:
                charset_element = elem
            continue  # not keys, group lengths
        model = MODEL_KEYS.get(tag)
        if model is None:
            keys.append(ReturnKey(tag, _element_vr(elem), None))
            unsupported = True
            continue
        vr, column = model
        if tag == SOP_CLASS_UID:
            value = _single(elem, "SOP Class UID")
            if value is not None:
                conditions.append(Condition("sop_class_uid", "equal", _uid(value)))
        elif tag == SOP_INSTANCE_UID:
            wanted = [u for u in (_uid(v) for v in _values(elem)) if u]
            if len(wanted) == 1:
                conditions.append(Condition("sop_instance_uid", "equal", wanted[0]))
            elif wanted:
                conditions.append(Condition("sop_instance_uid", "any", tuple(wanted)))
        elif tag == CONTENT_LABEL:
            value = _single(elem, "Content Label")
            label = _text(value) if value is not None else ""
            if label and label.strip("*"):
                kind = "wildcard" if "*" in label or "?" in label else "equal"
                conditions.append(Condition("content_label", kind, label))
        elif tag == ALTERNATE_CONTENT_DESCRIPTION_SEQUENCE:
            try:
                template, bad = _alternate_template(elem)
            except IdentifierError:
                raise
            except Exception as exc:  # an item's elements are converted as they are read
                raise _undecodable(tag, exc) from exc
            unsupported |= bad
            wants_sequence = True
            keys.append(ReturnKey(tag, vr, column, template))
            continue
        else:  # return-only text keys
            unsupported |= bool(_values(elem))
        keys.append(ReturnKey(tag, vr, column))
    keys.sort(key=lambda k: k.tag)
    where, params = render_sqlite(conditions)
    return FindPlan(
        where=where,
        params=params,
        keys=tuple(keys),
        status=PENDING_OPTIONAL_KEYS_NOT_SUPPORTED if unsupported else PENDING,
        request_charset=_request_charset(charset_element),
        wants_sequence=wants_sequence,
        conditions=tuple(conditions),
    )


def retrieve_uids(identifier: Dataset) -> list[str]:
    """The SOP Instance UIDs a C-GET / C-MOVE identifier asks for, in order.

    X.4.2 / X.4.3: Query/Retrieve Level shall not be present, the only unique
    key is SOP Instance UID, one UID or a list, and there is no relational
    retrieve, so any other key is an error too. Specific Character Set is
    tolerated (UIDs are in the default repertoire whatever it says). Every
    violation is failure 0xA900 "Identifier does not match SOP Class" with
    the offending tags.
    """
    if QUERY_RETRIEVE_LEVEL in identifier:
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "Query/Retrieve Level shall not be present (PS3.4 X.4.2)",
            [QUERY_RETRIEVE_LEVEL],
        )
    # By tag: iterating the Dataset would have pydicom convert every
    # element, a list of a thousand UIDs included (each checked by a regex).
    extra = sorted(
        int(tag) for tag in identifier.keys() if int(tag) not in (SOP_INSTANCE_UID, SPECIFIC_CHARACTER_SET) and (int(tag) & 0xFFFF) != 0
    )
    if extra:
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "only SOP Instance UID may be a key (no relational retrieve)",
            extra,
        )
    elem = _element(identifier, SOP_INSTANCE_UID)
    wanted = [u for u in (_uid(v) for v in _values(elem))] if elem is not None else []
    if not wanted or not all(wanted):
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            "SOP Instance UID missing or empty (the unique key)",
            [SOP_INSTANCE_UID],
        )
    bad = [u for u in wanted if not uids.validate_uid(u)]
    if bad:
        raise IdentifierError(
            IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"invalid UID {bad[0][:40]!r}", [SOP_INSTANCE_UID]
        )
    return list(dict.fromkeys(wanted))
