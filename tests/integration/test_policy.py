"""The interface and address policy (issue 13) on the real kernel, with
addr_adv making the endpoints: allowed, denied and denied-by-kind
interfaces, address classes, per-interface flags."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from tests.integration.test_daemon import READY, daemon_env
from tests.lab import Endpoint, Lab, Process, wait_for

ROOT = Path(__file__).resolve().parents[2]
PLUGINS = str(ROOT / "plugins")

POLICY = """[core]
addr-flags=subflow
notify-flags=existing
skip-address-classes=link-local,deprecated
[interfaces]
deny=c2
deny-kinds=ifb
[interface c3]
addr-flags=subflow,backup
"""


def start(lab: Lab, config: str, *args: str) -> Process:
    daemon = lab.start_mptcpd(
        "--log=stderr", "--debug", f"--plugin-dir={PLUGINS}", "--load-plugins=addr_adv",
        "--path-manager=addr_adv", *args, config=config, env=daemon_env())
    daemon.wait_output(READY, timeout=20)
    return daemon


def endpoints(lab: Lab) -> dict[str, Endpoint]:
    return {e.address: e for e in lab.endpoints(lab.client)}


def wait_endpoints(lab: Lab, addresses: set[str], timeout: float = 10) -> dict[str, Endpoint]:
    return wait_for(lambda: (eps := endpoints(lab)).keys() == addresses and eps,
                    timeout, what=f"endpoints {sorted(addresses)}")


def link_addresses(lab: Lab, *indexes: int) -> set[str]:
    return {str(a) for link in lab.links if link.index in indexes
            for a in (link.client4, link.client6)}


@pytest.mark.lab(links=3)
def test_allowed_denied_and_denied_by_kind_interfaces_and_classes(lab: Lab) -> None:
    # An ifb interface (kind "ifb", up and running), and a deprecated address on c1.
    lab.ip(lab.client, "link", "add", "dum0", "type", "ifb")
    lab.ip(lab.client, "-6", "addr", "add", "2001:db8:ff::1/64", "dev", "dum0", "nodad")
    lab.ip(lab.client, "link", "set", "dum0", "up")
    lab.ip(lab.client, "-6", "addr", "add", "2001:db8:1::99/64", "dev", "c1", "nodad",
           "preferred_lft", "0")
    daemon = start(lab, POLICY)
    # c1 and c3 only; no link-local (every veth has one), no deprecated one.
    eps = wait_endpoints(lab, link_addresses(lab, 1, 3))
    c1, c3 = lab.links[0], lab.links[2]
    for a in (c1.client4, c1.client6):
        assert eps[str(a)].flags == {"subflow"} and eps[str(a)].dev == "c1"
    for a in (c3.client4, c3.client6):
        assert eps[str(a)].flags == {"subflow", "backup"} and eps[str(a)].dev == "c3"
    # At run time: an address on the denied link, on the dummy and a
    # deprecated one get nothing; one on c1 gets its endpoint.
    lab.ip(lab.client, "addr", "add", "198.51.100.77/24", "dev", "c2")
    lab.ip(lab.client, "-6", "addr", "add", "2001:db8:ff::2/64", "dev", "dum0", "nodad")
    lab.ip(lab.client, "-6", "addr", "add", "2001:db8:1::98/64", "dev", "c1", "nodad",
           "preferred_lft", "0")
    lab.ip(lab.client, "addr", "add", "192.0.2.77/24", "dev", "c1")
    wait_endpoints(lab, link_addresses(lab, 1, 3) | {"192.0.2.77"})
    out = daemon.output()
    assert 'Network interface c2(' in out and 'is denied by "c2"' in out
    assert 'Network interface dum0(' in out and 'is its kind "ifb" is denied' in out
    assert daemon.stop() == 0
    assert endpoints(lab).keys() == link_addresses(lab, 1, 3) | {"192.0.2.77"}


def addr_flags(lab: Lab, ifname: str, address: str) -> set[str] | None:
    """The flags ``ip -j addr`` shows for ``address`` on ``ifname`` (None: absent)."""
    out = lab.ip(lab.client, "-j", "addr", "show", "dev", ifname).stdout
    for info in json.loads(out)[0].get("addr_info", []):
        if info.get("local") == address:
            return {k for k, v in info.items() if v is True} | (
                {"deprecated"} if info.get("preferred_life_time") == 0 else set())
    return None


@pytest.mark.lab(links=1)
def test_dad_holds_an_address_back_until_it_completes_and_forever_if_it_fails(
        lab: Lab) -> None:
    c1 = lab.links[0]
    # A DAD of about three seconds on c1 (three probes a second apart).
    lab.sysctl(lab.client, f"net.ipv6.conf.{c1.client_if}.dad_transmits", "3")
    lab.sysctl(lab.client, f"net.ipv6.conf.{c1.client_if}.accept_dad", "1")
    daemon = start(lab, "[core]\naddr-flags=subflow\nnotify-flags=existing,"
                        "skip_link_local\nskip-address-classes=deprecated\n")
    base = {str(c1.client4), str(c1.client6)}
    wait_endpoints(lab, base)
    fresh = "2001:db8:1::50"
    lab.ip(lab.client, "-6", "addr", "add", f"{fresh}/64", "dev", c1.client_if)
    # While the kernel says the address is tentative, it has no endpoint.
    checked = 0
    for _ in range(200):
        before = addr_flags(lab, c1.client_if, fresh)
        present = fresh in endpoints(lab)
        after = addr_flags(lab, c1.client_if, fresh)
        if not (before and "tentative" in before and after and "tentative" in after):
            break
        assert not present, "an endpoint for a tentative address"
        checked += 1
    assert checked > 0, "DAD ended before it could be watched"
    wait_endpoints(lab, base | {fresh})
    # A duplicate of the server's address: DAD fails, no endpoint ever.
    duplicate = str(c1.server6)
    lab.ip(lab.client, "-6", "addr", "add", f"{duplicate}/64", "dev", c1.client_if)
    wait_for(lambda: "dadfailed" in (addr_flags(lab, c1.client_if, duplicate) or ()),
             15, what="DAD to fail")
    daemon.wait_output(rf"Address {duplicate} on {c1.client_if} is held back: duplicate "
                       "address detection failed", timeout=10)
    assert duplicate not in endpoints(lab)
    # An address that becomes deprecated loses its endpoint, and gets it
    # back when its preferred lifetime is renewed.
    lab.ip(lab.client, "-6", "addr", "change", f"{fresh}/64", "dev", c1.client_if,
           "preferred_lft", "0")
    wait_endpoints(lab, base)
    lab.ip(lab.client, "-6", "addr", "change", f"{fresh}/64", "dev", c1.client_if,
           "preferred_lft", "forever")
    wait_endpoints(lab, base | {fresh})
    assert daemon.stop() == 0


@pytest.mark.lab(links=2)
def test_admin_down_and_up_bring_the_endpoints_back(lab: Lab) -> None:
    daemon = start(lab, "[core]\naddr-flags=subflow\nnotify-flags=existing,"
                        "skip_link_local\n")
    everything = link_addresses(lab, 1, 2)
    before = wait_endpoints(lab, everything)
    c2 = lab.links[1]
    lab.ip(lab.client, "link", "set", c2.client_if, "down")
    wait_endpoints(lab, link_addresses(lab, 1))
    lab.ip(lab.client, "link", "set", c2.client_if, "up")
    lab.wait_link_running(lab.client, c2.client_if)
    # The IPv4 address stayed on the interface: its endpoint comes back
    # (C never recreates it).  The kernel dropped the IPv6 one; configured
    # again, it gets its endpoint again too.
    wait_for(lambda: str(c2.client4) in endpoints(lab), 10,
             what="the IPv4 endpoint of c2 after down/up")
    if addr_flags(lab, c2.client_if, str(c2.client6)) is None:
        lab.ip(lab.client, "-6", "addr", "add", f"{c2.client6}/64", "dev", c2.client_if,
               "nodad")
    after = wait_endpoints(lab, everything)
    assert {a: e.dev for a, e in after.items()} == {a: e.dev for a, e in before.items()}
    assert all(e.flags == {"subflow"} for e in after.values())
    assert daemon.stop() == 0


def endpoint_flags_raw(lab: Lab) -> dict[str, str]:
    """Each endpoint's line of ``ip mptcp endpoint show`` (iproute2 before
    6.18 does not know ``laminar`` by name)."""
    out = lab.ip(lab.client, "mptcp", "endpoint", "show").stdout
    return {line.split()[0]: line for line in out.splitlines() if line.strip()}


@pytest.mark.lab(links=2)
def test_laminar_endpoints(lab: Lab) -> None:
    daemon = start(lab, "[core]\nnotify-flags=existing,skip_link_local\n"
                        "[interface c2]\naddr-flags=subflow,laminar\n",
                   "--addr-flags=laminar")
    wait_endpoints(lab, link_addresses(lab, 1, 2))
    lines = endpoint_flags_raw(lab)
    c1, c2 = lab.links
    for a in (c1.client4, c1.client6):  # --addr-flags=laminar
        words = lines[str(a)].split()
        assert "subflow" not in words and ("laminar" in words or "rawflags" in words
                                           and words[words.index("rawflags") + 1] == "20")
    for a in (c2.client4, c2.client6):  # the group's subflow,laminar
        words = lines[str(a)].split()
        assert "subflow" in words and ("laminar" in words or "rawflags" in words
                                       and words[words.index("rawflags") + 1] == "20")
    assert daemon.stop() == 0


# -- SIGHUP: the policy changed at run time ---------------------------------------------

BEFORE_RELOAD = """[core]
addr-flags=subflow
notify-flags=existing,skip_link_local
"""
AFTER_RELOAD = BEFORE_RELOAD + """[interfaces]
deny=c3
[interface c2]
addr-flags=subflow,backup
"""


def config_file(lab: Lab) -> Path:
    (path,) = lab.workdir.glob("mptcpd-*.conf")
    return path


def rewrite(path: Path, text: str) -> None:
    """Replace the file as an editor would (a new file renamed over it)."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    tmp.chmod(0o644)
    tmp.replace(path)


