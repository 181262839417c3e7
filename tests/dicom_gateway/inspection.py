"""What the gateway tests look at: the Redis queue, store rows and audit events."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import redis
from sqlalchemy import select

from governance.db import Store
from governance.models import Instance, Study


class RedisQueue:
    """The Redis list kombu keeps a queue's messages in (one LPUSH per message)."""

    def __init__(self, url: str, name: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.name = name

    def study_uids(self) -> list[str]:
        """The Study Instance UIDs of the ``triage_study`` messages waiting, oldest first."""
        uids = []
        for raw in reversed(self.client.lrange(self.name, 0, -1)):
            message = json.loads(raw)
            assert message["headers"]["task"] == "triage_study"
            args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
            uids.append(args[0])
        return uids

    def wait_for(self, count: int, timeout: float = 15.0) -> list[str]:
        """Wait until at least ``count`` messages are waiting; returns their study UIDs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            uids = self.study_uids()
            if len(uids) >= count:
                return uids
            time.sleep(0.05)
        raise AssertionError(f"{count} messages expected on {self.name}, found {self.study_uids()}")

    def delete(self) -> None:
        self.client.delete(self.name)
        self.client.close()


def stored_instances(store: Store) -> list[tuple[str, str, str]]:
    """(study UID, SOP Instance UID, path) of every instance row."""
    with store.read() as session:
        rows = session.execute(
            select(Study.study_instance_uid, Instance.sop_instance_uid, Instance.path).join(
                Instance.study
            )
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def wait_until(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
