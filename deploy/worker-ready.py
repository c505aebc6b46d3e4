#!/usr/bin/env python3
"""Readiness of a drg-ledger worker: is this process's consumer a member of the group?

`drg-ledger worker` runs without Faust's web server (streams/app.py), so there is no HTTP
endpoint to probe. What "ready" means for a Kafka consumer is that it has joined the
consumer group (the Faust app id, `DRG_LEDGER_TOPIC_PREFIX`, default `drg-ledger`) and the
group has settled. So this asks the group coordinator (DescribeGroups) whether the group
is Stable (not in the middle of a rebalance) and one of its members is us:

- on Kubernetes, by static membership: the member id of a static member starts with its
  group instance id, `CONSUMER_GROUP_INSTANCE_ID` (the pod name, k8s/worker.yaml);
- elsewhere (compose), by address: the broker reports each member's client host, which
  must be one of this container's addresses.

Exit 0: a member of the Stable group. Exit 1: not (yet) a member, a rebalance under way, or
no answer from the broker within the timeout. Used as the readiness probe and the compose
health check, never as a liveness probe: a broker outage must not restart every worker.

With static membership the coordinator keeps a restarted pod's membership (that is the
point: no rebalance), so right after a restart this reports the group's view, "the group
counts on this pod", a few seconds before the new process has rejoined.

Installed in the image as /usr/local/bin/drg-ledger-worker-ready (deploy/Dockerfile).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys

TIMEOUT_S = float(os.environ.get("DRG_LEDGER_READY_TIMEOUT_S", "8"))


def my_addresses() -> set[str]:
    """The IP addresses of this host (container or pod)."""
    found = set()
    for name in {socket.gethostname(), socket.getfqdn()}:
        try:
            found.update(info[4][0] for info in socket.getaddrinfo(name, None))
        except OSError:
            pass
    return found


def is_me(member: dict[str, object], instance_id: str | None, addresses: set[str]) -> bool:
    if instance_id:
        return str(member.get("member_id", "")).startswith(f"{instance_id}-")
    return str(member.get("client_host", "")).lstrip("/") in addresses


async def membership(bootstrap: str, group: str) -> tuple[str, list[dict[str, object]]]:
    """The group's state and members, as its coordinator describes them."""
    from aiokafka.admin import AIOKafkaAdminClient  # a Faust dependency, so always present

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="drg-ledger-ready", request_timeout_ms=int(TIMEOUT_S * 1000)
    )
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    for response in responses:
        for g in response.to_object()["groups"]:
            if g["group"] == group and g["error_code"] == 0:
                return str(g["state"]), list(g["members"])
    return "Unknown", []


def main() -> int:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    group = os.environ.get("DRG_LEDGER_TOPIC_PREFIX", "drg-ledger")
    instance_id = os.environ.get("CONSUMER_GROUP_INSTANCE_ID") or None
    try:
        state, members = asyncio.run(asyncio.wait_for(membership(bootstrap, group), TIMEOUT_S))
    except Exception as exc:  # any failure to ask means "not known to be ready"
        print(f"not ready: cannot describe group {group}: {exc!r}", file=sys.stderr)
        return 1
    addresses = my_addresses()
    who = instance_id or ", ".join(sorted(addresses))
    if not any(is_me(m, instance_id, addresses) for m in members):
        print(f"not ready: {who} is not among the {len(members)} members of group {group}", file=sys.stderr)
        return 1
    if state != "Stable":
        print(f"not ready: group {group} is {state}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
