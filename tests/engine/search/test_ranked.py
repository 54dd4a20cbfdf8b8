"""Mode RANKED through a real server on 127.0.0.1: the default when the version has a ranker,
features equal to training's, explain adds up, and clear errors where there is no ranker."""

from __future__ import annotations

import math
import shutil

import grpc
import numpy as np
import pytest

from aisle.v1 import retrieval_pb2
from engine.client import AisleClient
from engine.server import ServerConfig, create_server
from indexer.build.ranker import attach_ranker
from indexer.ranking.model import RANKER_FILE, Ranker, RankerMismatchError
from indexer.ranking.spec import FEATURE_SPEC_VERSION, FEATURES
from indexer.ranking.training import RankerConfig, prepare_queries, train_ranker, version_source
from indexer.storage.layout import resolve_version_dir
from indexer.version import IndexVersion
from tests.helpers import ranking_labels
from trainer.encoder.load import load_encoder
from trainer.feedback.engagement import read_engagement

RANKED, HYBRID, DENSE = (
    retrieval_pb2.SEARCH_MODE_RANKED,
    retrieval_pb2.SEARCH_MODE_HYBRID,
    retrieval_pb2.SEARCH_MODE_DENSE,
)
ENGAGEMENT = list(FEATURES).index("engagement")


@pytest.fixture(scope="module")
def ranked_root(tmp_path_factory, index_root, title_catalog, tiny_model_dir):
    """A copy of ``index_root`` with a ranker attached (a new version, no re-embedding), and
    the query set the ranker was trained on."""
    root = tmp_path_factory.mktemp("ranked") / "index"
    shutil.copytree(index_root, root)
    version = IndexVersion.open(resolve_version_dir(root))
    encoder = load_encoder(tiny_model_dir)
    source = version_source(version, encoder)
    labels = ranking_labels(title_catalog[1])
    qs = prepare_queries(version, source, encoder, labels)
    ranker = train_ranker(
        qs,
        RankerConfig(min_data_in_leaf=2, num_leaves=7, max_rounds=40, early_stopping=10),
        model_fingerprint=encoder.fingerprint,
        fields=source.fields.fields,
    )
    ranker.save(root / "ranker.json")
    base = version.version
    published = attach_ranker(root, root / "ranker.json")
    assert IndexVersion.open(published, verify=True).version == base + 1
    return root, labels, qs


@pytest.fixture(scope="module")
def ranked_server(ranked_root):
    server = create_server(ServerConfig(index=ranked_root[0], port=0, workers=4))
    yield server
    server.stop(0)


def test_ranked_is_the_default_and_explains_with_training_features(ranked_server, ranked_root):
    _, labels, qs = ranked_root
    with AisleClient(f"127.0.0.1:{ranked_server.port}") as client:
        for i, qid in enumerate(qs.query_ids[:4]):
            response = client.search(labels.queries[qid], 10, explain=True)
            assert response.mode == RANKED  # the default with a ranker
            assert response.timings.rank_ms > 0
            assert len(response.hits) == 10
            trained = {  # the training path's features of this query's candidates
                str(qs.item_ids[r]): x
                for r, x in zip(qs.candidates[i].rows, qs.features[i], strict=True)
            }
            for hit in response.hits:
                e = hit.explanation
                assert e.feature_spec_version == FEATURE_SPEC_VERSION
                assert [f.name for f in e.features] == list(FEATURES)
                values = np.array([f.value for f in e.features])
                expected = trained[hit.item_id].copy()
                # trained without an event log (NaN, never split on); served from the root's
                # empty one: 0 (test_engagement_from_the_servers_event_log_matches_training)
                assert np.isnan(expected[ENGAGEMENT]) and values[ENGAGEMENT] == 0
                expected[ENGAGEMENT] = 0
                np.testing.assert_allclose(values, expected, rtol=1e-5, atol=1e-6)
                total = e.bias + math.fsum(f.contribution for f in e.features)
                assert total == pytest.approx(e.ranker_score, abs=1e-6)
                assert hit.score == pytest.approx(e.ranker_score, abs=1e-5)  # no boost
            scores = [h.score for h in response.hits]
            assert scores == sorted(scores, reverse=True)


def test_ranked_pages_filters_and_hybrid_still_answer(ranked_server):
    with AisleClient(f"127.0.0.1:{ranked_server.port}") as client:
        first = client.search("red sofa", 5, mode=RANKED)
        assert not first.hits[0].HasField("explanation")  # only on request
        second = client.search("red sofa", 5, mode=RANKED, page_token=first.next_page_token)
        assert not {h.item_id for h in first.hits} & {h.item_id for h in second.hits}
        assert client.search("red sofa", 5, mode=HYBRID).mode == HYBRID
        assert client.search("red sofa", 5, mode=HYBRID).timings.rank_ms == 0
        with pytest.raises(grpc.RpcError) as info:
            client.search("red sofa", 5, mode=DENSE, explain=True)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "explain" in info.value.details()


