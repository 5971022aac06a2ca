"""Per-client fairness behind proxies: forwarded addresses are believed only from trusted proxies."""

import httpx
import pytest

from service.client_identity import client_address, forwarded_chain, parse_networks
from service.settings import Settings

TRUSTED = parse_networks(["10.0.0.0/8", "::1"])


def h(**headers):
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in headers.items()]


def test_without_trusted_proxies_the_peer_is_the_client():
    assert client_address("10.1.2.3", h(x_forwarded_for="1.2.3.4"), ()) == "10.1.2.3"


def test_an_untrusted_peer_cannot_choose_its_identity():
    assert client_address("8.8.8.8", h(x_forwarded_for="1.2.3.4"), TRUSTED) == "8.8.8.8"


def test_x_forwarded_for_from_a_trusted_proxy_names_the_right_most_untrusted_hop():
    # the client could have sent "6.6.6.6" itself; the first proxy appended the real address 1.2.3.4
    headers = h(x_forwarded_for="6.6.6.6, 1.2.3.4, 10.0.0.7")
    assert client_address("10.0.0.1", headers, TRUSTED) == "1.2.3.4"


def test_forwarded_header_with_ports_and_ipv6():
    headers = h(forwarded='for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711"')
    assert forwarded_chain(headers) == ["192.0.2.60", "[2001:db8:cafe::17]:4711"]
    assert client_address("::1", headers, TRUSTED) == "2001:db8:cafe::17"
    assert client_address("10.0.0.1", h(forwarded="for=192.0.2.60:8080"), TRUSTED) == "192.0.2.60"


def test_forwarded_wins_over_x_forwarded_for_and_garbage_stops_the_chain():
    headers = h(forwarded="for=198.51.100.1", x_forwarded_for="1.1.1.1")
    assert client_address("10.0.0.1", headers, TRUSTED) == "198.51.100.1"
    assert client_address("10.0.0.1", h(forwarded="for=unknown"), TRUSTED) == "10.0.0.1"
    assert client_address("10.0.0.1", h(x_forwarded_for="10.0.0.5"), TRUSTED) == "10.0.0.1"


def test_the_setting_rejects_what_is_not_an_address():
    assert Settings(hmm="unused", trusted_proxies="10.0.0.0/8, 127.0.0.1").trusted_proxies
    with pytest.raises(ValueError, match="trusted_proxies"):
        Settings(hmm="unused", trusted_proxies="10.0.0.0/8, not-an-ip")


def test_served_identity_follows_the_trusted_proxy(start_server):
    """End to end through uvicorn: the per-client rate limit (1 request a minute) counts two clients behind one
    trusted proxy apart, and a client cannot escape it by forging the header when its peer is not a trusted
    proxy. One server: the trusted proxy connects from 127.0.0.1, the untrusted peer from 127.0.0.2 (loopback
    too, not in the trusted list)."""
    body = {"keywords": ["dog"], "max_new_tokens": 4}
    server = start_server("trusted-proxy", PCGEN_TRUSTED_PROXIES="127.0.0.1", PCGEN_RATE_LIMIT="1/minute")

    def codes(peer: str, forwarded: tuple[str, ...]) -> list[int]:
        with server.client(transport=httpx.HTTPTransport(local_address=peer)) as client:
            return [client.post("/generate", json=body, headers={"X-Forwarded-For": ip}).status_code
                    for ip in forwarded]  # fmt: skip

    try:
        assert codes("127.0.0.1", ("203.0.113.1", "203.0.113.2", "203.0.113.1")) == [200, 200, 429]
        # fresh forged addresses each time: only the peer (127.0.0.2) is counted, so the second is refused
        assert codes("127.0.0.2", ("203.0.113.3", "203.0.113.4")) == [200, 429]
    finally:
        server.stop()
