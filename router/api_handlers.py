"""HTTP API endpoints: what each one reads or changes in the router.

Theory of operation: every handler validates its input and returns (HTTP status, JSON
document); errors are documents with an `error` field in one line, which the CLI prints
as is.  Read-only endpoints build their documents from the router's live state through
`router.status`.  See docs/api.md for the list.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from pyweave.router.api_types import Attachment
from pyweave.router.io.api import ApiServer
from pyweave.router.status import build_status

if TYPE_CHECKING:
    from pyweave.router.router import Router

Result = tuple[int, object]


class BadTarget(ValueError):
    """A malformed connect/forget request."""


def _peer_list(body: object) -> list[str]:
    if not isinstance(body, dict) or not isinstance(body.get("peers"), list):
        raise BadTarget('expected a JSON body {"peers": ["host[:port]", ...]}')
    peers = body["peers"]
    if not all(isinstance(p, str) for p in peers):
        raise BadTarget("peer addresses must be strings")
    return cast(list[str], peers)


def register_handlers(api: ApiServer, router: Router) -> None:
    async def status(rest: str, body: object) -> Result:
        return 200, build_status(router)

    async def connect(rest: str, body: object) -> Result:
        try:
            peers = _peer_list(body)
            replace = bool(isinstance(body, dict) and body.get("replace"))
            router.apply(router.mesh.add_targets(peers, router.loop_time(), replace=replace))
        except ValueError as exc:
            return 400, {"error": str(exc)}
        return 200, {"targets": router.mesh.targets()}

    async def forget(rest: str, body: object) -> Result:
        try:
            router.mesh.forget_targets(_peer_list(body))
        except ValueError as exc:
            return 400, {"error": str(exc)}
        return 200, {"targets": router.mesh.targets()}

    async def list_attachments(rest: str, body: object) -> Result:
        return 200, {"attachments": router.attachments.list()}

    async def put_attachment(rest: str, body: object) -> Result:
        error = _check_attachment(rest, body)
        if error:
            return 400, {"error": error}
        router.attachments.put(cast(Attachment, body))
        return 200, body

    async def delete_attachment(rest: str, body: object) -> Result:
        removed = router.attachments.remove(rest)
        if removed is None:
            return 404, {"error": f"container {rest} is not attached"}
        return 200, removed

    async def rekey(rest: str, body: object) -> Result:
        return 200, {"rekeyed": router.connections.force_rekey()}

    api.route("POST", "/rekey", rekey)
    api.route("GET", "/status", status)
    api.route("GET", "/report", status)
    api.route("POST", "/connect", connect)
    api.route("POST", "/forget", forget)
    api.route("GET", "/attachments", list_attachments)
    api.route("PUT", "/attachments", put_attachment)
    api.route("DELETE", "/attachments", delete_attachment)


def _check_attachment(container: str, body: object) -> str | None:
    if not container:
        return "missing container id in path"
    if not isinstance(body, dict):
        return "expected a JSON attachment document"
    if body.get("container") != container:
        return "container in body and path differ"
    if not isinstance(body.get("mac"), str):
        return "attachment needs a mac"
    cidrs = body.get("cidrs")
    if not isinstance(cidrs, list) or not all(isinstance(c, str) for c in cidrs):
        return "attachment needs a list of cidrs"
    return None