def show(eps: dict[str, Endpoint]) -> str:
    return "; ".join(f"{a} id {e.id} {','.join(sorted(e.flags))} dev {e.dev}"
                     for a, e in sorted(eps.items(), key=lambda i: i[1].id))


@pytest.mark.lab(links=3)
def test_sighup_changes_the_endpoints_while_a_transfer_keeps_running(lab: Lab) -> None:
    daemon = start(lab, BEFORE_RELOAD)
    before = wait_endpoints(lab, link_addresses(lab, 1, 2, 3))
    assert all(e.flags == {"subflow"} for e in before.values())
    for link in lab.links:
        lab.limit_rate(link, 20)
    lab.python(lab.server, "-m", "tests.lab.traffic", "server").wait_output("listening")
    nbytes = 40_000_000
    client = lab.python(lab.client, "-m", "tests.lab.traffic", "client",
                        str(lab.links[0].server4), "5201", "--bytes", str(nbytes),
                        "--timeout", "60")
    c1, c2, c3 = lab.links
    wait_for(lambda: lab.tx_bytes(lab.client, c3.client_if) > 1_000_000, 30,
             what="the transfer to use c3")
    tx_at_reload = {l.client_if: lab.tx_bytes(lab.client, l.client_if) for l in lab.links}
    rewrite(config_file(lab), AFTER_RELOAD)
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_output(r"Configuration reloaded from", timeout=10)
    after = wait_endpoints(lab, link_addresses(lab, 1, 2))
    for a in (c1.client4, c1.client6):
        assert after[str(a)].flags == {"subflow"} and after[str(a)].id == before[str(a)].id
    for a in (c2.client4, c2.client6):
        assert after[str(a)].flags == {"subflow", "backup"}
        assert after[str(a)].id == before[str(a)].id  # changed in place
    # Bytes keep flowing after the reload, and the connection ends well.
    tx_mid = lab.tx_bytes(lab.client, c1.client_if)
    wait_for(lambda: lab.tx_bytes(lab.client, c1.client_if) > tx_mid + 1_000_000, 30,
             what="bytes to keep flowing on c1 after the reload")
    assert client.wait(90) == 0, client.output()
    info = json.loads(client.output())["info"]
    assert info["bytes_acked"] >= nbytes
    tx_end = {l.client_if: lab.tx_bytes(lab.client, l.client_if) for l in lab.links}
    report = (f"endpoints before SIGHUP: {show(before)}\n"
              f"endpoints after SIGHUP:  {show(after)}\n"
              f"client tx bytes at SIGHUP {tx_at_reload}, at the end {tx_end}; "
              f"bytes_acked {info['bytes_acked']}")
    (lab.workdir / "sighup-report.txt").write_text(report)
    print(report)
    assert daemon.stop() == 0


