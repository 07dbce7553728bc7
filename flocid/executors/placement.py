"""Where function containers go and how they reach flocid: decided from what Docker says (sans-IO).

Floci's rule (floci-lambda.md 1.7, ``DockerHostResolver``, #765), which flocid follows:

    the address      FLOCI_SERVICES_LAMBDA_DOCKER_HOST_OVERRIDE if set; else, when flocid runs in a
                     container, its own IP on the network functions join; else the gateway of that
                     network (the host's address on the Docker bridge)
    the network      FLOCI_SERVICES_LAMBDA_DOCKER_NETWORK if set; else, when flocid runs in a
                     container, its own network: the one carrying the Compose label
                     ``com.docker.compose.network``, else its single user-defined network, else
                     Docker's default bridge (where it reaches other containers by IP); on the host,
                     the default bridge

``FLOCI_HOSTNAME``, when set, still names flocid in ``AWS_ENDPOINT_URL`` (the invoke layer applies it).

Finding "am I in a container, which one" starts from what the process sees of itself: Docker
bind-mounts ``/var/lib/docker/containers/<id>/{hostname,hosts,resolv.conf}`` into every container
(``/proc/self/mountinfo``), cgroup v1 paths carry ``/docker/<id>`` (``/proc/self/cgroup``), and the
default hostname is the short id. The executor confirms a candidate by inspecting it through dockerd.
Everything here is plain functions over text and the JSON dockerd returns; the executor does the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

COMPOSE_NETWORK_LABEL = "com.docker.compose.network"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
#: Docker's predefined networks: none of them is "flocid's own network" in the Compose sense.
PREDEFINED_NETWORKS = frozenset({"bridge", "host", "none"})
NETWORK_VARIABLE = "FLOCI_SERVICES_LAMBDA_DOCKER_NETWORK"

_MOUNTINFO_ID = re.compile(r"/containers/([0-9a-f]{64})/(?:hostname|hosts|resolv\.conf)(?:\s|$)")
_CGROUP_ID = re.compile(r"(?:/docker/|/docker-)([0-9a-f]{64})(?:\.scope)?(?:/|$)")
_HOSTNAME_ID = re.compile(r"^[0-9a-f]{12,64}$")


def container_id_from_mountinfo(text: str) -> str | None:
    """The id of the container whose ``hostname``/``hosts``/``resolv.conf`` are mounted here."""
    for line in text.splitlines():
        fields = line.split()
        # Field 4 is the mount's root within its filesystem: ``/var/lib/docker/containers/<id>/hostname``
        # (a data-root elsewhere changes the prefix, not the ``containers/<id>/`` part).
        if len(fields) >= 5:
            m = _MOUNTINFO_ID.search(fields[3] + " ")
            if m:
                return m.group(1)
    return None


def container_id_from_cgroup(text: str) -> str | None:
    """The container id in a cgroup v1 path (``/docker/<id>``, ``docker-<id>.scope``); cgroup v2 with
    a private cgroup namespace shows only ``0::/``, so None there."""
    for line in text.splitlines():
        path = line.split(":", 2)[-1]
        m = _CGROUP_ID.search(path)
        if m:
            return m.group(1)
    return None


def self_container_candidates(mountinfo: str, cgroup: str, hostname: str) -> list[str]:
    """Container ids or names to inspect, most trustworthy first; empty when nothing suggests a
    container. The hostname is only a guess (a Compose ``hostname:`` or a host's own name may be
    anything), so the executor also checks that the inspected container's address is one of ours."""
    out: list[str] = []
    for found in (container_id_from_mountinfo(mountinfo), container_id_from_cgroup(cgroup)):
        if found and found not in out:
            out.append(found)
    name = hostname.strip()
    if name and not out and _HOSTNAME_ID.match(name):
        out.append(name)
    return out


@attrs.frozen(kw_only=True)
class Attachment:
    """One network flocid's container is on: its name, flocid's IPv4 there, the network's labels."""

    name: str
    network_id: str = ""
    ip: str = ""
    labels: Mapping[str, str] = attrs.field(factory=dict)

    @property
    def compose(self) -> bool:
        return COMPOSE_NETWORK_LABEL in self.labels


@attrs.frozen(kw_only=True)
class SelfContainer:
    """flocid's own container as dockerd describes it."""

    id: str
    name: str
    network_mode: str
    attachments: tuple[Attachment, ...] = ()

    @property
    def shares_host_network(self) -> bool:
        return self.network_mode == "host"


def self_container_from_inspect(
    record: Mapping[str, Any], networks: Mapping[str, Mapping[str, Any]] | None = None
) -> SelfContainer:
    """Build ``SelfContainer`` from ``GET /containers/<id>/json`` and the ``GET /networks/<id>``
    records of its networks (keyed by network id or name; only their ``Labels`` are read)."""
    networks = networks or {}
    host_config = record.get("HostConfig") or {}
    settings = record.get("NetworkSettings") or {}
    attachments = []
    for name, att in sorted((settings.get("Networks") or {}).items()):
        att = att or {}
        net_id = str(att.get("NetworkID") or "")
        net = networks.get(net_id) or networks.get(name) or {}
        attachments.append(Attachment(
            name=name, network_id=net_id, ip=str(att.get("IPAddress") or ""),
            labels=dict(net.get("Labels") or {}),
        ))
    return SelfContainer(
        id=str(record.get("Id", "")),
        name=str(record.get("Name", "")).lstrip("/"),
        network_mode=str(host_config.get("NetworkMode") or ""),
        attachments=tuple(attachments),
    )


