"""What a signed-in user can do with their edit requests: the use cases every way in translates.

``Action`` lists them; ``UserActions`` carries them out with one set of answers. A request or batch
that is not the caller's (or does not exist) is ``NotFound``, one already finished cannot be
canceled (``AlreadyFinished``), too many open waits are ``LimitExceeded``, a refused request
``InvalidInput``: the REST API turns them into 404, 409, 429 and 422, the MCP tools into tool
errors led by the same reason code. Neither reaches past this module into the database adapter.

Rows are written and read through the ``UserRequests`` port, which acts *as the user* (the
Postgres adapter sets the role and JWT claims as PostgREST would), so the schema's RLS policies
and column grants decide what a caller may see and do; this module adds no access rules of its
own. Input images are validated before anything is stored, then uploaded under the user's folder
in ``edit-inputs``; the row's insert trigger sees them and queues the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import time
import uuid
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from processor.core.decoding import DecodePool
from processor.core.turns import FairTurns
from processor.domain.errors import (
    AlreadyFinished,
    InvalidInput,
    KeyTaken,
    LimitExceeded,
    NotFound,
    ProcessorError,
)
from processor.domain.idempotency import check_same_request, fingerprint
from processor.domain.images import ImageLimits
from processor.domain.params import check_batch, check_request
from processor.domain.ports.changes import RowChanges
from processor.domain.ports.storage import ObjectStorage
from processor.domain.ports.user_requests import UserRequests
from processor.domain.reasons import ReasonCode
from processor.domain.request import NO_OPTIONS, EditParams, RequestOptions
from processor.domain.rules import (
    CHANGES_FALLBACK_SECONDS,
    CREATION_SIZE,
    DEFAULT_LIST_LIMIT,
    DEFAULT_SIGNED_URL_SECONDS,
    INPUT_BUCKET,
    MAX_LIST_LIMIT,
    MAX_OUTPUT_BYTES,
    OUTPUT_MEDIA_TYPES,
    STATUSES,
    STREAM_MAX_SECONDS,
    SUBMISSIONS_IN_FLIGHT,
    SUBMISSIONS_PER_USER,
    TERMINAL,
    VALIDATION_THREADS,
    VALIDATIONS_PER_USER,
    WAIT_MAX_SECONDS,
    WAITS_PER_USER,
    OutputFormat,
    output_format_of,
)
from processor.domain.users import User


@dataclass(frozen=True, slots=True)
class OutputFile:
    """A request's output image: its bytes and format."""

    data: bytes
    format: OutputFormat

    @property
    def media_type(self) -> str:
        return OUTPUT_MEDIA_TYPES[self.format]


Row = dict[str, Any]
"""A request as its owner sees it (``UserRequests.get``), or a batch (``get_batch``)."""

log = logging.getLogger(__name__)

SIGNING_CONCURRENCY = 8
"""Signed URLs one list asks Storage for at once."""

_FORMATS = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "WEBP": ("webp", "image/webp")}


class Action(StrEnum):
    """Every action a user has; each way in that acts for a user (REST, MCP) offers each one
    (``tests/test_action_parity.py`` holds them to it)."""

    SUBMIT = "submit"
    """Validate, store and queue one edit."""
    SUBMIT_BATCH = "submit_batch"
    """The same edit over many images, all or none."""
    GET = "get"
    """One request: status, progress, result, a signed URL of the output."""
    LIST = "list"
    """The user's most recent requests, newest first."""
    CANCEL = "cancel"
    """Stop a waiting or running request (a running edit stops between steps)."""
    WAIT = "wait"
    """The request once it is finished, or as it stands when the wait runs out."""
    FOLLOW = "follow"
    """Each change of status, progress or live preview until the request is finished."""
    GET_BATCH = "get_batch"
    """A batch's counts by status, progress and requests."""
    CANCEL_BATCH = "cancel_batch"
    """Cancel every request of a batch that has not finished."""