@pytest.mark.lab(links=2)
def test_an_invalid_file_at_sighup_changes_nothing(lab: Lab) -> None:
    daemon = start(lab, BEFORE_RELOAD)
    before = wait_endpoints(lab, link_addresses(lab, 1, 2))
    path = config_file(lab)
    rewrite(path, BEFORE_RELOAD + "[interfaces]\ndeny=c2\ndeny-kinds=wire guard\n")
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_output(
        rf'Configuration reload refused: Invalid deny-kinds "wire guard" in \[interfaces\] '
        rf'of "{path}": "wire guard" is not a link kind\. The running configuration stays\.')
    rewrite(path, "[core]\nno delimiter here\n")
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_output(r"Configuration reload refused: Unable to load mptcpd settings "
                       r"from file .*: line 2: delimiter '=' not found\.")
    # What needs a restart is said and left; the rest applies.
    rewrite(path, BEFORE_RELOAD + "command-queue-size=16\n[interfaces]\ndeny=c2\n")
    daemon.send_signal(signal.SIGHUP)
    daemon.wait_output(rf'The new command-queue-size in "{path}" takes effect when '
                       "mptcpd restarts.")
    wait_endpoints(lab, link_addresses(lab, 1))
    # The first two reloads changed nothing: c2 kept its endpoints until
    # the valid file denied it.
    assert before.keys() == link_addresses(lab, 1, 2)
    out = daemon.output()
    assert out.count("Configuration reloaded from") == 1
    assert daemon.popen.poll() is None
    assert daemon.stop() == 0


