"""The Faust application of drg-ledger: settings that work against Tansu, topics, agents.

`create_app(WorkerSettings(...))` builds a `faust.App` with the events consumer (a task
consuming the events topic with aiokafka, the store owning its offsets: streams/intake.py),
the agent `recompute_totals` (streams/recompute.py) and the table `running-totals`. `run_worker(settings)` runs it in this process (the
`drg-ledger worker` command). The settings are the ones measured against Tansu in
KAFKA-AND-STORES.md: producer_max_batch_size=1 (Tansu's wrong end offsets would restore
tables stale), short session/heartbeat/rebalance timeouts (Tansu's slow group join), no web
server, no exactly-once (aiokafka's idempotent producer fails on Tansu; the ledger is
idempotent instead).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import sys
from dataclasses import dataclass, replace
from typing import Any

from streams.topics import DEFAULT_PREFIX, PARTITIONS, TopicNames, delete_topics, ensure_topics, partition_counts

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    """What a worker needs: where the broker and the store are, and how it batches."""

    bootstrap_servers: str
    database_url: str | None = None  # None: $DRG_LEDGER_DATABASE_URL, else the embedded SQLite file
    store: str = "memory://"  # Faust table store: memory:// (restored from the changelog) or rocksdb://
    topic_prefix: str = DEFAULT_PREFIX  # topics <prefix>.events ...; also the Faust app id (consumer group)
    data_dir: str | None = None  # Faust's datadir (RocksDB files); default ./drg-ledger-data
    partitions: int = PARTITIONS  # of the topics it creates; the table follows the recompute topic's actual count
    batch_size: int = 4000  # events per ingest batch (one store ingest per partition run of it)
    instance_id: str | None = None  # static membership of the intake group (group.instance.id)
    batch_within_s: float = 0.5
    recompute_batch: int = 10_000  # recompute requests per batch (de-duplicated per hospital)
    recompute_within_s: float = 0.1
    recompute_in_process: bool = True  # recompute in a child process: a second core for the CPU-bound fold
    loglevel: str = "INFO"
    key_file: str | None = None  # signed producers required (streams/signing.py); None: not required


def broker_url(bootstrap_servers: str) -> str:
    """`host:port,host:port` -> Faust's `kafka://host:port;kafka://host:port`."""
    hosts = [h.strip() for h in bootstrap_servers.split(",") if h.strip()]
    return ";".join(h if "://" in h else f"kafka://{h}" for h in hosts)


FETCH_MAX_WAIT_MS = 100
"""How long a fetch of the worker's consumers may wait for records. Tansu holds a fetch for
the whole wait even when records arrive meanwhile (measured: 483-1,235 ms from send to
receipt at Faust's fixed 1,500 ms, 14-76 ms at 100 ms), so the wait is a floor on latency."""


def _app_class() -> Any:
    """faust.App whose agents' consumer fetches with `FETCH_MAX_WAIT_MS` (Faust fixes 1,500 ms)."""
    import faust
    from faust.transport.drivers import aiokafka as driver

    class ConsumerThread(driver.AIOKafkaConsumerThread):
        def _create_worker_consumer(self, transport: Any) -> Any:
            consumer = super()._create_worker_consumer(transport)
            consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # read by its fetcher at start()
            return consumer

    class ShortWaitConsumer(driver.Consumer):
        def _new_consumer_thread(self) -> Any:
            return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    class Transport(driver.Transport):
        Consumer = ShortWaitConsumer

    class App(faust.App):
        def _new_transport(self) -> Any:
            return Transport(self.conf.broker_consumer, self)

    return App


