"""floatkey.broker.settled: a cancellation lost inside aiomqtt is raised again."""

from __future__ import annotations

import asyncio
import sys

import pytest

from floatkey.broker import settled


async def _acknowledged() -> asyncio.Future[str]:
    """An acknowledgement that has already arrived, as when PUBACK and cancel race."""
    ack: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    ack.set_result("puback")
    return ack


async def test_settled_raises_the_cancellation_wait_for_swallowed():
    ack = await _acknowledged()
    reached_after = False

    async def background_loop() -> None:
        nonlocal reached_after
        asyncio.current_task().cancel()  # the owner stops us as the ack arrives
        await settled(asyncio.wait_for(ack, 10))  # how aiomqtt waits for acks
        reached_after = True

    task = asyncio.create_task(background_loop())
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not reached_after


async def test_settled_returns_the_result_when_nobody_cancels():
    ack = await _acknowledged()
    assert await settled(asyncio.wait_for(ack, 10)) == "puback"


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for was fixed in Python 3.12")
async def test_plain_wait_for_loses_the_cancellation_on_this_python():
    """Why settled exists (CPython gh-86296): remove it once Python 3.11 is dropped."""
    ack = await _acknowledged()
    carried_on = False

    async def background_loop() -> None:
        nonlocal carried_on
        asyncio.current_task().cancel()
        await asyncio.wait_for(ack, 10)
        carried_on = True

    await asyncio.create_task(background_loop())
    assert carried_on
