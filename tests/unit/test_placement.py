"""flocid in a container: finding itself and picking the network functions join (no Docker needed)."""

from __future__ import annotations

from typing import Any

from flocid.executors.placement import (
    Attachment,
    SelfContainer,
    choose_own_network,
    confirms,
    container_id_from_cgroup,
    container_id_from_mountinfo,
    decide_placement,
    self_container_candidates,
    self_container_from_inspect,
)

CID = "21b25bdc2bd4fa002b6b409028795c5390917f8aaf76810263039de31897c67d"
OTHER = "9" * 64

# Read off a container on this machine (Docker 20.10, ext4 data root), trimmed.
MOUNTINFO = f"""\
80 60 0:45 / / rw,relatime master:31 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/X
81 80 0:48 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw
97 80 254:0 /var/lib/docker/containers/{CID}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/vda rw
98 80 254:0 /var/lib/docker/containers/{CID}/hostname /etc/hostname rw,relatime - ext4 /dev/vda rw
99 80 254:0 /var/lib/docker/containers/{CID}/hosts /etc/hosts rw,relatime - ext4 /dev/vda rw
"""
HOST_MOUNTINFO = """\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
"""
CGROUP_V1 = f"9:name=systemd:/docker/{CID}\n8:pids:/docker/{CID}\n0::/\n"
CGROUP_SYSTEMD = f"0::/system.slice/docker-{CID}.scope\n"


def test_container_id_from_mountinfo() -> None:
    assert container_id_from_mountinfo(MOUNTINFO) == CID
    assert container_id_from_mountinfo(HOST_MOUNTINFO) is None
    # A data root elsewhere (its own filesystem): the mount root starts at that filesystem.
    moved = f"97 80 254:1 /docker/containers/{CID}/hostname /etc/hostname rw - ext4 /dev/vdb rw\n"
    assert container_id_from_mountinfo(moved) == CID
    # A function's code bind-mounted from some containers/<id>/ path is not ours.
    other = f"90 80 254:0 /srv/containers/{OTHER}/data /data rw - ext4 /dev/vda rw\n"
    assert container_id_from_mountinfo(other) is None


def test_container_id_from_cgroup() -> None:
    assert container_id_from_cgroup(CGROUP_V1) == CID
    assert container_id_from_cgroup(CGROUP_SYSTEMD) == CID
    assert container_id_from_cgroup("0::/\n") is None
    assert container_id_from_cgroup("9:name=systemd:/\n8:pids:/user.slice\n") is None


def test_candidates_prefer_the_mounts_then_the_hostname_as_a_last_guess() -> None:
    assert self_container_candidates(MOUNTINFO, CGROUP_V1, CID[:12]) == [CID]
    assert self_container_candidates(HOST_MOUNTINFO, "0::/\n", CID[:12]) == [CID[:12]]
    # A host's name is not container-shaped: nothing to look up.
    assert self_container_candidates(HOST_MOUNTINFO, "0::/\n", "buildbox-7") == []
    assert self_container_candidates("", "", "") == []


def inspect_record(networks: dict[str, dict[str, Any]], mode: str = "proj_default") -> dict[str, Any]:
    return {
        "Id": CID,
        "Name": "/proj-flocid-1",
        "HostConfig": {"NetworkMode": mode},
        "NetworkSettings": {"Networks": networks},
    }


def test_self_container_from_inspect_reads_addresses_and_network_labels() -> None:
    record = inspect_record({
        "proj_default": {"NetworkID": "n1", "IPAddress": "172.18.0.2", "Gateway": "172.18.0.1"},
        "other": {"NetworkID": "n2", "IPAddress": "172.19.0.5"},
    })
    nets = {"n1": {"Labels": {"com.docker.compose.network": "default", "com.docker.compose.project": "proj"}},
            "n2": {"Labels": None}}
    me = self_container_from_inspect(record, nets)
    assert me.id == CID and me.name == "proj-flocid-1" and me.network_mode == "proj_default"
    assert [(a.name, a.ip, a.compose) for a in me.attachments] == [
        ("other", "172.19.0.5", False), ("proj_default", "172.18.0.2", True)]
    assert not me.shares_host_network
    host = self_container_from_inspect(inspect_record({"host": {"NetworkID": "h", "IPAddress": ""}}, "host"))
    assert host.shares_host_network


def att(name: str, ip: str, **labels: str) -> Attachment:
    return Attachment(name=name, ip=ip, labels=labels)


COMPOSE = {"com.docker.compose.network": "default", "com.docker.compose.project": "proj"}


def test_choose_own_network() -> None:
    compose = Attachment(name="proj_default", ip="172.18.0.2", labels=COMPOSE)
    pick, why = choose_own_network([att("zzz", "172.20.0.2"), compose])
    assert pick == compose and "Compose network (project proj)" in why
    # Several Compose networks: the project's default one.
    backend = Attachment(name="proj_backend", ip="172.21.0.2", labels={**COMPOSE, "com.docker.compose.network": "backend"})
    assert choose_own_network([backend, compose])[0] == compose
    pick, why = choose_own_network([backend, att("proj_x", "172.22.0.2", **{"com.docker.compose.network": "x"})])
    assert pick == backend and "FLOCI_SERVICES_LAMBDA_DOCKER_NETWORK" in why
    # No Compose label: the single user-defined network, never a predefined one.
    pick, why = choose_own_network([att("bridge", "172.17.0.3"), att("mynet", "10.5.0.2")])
    assert pick is not None and pick.name == "mynet" and why == "its only user-defined network"
    pick, why = choose_own_network([att("b", "10.6.0.2"), att("a", "10.5.0.2")])
    assert pick is not None and pick.name == "a" and "FLOCI_SERVICES_LAMBDA_DOCKER_NETWORK" in why
    # Only the default bridge (docker run without --network).
    pick, _ = choose_own_network([att("bridge", "172.17.0.3")])
    assert pick is not None and pick.name == "bridge"
    # No address anywhere (--network none).
    assert choose_own_network([att("none", "")])[0] is None


