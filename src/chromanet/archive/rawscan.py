"""The elements of an Explicit VR Little Endian data set, as bytes, by tag.

Why: validating and indexing a received palette needs a dozen of its
elements, and the bytes of each. Decoding the whole data set into pydicom
objects (``dsutil.decode_dataset``) and reading the values back through
pydicom cost most of a store's CPU time in the commit thread, where the
GIL is shared with the event loop. ``scan`` walks the encoded elements
once, in C (``chromanet._dataset.scan``, ``ext/_dataset_scan.pxi``:
PS3.5 7.1.2 headers, 7.5 items and delimiters), and makes a dict per data
set or item: tag -> ``(VR, value)``, or for a sequence ``("SQ", [item
dicts])``; a value is ``bytes`` up to 256 bytes (text, UIDs), a memoryview
of the data beyond (LUT data, ICC profiles: not copied).

It is not a checker: ``chromanet._dataset.check`` must have passed on the
same bytes first (every header inside the data, lengths inside their
containers, explicit VRs of PS3.5, items and delimiters where they
belong). What it does not handle (undefined length on anything but a
sequence or an item, e.g. encapsulated pixel data or UN) makes it return
None, and the caller decodes the data set the general way.
"""

from __future__ import annotations

from chromanet._dataset import scan

__all__ = ["scan"]