def choose_own_network(attachments: Iterable[Attachment]) -> tuple[Attachment | None, str]:
    """The network flocid's functions should share with it, and why (for the start-up log line).

    A Compose network first (several: the project's ``default``, else the first by name), else the
    single user-defined network, else the default bridge; only networks where flocid has an IPv4.
    """
    usable = [a for a in attachments if a.ip]
    user = [a for a in usable if a.name not in PREDEFINED_NETWORKS]
    compose = [a for a in user if a.compose]
    if compose:
        defaults = [a for a in compose if a.labels.get(COMPOSE_NETWORK_LABEL) == "default"]
        pick = (defaults or sorted(compose, key=lambda a: a.name))[0]
        project = pick.labels.get(COMPOSE_PROJECT_LABEL)
        why = f"its Compose network{f' (project {project})' if project else ''}"
        if len(compose) > 1:
            why += f", one of {len(compose)}: set {NETWORK_VARIABLE} to pick another"
        return pick, why
    if user:
        pick = sorted(user, key=lambda a: a.name)[0]
        if len(user) == 1:
            return pick, "its only user-defined network"
        return pick, f"the first of its {len(user)} user-defined networks: set {NETWORK_VARIABLE} to pick another"
    bridge = [a for a in usable if a.name == "bridge"]
    if bridge:
        return bridge[0], "Docker's default bridge, the network it runs on"
    return None, "it has no IPv4 address on a Docker network"


@attrs.frozen(kw_only=True)
class Placement:
    """The decision: what function containers join and where they find flocid."""

    #: ``HostConfig.NetworkMode`` of function containers; None = Docker's default bridge.
    network: str | None
    #: The address containers use for the Runtime API and ``AWS_ENDPOINT_URL`` (before FLOCI_HOSTNAME).
    advertise_host: str
    #: Where the Runtime API servers (and the extra API listener) bind.
    bind_host: str
    #: flocid's own address on the functions' network when it runs in a container: the DNS
    #: responder listens there and answers with it. None on the host (the Docker bridge is used).
    self_ip: str | None = None
    #: For the start-up log line: which network and why.
    reason: str = ""


def decide_placement(
    *,
    configured_network: str | None,
    host_override: str | None,
    gateway: str,
    me: SelfContainer | None,
    can_bind: Callable[[str], bool],
) -> Placement:
    """Apply Floci's rule (module docstring). ``gateway`` is the gateway of the configured network
    (or of the default bridge); ``me`` is flocid's container, None when it runs on the host."""
    in_container = me is not None and not me.shares_host_network
    where = f"flocid runs in container {me.name or me.id[:12]}" if me is not None else ""

    def via_gateway(network: str | None, why: str) -> Placement:
        bind = "0.0.0.0" if host_override or not can_bind(gateway) else gateway
        return Placement(network=network, advertise_host=host_override or gateway, bind_host=bind,
                         reason=why)

    def via_self(network: str | None, ip: str, why: str) -> Placement:
        bind = "0.0.0.0" if host_override or not can_bind(ip) else ip
        return Placement(network=network, advertise_host=host_override or ip, bind_host=bind, self_ip=ip,
                         reason=why)

    if configured_network:
        why = f"functions join Docker network {configured_network} ({NETWORK_VARIABLE})"
        if in_container:
            assert me is not None
            mine = [a for a in me.attachments if a.ip and configured_network in (a.name, a.network_id)]
            if mine:
                return via_self(configured_network, mine[0].ip, f"{why}; {where}, at {mine[0].ip} there")
            why += f"; {where} but not on that network, so functions reach it through the gateway {gateway}"
        return via_gateway(configured_network, why)
    if in_container:
        assert me is not None
        pick, because = choose_own_network(me.attachments)
        if pick is not None:
            network = None if pick.name == "bridge" else pick.name
            return via_self(network, pick.ip,
                            f"functions join Docker network {pick.name}: {where} and this is {because}")
        return via_gateway(None, f"functions join Docker's default bridge: {where} but {because}")
    if me is not None:
        return via_gateway(None, f"functions join Docker's default bridge: {where} on the host's network")
    return via_gateway(None, "functions join Docker's default bridge (flocid runs on the host)")


def confirms(candidate: str, me: SelfContainer, can_bind: Callable[[str], bool]) -> bool:
    """Is the inspected container really flocid's own? Its full id was seen in our mounts or
    cgroup, or (for a hostname guess) one of its addresses is an address of this process."""
    if len(candidate) == 64 and me.id == candidate:
        return True
    return not me.shares_host_network and any(a.ip and can_bind(a.ip) for a in me.attachments)
