"""The router's configuration: which replicas serve each shard, shard timeout, partial answers."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

_ADDRESS = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.\-]+):\d{1,5}$")


@dataclass(frozen=True)
class RouterConfig:
    """Where the shards are: `shards[i]` lists the replicas ("host:port") of shard i."""

    shards: tuple[tuple[str, ...], ...]
    shard_timeout_ms: float = 500.0  # one shard call, capped by the request's own deadline
    partial_ok: bool = True  # False: a missing shard fails the request with UNAVAILABLE
    failed_replica_backoff_s: float = 2.0  # a replica that just failed is tried last this long
    # A shard call unanswered this long is sent to the shard's next replica too (first answer
    # wins); 0: fail over only when a call fails or times out.
    hedge_ms: float = 100.0

    def __post_init__(self) -> None:
        if not self.shards or any(not replicas for replicas in self.shards):
            raise ValueError(
                "router needs at least one address per shard: --shard-addrs 'h:p,h:p;h:p' "
                "(';' between shards, ',' between replicas of one shard)"
            )
        for replicas in self.shards:
            for address in replicas:
                if not _ADDRESS.match(address):
                    raise ValueError(f"shard address {address!r} is not host:port")
        if not 0 < self.shard_timeout_ms <= 600_000:
            raise ValueError(
                f"shard_timeout_ms must be in (0, 600000], got {self.shard_timeout_ms}"
            )
        if self.failed_replica_backoff_s < 0:
            raise ValueError("failed_replica_backoff_s must be >= 0")
        if self.hedge_ms < 0:
            raise ValueError(f"hedge_ms must be >= 0, got {self.hedge_ms}")

    @classmethod
    def parse(cls, addresses: str, **kwargs: Any) -> RouterConfig:
        """From `"h:p,h:p;h:p"`: ';' separates shards (in shard order), ',' replicas."""
        shards = tuple(
            tuple(a.strip() for a in part.split(",") if a.strip())
            for part in addresses.strip().strip(";").split(";")
        )
        return cls(shards=shards, **kwargs)
