"""The broker's Redis transport: kombu's, with one Redis client per channel, not one per call.

kombu's Redis channel builds a new `redis.Redis` object (on its shared connection pool) for
every publish, acknowledgement, unacked-index write and event it sends. Building one costs
about 0.1-0.2 ms of CPU (redis-py fills ~170 response callbacks each time), and a poll makes
about four of them: a noticeable share of what a poll costs the worker. A `redis.Redis` is
safe to share between threads and keeps no connection of its own, so each channel keeps one
and builds it again only when kombu replaces the channel's pool (after a connection error).
Messages, keys and every other behaviour are kombu's own; `celeryconfig` selects this
transport for `redis://` and `rediss://` broker URLs.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis


class Channel(kombu_redis.Channel):
    _shared_client: Any = None

    def _create_client(self, asynchronous: bool = False) -> Any:
        if asynchronous:
            return super()._create_client(asynchronous=True)
        client = self._shared_client
        if client is None or client.connection_pool is not self.pool:
            client = self._shared_client = super()._create_client()
        return client


class Transport(kombu_redis.Transport):
    Channel = Channel
