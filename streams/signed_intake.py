"""The worker's producer gate: messages whose writer is refused never reach the ledger.

Two checks, run before `streams.intake.run_batch`, each refused message dead-lettered in the
store (origin `kafka:<log>/partition/offset`, the reason's code first) and forwarded to the
dead-letter topic with the rest of the batch's refusals; the others go on to `run_batch`:
- on a per-HIS topic (`<prefix>.his.<hospital_id>`, which only that HIS's SASL principal may
  write: deploy/README.md "Who may write"), only that hospital's events (`wrong_topic`);
- when the worker has a key file (`drg-ledger worker --key-file`, or `$DRG_LEDGER_KEY_FILE`),
  a good signature of a key that may sign the event (streams/signing.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ledger.events import InvalidEvent
from projections.offsets import LOG_SEPARATOR
from streams.intake import Inbound, IntakeResult, Refused, run_batch
from streams.signing import Headers, Keyring, topic_check
from streams.topics import TopicNames

if TYPE_CHECKING:
    from projections.store import LedgerStore


def screened_batch(
    store: LedgerStore,
    messages: Sequence[Inbound],
    headers: Sequence[Headers],
    keyring: Keyring | None,
    run: Callable[[LedgerStore, Sequence[Inbound]], IntakeResult] = run_batch,
    names: TopicNames | None = None,
) -> IntakeResult:
    """`run(store, messages)` on the messages whose writer is accepted (module docstring:
    the topic check with `names`, the signature check with `keyring`); the refused ones are
    dead letters with their reason."""
    if keyring is None and names is None:
        return run(store, messages)
    passed: list[Inbound] = []
    refused: list[Refused] = []
    for m, h in zip(messages, headers, strict=True):
        topic = m.topic.split(LOG_SEPARATOR, 1)[0]  # the log's topic
        principal = names.principal_of(topic) if names is not None else None
        problem = topic_check(m.value, principal, topic) if principal is not None else None
        if problem is None and keyring is not None:
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
