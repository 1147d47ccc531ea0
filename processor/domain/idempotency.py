"""Idempotent submits: what makes two submits with one key "the same request".

A client sends an idempotency key (REST ``Idempotency-Key``, the ``idempotency_key`` field) to retry
a submit safely: the first submit makes the request, every later one with the key gets that request
back, and one with the same key but another body is refused (``idempotency_key_reused``), as the
IETF draft "The Idempotency-Key HTTP Header Field" (draft-ietf-httpapi-idempotency-key-header) and
Stripe's API do. "Another body" is decided by ``fingerprint``: a hash of everything the request is
made of (its parameters, options, the bytes of its images and the objects it names), stored beside
the key (``idempotency_fingerprint``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import Any

from processor.domain.errors import InvalidInput
from processor.domain.reasons import ReasonCode
from processor.domain.request import OPTION_FIELDS, PARAM_FIELDS, EditParams, RequestOptions
from processor.domain.speed import LoraChoice

FINGERPRINT_VERSION = "v1"


def fingerprint(
    kind: str,
    params: EditParams,
    options: RequestOptions,
    *,
    images: Sequence[bytes] = (),
    object_paths: Sequence[str] = (),
    references: Sequence[bytes] = (),
    reference_paths: Sequence[str] = (),
) -> str:
    """``v1:`` and the SHA-256 of the request's canonical JSON; the key itself is left out."""
    body = {
        "kind": kind,
        "params": {item.name: _plain(getattr(params, item.name)) for item in PARAM_FIELDS},
        "options": {
            item.name: _plain(getattr(options, item.name))
            for item in OPTION_FIELDS
            if item.name != "idempotency_key"
        },
        "images": [hashlib.sha256(data).hexdigest() for data in images],
        "object_paths": list(object_paths),
        "references": [hashlib.sha256(data).hexdigest() for data in references],
        "reference_paths": list(reference_paths),
    }
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"{FINGERPRINT_VERSION}:{hashlib.sha256(canonical.encode()).hexdigest()}"


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, LoraChoice):
        return value.as_json()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def check_same_request(key: str, stored: str | None, sent: str) -> None:
    """Refuse (``idempotency_key_reused``) a submit whose body is not the one ``key`` was first used
    with. A request an app inserted itself has no fingerprint: its key alone decides."""
    if stored is not None and stored != sent:
        raise InvalidInput(
            f"the idempotency key {key!r} was used before with another body; use a new key for a new request",
            reason=ReasonCode.IDEMPOTENCY_KEY_REUSED,
        )
