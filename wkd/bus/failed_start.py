"""When the daemon cannot start, tell the callers that are waiting for it why.

A bus activation (dbus/org.wkd1.service) queues the callers' messages in dbus-daemon until
the name org.wkd1 appears. systemd reports a unit that fails after its start job was queued
to nobody (it sends org.freedesktop.systemd1.Activator.ActivationFailure only when it cannot
queue the job: src/core/dbus.c, signal_activation_request), so those callers would wait out
dbus-daemon's 25 s service_start_timeout and then get "timed out". Instead, a daemon that
found its configuration invalid takes the name for a moment, answers every call it gets
with that error (org.wkd1.Error.InvalidConfig and the message naming file, section and key),
and gives the name up once no call has come for QUIET_SECONDS (AT_MOST_SECONDS in all);
then it exits with EX_CONFIG and the unit fails. Best effort: with no bus, nothing happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Final

from dbus_fast import BusType, Message, MessageFlag, MessageType, NameFlag, RequestNameReply
from dbus_fast.aio import MessageBus

from wkd.bus.api import BUS_NAME
from wkd.errors import WkdError

log = logging.getLogger("wkd.bus")

QUIET_SECONDS: Final = 0.5
AT_MOST_SECONDS: Final = 3.0
CONNECT_SECONDS: Final = 2.0


async def answer_waiting_callers(bus_address: str | None, error: WkdError) -> int:
    """Answer queued and arriving calls to org.wkd1 with `error`; return how many."""
    bus = MessageBus(bus_address=bus_address) if bus_address else \
        MessageBus(bus_type=BusType.SYSTEM)
    answered = 0
    last = asyncio.Event()

    def refuse(msg: Message) -> Message | bool:
        nonlocal answered
        if msg.message_type is not MessageType.METHOD_CALL:
            return False
        last.set()
        if msg.flags & MessageFlag.NO_REPLY_EXPECTED:
            return True
        answered += 1
        return Message.new_error(msg, error.dbus_name, error.message)

    try:
        await asyncio.wait_for(bus.connect(), CONNECT_SECONDS)
        bus.add_message_handler(refuse)
        reply = await asyncio.wait_for(bus.request_name(BUS_NAME, NameFlag.DO_NOT_QUEUE),
                                       CONNECT_SECONDS)
        if reply is not RequestNameReply.PRIMARY_OWNER:
            return 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(AT_MOST_SECONDS):
                while True:
                    last.clear()
                    try:
                        await asyncio.wait_for(last.wait(), QUIET_SECONDS)
                    except TimeoutError:
                        break
    except Exception as e:  # no bus, no permission: the log line is the report then
        log.debug("could not tell waiting callers why wkd did not start: %s", e)
    finally:
        with contextlib.suppress(Exception):
            bus.disconnect()
    return answered
