"""Set-up shared by the test folders, imported as ``helpers.<module>``.

Plain functions and classes only; the pytest fixtures built on them live in
the ``conftest.py`` files. ``pyproject.toml`` puts ``tests/`` on the import
path (``pythonpath``), so a test module in any folder can write
``from helpers.servers import scu_ae``.

- ``waits``: the timeouts every test uses, bounded waits, ``run_async``.
- ``peers``: skip (or fail under CI) when an external peer is missing.
- ``dcmtk``: finding DCMTK's tools, the storescp profile in ``tests/data``,
  the dcmqrscp configuration.
- ``data``: the palette files, pydicom's encode/decode as the reference,
  copies of Hot Iron under new UIDs and labels, Part 10 files of them.
- ``servers``: chromanet and pynetdicom SCPs that record what they saw,
  requestor AEs, subprocess servers on free ports.
- ``qr``: Color Palette Query/Retrieve: the model UIDs, SCP and SCU AEs,
  associations from chromanet and pynetdicom, store logs.
- ``rawpeer``: a peer that speaks PDUs over a plain socket.
- ``nodeproc``: ``chromanet serve`` as a subprocess whose log is read as
  it comes (wait for a line, the workers' pids), and /metrics scraped and
  parsed.
- ``tls``: test CAs and certificates (made with openssl at test time), TLS
  contexts, the TLS flags of the chromanet commands and of DCMTK's tools.
- ``postgres``: a throwaway PostgreSQL cluster (initdb in a temporary
  directory, as an unprivileged user when root), its databases, and
  ``SyncPgArchive`` (the PostgreSQL archive behind synchronous methods, so
  one test body runs against both backends).
"""
