"""The blob store the signed URLs point at: media PUT by uploaders, read by anyone.

Stands in for Azure blob storage: a PUT needs a signed, unexpired URL and ``x-ms-blob-type:
BlockBlob`` and answers 201 with an empty body; GET/HEAD serve the bytes with their type (exports
gzip-encoded, as Panoptes stores them).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from urllib.parse import unquote

from fastapi import APIRouter, Request
from fastapi.responses import Response

from etchacell_loop.sandbox.runtime import RuntimeDep

router = APIRouter(prefix="/_blobs")

_TYPES = {".jpeg": "image/jpeg", ".jpg": "image/jpeg", ".png": "image/png", ".gif": "image/gif", ".txt": "text/plain"}


def _blob_error(status: int, code: str) -> Response:
    return Response(f"<Error><Code>{code}</Code></Error>", status_code=status, media_type="application/xml")


@router.put("/{key:path}")
async def put_blob(key: str, request: Request, rt: RuntimeDep) -> Response:
    params = request.query_params
    expires, sig = params.get("se", ""), params.get("sig", "")
    expected = hashlib.sha256(f"{key}|{expires.replace(':', '%3A')}".encode()).hexdigest()[:32]
    if not sig or sig != expected or params.get("sp") != "cw":
        return _blob_error(403, "AuthenticationFailed")
    try:
        if datetime.strptime(unquote(expires), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC) < datetime.now(UTC):
            return _blob_error(403, "AuthenticationFailed")
    except ValueError:
        return _blob_error(403, "AuthenticationFailed")
    if request.headers.get("x-ms-blob-type") != "BlockBlob":
        return _blob_error(400, "MissingRequiredHeader")
    body = await request.body()
    path = rt.store.blob_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(body)
    partial.replace(path)  # a reader never sees half a blob
    content_type = request.headers.get("content-type") or _TYPES.get(path.suffix, "application/octet-stream")
    path.with_name(path.name + ".headers.json").write_text(json.dumps({"Content-Type": content_type}))
    digest = hashlib.md5(body, usedforsecurity=False).hexdigest()
    return Response(status_code=201, headers={"ETag": f'"0x{digest.upper()[:16]}"', "Content-MD5": digest})


@router.api_route("/{key:path}", methods=["GET", "HEAD"])
def get_blob(key: str, request: Request, rt: RuntimeDep) -> Response:
    try:
        path = rt.store.blob_path(key)
    except ValueError:
        return _blob_error(404, "BlobNotFound")
    if not path.is_file():
        return _blob_error(404, "BlobNotFound")
    sidecar = path.with_name(path.name + ".headers.json")
    headers = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    media_type = headers.pop("Content-Type", _TYPES.get(path.suffix, "application/octet-stream"))
    data = path.read_bytes()
    headers["Content-Length"] = str(len(data))
    body = b"" if request.method == "HEAD" else data
    return Response(body, media_type=media_type, headers=headers)
