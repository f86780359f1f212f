"""The broker transport against a real redis-server: messages go through as with kombu's own,
and a channel builds one Redis client, again only when kombu replaces its pool."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kombu import Connection

from ktrdr_tasks.broker import Transport
from tests.support.processes import redis_server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis-broker")) as server:
        yield server.url


def test_messages_go_through_the_transport(redis_url: str) -> None:
    with (
        Connection(redis_url, transport=Transport) as connection,
        connection.SimpleQueue("broker-test") as queue,
    ):
        queue.put({"poll": 1})
        message = queue.get(timeout=2)
        message.ack()
    assert message.payload == {"poll": 1}


def test_a_channel_keeps_one_client_until_kombu_replaces_its_pool(redis_url: str) -> None:
    with Connection(redis_url, transport=Transport) as connection:
        channel = connection.channel()
        with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
            assert first is second
        channel._pool = None  # what kombu does when it drops a broken connection's pool

        with channel.conn_or_acquire() as after:
            assert after is not first
            assert after.connection_pool is channel.pool
            assert after.ping()
        channel.close()


def test_celery_uses_it_for_a_redis_broker() -> None:
    from ktrdr_tasks.app import app

    connection = app.connection_for_write()
    assert connection.transport_cls == "ktrdr-redis"
    assert type(connection.transport) is Transport
    assert connection.as_uri().startswith("ktrdr-redis://")