def test_ranked_without_a_ranker_is_a_failed_precondition(server):
    with AisleClient(f"127.0.0.1:{server.port}") as client:
        assert client.search("red sofa", 5).mode == HYBRID  # no ranker: serves as before
        with pytest.raises(grpc.RpcError) as info:
            client.search("red sofa", 5, mode=RANKED)
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "ranker" in info.value.details()


def test_a_ranker_of_another_model_is_refused(tmp_path, ranked_root):
    root = tmp_path / "index"
    shutil.copytree(ranked_root[0], root)
    version_dir = resolve_version_dir(root)
    path = version_dir / RANKER_FILE
    path.write_text(
        path.read_text().replace(
            IndexVersion.open(version_dir).manifest.model_fingerprint, "f" * 64
        )
    )
    with pytest.raises(RankerMismatchError, match="fingerprint"):
        attach_ranker(root, path)


def test_bench_rank_baselines_are_what_the_server_serves(ranked_server, ranked_root):
    """bench_rank's hybrid order over the candidates = the server's hybrid ranking; its ranked
    order = the server's ranked one (same candidates, same features, same model)."""
    from benchmarks.bench_rank import hybrid_order

    _, labels, qs = ranked_root
    model = Ranker.load(resolve_version_dir(ranked_root[0]) / RANKER_FILE)
    with AisleClient(f"127.0.0.1:{ranked_server.port}") as client:
        for i, qid in enumerate(qs.query_ids[:3]):
            c, X = qs.candidates[i], qs.features[i]
            ids = [str(qs.item_ids[r]) for r in c.rows]
            hybrid = [ids[p] for p in hybrid_order(X, c)][:10]
            served = client.search(labels.queries[qid], 10, mode=HYBRID)
            assert [h.item_id for h in served.hits] == hybrid
            ranked = [ids[p] for p in model.order(X, c.rows)[0]][:10]
            served = client.search(labels.queries[qid], 10, mode=RANKED)
            assert [h.item_id for h in served.hits] == ranked


def test_engagement_from_the_servers_event_log_matches_training(
    tmp_path, ranked_root, tiny_model_dir
):
    """Events recorded through the API reach the ranked search's engagement feature at the next
    refresh, with the values the training path (aisle-rank train --events) computes from the
    same log; before any event the feature is 0 for every hit; an erasure counts at once."""
    root = tmp_path / "index"
    shutil.copytree(ranked_root[0], root)
    _, labels, qs = ranked_root
    query = labels.queries[qs.query_ids[0]]
    config = ServerConfig(index=root, port=0, workers=4, engagement_refresh_s=3600)
    server = create_server(config)
    try:
        with AisleClient(f"127.0.0.1:{server.port}") as client:
            before = client.search(query, 10, explain=True)
            assert [h.explanation.features[ENGAGEMENT].value for h in before.hits] == [0.0] * 10
            clicked, bought = before.hits[3].item_id, before.hits[6].item_id
            client.record(
                [
                    {"user_id": "u1", "item_id": clicked, "type": "click"},
                    {"user_id": "u2", "item_id": clicked, "type": "click"},
                    {"user_id": "u1", "item_id": bought, "type": "purchase"},
                    {"user_id": "u1", "item_id": bought, "type": "view"},
                ]
            )
            assert server.service.engagement is not None
            server.service.engagement.refresh()
            after = client.search(query, 10, explain=True)
            shutil.copytree(root / "events", tmp_path / "events-then")  # for the training path
            # an erasure takes u1's events out of the feature at once
            client.forget_user("u1")
            erased = client.search(query, 10, explain=True)
        served = {h.item_id: [f.value for f in h.explanation.features] for h in after.hits}
        assert served[clicked][ENGAGEMENT] == pytest.approx(math.log1p(2), rel=1e-6)
        assert served[bought][ENGAGEMENT] == pytest.approx(math.log1p(4), rel=1e-6)
        # the ranker was trained without events (NaN, never split on): the order stays
        now = {h.item_id: h.explanation.features[ENGAGEMENT].value for h in erased.hits}
        assert list(now) == list(served)
        assert now[clicked] == pytest.approx(math.log1p(1), rel=1e-6)  # u2's click
        assert now[bought] == 0.0
    finally:
        server.stop(0)
    # the training path, from the same events dir (as it was before the erasure)
    version = IndexVersion.open(resolve_version_dir(root))
    encoder = load_encoder(tiny_model_dir)
    source = version_source(version, encoder, read_engagement(tmp_path / "events-then"))
    trained_qs = prepare_queries(version, source, encoder, labels)
    trained = {
        str(trained_qs.item_ids[r]): x
        for r, x in zip(trained_qs.candidates[0].rows, trained_qs.features[0], strict=True)
    }
    for item_id, values in served.items():
        np.testing.assert_allclose(values, trained[item_id], rtol=1e-5, atol=1e-6)
