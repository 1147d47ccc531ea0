"""``WebhookSender`` over HTTP: the URL rules again, DNS pinned, no redirects, bounded everything.

A receiver's URL is user input, so each attempt checks it once more (the allowlist, and the port
list, may have changed since it was registered), then resolves the name itself and refuses it when any address it resolves
to is private, loopback or link-local (unless the operator allows private addresses), and connects
to the address it checked: the request goes to that IP, with the name in ``Host`` and, over TLS, as
the SNI and the name the certificate must match. A second resolution (DNS rebinding) cannot
redirect it. Redirects are never followed (a 3xx is a failed attempt), connections are not reused
(a TLS connection verified for one name never carries another's request), proxies from the
environment are ignored, the whole attempt has one deadline and at most ``max_response_bytes`` of the
answer are read.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import httpx

from processor.domain import rules, webhook_urls
from processor.domain.ports.webhooks import WebhookAnswer
from processor.domain.rules import DEFAULT_WEBHOOK_TIMEOUT_SECONDS
from processor.domain.webhook_urls import WebhookFailure

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[Address]]]


async def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to (the system resolver, off the event loop)."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # The scope of a link-local IPv6 address ("fe80::1%eth0") is dropped: those are refused anyway.
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def _failure(kind: WebhookFailure, detail: str, status_code: int | None = None) -> WebhookAnswer:
    return WebhookAnswer(
        status_code, f"{kind}: {detail}", permanent=kind in webhook_urls.WEBHOOK_PERMANENT_FAILURES
    )


class HttpWebhookSender:
    """POSTs webhooks with httpx under the rules above."""

    def __init__(
        self,
        *,
        allowed_hosts: frozenset[str] | None,
        allow_http: bool = False,
        allow_private_addresses: bool = False,
        allowed_ports: frozenset[int] | None = webhook_urls.WEBHOOK_DEFAULT_PORTS,
        timeout_seconds: float = DEFAULT_WEBHOOK_TIMEOUT_SECONDS,
        max_response_bytes: int = rules.WEBHOOK_MAX_RESPONSE_BYTES,
        resolver: Resolver = resolve,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self._allowed_hosts = allowed_hosts
        """None: the database's allowlist alone decides (it is checked at claim time)."""
        self._allowed_ports = allowed_ports
        """None: the database's port list alone decides (it is checked at claim time)."""
        self._allow_http = allow_http
        self._allow_private = allow_private_addresses
        self._timeout = timeout_seconds
        self._max_response_bytes = max_response_bytes
        self._resolve = resolver
        self._verify = verify
        """Certificates are always verified against the URL's name; tests pass a context trusting their own CA."""
        self._client: httpx.AsyncClient | None = None

    async def open(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                follow_redirects=False,
                trust_env=False,
                verify=self._verify,
                timeout=httpx.Timeout(self._timeout),
                limits=httpx.Limits(max_keepalive_connections=0, max_connections=64),
            )

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send(self, url: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
        try:
            async with asyncio.timeout(self._timeout):
                return await self._send(url, headers, body)
        except TimeoutError:
            return _failure(WebhookFailure.TIMEOUT, f"no answer within {self._timeout:g} s")

    async def _send(self, url: str, headers: Mapping[str, str], body: bytes) -> WebhookAnswer:
        host = webhook_urls.webhook_url_host(url) or ""
        refusal = webhook_urls.webhook_url_refusal(
            url,
            # Unset: the database's allowlist alone decides (claim_edit_webhook_deliveries checked it).
            allowed_hosts=self._allowed_hosts if self._allowed_hosts is not None else frozenset({host}),
            allow_http=self._allow_http,
            allow_private_addresses=self._allow_private,
            allowed_ports=(
                self._allowed_ports
                if self._allowed_ports is not None
                else frozenset({webhook_urls.webhook_url_port(url) or 0})
            ),
        )
        if refusal is not None:
            return _failure(*refusal)
        parts = urlsplit(url)
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return _failure(WebhookFailure.MALFORMED, "the port is out of range")
        try:
            addresses = await self._resolve(host, port)
        except (OSError, ValueError) as exc:
            return _failure(WebhookFailure.DNS_FAILED, f"{host}: {exc}")
        if not addresses:
            return _failure(WebhookFailure.DNS_FAILED, f"{host}: no address")
        private = [str(a) for a in addresses if webhook_urls.webhook_address_private(a)]
        if private and not self._allow_private:
            return _failure(WebhookFailure.PRIVATE_ADDRESS, f"{host} resolves to {', '.join(private)}")
        address = addresses[0]
        literal = f"[{address}]" if address.version == 6 else str(address)
        target = parts._replace(netloc=f"{literal}:{port}").geturl()
        extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
        request_headers = {**headers, "host": parts.netloc}
        return await self._post(target, request_headers, body, extensions)

    async def _post(
        self, target: str, headers: Mapping[str, str], body: bytes, extensions: dict[str, str]
    ) -> WebhookAnswer:
        await self.open()
        assert self._client is not None
        try:
            request = self._client.build_request(
                "POST", target, headers=headers, content=body, extensions=extensions
            )
            response = await self._client.send(request, stream=True)
            try:
                read = 0
                async for chunk in response.aiter_raw():
                    read += len(chunk)
                    if read >= self._max_response_bytes:
                        break  # only the status matters; a huge answer is not read
            finally:
                await response.aclose()
        except httpx.TimeoutException as exc:
            return _failure(WebhookFailure.TIMEOUT, type(exc).__name__)
        except httpx.HTTPError as exc:
            return _failure(WebhookFailure.CONNECT_FAILED, f"{type(exc).__name__}: {exc}"[:300])
        if 200 <= response.status_code < 300:
            return WebhookAnswer(response.status_code)
        detail = f"{response.status_code} {response.reason_phrase}".strip()
        if response.is_redirect:
            detail += " (redirects are not followed)"
        return _failure(WebhookFailure.HTTP_STATUS, detail, response.status_code)
