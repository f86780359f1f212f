"""A password-protected redis-server: full cycles work, and the password appears in no worker
log, no operation record and no other value the system stores in Redis."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from ktrdr_tasks import workflow
from tests.chaos.conftest import FINAL, ScriptedApi, wait_all, write_strategy
from tests.support.fake_training_api import Behaviour
from tests.support.processes import Process, RedisServer, redis_server

pytestmark = [pytest.mark.chaos, pytest.mark.integration]

PASSWORD = "pw-7Hq2-never-logged"


@pytest.fixture(scope="module")
def chaos_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis-auth"), password=PASSWORD) as server:
        yield server


def _everything_stored(client: redis.Redis) -> str:
    dumped = []
    for key in client.scan_iter(count=500):
        kind = client.type(key)
        value: object = None
        if kind == "string":
            value = client.get(key)
        elif kind == "hash":
            value = client.hgetall(key)
        elif kind == "list":
            value = client.lrange(key, 0, -1)
        elif kind == "set":
            value = client.smembers(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        dumped.append(f"{key}={value!r}")
    return "\n".join(dumped)


def test_cycles_on_a_password_protected_redis_never_reveal_the_password(
    workers: Callable[..., Process],
    chaos_api: ScriptedApi,
    chaos_strategies: Path,
    chaos_redis: RedisServer,
) -> None:
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=chaos_redis.port).ping()
    good = write_strategy(chaos_strategies, "auth_good")
    bad = write_strategy(chaos_strategies, "auth_remote_fail")
    chaos_api.behaviours[bad] = Behaviour(polls=1, outcome="failed")
    worker = workers(name="auth")

    ids = [workflow.trigger(strategy=good).operation_id, workflow.trigger().operation_id]
    ids.append(workflow.trigger(strategy=bad).operation_id)
    records = wait_all(ids, FINAL, timeout=90)

    assert [r["status"] for r in records] == ["completed", "completed", "failed"]
    assert PASSWORD not in worker.log()
    assert PASSWORD not in "".join(str(r) for r in records)
    assert PASSWORD not in _everything_stored(chaos_redis.client())
    assert PASSWORD not in workflow.status()["status"] + str(workflow.history(10))
