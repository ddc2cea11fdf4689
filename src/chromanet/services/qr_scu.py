"""Query/Retrieve SCU: C-FIND, C-GET and C-MOVE requests and C-CANCEL.

Each request is an async generator of ``(status, identifier)`` pairs, one
per response as it arrives (pynetdicom's shape): ``status`` is the response
as a Dataset with Status and the sub-operation counts, ``identifier`` the
decoded identifier or None. If the association ends before the final
response, one ``(Dataset(), None)`` pair is yielded, as pynetdicom does.
Leaving the loop before the final response sends a C-CANCEL and drops the
responses still coming.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, AsyncIterator

from pydicom import Dataset

from chromanet import _dimse, dsutil
from chromanet._dimse import Command
from chromanet.dimse import DimseTimeout
from chromanet.services.status import response_to_dataset
from chromanet.ul.association import AssociationAborted, AssociationClosed

if TYPE_CHECKING:
    from chromanet.association import AsyncAssociation

LOGGER = logging.getLogger("chromanet.services")

_PENDING = (0xFF00, 0xFF01)


async def query(
    assoc: AsyncAssociation,
    field: int,
    identifier: Dataset,
    query_model: str,
    msg_id: int | None,
    priority: int,
    move_destination: str | None = None,
) -> AsyncIterator[tuple[Dataset, Dataset | None]]:
    channel = assoc._require_established()
    ctx = assoc._scu_context(str(query_model))
    assert ctx.transfer_syntax is not None
    syntax = ctx.transfer_syntax
    command = Command(
        field,
        affected_sop_class_uid=ctx.abstract_syntax,
        message_id=msg_id,
        priority=priority,
        command_data_set_type=_dimse.DATASET_PRESENT,
        move_destination=move_destination,
    )
    encoded = dsutil.encode_dataset(identifier, syntax)
    await channel.acquire_slot()
    finished = False
    stream = None
    try:
        if msg_id is not None and msg_id in channel._pending:
            command.message_id = None  # in use: take a free one
        stream = channel.open_request(ctx.context_id, command, encoded)
        assoc._request_contexts[stream.message_id] = ctx.context_id
        while True:
            try:
                response = await stream.next()
            except DimseTimeout:
                LOGGER.error("DIMSE timeout: aborting the association")
                assoc.abort()
                finished = True
                yield Dataset(), None
                return
            except (AssociationAborted, AssociationClosed, ConnectionError):
                finished = True
                yield Dataset(), None
                return
            status = response_to_dataset(response.command)
            decoded = None
            if response.dataset is not None:
                try:
                    decoded = dsutil.decode_dataset(response.dataset, syntax)
                except Exception as exc:
                    LOGGER.error("response identifier failed to decode: %s", exc)
            done = response.command.status not in _PENDING
            finished = done
            yield status, decoded
            if done:
                return
    finally:
        if stream is not None:
            assoc._request_contexts.pop(stream.message_id, None)
            if finished:
                channel.close_request(stream)
            else:
                # Left early: ask the SCP to stop, and let the channel drop
                # what still comes for this request.
                channel.abandon_request(stream)
                if channel.end_error is None:
                    _send_cancel(channel, ctx.context_id, stream.message_id)
        channel.release_slot()


def _send_cancel(channel: Any, context_id: int, message_id: int) -> None:
    channel.send(
        context_id,
        Command(
            _dimse.C_CANCEL_RQ,
            message_id_being_responded_to=message_id,
            command_data_set_type=_dimse.NO_DATASET,
        ),
    )


def cancel(assoc: AsyncAssociation, msg_id: int, context_id: int | None, query_model: str | None) -> None:
    """Send C-CANCEL for the outstanding request ``msg_id``: on the context
    it was sent on when we know it, else on ``context_id`` or the context of
    ``query_model``."""
    channel = assoc._require_established()
    if context_id is None:
        context_id = assoc._request_contexts.get(msg_id)
    if context_id is None:
        if query_model is None:
            raise ValueError("no outstanding request with that Message ID: give context_id or query_model")
        found = assoc.find_context(str(query_model))
        assert found.context_id is not None
        context_id = found.context_id
    _send_cancel(channel, context_id, msg_id)
