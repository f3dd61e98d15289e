"""The patient's secure messages (`/v1/me/threads`): start a thread, reply, mark read.

Every call goes to the messaging service with the internal patient id of the bearer token
(never one from the client); messaging stores the message and publishes `message.sent`.

Scopes (route dependencies, checked exactly): sending is a create of a `Communication`
(`patient/Communication.c`, `patient/*.c`, or v1 `write`/`*`), marking read an update
(`patient/Communication.u`); read scopes grant neither. Every send and every mark-read is
recorded in the access log with the action "write".

A client may send an `Idempotency-Key` header (generated once per message it composes);
it is passed through, so a retried POST stores and publishes the message once and gets the
first attempt's answer again (201, `Idempotent-Replayed: true`); the same key with another
message is 422.

A new conversation names a topic (`GET /v1/message-topics`: prescriptions, test results,
appointments, billing, clinical question, other); the answer says who it went to
(`thread.sent_to`) and carries `emergency_check`: when `advice` is set the page shows it at
once (call emergency services). Images and PDFs may be attached (base64, size-limited by
messaging: 413/415); too many messages in a short time is a 429 with Retry-After.
"""

from __future__ import annotations

from typing import Annotated, Any

import httpx
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel, Field, StringConstraints

from gateway import audit
from gateway.api.access import Caller, Id, Me, command, requires, upstreams_of
from gateway.upstream import UpstreamError
from servicekit.idempotency import IdempotencyKey

router = APIRouter(prefix="/v1", tags=["messages"])
RESOURCE = "Communication"

Subject = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Body = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=10_000)]


TopicCode = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,32}$")]


class AttachmentIn(BaseModel):
    """A file sent with a message: an image or a PDF, base64 (limits checked by messaging)."""

    content_type: Annotated[str, StringConstraints(max_length=100)]
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    data_base64: Annotated[str, StringConstraints(max_length=2_000_000)]


class NewThreadIn(BaseModel):
    """A new conversation with the care team, about a topic."""

    subject: Subject
    body: Body
    topic: TopicCode | None = None
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=10)


class ReplyIn(BaseModel):
    """A message in an existing conversation."""

    body: Body
    attachments: list[AttachmentIn] = Field(default_factory=list, max_length=10)


def may_send(caller: Caller) -> bool:
    """Whether the token may send messages for its patient (see the module docstring)."""
    return caller.token.allows(f"patient/{RESOURCE}.c")


@router.post("/me/threads", status_code=201, dependencies=[requires("patient/Communication.c")])
async def start_thread(
    caller: Me,
    request: Request,
    body: NewThreadIn,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Start a conversation with the care team: `{"thread": ..., "message": ...}`."""
    return await command(
        request,
        caller,
        "messaging",
        "POST",
        f"/patients/{caller.patient_id}/threads",
        action="write",
        resource=RESOURCE,
        json=body.model_dump(exclude_none=True),
        key=idempotency_key,
    )


@router.post(
    "/me/threads/{thread_id}/messages",
    status_code=201,
    dependencies=[requires("patient/Communication.c")],
)
async def reply(
    caller: Me,
    request: Request,
    thread_id: Id,
    body: ReplyIn,
    idempotency_key: IdempotencyKey = None,
) -> Any:
    """Reply in one of the patient's conversations (404 if it is not theirs)."""
    return await command(
        request,
        caller,
        "messaging",
        "POST",
        f"/patients/{caller.patient_id}/threads/{thread_id}/messages",
        action="write",
        resource=RESOURCE,
        json=body.model_dump(),
        key=idempotency_key,
    )


@router.post("/me/threads/{thread_id}/read", dependencies=[requires("patient/Communication.u")])
async def mark_read(caller: Me, request: Request, thread_id: Id) -> Any:
    """Mark the care team's messages in one of the patient's conversations read."""
    return await command(
        request,
        caller,
        "messaging",
        "POST",
        f"/patients/{caller.patient_id}/threads/{thread_id}/read",
        action="write",
        resource=RESOURCE,
    )


@router.get("/message-topics", dependencies=[requires("patient/Communication.c")])
async def message_topics(request: Request) -> Any:
    """The topics a patient chooses from when starting a conversation, and who each goes to."""
    try:
        return await upstreams_of(request).get("messaging", "/topics")
    except UpstreamError as exc:
        raise HTTPException(exc.status, f"The {exc.service} service {exc.detail}.") from exc


@router.get("/me/attachments/{attachment_id}", dependencies=[requires("patient/Communication.r")])
async def attachment(caller: Me, request: Request, attachment_id: Id) -> Response:
    """A file attached to one of the patient's messages (404 if it is not theirs)."""
    if not caller.token.allows_read(RESOURCE):
        raise HTTPException(403, "The token's scopes do not allow reading messages.")
    upstreams = upstreams_of(request)
    url = f"{upstreams.urls['messaging']}/patients/{caller.patient_id}/attachments/{attachment_id}"
    try:
        upstream = await upstreams.client.get(
            url, headers=upstreams.tokens.headers("messaging"), timeout=upstreams.timeout
        )
    except httpx.HTTPError as exc:
        raise HTTPException(503, "The messaging service is unavailable.") from exc
    if upstream.status_code == 404:
        raise HTTPException(404, "No such attachment.")
    if upstream.status_code != 200:
        raise HTTPException(502, f"The messaging service answered {upstream.status_code}.")
    await audit.record(request, "read", RESOURCE)
    return Response(
        content=upstream.content,
        media_type=upstream.headers.get("content-type", "application/octet-stream"),
        headers={"Content-Disposition": "attachment", "X-Content-Type-Options": "nosniff"},
    )
