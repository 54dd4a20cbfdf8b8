"""Shared test helpers: a tiny, randomly initialised BERT model dir that loads like a real one,
small synthetic catalogs, the trainer tests' in-memory catalogs, labels and run config, and live
updates with the item state they leave."""

from __future__ import annotations

import json
import os
import shutil
import string
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aisle.v1 import index_admin_pb2, index_admin_pb2_grpc
from engine.api.interceptor import MAX_MESSAGE_CHARS
from indexer.live.index import LiveIndex
from indexer.version import IndexVersion
from trainer.data.catalog import Catalog
from trainer.data.labels import Labels
from trainer.text import item_text
from trainer.training.config import DatasetSpec, TrainConfig

# Common English and shop words, so test texts mostly tokenise to whole words (more realistic
# vectors than letter-by-letter pieces); anything else falls back to single characters.
_WORDS = """
the a an and or of to in on for with without by from at as is are be it this that these those
new best top good great small large big mini extra set pack kit pair piece pieces one two three
four five six ten dozen inch inches ft foot feet cm mm oz lb lbs pound gallon gal ml liter watt
volt amp v w mah gb tb hz pro plus max ultra lite premium classic deluxe original series model
size color black white red blue green yellow orange purple pink brown gray grey silver gold
clear beige navy dark light bright matte glossy crimson velvet leather cotton wool silk linen
polyester nylon plastic metal steel stainless aluminum wood wooden oak pine bamboo glass ceramic
rubber foam paper cardboard stone marble concrete vinyl sofa couch chair table desk bed mattress
pillow blanket sheet lamp light bulb led rug carpet curtain shelf cabinet drawer door window
mirror frame clock vase candle kitchen bath bathroom bedroom living room office outdoor indoor
garden patio home house wall floor ceiling roof deck fence yard tool tools drill cordless saw
hammer screwdriver wrench pliers tape measure level sander grinder blade bit bits battery
charger cable cord wire plug switch outlet adapter power electric electrical solar hose nozzle
sprinkler mower trimmer paint primer stain brush roller spray coating sealant glue adhesive
screw screws nail nails bolt bolts nut washer hinge lock key phone case cover screen protector
laptop computer tablet keyboard mouse monitor headphones earbuds speaker wireless bluetooth
usb camera lens tripod tv remote game console controller book books kids children baby toy
toys doll puzzle board card cards shirt pants dress shoes boots socks jacket coat hat cap bag
backpack wallet watch ring necklace earrings women men girls boys unisex adult running sports
fitness yoga water bottle cup mug plate bowl knife fork spoon pan pot cooker blender coffee tea
maker filter vacuum cleaner soap shampoo towel toothbrush cream oil vitamin dog cat pet food
treats bird fish toilet sink faucet shower tub tile grout pipe valve fitting gauge grit
sanding roll heavy duty portable adjustable foldable waterproof rechargeable replacement
compatible gift soft hard warm cool fast quick easy safe natural organic free
""".split()

_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def tiny_vocab() -> list[str]:
    """Special tokens, then single characters and their "##" forms, then whole words."""
    chars = string.ascii_lowercase + string.digits
    vocab = list(_SPECIAL)
    vocab += list(chars) + [f"##{c}" for c in chars] + list(string.punctuation)
    seen = set(vocab)
    for word in _WORDS:
        if word not in seen:
            seen.add(word)
            vocab.append(word)
    return vocab


def make_tiny_model(out_dir: str | Path, *, hidden_size: int = 32, seed: int = 0) -> Path:
    """Write a tiny random 2-layer BERT + WordPiece tokenizer in HF format (safetensors).

    Deterministic for a seed (same weights → same ``model_fingerprint``) and fast (well under a
    second once transformers is imported). ``trainer.encoder.load.load_encoder(out_dir)`` loads it.

    Args:
        out_dir: created if missing.
        hidden_size: vector dim; must be even (2 attention heads).
        seed: weight initialisation seed; the global torch RNG is left untouched.

    Returns:
        ``Path(out_dir)``.
    """
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast
    from transformers.utils import logging as hf_logging

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    # transformers 5 ignores `vocab_file=` (the tokenizer silently ends up with only the special
    # tokens), so pass the vocab as a dict.
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)})
    tokenizer.save_pretrained(out)
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")

    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=512,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(config)
    # transformers 5 draws a "Writing model shards" bar per save; keep test output clean.
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out)  # safetensors: the only format transformers 5 writes
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    return out


_COLORS = ["red", "blue", "green", "black", "white", "grey", "silver", "brown"]
_NOUNS = ["sofa", "lamp", "chair", "table", "drill", "towel", "rug", "desk", "mug", "kettle"]
_BRANDS = ["Acme", "Globex", "Initech", None]