class UserActions:
    """The user's actions over the ``UserRequests``, ``ObjectStorage`` and ``RowChanges`` ports."""

    def __init__(
        self,
        requests: UserRequests,
        storage: ObjectStorage,
        limits: ImageLimits,
        changes: RowChanges,
        *,
        owns_storage: bool = True,
        signed_url_seconds: int = DEFAULT_SIGNED_URL_SECONDS,
        stream_seconds: float = STREAM_MAX_SECONDS,
        waits_per_user: int = WAITS_PER_USER,
        submissions_per_user: int = SUBMISSIONS_PER_USER,
        submissions_in_flight: int = SUBMISSIONS_IN_FLIGHT,
        validation: DecodePool | None = None,
    ) -> None:
        """``owns_storage=False`` when the storage adapter is shared (the service's): then it is
        opened and closed by its owner, not here. ``validation``: the pool uploads are decoded in
        (by default one of ``VALIDATION_THREADS`` processes of its own)."""
        self._requests = requests
        self._storage = storage
        self._limits = limits
        self._changes = changes
        self._owns_storage = owns_storage
        self._signed_url_seconds = signed_url_seconds
        self._stream_seconds = stream_seconds
        self._waits_per_user = waits_per_user
        self._waits: Counter[uuid.UUID] = Counter()
        self._submissions_per_user = submissions_per_user
        self._submissions_in_flight = submissions_in_flight
        self._submissions: Counter[uuid.UUID] = Counter()
        # Validation decodes untrusted images: its own small pool of decoding processes (each image
        # within its CPU time), so neither a flood of uploads nor slow decodes can take the threads
        # edits run in (the loop's default executor) or the processes the worker decodes in. Users
        # take turns at it, one image at a time (``VALIDATIONS_PER_USER``), round robin.
        self._validation = validation or DecodePool(VALIDATION_THREADS)
        self._turns = FairTurns(VALIDATION_THREADS, VALIDATIONS_PER_USER)

    @property
    def limits(self) -> ImageLimits:
        return self._limits

    @property
    def validations_waiting(self) -> int:
        """Images waiting for their user's turn at the validation processes."""
        return self._turns.waiting

    async def open(self) -> None:
        """Open the pool, the change listener and (when this owns it) the storage client."""
        await self._requests.open()
        if self._owns_storage:
            await self._storage.open()
        await self._changes.open()

    async def close(self) -> None:
        await self._requests.close()
        if self._owns_storage:
            await self._storage.close()
        await self._changes.close()
        self._validation.close()

    # --- Submit ----------------------------------------------------------------------------------

    async def submit(
        self,
        user: User,
        images: Sequence[bytes],
        params: EditParams,
        options: RequestOptions = NO_OPTIONS,
        *,
        object_paths: Sequence[str] = (),
    ) -> Row:
        """``Action.SUBMIT``: validate, upload ``images`` and insert the row; ``object_paths`` are
        inputs already in the user's folder (after the uploaded ones; RLS refuses others). With no
        image at all, a creation at ``params``' size (default ``CREATION_SIZE``).

        With ``options.idempotency_key``, the request that key already names, if any (``replayed``
        true in the answer; ``idempotency_key_reused`` when its body was another); a concurrent
        submit with the key that loses the race answers the winner's request and deletes its uploads.
        """
        async with self.submission(user):
            return await self._submit(user, images, params, options, object_paths)

    async def _submit(
        self,
        user: User,
        images: Sequence[bytes],
        params: EditParams,
        options: RequestOptions,
        object_paths: Sequence[str],
    ) -> Row:
        if not images and not object_paths and params.width is None and params.height is None:
            params = dataclasses.replace(params, width=CREATION_SIZE[0], height=CREATION_SIZE[1])
        # The rules the schema and the engine hold, with their reasons, before anything is stored.
        check_request(params, len(images) + len(object_paths))
        key = options.idempotency_key
        sent = None
        if key is not None:  # hashing the images costs a little: only where it is compared
            sent = fingerprint("edit", params, options, images=images, object_paths=object_paths)
            if (earlier := await self._requests.find(user, key)) is not None:
                return _replayed(key, earlier, sent)
        # The user's limits before any image is decoded or stored: a refusal costs one query.
        await self._requests.admit(user, params, len(images) + len(object_paths))
        paths = await self._upload(user, images, [str(index) for index in range(len(images))])
        try:
            return await self._requests.insert(
                user, [*paths, *object_paths], params, options, fingerprint=sent
            )
        except KeyTaken:
            assert key is not None and sent is not None
            await self._discard(paths)
            earlier = await self._requests.find(user, key)
            if earlier is None:  # the winner's row is gone already (an operator deleted it)
                raise
            return _replayed(key, earlier, sent)
        except BaseException:
            # Refused (or failed, or the caller went away): no row names them.
            await _shielded(self._discard(paths))
            raise

    async def submit_batch(
        self,
        user: User,
        images: Sequence[bytes],
        references: Sequence[bytes],
        params: EditParams,
        *,
        object_paths: Sequence[str] = (),
        reference_paths: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> Row:
        """``Action.SUBMIT_BATCH``: one request per image (uploaded ``images``, then ``object_paths``
        already in the user's folder), each also given the references. Everything is checked
        before anything is stored; the batch's insert makes every request or none. An
        ``idempotency_key`` works as ``submit``'s."""
        async with self.submission(user):
            return await self._submit_batch(
                user, images, references, params, object_paths, reference_paths, idempotency_key
            )

    async def _submit_batch(
        self,
        user: User,
        images: Sequence[bytes],
        references: Sequence[bytes],
        params: EditParams,
        object_paths: Sequence[str],
        reference_paths: Sequence[str],
        idempotency_key: str | None,
    ) -> Row:
        count = len(images) + len(object_paths)
        check_batch(params, count, len(references) + len(reference_paths))
        sent = None
        if idempotency_key is not None:
            sent = fingerprint(
                "batch",
                params,
                NO_OPTIONS,
                images=images,
                object_paths=object_paths,
                references=references,
                reference_paths=reference_paths,
            )
            earlier = await self._requests.find_batch(user, idempotency_key)
            if earlier is not None:
                return _replayed(idempotency_key, earlier, sent)
        await self._requests.admit(user, params, 1 + len(references) + len(reference_paths), requests=count)
        names = [str(index) for index in range(len(images))] + [f"ref{i}" for i in range(len(references))]
        uploaded = await self._upload(user, [*images, *references], names)
        paths = [*uploaded[: len(images)], *object_paths]
        refs = [*uploaded[len(images) :], *reference_paths]
        try:
            return await self._requests.insert_batch(
                user, paths, refs, params, idempotency_key=idempotency_key, fingerprint=sent
            )
        except KeyTaken:
            assert idempotency_key is not None and sent is not None
            await self._discard(uploaded)
            earlier = await self._requests.find_batch(user, idempotency_key)
            if earlier is None:
                raise
            return _replayed(idempotency_key, earlier, sent)
        except BaseException:
            await _shielded(self._discard(uploaded))
            raise

    async def _discard(self, paths: Sequence[str]) -> None:
        """Delete uploads no request names (a refused insert, a retry that lost the race). A failure is
        only logged: retention deletes orphaned uploads after ``ORPHAN_GRACE_HOURS``."""
        if not paths:
            return
        try:
            await self._storage.delete_many(INPUT_BUCKET, paths)
        except ProcessorError as exc:
            log.warning("could not delete %d unused upload(s): %s", len(paths), exc)

    async def _upload(self, user: User, images: Sequence[bytes], names: Sequence[str]) -> list[str]:
        """Validate every image (``InvalidInput`` with its reason), then upload each under the user's
        folder, in a random folder of its own: the row's id is the server's, chosen at insert, which
        comes after the uploads (so that the insert finds its images and queues the request)."""
        formats = await self._validate(user, images)
        folder = uuid.uuid4()
        paths: list[str] = []
        try:
            for data, name, (extension, media_type) in zip(images, names, formats, strict=True):
                path = f"{user.id}/{folder}/{name}.{extension}"
                paths.append(path)  # before the upload: one cut short may have been stored
                await self._storage.upload(INPUT_BUCKET, path, data, content_type=media_type)
        except BaseException:
            await _shielded(self._discard(paths))
            raise
        return paths

    async def _validate(self, user: User, images: Sequence[bytes]) -> list[tuple[str, str]]:
        """Each image decoded (in a decoding process, one after the other, each in the user's turn);
        their formats."""
        for data in images:
            async with self._turns.turn(user.id):
                await self._validation.check(data, self._limits)  # raises InvalidInput with the reason
        return [_FORMATS[_sniff_format(data)] for data in images]

    # --- Submissions in flight ----------------------------------------------------------------------

    @asynccontextmanager
    async def submission(self, user: User) -> AsyncIterator[None]:
        """Count one submission of ``user`` in flight while the block runs (a way in holds it from
        before it reads the body; ``submit`` within it counts no second one): ``LimitExceeded``
        (``too_many_submissions``) past ``SUBMISSIONS_PER_USER`` of theirs or
        ``SUBMISSIONS_IN_FLIGHT`` of everyone's in this process."""
        held = _SUBMISSION.get()
        if held is not None and held.user == user.id and not held.over:
            yield
            return
        if self._submissions[user.id] >= self._submissions_per_user:
            raise LimitExceeded(
                f"{self._submissions_per_user} submissions of this user are already being read and "
                "checked; send the next when one is answered",
                reason=ReasonCode.TOO_MANY_SUBMISSIONS,
            )
        if self._submissions.total() >= self._submissions_in_flight:
            raise LimitExceeded(
                f"{self._submissions_in_flight} submissions are already being read and checked here; "
                "try again in a moment",
                reason=ReasonCode.TOO_MANY_SUBMISSIONS,
            )
        ticket = _Submission(user.id)
        self._submissions[user.id] += 1
        reset = _SUBMISSION.set(ticket)
        try:
            yield
        finally:
            _SUBMISSION.reset(reset)
            self._end_submission(ticket)

    def _end_submission(self, ticket: _Submission | None) -> None:
        """The submission is over (its row inserted or refused): it no longer counts, even while
        the way in that holds it goes on waiting for the request."""
        if ticket is None or ticket.over:
            return
        ticket.over = True
        self._submissions[ticket.user] -= 1
        if not self._submissions[ticket.user]:
            del self._submissions[ticket.user]

    # --- Read --------------------------------------------------------------------------------------

    async def get(self, user: User, request_id: uuid.UUID) -> Row:
        """``Action.GET``: the request with ``output_url`` (signed; None until it succeeded, and once
        retention deleted the output). ``NotFound`` when it is not the user's."""
        return await self._with_url(await self._owned(user, request_id))

    async def recent(
        self,
        user: User,
        limit: int = DEFAULT_LIST_LIMIT,
        *,
        before: uuid.UUID | None = None,
        statuses: Sequence[str] = (),
    ) -> list[Row]:
        """``Action.LIST``: the user's requests, newest first (1 to ``MAX_LIST_LIMIT``), each with its
        signed URLs: those created before the request ``before`` (the last of the previous page),
        and of ``statuses`` only if given."""
        unknown = set(statuses) - set(STATUSES)
        if unknown:
            raise InvalidInput(
                f"unknown status {sorted(unknown)[0]!r}; one of {', '.join(STATUSES)}",
                reason=ReasonCode.INVALID_PARAMETER,
            )
        if before is not None:
            await self._owned(user, before)  # a cursor of another user's is no cursor
        rows = await self._requests.recent(
            user, max(1, min(limit, MAX_LIST_LIMIT)), before=before, statuses=tuple(statuses)
        )
        signing = asyncio.Semaphore(SIGNING_CONCURRENCY)

        async def signed(row: Row) -> Row:
            async with signing:
                return await self._with_url(row)

        return list(await asyncio.gather(*(signed(row) for row in rows)))

    async def get_batch(self, user: User, batch_id: uuid.UUID) -> Row:
        """``Action.GET_BATCH``: counts by status, ``finished``, ``progress`` and ``items`` (its requests
        in the batch's order). ``NotFound`` when it is not the user's."""
        batch = await self._requests.get_batch(user, batch_id)
        if batch is None:
            raise NotFound("no such batch", reason=ReasonCode.NOT_FOUND)
        return batch

    async def output(self, row: Row) -> OutputFile:
        """The output image of a succeeded request (``MAX_OUTPUT_BYTES`` at most), and its format."""
        data = await self._storage.download(
            row["output_bucket"], row["output_path"], max_bytes=MAX_OUTPUT_BYTES
        )
        return OutputFile(data, output_format_of(row["output_path"]))

    async def _owned(self, user: User, request_id: uuid.UUID) -> Row:
        row = await self._requests.get(user, request_id)
        if row is None:
            raise NotFound("no such edit request", reason=ReasonCode.NOT_FOUND)
        return row

    async def output_url(self, row: Row) -> str | None:
        """A signed URL of a succeeded request's output; None before, and once retention deleted it."""
        if row["status"] != "succeeded" or not row["output_path"] or row.get("output_expired_at"):
            return None
        return await self._storage.signed_url(
            row["output_bucket"], row["output_path"], expires_in=self._signed_url_seconds
        )

    async def preview_url(self, row: Row) -> str | None:
        """A signed URL of a running request's latest live preview (docs/previews.md); None when it has
        none. Best effort: the preview is replaced and deleted as the edit goes on."""
        if row["status"] != "processing" or not row.get("preview_path"):
            return None
        try:
            return await self._storage.signed_url(
                row["output_bucket"], row["preview_path"], expires_in=self._signed_url_seconds
            )
        except ProcessorError as exc:  # gone between the read and the signing, or Storage is down
            log.info("no preview URL for %s: %s", row["id"], exc)
            return None

    async def _with_url(self, row: Row) -> Row:
        """The row with ``output_url`` and ``preview_url``."""
        return {**row, "output_url": await self.output_url(row), "preview_url": await self.preview_url(row)}

    # --- Cancel ------------------------------------------------------------------------------------

    async def cancel(self, user: User, request_id: uuid.UUID) -> Row:
        """``Action.CANCEL``: the request, canceled. ``NotFound`` when it is not the user's,
        ``AlreadyFinished`` when it finished first (the database's ``cancel_edit_request`` decides)."""
        row = await self._owned(user, request_id)
        if row["status"] in TERMINAL:
            raise AlreadyFinished(
                f"the request is already {row['status']}", reason=ReasonCode.ALREADY_FINISHED
            )
        if not await self._requests.cancel(user, request_id):
            raise AlreadyFinished(
                "the request finished before it could be canceled", reason=ReasonCode.ALREADY_FINISHED
            )
        return await self.get(user, request_id)

    async def cancel_batch(self, user: User, batch_id: uuid.UUID) -> Row:
        """``Action.CANCEL_BATCH``: the batch after canceling its unfinished requests, with
        ``canceled_now`` (how many this call canceled; finished ones stay as they are)."""
        await self.get_batch(user, batch_id)
        canceled = await self._requests.cancel_batch(user, batch_id)
        return {**await self.get_batch(user, batch_id), "canceled_now": canceled}

    # --- Wait and follow ---------------------------------------------------------------------------

    async def wait(self, user: User, request_id: uuid.UUID, timeout: float) -> Row:
        """``Action.WAIT``: the request once it is finished, or as it stands when ``timeout`` (at most
        ``WAIT_MAX_SECONDS``) runs out, with ``output_url``. ``NotFound``, or ``LimitExceeded`` when
        the user already holds ``WAITS_PER_USER`` waits and streams."""
        row = await self._owned(user, request_id)
        async with self._held_by(user):
            return await self._wait_held(user, row, timeout)

    async def submit_and_wait(
        self,
        user: User,
        images: Sequence[bytes],
        params: EditParams,
        options: RequestOptions = NO_OPTIONS,
        *,
        timeout: float,
        object_paths: Sequence[str] = (),
    ) -> Row:
        """``Action.SUBMIT`` then ``Action.WAIT``, holding one of the user's waits from before anything
        is stored: past ``WAITS_PER_USER`` the refusal (``too_many_waits``) comes first and creates
        nothing, and a request once created is always waited on and answered with its id."""
        async with self._held_by(user):
            row = await self.submit(user, images, params, options, object_paths=object_paths)
            self._end_submission(_SUBMISSION.get())  # a submission the caller holds ends with its insert
            final = await self._wait_held(user, row, timeout)
        return {**final, "replayed": row.get("replayed", False)}

    async def _wait_held(self, user: User, row: Row, timeout: float) -> Row:
        last = row
        async for changed in self._follow(user, row["id"], min(timeout, WAIT_MAX_SECONDS), held=True):
            last = changed
        return await self._with_url(last)

    async def follow(
        self, user: User, request_id: uuid.UUID, *, seconds: float | None = None
    ) -> AsyncGenerator[Row, None]:
        """``Action.FOLLOW``: refuse at once (``NotFound``, ``LimitExceeded``), then a stream of the
        request each time its status, progress or preview changes, until it is finished or the stream's
        lifetime (``seconds``, at most the configured one) is over."""
        await self._owned(user, request_id)
        self.ensure_can_wait(user)
        lifetime = self._stream_seconds if seconds is None else min(seconds, self._stream_seconds)
        return self._follow(user, request_id, lifetime)

    async def _follow(
        self, user: User, request_id: uuid.UUID, lifetime: float, *, held: bool = False
    ) -> AsyncGenerator[Row, None]:
        """The request at each change; counted against the user's waits unless the caller ``held`` one."""
        # Driven by change notifications: an idle row costs a re-read only every CHANGES_FALLBACK_SECONDS.
        deadline = time.monotonic() + lifetime
        async with (
            contextlib.nullcontext() if held else self._held_by(user),
            self._changes.watch(request_id) as watch,
        ):
            last: tuple[Any, Any, Any] | None = None
            while True:
                row = await self._requests.get(user, request_id)
                if row is None:
                    return
                state = (row["status"], row["progress"], row.get("preview_step"))
                if state != last:
                    last = state
                    yield row
                left = deadline - time.monotonic()
                if row["status"] in TERMINAL or left <= 0:
                    return
                await watch.wait(min(left, CHANGES_FALLBACK_SECONDS))

    def ensure_can_wait(self, user: User) -> None:
        """``LimitExceeded`` when ``user`` already holds as many waits and streams as allowed."""
        if self._waits[user.id] >= self._waits_per_user:
            raise LimitExceeded(
                f"{self._waits_per_user} waits or event streams are already open for this user",
                reason=ReasonCode.TOO_MANY_WAITS,
            )

    @asynccontextmanager
    async def _held_by(self, user: User) -> AsyncIterator[None]:
        """Count one open wait or stream against ``user``; refuse past the per-user bound."""
        self.ensure_can_wait(user)
        self._waits[user.id] += 1
        try:
            yield
        finally:
            self._waits[user.id] -= 1
            if not self._waits[user.id]:
                del self._waits[user.id]


@dataclass(slots=True)
class _Submission:
    """One submission in flight (``UserActions.submission``)."""

    user: uuid.UUID
    over: bool = False


_SUBMISSION: contextvars.ContextVar[_Submission | None] = contextvars.ContextVar("submission", default=None)
"""The submission the running task holds, so that ``submit`` within it counts no second one."""


async def _shielded(cleanup: Awaitable[None]) -> None:
    """Run ``cleanup`` to its end even when the task running it is canceled (a client that went
    away mid-submit): the uploads it deletes would otherwise wait for retention."""
    task = asyncio.ensure_future(cleanup)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def _replayed(key: str, earlier: Row, sent: str) -> Row:
    """The earlier request (or batch) a key names, as the answer to a submit that sent it again."""
    check_same_request(key, earlier.get("idempotency_fingerprint"), sent)
    return {**earlier, "replayed": True}


def _sniff_format(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return "PNG"
    if data.startswith(b"\xff\xd8"):
        return "JPEG"
    return "WEBP"
