"""What every request passes before the application reads its body: the API key, and the
body's size. FastAPI reads (and Starlette's multipart parser spools to disk) a whole body
before any dependency runs, so a check there would come after an unauthenticated client had
sent 256 MiB; this ASGI middleware answers 401 or 413 first. Starlette has no body limit of
its own."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from genq.api.errors import ApiError
from genq.api.tenants import Tenant, Tenants
from genq.settings import MAX_JSON_BODY_BYTES, Settings

MULTIPART_SLACK_BYTES = 1024 * 1024  # multipart framing and form fields around an upload
PROTECTED = "/v1/"  # everything else (/healthz, /readyz, /docs, /openapi.json) is open


class RequestGate:
    """Refuses a request without a valid key (401) and a body over the limit (413) before
    the body is read: by Content-Length, or, for a body sent without one, as soon as it
    passes the limit. The limit of an upload is the tenant's own, if lower than the
    service's (GENQ_MAX_INPUT_FILE_BYTES)."""

    def __init__(self, app: ASGIApp, *, tenants: Tenants, settings: Settings) -> None:
        self.app = app
        self.tenants = tenants
        self.file_limit = settings.max_input_file_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PROTECTED):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            tenant = self.tenants.require(headers.get("authorization"))
        except ApiError as e:
            await _send(send, e)
            return
        kind = headers.get("content-type", "").lower()
        upload = kind.startswith("multipart/") or "jsonl" in kind or "ndjson" in kind
        stated = self._file_limit(tenant) if upload else MAX_JSON_BODY_BYTES
        limit = stated + MULTIPART_SLACK_BYTES if upload else stated
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > limit:
            await _send(send, _too_large(stated))
            return
        seen = 0
        refused = False

        async def counted() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit and not refused:
                    refused = True
                    await _send(send, _too_large(stated))
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not refused:  # the app saw the disconnect we made up: nothing to report
                raise

    def _file_limit(self, tenant: Tenant) -> int:
        return min(tenant.max_file_bytes or self.file_limit, self.file_limit)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        f"the request body is over {limit} bytes, this service's limit (for uploads: "
        "GENQ_MAX_INPUT_FILE_BYTES, or the tenant's max_file_bytes); split the file",
        code="request_too_large",
        retry=False,
    )


async def _send(send: Send, error: ApiError) -> None:
    response = error.response()
    # The body was not read: closing the connection stops the client sending the rest.
    headers = [*response.raw_headers, (b"connection", b"close")]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": response.body})
