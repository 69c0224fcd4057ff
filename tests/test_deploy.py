"""deploy/compose.yaml and deploy/nginx/nginx.conf agree with each other and with the image.

The fleet tests (test_fleet.py) run both files on loopback; these checks cover what loopback
cannot: the container addresses. No processes, no network.
"""

from __future__ import annotations

import ipaddress
import re

from tests.fleet import COMPOSE, HOSTS, NGINX_CONF, NGINX_PORT, compose_spec, replica_names
from tests.server import ROOT

PLIVO_ACCOUNT_CONCURRENCY = 100  # Plivo's MMS calls in flight per account


def _nginx_address(spec):
    return spec["services"]["nginx"]["networks"]["backend"]["ipv4_address"]


def test_replicas_trust_exactly_nginxs_fixed_address():
    """FORWARDED_ALLOW_IPS of every replica is nginx's fixed address, inside the fixed subnet."""
    spec = compose_spec()
    subnet = ipaddress.ip_network(spec["networks"]["backend"]["ipam"]["config"][0]["subnet"])
    nginx = _nginx_address(spec)
    addresses = [nginx]
    for name in replica_names(spec):
        service = spec["services"][name]
        assert service["environment"]["FORWARDED_ALLOW_IPS"] == nginx, name
        addresses.append(service["networks"]["backend"]["ipv4_address"])
    assert all(ipaddress.ip_address(a) in subnet for a in addresses), addresses
    assert len(set(addresses)) == len(addresses), addresses


def test_nginx_upstream_is_the_compose_replicas_and_port():
    """nginx.conf proxies to exactly the compose replicas on the image's port, and listens where compose publishes."""
    spec = compose_spec()
    conf = NGINX_CONF.read_text()
    image_port = re.search(r"\bPORT=(\d+)", (ROOT / "Dockerfile").read_text())[1]
    servers = re.findall(r"^\s*server (\S+);", conf, re.M)
    assert servers == [f"{name}:{image_port}" for name in replica_names(spec)]
    assert re.findall(r"^\s*listen (\S+);", conf, re.M) == [str(NGINX_PORT)]
    assert spec["services"]["nginx"]["ports"] == [f"{NGINX_PORT}:{NGINX_PORT}"]
    assert "./nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in spec["services"]["nginx"]["volumes"]
    assert "non_idempotent" not in re.sub(r"#.*", "", conf)  # POSTs are never retried elsewhere


def test_plivo_concurrency_is_split_between_replicas():
    """PLIVO_MAX_CONCURRENCY x processes of all replicas = Plivo's account limit of 100."""
    spec = compose_spec()
    envs = [spec["services"][name]["environment"] for name in replica_names(spec)]
    total = sum(int(e["PLIVO_MAX_CONCURRENCY"]) * int(e["WEB_CONCURRENCY"]) for e in envs)
    assert total == PLIVO_ACCOUNT_CONCURRENCY


def test_the_loopback_harness_maps_every_compose_host():
    """tests/fleet.py has a loopback address for every service of compose.yaml."""
    assert set(compose_spec()["services"]) <= set(HOSTS), COMPOSE
