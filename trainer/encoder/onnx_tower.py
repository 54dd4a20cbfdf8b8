"""The ONNX Runtime query tower backend: export file layout and metadata keys, no torch."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

from trainer.encoder.model_dir import ModelInfo, norm_tower, read_model_info

# The query tower exported by trainer.encoder.onnx_export: one self-contained ONNX file in the query
# tower's dir (token ids in, the pooled/projected/normalised vector out, the tokenizer in its
# metadata). Derived from the fingerprinted files, so not fingerprinted itself; it records the
# fingerprint it was exported from instead, which tells a stale export.
QUERY_ONNX_FILE = "query_tower.onnx"
ONNX_OUTPUT_NAME = "sentence_embedding"
ONNX_META_KEYS = {
    name: f"aisle.{name}"
    for name in (
        "fingerprint",
        "tokenizer",
        "pad_token",
        "pad_token_id",
        "pad_token_type_id",
        "padding_side",
        "truncation_side",
        "max_positions",
        "pooling",
        "normalize",
    )
}


def query_onnx_path(model_dir: str | Path, info: ModelInfo | None = None) -> Path:
    """Where ``trainer.encoder.onnx_export`` puts the query tower's ONNX file in a model dir."""
    path = Path(model_dir)
    info = read_model_info(path) if info is None else info
    return path / norm_tower(info.query_tower) / QUERY_ONNX_FILE


# ONNX graph input → the tokenizers.Encoding attribute that feeds it.
_ONNX_INPUT_FIELDS = {
    "input_ids": "ids",
    "attention_mask": "attention_mask",
    "token_type_ids": "type_ids",
}


class OnnxTower:
    """The exported query tower on ONNX Runtime + the ``tokenizers`` fast tokenizer (a
    ``trainer.encoder.load.TowerBackend``).

    Imports neither torch nor transformers: the graph does the model, pooling, projection and
    normalisation, and the tokenizer (with the pad and truncation settings transformers used at
    export) comes from the file's metadata. ``fingerprint`` is the model's at export time.
    """

    backend = "onnx"

    def __init__(self, onnx_path: Path, *, num_threads: int | None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        options.inter_op_num_threads = 1  # the graph is one chain; parallelism is intra-op
        if num_threads is not None:
            options.intra_op_num_threads = num_threads
        try:
            self.session = ort.InferenceSession(
                str(onnx_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/NoSuchFile types
            raise ValueError(
                f"cannot load the ONNX query tower {str(onnx_path)!r}: {exc}; re-export it "
                "with python -m trainer.encoder.onnx_export MODEL_DIR"
            ) from exc
        meta = self.session.get_modelmeta().custom_metadata_map
        try:
            self.fingerprint = meta[ONNX_META_KEYS["fingerprint"]]
            self.max_positions = int(meta[ONNX_META_KEYS["max_positions"]])
            tokenizer = Tokenizer.from_str(meta[ONNX_META_KEYS["tokenizer"]])
            tokenizer.no_truncation()
            tokenizer.enable_padding(
                direction=meta[ONNX_META_KEYS["padding_side"]],
                pad_id=int(meta[ONNX_META_KEYS["pad_token_id"]]),
                pad_type_id=int(meta[ONNX_META_KEYS["pad_token_type_id"]]),
                pad_token=meta[ONNX_META_KEYS["pad_token"]],
            )
            self._truncation_side = meta[ONNX_META_KEYS["truncation_side"]]
        except Exception as exc:  # KeyError, int(), tokenizers' own Exception
            raise ValueError(
                f"{str(onnx_path)!r} lacks valid Aisle metadata ({type(exc).__name__}: {exc}); "
                "it was not written by trainer.encoder.onnx_export, re-export it"
            ) from exc
        self._tokenizer = tokenizer
        self._inputs = [node.name for node in self.session.get_inputs()]
        unknown = sorted(set(self._inputs) - set(_ONNX_INPUT_FIELDS))
        outputs = self.session.get_outputs()
        if unknown or len(outputs) != 1 or not isinstance(outputs[0].shape[-1], int):
            raise ValueError(
                f"{str(onnx_path)!r} is not an Aisle query tower (inputs {self._inputs}, outputs "
                f"{[(o.name, o.shape) for o in outputs]}); re-export it"
            )
        self._output = outputs[0].name
        self.dim = int(outputs[0].shape[-1])
        self._max_length: int | None = None
        # The tokenizer's truncation setting is state shared by threads: set and use it under
        # one lock. ORT sessions are thread-safe, so inference runs outside it.
        self._tokenizer_lock = threading.Lock()

    def encode(self, texts: list[str], max_length: int) -> np.ndarray:
        """texts (b,) → (b, dim) float32 vectors as the graph outputs them."""
        with self._tokenizer_lock:
            if max_length != self._max_length:
                self._tokenizer.enable_truncation(max_length, direction=self._truncation_side)
                self._max_length = max_length
            encodings = self._tokenizer.encode_batch(texts)
        feeds = {
            name: np.array(
                [getattr(e, _ONNX_INPUT_FIELDS[name]) for e in encodings], dtype=np.int64
            )  # (b, seq)
            for name in self._inputs
        }
        (out,) = self.session.run([self._output], feeds)  # (b, dim)
        return np.ascontiguousarray(out, dtype=np.float32)