def create_app(settings: WorkerSettings) -> Any:
    """The faust.App with its topics, agents and table (not started)."""
    from streams import intake, recompute

    names = TopicNames(settings.topic_prefix)
    app = _app_class()(
        settings.topic_prefix,
        broker=broker_url(settings.bootstrap_servers),
        store=settings.store,
        datadir=settings.data_dir or os.path.abspath(f"{settings.topic_prefix}-data"),
        autodiscover=False,
        topic_replication_factor=1,
        topic_partitions=settings.partitions,
        table_standby_replicas=0,
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=10.0,
        producer_max_batch_size=1,
        producer_acks=-1,
        web_enabled=False,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
    )
    def raw_topic(name: str) -> Any:
        # Keys and values stay bytes: the ledger parses envelopes itself (parse_event).
        return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw",
                         partitions=settings.partitions)

    dead_letters = raw_topic(names.dead_letters)
    requests = raw_topic(names.recompute)
    intake.install(app, settings, dead_letters, requests)
    recompute.install(app, settings, requests)
    return app


AFTER_BROKER_LOSS_ENV = "DRG_LEDGER_AFTER_BROKER_LOSS"
"""Set by a worker that restarts itself in place after its broker lost its topics (why)."""


def changelog_topic(settings: WorkerSettings) -> str:
    """The changelog topic Faust keeps for the totals table (`<app id>-<table>-changelog`)."""
    from streams.recompute import TABLE

    return f"{settings.topic_prefix}-{TABLE}-changelog"


def run_worker(settings: WorkerSettings) -> None:
    """Creates the topics if needed and runs the worker until it is stopped (SIGINT/SIGTERM).

    When the broker lost the worker's topics (streams/intake.py), the worker stops and starts
    itself again in the same process (`os.execv`, same pid and arguments): a fresh Faust app
    on the recreated topics, the events read from the new log's start (its own name in the
    store: projections/offsets.py). What the table's changelog holds by then was written into
    the new broker by the stopping worker before it noticed; it is emptied, and the totals are
    recomputed from the store (the table's local state, RocksDB, described the lost changelog:
    it is removed too).
    """
    import faust

    names = TopicNames(settings.topic_prefix)
    after_loss = os.environ.pop(AFTER_BROKER_LOSS_ENV, None)
    if after_loss:
        log.warning("restarted in place after the broker lost its topics (%s)", after_loss)
        emptied = delete_topics(settings.bootstrap_servers, [changelog_topic(settings)])
        if emptied:
            log.info("emptied %s (written into the new broker before the loss was noticed)", ", ".join(emptied))
    created = ensure_topics(settings.bootstrap_servers, names.all(), partitions=settings.partitions)
    if created:
        log.info("created topics %s", ", ".join(created))
    # The totals table must have as many partitions as the recompute topic it is
    # co-partitioned with, whatever count the topic was created with.
    actual = partition_counts(settings.bootstrap_servers, [names.recompute]).get(names.recompute)
    if actual is not None and actual != settings.partitions:
        log.warning("topic %s has %d partitions, not %d: sizing the totals table to %d",
                    names.recompute, actual, settings.partitions, actual)
        settings = replace(settings, partitions=actual)
    app = create_app(settings)
    # faust.Worker directly, not `app.main()`: the CLI would turn the web server back on
    # unless given --without-web (KAFKA-AND-STORES.md); here web_enabled=False holds.
    worker = faust.Worker(app, loglevel=settings.loglevel, quiet=True)
    from streams import intake

    intake.restart_now = lambda why: _restart_in_place(app, settings, why)
    try:
        worker.execute_from_commandline()
    except SystemExit:
        if not intake.restart_requested:
            raise
        _restart_in_place(app, settings, intake.restart_requested[0])


def _restart_in_place(app: Any, settings: WorkerSettings, why: str) -> None:
    """Replaces this process with a fresh worker (same pid, same command line)."""
    for child in multiprocessing.active_children():  # the recompute process: never left behind
        child.terminate()
        child.join(10)
    if settings.store.startswith("rocksdb"):
        shutil.rmtree(app.conf.tabledir, ignore_errors=True)
    os.environ[AFTER_BROKER_LOSS_ENV] = why
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)
