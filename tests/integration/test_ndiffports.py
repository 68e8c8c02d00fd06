"""The bundled ``ndiffports`` plugin on real MPTCP connections (client:
userspace PM with mptcpd; server: the in-kernel PM)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.test_fullmesh import (
    clients_ended_with_three_joins,
    paths,
    start_clients,
    start_plugin,
    start_server,
)
from tests.integration.test_sspi import wait_tokens
from tests.lab import Lab, wait_for


@pytest.mark.lab(links=2, path_manager="userspace")
def test_subflows_4_gives_four_subflows_on_one_pair_from_four_ports(
        lab: Lab, tmp_path: Path) -> None:
    daemon = start_plugin(lab, tmp_path, "ndiffports", "subflows=4\n")
    assert "MPTCP ndiffports path manager initialized (subflows 4" in daemon.output()
    start_server(lab, 2)  # an announced address does not change the pair
    count, nbytes = 3, 4 << 20
    clients = start_clients(lab, count, nbytes, hold=5, wait_subflows=3)
    tokens = wait_tokens(lab, count)
    pair = (str(lab.links[0].client4), str(lab.links[0].server4))

    def four_each() -> dict[int, list[int]] | None:
        table = paths(lab)
        ports = {t: sorted(s.lport for s in table[t].get(pair, [])) for t in tokens}
        ok = all(set(table[t]) == {pair} and len(set(ports[t])) == 4 for t in tokens)
        return ports if ok else None

    ports = wait_for(four_each, timeout=20, what="four subflows on the initial pair")
    all_ports = [p for t in tokens for p in ports[t]]
    assert len(set(all_ports)) == 4 * count  # every subflow its own source port
    clients_ended_with_three_joins(lab, daemon, clients, tokens, nbytes)