def write_catalog(path: Path, n: int = 200, *, seed: int = 0) -> list[dict]:
    """A JSONL catalog of ``n`` items with unique titles (so no two items share a vector);
    some items lack optional fields, to check that nulls round-trip."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        color, noun = rng.choice(_COLORS), rng.choice(_NOUNS)
        record: dict = {"item_id": f"SKU{i:04d}", "title": f"{color} {noun} model {i}"}
        brand = _BRANDS[i % len(_BRANDS)]
        if brand is not None:
            record["brand"] = brand
        if i % 3:
            record["price"] = round(float(rng.uniform(1, 500)), 2)
        records.append(record)
    _write_jsonl(path, records)
    return records


_TITLE_COLORS = ["red", "blue", "green", "black", "white", "grey"]
_TITLE_NOUNS = [
    "sofa",
    "lamp",
    "chair",
    "table",
    "kettle",
    "drill",
    "skillet",
    "towel",
    "rug",
    "desk",
]


def write_title_catalog(path: Path, n: int = 60) -> list[dict]:
    """Title-only items: their item text equals the title, so a query equal to a title must
    retrieve that item first whatever the (random) model weights are."""
    records = []
    for i in range(n):
        color = _TITLE_COLORS[i % len(_TITLE_COLORS)]
        noun = _TITLE_NOUNS[(i // len(_TITLE_COLORS)) % len(_TITLE_NOUNS)]
        records.append({"item_id": f"SKU{i:04d}", "title": f"{color} {noun} model {i}"})
    _write_jsonl(path, records)
    return records


def _write_jsonl(path: Path, records: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------------
# Trainer tests: in-memory catalogs, six items with search labels, a short training run


def catalog_of(records: list[dict], path: str = "catalog.jsonl") -> Catalog:
    """A Catalog of ``records`` as they are (not validated), as if read from ``path``."""
    return Catalog(table=pa.Table.from_pylist(records), path=path)


SEARCH_RECORDS = [
    {"item_id": "S1", "title": "red velvet sofa", "brand": "Acme"},
    {"item_id": "S2", "title": "stainless steel cordless drill", "category": "tools > drill"},
    {"item_id": "S3", "title": "usb cable", "bullets": ["two pack", "black"]},
    {"item_id": "S4", "title": "oak desk with three drawers"},
    {"item_id": "S5", "title": "blue cotton shirt"},
    {"item_id": "S6", "title": "coffee maker with glass pot"},
]


def search_labels() -> Labels:
    """Three queries over SEARCH_RECORDS: two are an item's own text, one judges only grade 0."""
    # each query is an item's full item text → that item ranks first (same tower, same text)
    queries = {
        "q1": item_text(SEARCH_RECORDS[0]),
        "q2": item_text(SEARCH_RECORDS[3]),
        "q3": "garden hose",
    }
    judgments = {"q1": {"S1": 3, "S5": 0}, "q2": {"S4": 3}, "q3": {"S2": 0}}
    return Labels(queries=queries, judgments=judgments, path="labels.jsonl")


def ranking_labels(records: list[dict]) -> Labels:
    """Ranker labels over ``write_title_catalog`` records: '<color> <noun>' queries; items with
    both words grade 2, with the noun alone grade 1 (the rest unjudged)."""
    queries, judgments = {}, {}
    for color in _TITLE_COLORS:
        for noun in _TITLE_NOUNS[:5]:
            qid = f"{color}-{noun}"
            queries[qid] = f"{color} {noun}"
            judgments[qid] = {
                r["item_id"]: 2 if color in r["title"].split() else 1
                for r in records
                if noun in r["title"].split()
            }
    return Labels(queries=queries, judgments=judgments, path="ranking-labels")


