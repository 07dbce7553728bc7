"""The warm pool: idle execution environments per function version, LIFO, capped, reaped when idle.

Bookkeeping only; it never starts or stops anything itself. Methods return the environments the
caller must stop, and ``serve_reaper`` calls the ``retire`` callback it is given. This keeps the pool
testable with fakes and the clock (``autojump_clock``).

Rules (AWS's behaviour as Floci reproduces it, floci-lambda.md 1.3):

* Idle environments are keyed by the function version's ARN plus its revision, so ``$LATEST`` and
  each published version have separate sets, and a changed ``$LATEST`` never reuses old ones.
* ``acquire_nowait`` takes the most recently released one (LIFO keeps few environments hot);
  environments found dead are discarded.
* ``release`` keeps at most ``max_idle_per_function`` idle per function (all versions together);
  ephemeral mode keeps none; an environment released after its version was drained is stopped.
* Environments idle for ``idle_timeout`` seconds are retired by ``serve_reaper``.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Generic, Protocol, TypeVar

import attrs
import trio

FunctionKey = tuple[str, str, str]  # (region, account, name)


class Pooled(Protocol):
    """What the pool needs to know about an environment."""

    #: ``(function version ARN, revision id)``.
    @property
    def key(self) -> tuple[str, str]: ...

    @property
    def function(self) -> FunctionKey: ...

    #: The drain epoch of its version when the environment was created (``WarmPool.epoch``).
    @property
    def epoch(self) -> int: ...

    @property
    def alive(self) -> bool: ...


E = TypeVar("E", bound=Pooled)


@attrs.frozen
class PoolStatistics:
    idle: int
    idle_by_function: dict[FunctionKey, int]


class WarmPool(Generic[E]):
    def __init__(self, *, max_idle_per_function: int, idle_timeout: float, ephemeral: bool = False) -> None:
        self.max_idle_per_function = max_idle_per_function
        self.idle_timeout = idle_timeout
        self.ephemeral = ephemeral
        #: key -> idle environments, most recently released last.
        self._idle: dict[tuple[str, str], list[E]] = {}
        #: environment -> trio time it became idle.
        self._since: dict[E, float] = {}
        self._per_function: dict[FunctionKey, int] = {}
        #: version ARN -> drain epoch; function -> drain epoch (drains of every version).
        self._epochs: dict[str, int] = {}
        self._function_epochs: dict[FunctionKey, int] = {}
        self._changed = trio.Event()

    def epoch(self, arn: str, function: FunctionKey) -> int:
        """The drain generation of a version: changes whenever the version or its function is drained."""
        return self._epochs.get(arn, 0) + self._function_epochs.get(function, 0)

    @property
    def idle_count(self) -> int:
        return len(self._since)

    def acquire_nowait(self, key: tuple[str, str]) -> tuple[E | None, list[E]]:
        """Take the most recently idle live environment for ``key``; also return the dead ones found."""
        stack = self._idle.get(key)
        dead: list[E] = []
        while stack:
            env = stack.pop()
            self._forget(env)
            if env.alive:
                if not stack:
                    del self._idle[key]
                return env, dead
            dead.append(env)
        self._idle.pop(key, None)
        return None, dead

    def release(self, env: E) -> list[E]:
        """Make ``env`` idle; return the environments to stop (``env`` itself or an overflow)."""
        if self.ephemeral or not env.alive or env.epoch != self.epoch(env.key[0], env.function):
            return [env]
        if self._per_function.get(env.function, 0) >= self.max_idle_per_function:
            return [env]
        self._idle.setdefault(env.key, []).append(env)
        self._since[env] = trio.current_time()
        self._per_function[env.function] = self._per_function.get(env.function, 0) + 1
        self._signal()
        return []

    def remove(self, env: E) -> bool:
        """Drop ``env`` if it is idle (it died, or it is being stopped). Return True if it was idle."""
        if env not in self._since:
            return False
        stack = self._idle.get(env.key)
        if stack is not None:
            stack.remove(env)
            if not stack:
                del self._idle[env.key]
        self._forget(env)
        return True

    def drain(self, arns: list[str] | None, function: FunctionKey) -> list[E]:
        """Retire the idle environments of ``arns`` (all versions of ``function`` when None).

        Busy environments of those versions are stopped when released (their epoch is stale).
        """
        out: list[E] = []
        for key in list(self._idle):
            env0 = self._idle[key][0] if self._idle[key] else None
            if env0 is None or env0.function != function:
                continue
            if arns is not None and key[0] not in arns:
                continue
            for env in list(self._idle[key]):
                self.remove(env)
                out.append(env)
        if arns is None:
            self._function_epochs[function] = self._function_epochs.get(function, 0) + 1
        else:
            for arn in arns:
                self._epochs[arn] = self._epochs.get(arn, 0) + 1
        return out

    def drain_all(self) -> list[E]:
        out = list(self._since)
        for env in out:
            self.remove(env)
        return out

    def expired(self) -> list[E]:
        """Remove and return the environments idle for at least ``idle_timeout``."""
        now = trio.current_time()
        out = [env for env, since in self._since.items() if now - since >= self.idle_timeout]
        for env in out:
            self.remove(env)
        return out

    def next_expiry(self) -> float:
        if not self._since or self.idle_timeout <= 0:
            return math.inf
        return min(self._since.values()) + self.idle_timeout

    async def serve_reaper(
        self,
        retire: Callable[[E], Awaitable[None]],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Retire idle environments when their idle timeout passes. Runs until cancelled."""
        task_status.started()
        if self.idle_timeout <= 0:
            await trio.sleep_forever()
        while True:
            changed = self._changed
            with trio.move_on_at(self.next_expiry()):
                await changed.wait()
                continue
            for env in self.expired():
                await retire(env)

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(idle=len(self._since), idle_by_function=dict(self._per_function))

    def _forget(self, env: E) -> None:
        del self._since[env]
        left = self._per_function[env.function] - 1
        if left:
            self._per_function[env.function] = left
        else:
            del self._per_function[env.function]

    def _signal(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
