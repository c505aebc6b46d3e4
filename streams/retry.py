"""Retry a blocking step of an agent until it succeeds (at-least-once: never skip a batch)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")


async def retrying(step: Callable[[], Awaitable[T]], what: str, *, max_delay_s: float = 30.0) -> T:
    """Runs `step()` until it succeeds, backing off from 0.5 s to `max_delay_s`.

    A failing database stalls the stream instead of skipping the batch: the batch is acked
    (its offsets committed) only when the agent asks for the next one, after this returns.
    """
    delay = 0.5
    while True:
        try:
            return await step()
        except Exception:  # any failure: log, back off, retry the same batch
            log.exception("%s failed; retrying in %.1f s", what, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay_s)
