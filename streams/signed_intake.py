"""The worker's signature gate: messages whose signature is refused never reach the ledger.

Run before `streams.intake.run_batch` when the worker has a key file (`drg-ledger worker
--key-file`, or `$DRG_LEDGER_KEY_FILE`): each refused message is dead-lettered in the store
(origin `kafka:topic/partition/offset`, the reason's code first) and forwarded to the
dead-letter topic with the rest of the batch's refusals; the others go on to `run_batch`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ledger.events import InvalidEvent
from streams.intake import Inbound, IntakeResult, Refused, run_batch
from streams.signing import Headers, Keyring

if TYPE_CHECKING:
    from projections.store import LedgerStore


def screened_batch(
    store: LedgerStore,
    messages: Sequence[Inbound],
    headers: Sequence[Headers],
    keyring: Keyring | None,
    run: Callable[[LedgerStore, Sequence[Inbound]], IntakeResult] = run_batch,
) -> IntakeResult:
    """`run(store, messages)` on the messages whose signature `keyring` accepts (all of them
    when `keyring` is None); the refused ones are dead letters with their reason."""
    if keyring is None:
        return run(store, messages)
    passed: list[Inbound] = []
    refused: list[Refused] = []
    for m, h in zip(messages, headers, strict=True):
        problem = keyring.check(m.value, h)
        if problem is None:
            passed.append(m)
        else:
            refused.append(Refused(m, problem.field, problem.reason, problem.event_id))
    if refused:
        store.dead_letter([(f"kafka:{r.message.topic}/{r.message.partition}/", r.message.offset, r.message.value,
                            InvalidEvent(r.field, r.reason, r.event_id)) for r in refused])
    result = run(store, passed) if passed else IntakeResult()
    result.refused.extend(refused)
    return result
