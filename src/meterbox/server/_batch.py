"""Group commit for asyncio callers of a blocking, durable write.

Callers ``await submit(item)``; items that arrive while a write is in progress are
written together by the next one, so one ``fsync`` acknowledges many requests.
The blocking ``flush`` runs in a worker thread, never on the event loop. A caller
is answered only after the batch holding its item was flushed successfully; if the
flush raises, every caller in that batch gets the exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommitter(Generic[T, R]):
    def __init__(self, flush: Callable[[list[T]], Sequence[R]]) -> None:
        self._flush = flush
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        return await fut

    async def _run(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                results = await asyncio.to_thread(self._flush, [item for item, _ in batch])
            except Exception as exc:  # noqa: BLE001 - every waiter of the batch gets it
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
                continue
            for (_, fut), result in zip(batch, results, strict=True):
                if not fut.done():
                    fut.set_result(result)
