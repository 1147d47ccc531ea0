"""The completion-webhook URL policy: which URLs a delivery may reach (docs/webhooks.md).

``edit_webhook_url_refusal`` in SQL gives the same verdict (migration 20261201000800, with the
allowlist table and ``edit_webhook_settings`` for the arguments); the sender checks again at
send time, address by address, as DNS answers.
"""

from __future__ import annotations

import ipaddress
import re
from enum import StrEnum
from typing import Final

WEBHOOK_MAX_URL_CHARS: Final = 2048
WEBHOOK_URL_PATTERN: Final = (
    r"^https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)(?::([0-9]{1,5}))?(?:[/?#][!-~]*)?$"
)
"""The only URL shape accepted (the same regex as ``edit_webhook_url_host``): no user info, ASCII."""
WEBHOOK_URL: Final = re.compile(WEBHOOK_URL_PATTERN)
WEBHOOK_DEFAULT_PORTS: Final = frozenset({443, 80})
"""The ports a URL may name unless the operator lists others (``edit_webhook_settings.allowed_ports``,
``WEBHOOK_ALLOWED_PORTS``): on any other port of an allowlisted host an attempt probes whatever listens
there, and a filtered one holds a delivery slot for the whole timeout."""


class WebhookFailure(StrEnum):
    """Why an attempt failed: ``edit_webhook_deliveries.last_error``, which the owner reads. An attempt's
    answer says ``kind: detail``; only the kind is stored (``webhook_failure_kind``), the detail is logged."""

    HTTP_STATUS = "http_status"
    """The receiver answered, but not 2xx (3xx included: redirects are never followed)."""
    TIMEOUT = "timeout"
    CONNECT_FAILED = "connect_failed"
    DNS_FAILED = "dns_failed"
    MALFORMED = "malformed"
    NOT_HTTPS = "not_https"
    HOST_NOT_ALLOWED = "host_not_allowed"
    PORT_NOT_ALLOWED = "port_not_allowed"
    PRIVATE_ADDRESS = "private_address"
    LEASE_EXPIRED = "lease_expired"


WEBHOOK_FAILURE_KIND: Final = re.compile(r"^([a-z_]{1,40})(?::|$)")
"""The kind at the start of ``kind: detail`` (``fail_edit_webhook_delivery`` applies the same regex)."""


def webhook_failure_kind(error: str | None) -> str:
    """What the owner may read of a failure: its kind, never the detail (which can name the addresses an
    allowlisted name resolves to, or tell a closed port from a silent one); ``error`` when there is none."""
    match = WEBHOOK_FAILURE_KIND.match(error or "")
    return match.group(1) if match else "error"


WEBHOOK_PERMANENT_FAILURES: Final = frozenset(
    {
        WebhookFailure.MALFORMED,
        WebhookFailure.NOT_HTTPS,
        WebhookFailure.HOST_NOT_ALLOWED,
        WebhookFailure.PORT_NOT_ALLOWED,
        WebhookFailure.PRIVATE_ADDRESS,
    }
)
"""Refusals of the URL itself: retrying cannot help, so the delivery is dead at once (replayable)."""


def webhook_host_allowed(host: str, allowed: frozenset[str]) -> bool:
    """``host`` (lower case, IPv6 without brackets) is on ``allowed``: equal, or under a ``*.`` entry."""
    return host in allowed or any(
        entry.startswith("*.") and host.endswith(entry[1:]) and len(host) > len(entry) - 1
        for entry in allowed
    )


WEBHOOK_PRIVATE_NETWORKS: Final = tuple(
    ipaddress.ip_network(network)
    for network in (
        # Not public: private, shared (CGNAT), loopback, link-local (cloud metadata 169.254.169.254,
        # fd00:ec2::254), site-local (fec0::/10, deprecated), unspecified, multicast, reserved,
        # documentation (2001:db8::/32, 3fff::/20), benchmarking, the IETF protocol block 2001::/23
        # (Teredo 2001::/32, ORCHID), SRv6 SIDs (5f00::/16), the discard prefixes, and IPv4 inside
        # IPv6 (compatible ::/96, mapped, NAT64, 6to4 and its relay 192.88.99.0/24), whose v4 part
        # could be any of these. Every address Python's ipaddress calls not global is here, and
        # more (IANA's special-purpose registries: https://www.iana.org/assignments/iana-ipv4-special-registry,
        # https://www.iana.org/assignments/iana-ipv6-special-registry). edit_webhook_address_private
        # lists the same networks.
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
        "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15",
        "198.51.100.0/24", "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
        "::/96", "::ffff:0:0/96", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "100:0:0:1::/64",
        "2001::/23", "2001:db8::/32", "2002::/16", "3fff::/20", "5f00::/16", "fc00::/7", "fe80::/10",
        "fec0::/10", "ff00::/8",
    )
)  # fmt: skip


def webhook_address_private(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address webhooks never reach unless the operator allows private addresses."""
    return any(
        address in network for network in WEBHOOK_PRIVATE_NETWORKS if network.version == address.version
    )


def webhook_host_private(host: str) -> bool:
    """``localhost`` (and names under it), or an address literal that is private (SQL's rule)."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    if not re.fullmatch(r"[0-9.]+", host) and ":" not in host:
        return False
    try:
        return webhook_address_private(ipaddress.ip_address(host))
    except ValueError:
        return True  # looks like an address, but is none: never trusted


def webhook_url_host(url: str) -> str | None:
    """The host of an acceptable URL (lower case, IPv6 without brackets); None when malformed."""
    match = WEBHOOK_URL.match(url) if len(url) <= WEBHOOK_MAX_URL_CHARS else None
    if match is None or (match.group(2) is not None and not 1 <= int(match.group(2)) <= 65535):
        return None
    return match.group(1).strip("[]").lower()


def webhook_url_port(url: str) -> int | None:
    """The port an acceptable URL goes to: the one it names, else its scheme's; None when malformed
    (``edit_webhook_url_port`` says the same)."""
    if webhook_url_host(url) is None:
        return None
    match = WEBHOOK_URL.match(url)
    assert match is not None
    if match.group(2) is not None:
        return int(match.group(2))
    return 443 if url[:8].lower() == "https://" else 80


def webhook_url_refusal(
    url: str,
    *,
    allowed_hosts: frozenset[str],
    allow_http: bool,
    allow_private_addresses: bool,
    allowed_ports: frozenset[int] | None = WEBHOOK_DEFAULT_PORTS,
) -> tuple[WebhookFailure, str] | None:
    """Why a webhook URL is refused, or None: ``edit_webhook_url_refusal`` in SQL gives the same verdict
    (with the allowlist table and ``edit_webhook_settings`` for the arguments). ``allowed_ports`` None:
    any port (``allow_any_port``, local development only)."""
    host = webhook_url_host(url)
    if host is None:
        return (
            WebhookFailure.MALFORMED,
            "scheme://host[:port]/path, no user info, ASCII, at most 2048 characters",
        )
    if not url.startswith("https://") and not allow_http:
        return WebhookFailure.NOT_HTTPS, "only https:// URLs are accepted"
    if not webhook_host_allowed(host, allowed_hosts):
        return WebhookFailure.HOST_NOT_ALLOWED, f"{host} is not on the operator's allowlist"
    port = webhook_url_port(url)
    if allowed_ports is not None and port not in allowed_ports:
        return WebhookFailure.PORT_NOT_ALLOWED, f"{port} is not on the operator's port list"
    if webhook_host_private(host) and not allow_private_addresses:
        return WebhookFailure.PRIVATE_ADDRESS, f"{host} is a private, loopback or link-local address"
    return None
