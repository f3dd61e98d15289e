"""`Cache-Control: no-store` on the patient API's answers.

Every `/v1` answer may carry PHI (a lab list, a message, an error naming a resource): a
browser's disk cache or a shared proxy must not keep it after the patient signs out (on a
shared computer the next user's back button would show it). An answer that says how it may
be cached itself (a document's download) keeps its own header."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

NO_STORE = (b"cache-control", b"no-store")


class NoStoreMiddleware:
    """Adds `Cache-Control: no-store` to answers under `prefixes` that set none."""

    def __init__(self, app: ASGIApp, prefixes: tuple[str, ...] = ("/v1/",)) -> None:
        self.app = app
        self.prefixes = prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope.get("path", "").startswith(self.prefixes):
            await self.app(scope, receive, send)
            return

        async def with_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append(NO_STORE)
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_no_store)
