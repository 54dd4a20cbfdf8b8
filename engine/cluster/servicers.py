"""The router's gRPC servicers: Retrieval flags partial answers, IndexAdmin covers the shards."""

from __future__ import annotations

from typing import Any

from engine.api.servicers import IndexAdminServicer, RetrievalServicer
from engine.cluster.request import _recording_flags
from engine.search.errors import Unimplemented


class RouterRetrievalServicer(RetrievalServicer):
    """Retrieval over a RouterService; Search and BatchSearch responses also say which shards
    are missing from a partial answer."""

    def Search(self, request, context):  # noqa: N802 (gRPC method names)
        with _recording_flags() as flags:
            response = super().Search(request, context)
        _flag(response, flags[0])
        return response

    def BatchSearch(self, request, context):  # noqa: N802
        with _recording_flags() as flags:
            response = super().BatchSearch(request, context)
        for sub, missing in zip(response.responses, flags, strict=True):
            _flag(sub, missing)
        return response


def _flag(response: Any, missing: tuple[int, ...]) -> None:
    response.partial = bool(missing)
    response.missing_shards.extend(missing)


class RouterIndexAdminServicer(IndexAdminServicer):
    """IndexAdmin of a router: Status lists the shard servers; Reload reloads them, then it."""

    def Upsert(self, request, context):  # noqa: N802
        raise Unimplemented(
            "Upsert: a router takes no live updates yet; rebuild the index and Reload the router"
        )

    def Delete(self, request, context):  # noqa: N802
        raise Unimplemented(
            "Delete: a router takes no live updates yet; rebuild the index and Reload the router"
        )

    def Status(self, request, context):  # noqa: N802
        response = super().Status(request, context)
        del response.shards[:]
        for shard, count, location in self._service.shard_locations():
            response.shards.add(shard=shard, item_count=count, location=location)
        return response