def me_on(*attachments: Attachment, mode: str = "proj_default") -> SelfContainer:
    return SelfContainer(id=CID, name="proj-flocid-1", network_mode=mode, attachments=attachments)


def bind_any(_: str) -> bool:
    return True


def test_on_the_host_functions_use_the_bridge_gateway() -> None:
    p = decide_placement(configured_network=None, host_override=None, gateway="172.17.0.1", me=None,
                         can_bind=bind_any)
    assert (p.network, p.advertise_host, p.bind_host, p.self_ip) == (None, "172.17.0.1", "172.17.0.1", None)
    assert "default bridge" in p.reason
    # The gateway is not an address here: bind everything.
    p = decide_placement(configured_network=None, host_override=None, gateway="172.17.0.1", me=None,
                         can_bind=lambda _: False)
    assert p.bind_host == "0.0.0.0" and p.advertise_host == "172.17.0.1"


def test_in_a_compose_network_functions_join_it_and_reach_flocid_there() -> None:
    me = me_on(Attachment(name="proj_default", ip="172.18.0.2", labels=COMPOSE))
    p = decide_placement(configured_network=None, host_override=None, gateway="172.17.0.1", me=me,
                         can_bind=bind_any)
    assert (p.network, p.advertise_host, p.bind_host, p.self_ip) == (
        "proj_default", "172.18.0.2", "172.18.0.2", "172.18.0.2")
    assert "proj_default" in p.reason and "container proj-flocid-1" in p.reason and "Compose" in p.reason


def test_the_host_override_still_wins_for_the_address() -> None:
    me = me_on(Attachment(name="proj_default", ip="172.18.0.2", labels=COMPOSE))
    p = decide_placement(configured_network=None, host_override="flocid", gateway="172.17.0.1", me=me,
                         can_bind=bind_any)
    assert (p.network, p.advertise_host, p.bind_host, p.self_ip) == (
        "proj_default", "flocid", "0.0.0.0", "172.18.0.2")


def test_on_the_default_bridge_in_a_container_functions_stay_there_and_use_flocids_ip() -> None:
    p = decide_placement(configured_network=None, host_override=None, gateway="172.17.0.1",
                         me=me_on(att("bridge", "172.17.0.5"), mode="default"), can_bind=bind_any)
    assert (p.network, p.advertise_host, p.self_ip) == (None, "172.17.0.5", "172.17.0.5")


def test_a_configured_network_wins_over_the_detected_one() -> None:
    me = me_on(Attachment(name="proj_default", ip="172.18.0.2", labels=COMPOSE))
    p = decide_placement(configured_network="functions", host_override=None, gateway="172.30.0.1", me=me,
                         can_bind=lambda ip: ip != "172.30.0.1")
    # flocid is not on "functions": containers reach it through that network's gateway.
    assert (p.network, p.advertise_host, p.bind_host, p.self_ip) == ("functions", "172.30.0.1", "0.0.0.0", None)
    assert "FLOCI_SERVICES_LAMBDA_DOCKER_NETWORK" in p.reason and "not on that network" in p.reason
    # flocid is on it too: its address there.
    me2 = me_on(Attachment(name="proj_default", ip="172.18.0.2", labels=COMPOSE), att("functions", "172.30.0.7"))
    p = decide_placement(configured_network="functions", host_override=None, gateway="172.30.0.1", me=me2,
                         can_bind=bind_any)
    assert (p.network, p.advertise_host, p.bind_host, p.self_ip) == (
        "functions", "172.30.0.7", "172.30.0.7", "172.30.0.7")
    # On the host: the configured network's gateway, as before.
    p = decide_placement(configured_network="functions", host_override=None, gateway="172.30.0.1", me=None,
                         can_bind=bind_any)
    assert (p.network, p.advertise_host, p.self_ip) == ("functions", "172.30.0.1", None)


def test_a_container_on_the_host_network_behaves_like_the_host() -> None:
    me = me_on(att("host", ""), mode="host")
    p = decide_placement(configured_network=None, host_override=None, gateway="172.17.0.1", me=me,
                         can_bind=bind_any)
    assert (p.network, p.advertise_host, p.self_ip) == (None, "172.17.0.1", None)
    assert "host's network" in p.reason


def test_confirms_needs_the_full_id_or_one_of_our_addresses() -> None:
    me = me_on(att("proj_default", "172.18.0.2"))
    assert confirms(CID, me, lambda _: False)
    assert not confirms(CID[:12], me, lambda _: False), "a hostname guess needs an address of ours"
    assert confirms(CID[:12], me, lambda ip: ip == "172.18.0.2")
    assert not confirms(CID[:12], me_on(att("host", ""), mode="host"), bind_any)
