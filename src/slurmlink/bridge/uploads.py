"""Uploads: files a user sends through the API for a SlurmJob's ``inputs`` (``upload: <id>``).

The server keeps each upload under its own state directory, root-only (``<root>/<namespace>/<id>``
and a JSON record beside it: owner uid, size, sha256, file name), written as it streams in with the
digest computed on the way, size-limited, and renamed into place only when complete. The bridge reads
it as the server and writes it into the job's directory as the job's owner; an upload is only ever
used by a job of the user who made it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path

#: The largest upload taken by default (the limit is the server's ``bridge_max_upload``).
DEFAULT_MAX_UPLOAD = 10 * 1024**3
_ID = re.compile(r"^up-[0-9a-f]{16}$")
_NAMESPACE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class UploadError(Exception):
    """An upload that cannot be taken or found; ``code`` is the HTTP status to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Upload:
    id: str
    namespace: str
    owner_uid: int | None
    size: int
    sha256: str
    name: str

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "namespace": self.namespace,
            "size": self.size,
            "sha256": self.sha256,
            "name": self.name,
        }


class UploadStore:
    """Uploads kept in ``root`` (created 0700: only the server reads them)."""

    def __init__(self, root: Path, *, max_bytes: int = DEFAULT_MAX_UPLOAD) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def _dir(self, namespace: str) -> Path:
        if not _NAMESPACE.match(namespace):
            raise UploadError(400, f"not a namespace: {namespace!r}")
        return self.root / namespace

    def path(self, namespace: str, upload_id: str) -> Path:
        if not _ID.match(upload_id):
            raise UploadError(404, f"no upload {upload_id!r}: upload ids look like up-0123456789abcdef")
        return self._dir(namespace) / upload_id

    def get(self, namespace: str, upload_id: str) -> Upload:
        record = self.path(namespace, upload_id).with_suffix(".json")
        try:
            data = json.loads(record.read_text())
        except FileNotFoundError:
            raise UploadError(404, f'upload "{upload_id}" not found in namespace "{namespace}"') from None
        return Upload(**data)

    async def put(
        self, namespace: str, owner_uid: int | None, name: str, chunks: AsyncIterator[bytes]
    ) -> Upload:
        """Take one upload from ``chunks``; more than ``max_bytes`` is refused (413) and nothing kept."""
        directory = self._dir(namespace)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        directory.mkdir(mode=0o700, exist_ok=True)
        upload_id = f"up-{secrets.token_hex(8)}"
        final = directory / upload_id
        partial = directory / f".{upload_id}.partial"
        digest = hashlib.sha256()
        size = 0
        try:
            with open(partial, "xb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise UploadError(
                            413, f"the upload is larger than this server takes ({self.max_bytes} bytes)"
                        )
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            upload = Upload(upload_id, namespace, owner_uid, size, digest.hexdigest(), name)
            os.replace(partial, final)
            # The record makes the upload visible, so it comes last (and atomically).
            staged = directory / f".{upload_id}.json.partial"
            staged.write_text(json.dumps(asdict(upload)))
            os.replace(staged, final.with_suffix(".json"))
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise
        return upload

    def delete(self, namespace: str, upload_id: str) -> None:
        path = self.path(namespace, upload_id)
        for victim in (path, path.with_suffix(".json")):
            with contextlib.suppress(FileNotFoundError):
                victim.unlink()
