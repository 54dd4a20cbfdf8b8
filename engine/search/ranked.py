"""The learned ranking stage (mode RANKED): candidates of both channels → features → LightGBM.

The version's ranker (``indexer.ranking.model``, file ``ranker.json`` in the version dir) orders
the union of the dense and lexical channels' top N (``union_candidates``) by the features
``indexer.ranking.features.compute_features`` computes, the same function training used. The
pipeline then applies boosts, diversity and paging to the ranker's scores as it does to fused
ones. ``explain`` decomposes a hit's ranker score into per-feature contributions (TreeSHAP,
LightGBM's ``pred_contrib``): bias + the contributions = the ranker score.

Single process only: the stage reads the stored vectors and the BM25 indexes, which a router
does not hold (a router serves dense search; see engine/cluster).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.search.types import Explanation
from indexer.lexical.index import LexicalIndex, LexicalState
from indexer.ranking.features import (
    Candidates,
    FeatureSource,
    compute_features,
    union_candidates,
)
from indexer.ranking.fields import FieldIndex
from indexer.ranking.model import RANKER_FILE, Ranker
from indexer.rerank.columns import ItemColumns
from indexer.rerank.vectors import VectorStore
from indexer.version import IndexVersion
from trainer.encoder.load import Encoder
from trainer.feedback.engagement import ItemEngagement

__all__ = ["RankedCandidates", "RankingStage", "open_ranking"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankingStage:
    """What a snapshot needs to rank: the ranker and the field index of its version."""

    ranker: Ranker
    fields: FieldIndex
    sketch_dim: int

    @property
    def depth(self) -> int:
        """Candidates per channel (N) the ranker was trained on."""
        return self.ranker.candidates_per_channel

    def rank(
        self,
        *,
        columns: ItemColumns,
        vectors: VectorStore,
        lexical: LexicalIndex,
        lexical_state: LexicalState | None,
        text: str,
        xq: np.ndarray,
        dense_rows: np.ndarray,
        lexical_rows: np.ndarray,
        item_ids: np.ndarray | None = None,
        engagement: ItemEngagement | None = None,
    ) -> RankedCandidates:
        """Score the union of the two channels' candidate lists (rows best first);
        ``engagement``: the event log's counts of the moment (``EngagementFeed.current``), or
        None; ``item_ids``: the searched snapshot's row → item id, to look them up."""
        t0 = time.perf_counter()
        candidates = union_candidates(dense_rows, lexical_rows, self.depth)
        source = FeatureSource(
            columns=columns,
            vectors=vectors,
            lexical=lexical,
            fields=self.fields,
            sketch_dim=self.sketch_dim,
            lexical_state=lexical_state,
            item_ids=item_ids,
            engagement=engagement,
        )
        X = compute_features(source, text, xq, candidates)
        order, scores = self.ranker.order(X, candidates.rows)
        return RankedCandidates(
            scores=scores[order].astype(np.float32),
            rows=candidates.rows[order],
            features=X[order],
            candidates=candidates,
            rank_ms=(time.perf_counter() - t0) * 1e3,
        )

    def explain(self, ranked: RankedCandidates, rows: list[int]) -> list[Explanation]:
        """Each row's features and score contributions (rows among ``ranked.rows``)."""
        position = {int(r): i for i, r in enumerate(ranked.rows.tolist())}
        X = ranked.features[[position[r] for r in rows]]
        contributions = self.ranker.contributions(X) if len(rows) else np.zeros((0, 1))
        names = self.ranker.features
        out = []
        for x, c in zip(X, contributions, strict=True):
            out.append(
                Explanation(
                    features=tuple(
                        (name, float(v), float(cv))
                        for name, v, cv in zip(names, x, c[:-1], strict=True)
                    ),
                    bias=float(c[-1]),
                    ranker_score=float(c.sum()),
                    feature_spec_version=self.ranker.feature_spec_version,
                )
            )
        return out


@dataclass(frozen=True)
class RankedCandidates:
    """One query's candidates in ranker order: scores (m,) float32, rows (m,) int64, their
    (m, F) features (for ``explain``), the candidate union, and the stage's ms."""

    scores: np.ndarray
    rows: np.ndarray
    features: np.ndarray
    candidates: Candidates
    rank_ms: float


def open_ranking(version_dir: Path, index: IndexVersion, encoder: Encoder) -> RankingStage | None:
    """The version's ranking stage, or None when it has no ranker.

    Raises:
        RankerMismatchError: the ranker was trained on other towers, fields or feature spec.
    """
    path = version_dir / RANKER_FILE
    if not path.exists():
        return None
    ranker = Ranker.load(path)
    fields = FieldIndex.build(index.items)
    ranker.check(index.manifest.model_fingerprint, fields.fields, str(path))
    sketch = encoder.lexical
    log.info("ranker: %s (%d features)", path, len(ranker.features))
    return RankingStage(ranker, fields, sketch.dim if sketch is not None else 0)
