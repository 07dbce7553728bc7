"""The asyncio bridge: one trio-asyncio loop that hosts asyncio-only libraries (aiodocker).

Nothing outside ``flocid.executors.docker`` imports this module; the rest of flocid only ever sees
trio functions. The loop is passed explicitly on every call (never looked up through trio-asyncio's
context variable) so trio tasks spawned from nurseries outside ``open_aio_bridge`` (the invoke
layer's) can still call into it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, ParamSpec, TypeVar, cast

import trio_asyncio

P = ParamSpec("P")
T = TypeVar("T")


class AioBridge:
    """Run asyncio-flavoured coroutines from trio on one trio-asyncio loop."""

    def __init__(self, loop: Any) -> None:
        self._loop = loop

    async def call(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """``await fn(*args, **kwargs)`` as an asyncio task; trio cancellation cancels it."""
        wrapped = trio_asyncio.aio_as_trio(fn, loop=self._loop)
        return cast(T, await wrapped(*args, **kwargs))

    @asynccontextmanager
    async def enter(self, cm: AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
        """Enter and exit an asyncio async context manager from trio."""
        wrapped = trio_asyncio.aio_as_trio(cm, loop=self._loop)
        async with wrapped as value:
            yield cast(T, value)


@asynccontextmanager
async def open_aio_bridge() -> AsyncIterator[AioBridge]:
    """Open a trio-asyncio loop for the lifetime of the block and close it after."""
    async with trio_asyncio.open_loop() as loop:
        yield AioBridge(loop)