def train_config(tmp_path: Path, model: Path, data: dict[str, Path], **kwargs) -> TrainConfig:
    """A few CPU steps on the synthetic dataset ``data`` (search on its labels unless
    ``datasets`` is given), writing under ``tmp_path``; ``kwargs`` override any setting."""
    datasets = kwargs.pop(
        "datasets",
        (DatasetSpec(catalog=data["products"], train=data["labels_train"]),),
    )
    settings = {
        "datasets": datasets,
        "out": tmp_path / "model",
        "base_model": model,
        "batch_size": 8,
        "max_steps": 4,
        "lr": 1e-3,
        "warmup_steps": 0,
        "max_query_length": 16,
        "max_item_length": 32,
        "checkpoint_every": 0,
        "progress": False,
        "num_threads": 1,
        "export_onnx": False,  # covered by the CLI test; it costs seconds per run
        "fast_query_tower": "none",  # aisle-train's default; tests/trainer/test_cli.py covers it
        **kwargs,
    }
    return TrainConfig(**settings)


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    """(n, dim) float32 random unit vectors."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def live_state(live: LiveIndex) -> dict[str, dict]:
    """item_id → record of every live item of ``live``."""
    view = live.snapshot()
    rows = np.setdiff1d(np.arange(view.n_rows), view.dead_rows())
    return {view.item_id(r): view.record(r) for r in rows}


def version_state(version: IndexVersion) -> dict[str, dict]:
    """item_id → record of every item of ``version``."""
    return {version.item_ids[r]: version.record(r) for r in range(version.n_items)}


def some_updates(live: LiveIndex) -> np.ndarray:
    """Upsert two items (one new, one replaced), delete one, reprice one; returns the upserted
    vectors (made up: not what the model would give, so re-use is visible)."""
    xb = unit(2, live.dim, 0)
    live.upsert(
        [
            {"item_id": "NEW", "title": "green kettle", "price": 7.0, "brand": "Acme"},
            {"item_id": "SKU0001", "title": "blue lamp v2"},
        ],
        xb,
    )
    live.delete(["SKU0002"])
    live.update_attributes({"SKU0004": {"price": 1.25}})
    return xb


# ---------------------------------------------------------------------------------------------
# gRPC edge tests: what a refused call says


def violated_fields(error: grpc.RpcError) -> list[str]:
    """The fields of an error's google.rpc.BadRequest details, in order."""
    status = rpc_status.from_call(error)
    fields = []
    for detail in status.details if status else ():
        bad = error_details_pb2.BadRequest()
        if detail.Unpack(bad):
            fields += [v.field for v in bad.field_violations]
    return fields


def refused(call, request, code=grpc.StatusCode.INVALID_ARGUMENT) -> grpc.RpcError:
    """The error of ``call(request)``, checked to have ``code`` and a bounded message."""
    error = pytest.raises(grpc.RpcError, call, request, timeout=10).value
    assert error.code() == code, (error.code(), error.details()[:300])
    assert len(error.details()) <= MAX_MESSAGE_CHARS
    return error


def item(item_id: str, **fields) -> index_admin_pb2.Item:
    """An IndexAdmin item with ``fields`` as its Struct."""
    struct = struct_pb2.Struct()
    struct.update(fields)
    return index_admin_pb2.Item(item_id=item_id, fields=struct)


class Admin:
    """IndexAdmin calls to a server on 127.0.0.1 (no token)."""

    def __init__(self, port: int) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        self.stub = index_admin_pb2_grpc.IndexAdminStub(self.channel)

    def upsert(self, *items, mode=index_admin_pb2.UPSERT_MODE_FULL):
        return self.stub.Upsert(index_admin_pb2.UpsertRequest(items=items, mode=mode), timeout=30)

    def delete(self, *ids):
        return self.stub.Delete(index_admin_pb2.DeleteRequest(item_ids=ids), timeout=30)


def make_static_fast_tower(model_dir: Path, *, seed: int = 0) -> Path:
    """Give ``model_dir`` (written by ``make_tiny_model``) a static fast query tower with random
    token vectors (``trainer.encoder.fast_tower``), made for its current fingerprint, without
    distilling; returns the tower dir."""
    from safetensors.numpy import save_file

    from trainer.encoder.fast_tower import (
        STATIC_FILE,
        STATIC_TOKENIZER,
        FastTowerInfo,
        fast_tower_dir,
        write_fast_tower_info,
    )
    from trainer.encoder.model_dir import model_fingerprint, read_model_info

    info = read_model_info(model_dir)
    tower = fast_tower_dir(model_dir)
    tower.mkdir()
    vectors = np.random.default_rng(seed).normal(size=(len(tiny_vocab()), info.dim))
    save_file({"embeddings": vectors.astype(np.float32)}, str(tower / STATIC_FILE))
    shutil.copy(Path(model_dir) / "tokenizer.json", tower / STATIC_TOKENIZER)
    fast = FastTowerInfo(
        kind="static",
        variant="static",
        item_fingerprint=model_fingerprint(model_dir),
        dim=info.dim,
        max_length=info.max_query_length,
    )
    write_fast_tower_info(tower, fast)
    return tower


def socket_inodes(pid: int | str = "self") -> set[str]:
    """Inodes of the sockets process ``pid`` holds open (its /proc fd links)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue  # closed since the listing
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def established_inodes(port: int, *, remote: bool = False) -> set[str]:
    """Inodes of the ESTABLISHED TCP sockets whose local (``remote``: remote) port is ``port``."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            end = fields[2] if remote else fields[1]
            if int(end.rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                found.add(fields[9])
    return found
