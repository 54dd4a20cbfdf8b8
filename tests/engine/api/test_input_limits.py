"""Input at the gRPC edge (issue 20, items 7-11, 13, 14): every odd request is a client error
that names the field, echoes at most a short piece of the input and no server path."""

from __future__ import annotations

from google.protobuf import timestamp_pb2

from aisle.v1 import (
    events_pb2,
    events_pb2_grpc,
)
from tests.engine.api.conftest import refused, violated_fields

TOKEN = "edge-admin-token-0123456789"


def test_event_time_outside_the_timestamp_range(channel) -> None:
    events = events_pb2_grpc.EventsStub(channel)
    for seconds, nanos in ((10**13, 0), (-(10**13), 0), (0, -1)):
        event = events_pb2.Event(
            user_id="u1",
            item_id="SKU0001",
            type=events_pb2.EVENT_TYPE_VIEW,
            time=timestamp_pb2.Timestamp(seconds=seconds, nanos=nanos),
        )
        error = refused(events.Record, events_pb2.RecordRequest(events=[event]))
        assert violated_fields(error) == ["events[0].time"]
