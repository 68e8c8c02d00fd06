"""CommandChannel.drain on the real kernel: what the daemon waits for at exit."""

from __future__ import annotations

import json

import pytest

from mptcpd.netlink.genl_commands import CommandChannel
from mptcpd.pm.path_manager import PathManager
from mptcpd.types import SockAddr
from tests.lab import Lab


@pytest.mark.lab(links=2)
async def test_drain_waits_for_every_answer_then_close_fails_nothing(lab: Lab) -> None:
    async with CommandChannel(lab.client) as channel:
        pm = PathManager(channel)
        pm.set_ready(True)
        futures = [pm.kpm_add_addr(SockAddr(str(link.client4)), index + 1)
                   for index, link in enumerate(lab.links)]
        futures.append(pm.kpm_remove_addr(1))
        futures.append(pm.kpm_remove_addr(99))  # refused: no such endpoint
        assert await channel.drain(10)
        assert all(f.done() for f in futures)
        assert [f.exception() is None for f in futures] == [True, True, True, False]
        # Nothing pending: an empty drain returns at once.
        assert await channel.drain(0)
    endpoints = json.loads(lab.ip(lab.client, "-j", "mptcp", "endpoint", "show").stdout)
    assert [(e["address"], e["id"]) for e in endpoints] == [(str(lab.links[1].client4), 2)]