# -- sspi (userspace PM): no subflow on a denied interface ----------------------------


@pytest.mark.lab(links=3, path_manager="userspace")
def test_sspi_opens_no_subflow_on_a_denied_interface(lab: Lab, tmp_path: Path) -> None:
    from tests.integration import test_sspi as sspi

    directory = tmp_path / "plugins"
    directory.mkdir()
    directory.chmod(0o755)
    (directory / "sspi.py").write_bytes((ROOT / "plugins" / "sspi.py").read_bytes())
    (directory / "sspi.py").chmod(0o644)
    daemon = lab.start_mptcpd("--log=stderr", "-d", f"--plugin-dir={directory}",
                              "--load-plugins=sspi", "--path-manager=sspi",
                              config="[interfaces]\ndeny=c3\n", env=daemon_env())
    daemon.wait_output(READY, timeout=20)
    sspi.start_server(lab)
    count = 3
    clients = sspi.start_clients(lab, count, 1 << 20, hold=4)
    tokens = sspi.wait_tokens(lab, count)

    def on_c1_and_c2() -> bool:
        table = sspi.by_interface(lab, sspi.subflow_sockets(lab, lab.client))
        return all(set(table.get(t, {})) == {"c1", "c2"} for t in tokens)

    wait_for(on_c1_and_c2, 20, what="subflows on c1 and c2")
    for client in clients:
        assert client.wait(60) == 0
        info = json.loads(client.output())["info"]
        assert info["subflows"] == 1 and info.get("subflows_total", 2) == 2, info
    # None was even tried from c3: every join the kernel started is one sspi
    # asked for (its debug line), from c2 (one per connection, and once
    # more for a join that failed and was tried again, as once under load).
    created = re.findall(r"creating a subflow on .*? from (\S+) \(id", daemon.output())
    assert len(created) >= count and set(created) == {str(lab.links[1].client4)}, created
    assert sspi.mib(lab, lab.client)["MPTcpExtMPJoinSynTx"] == len(created)
    assert daemon.stop() == 0
