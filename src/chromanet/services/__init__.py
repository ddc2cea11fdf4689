"""DIMSE services: the SCU operations and the SCP side that runs handlers.

``ServiceProvider`` is the DIMSE channel's request handler for one
association: it picks the service by Command Field and runs the user's
handler the pynetdicom way (intervention events, status ints or Datasets).
"""

from chromanet.services.provider import ServiceProvider

__all__ = ["ServiceProvider"]
