"""gcp-storage-emulator with the two GCS behaviours tensorstore relies on and the emulator lacks
(checked on 2026.7.19): media downloads carry `x-goog-generation`, and the preconditions
ifGenerationMatch / ifGenerationNotMatch are honoured (412 / 304). Without them tensorstore's
OCDBT manifest updates fail with "Malformed StorageGeneration". The real service does both.

Run as `python gcs_emulator.py start ARGS...` (the emulator's own command line).
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.__main__ import main
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _generation(request, storage, object_id):
    try:
        return storage.get_file_obj(request.params["bucket_name"], object_id)["generation"]
    except NotFound:
        return None


def _precondition_failed(request, current) -> HTTPStatus | None:
    match = request.query.get("ifGenerationMatch")
    if match is not None and (current or "0") != match[0]:
        return HTTPStatus.PRECONDITION_FAILED
    not_match = request.query.get("ifGenerationNotMatch")
    if not_match is not None and current is not None and current == not_match[0]:
        return HTTPStatus.NOT_MODIFIED
    return None


def _download(original):
    def download(request, response, storage, *args, **kwargs):
        current = _generation(request, storage, request.params["object_id"])
        status = _precondition_failed(request, current) if current is not None else None
        if status is not None:
            response.status = status
            if current is not None:
                response["x-goog-generation"] = current
            return None
        out = original(request, response, storage, *args, **kwargs)
        if current is not None and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            response["x-goog-generation"] = current
        return out

    return download


def _insert(original):
    def insert(request, response, storage, *args, **kwargs):
        name = request.query.get("name", [None])[0]
        if name is not None:
            status = _precondition_failed(request, _generation(request, storage, name))
            if status is HTTPStatus.PRECONDITION_FAILED:
                response.status = status
                return None
        return original(request, response, storage, *args, **kwargs)

    return insert


def patch() -> None:
    replacements = {objects.download: _download(objects.download), objects.insert: _insert(objects.insert)}
    objects.download, objects.insert = replacements[objects.download], replacements[objects.insert]
    for _, handlers in server.HANDLERS:
        for method, fn in list(handlers.items()):
            if fn in replacements:
                handlers[method] = replacements[fn]


if __name__ == "__main__":
    patch()
    sys.exit(main(sys.argv[1:]))
