"""Export a finished run's personalized client models, and load them back as ready modules.

``pfedlora export RUN_DIR --clients K[,K...] --out DIR`` writes, per client, ``client-K.safetensors``
(the weights of exactly the module the run evaluated: the algorithm's ``personalized_model``, e.g.
pFedLoRA's local model + the client's adapter) and ``client-K.json`` (format, the run's config, the
architecture, input shape, classes, text spec, preprocessing, and the accuracy the run reported).

:func:`load_personalized` rebuilds that module from the JSON (the config says how; no code is ever
read from the files: weights are safetensors, the rest JSON) and returns a
:class:`PersonalizedClassifier` in eval mode whose ``predict(inputs)`` applies the dataset's
preprocessing to raw inputs (image files / Pillow images / uint8 arrays, strings, token ids).

The weights come from the run's final checkpoint: ``checkpoint.pt`` is written after the last
round whatever ``checkpoint_every`` is, so every finished run can be exported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pfedlora.errors import UserError

FORMAT = "pfedlora-personalized-model"
FORMAT_VERSION = 1


def parse_clients(text: str, num_clients: int) -> list[int]:
    """``"0,3,7"`` or ``"all"`` as sorted client ids, each in 0..num_clients-1."""
    if text.strip() == "all":
        return list(range(num_clients))
    try:
        ids = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"--clients expects client ids like 0,3,7 or 'all', got {text!r}") from None
    bad = [k for k in ids if not 0 <= k < num_clients]
    if not ids or bad:
        raise UserError(f"--clients: client ids must be in 0..{num_clients - 1} (the run has {num_clients} clients), "
                        f"got {text!r}")
    return sorted(set(ids))


def _run_facts(run_dir: Path, config: Any) -> dict[str, Any]:
    path = run_dir / "dataset.json"
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{path}: unreadable ({exc}); delete it to rebuild it from the dataset") from None
    # runs written before dataset.json existed: read the dataset again (it must still be where it was)
    from pfedlora.federation.simulation import Federation, dataset_facts

    return dataset_facts(Federation.build(config).dataset)


def _context(config: Any, facts: dict[str, Any]):
    from pfedlora.algorithms.base import FederationContext
    from pfedlora.data.text import TextSpec

    text = facts.get("text")
    spec = None if text is None else TextSpec(int(text["vocab_size"]), int(text["max_length"]), int(text["pad_id"]))
    config = config.model_copy(update={"device": "cpu"})
    return FederationContext(config, tuple(int(v) for v in facts["input_shape"]), int(facts["num_classes"]),
                             torch.device("cpu"), text=spec)


def export_clients(run_dir: str | Path, clients: str | list[int], out_dir: str | Path) -> list[Path]:
    """Write ``client-K.safetensors`` + ``client-K.json`` into ``out_dir`` for each client; the JSON paths."""
    from safetensors.torch import save_file

    from pfedlora.algorithms import get_algorithm
    from pfedlora.federation.simulation import load_resumable

    run_dir = Path(run_dir)
    config, checkpoint = load_resumable(run_dir)
    if checkpoint is None:
        raise UserError(f"{run_dir}: no checkpoint.pt, so no trained client models; run it to the end first")
    if int(checkpoint["round"]) != config.rounds:
        raise UserError(f"{run_dir}: the run stopped after round {checkpoint['round']} of {config.rounds}; "
                        f"finish it with: pfedlora run --resume {run_dir}")
    ids = parse_clients(clients, config.num_clients) if isinstance(clients, str) else list(clients)
    facts = _run_facts(run_dir, config)
    partition = _read_json(run_dir / "partition.json")
    names = partition.get("client_names") if isinstance(partition, dict) else None
    ctx = _context(config, facts)
    algorithm = get_algorithm(config.algorithm)
    broadcast = {k: v.to("cpu") for k, v in checkpoint["broadcast"].items()}
    accuracies = list(checkpoint["client_accuracies"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k in ids:
        saved = checkpoint["client_states"].get(k, checkpoint["client_states"].get(str(k)))
        # a client the disk store never wrote is still in its initial state (a function of the seed)
        state = algorithm.init_client(ctx, k) if saved is None else {n: t.to("cpu") for n, t in saved.items()}
        model = algorithm.personalized_model(ctx, k, state, broadcast)
        weights = {name: tensor.detach().to("cpu").contiguous().clone() for name, tensor in model.state_dict().items()}
        stem = f"client-{k}"
        save_file(weights, str(out / f"{stem}.safetensors"), metadata={"format": FORMAT})
        document = {
            "format": FORMAT, "version": FORMAT_VERSION, "weights": f"{stem}.safetensors",
            "client": k, "client_name": names[k] if names else None,
            "algorithm": config.algorithm, "architecture": config.client_model(k), "module": type(model).__name__,
            "input_shape": facts["input_shape"], "num_classes": facts["num_classes"],
            "class_names": facts["class_names"], "text": facts.get("text"),
            "preprocessing": facts.get("preprocessing"),
            "run": {"dir": str(run_dir), "round": int(checkpoint["round"]),
                    "accuracy": accuracies[k] if k < len(accuracies) else None},
            "config": config.to_dict(),
        }
        (out / f"{stem}.json").write_text(json.dumps(document, indent=2) + "\n")
        written.append(out / f"{stem}.json")
    return written


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


class PersonalizedClassifier(nn.Module):
    """A client's exported personalized model: ``forward`` takes preprocessed tensors (as the run
    fed the model), ``predict`` raw inputs (see :meth:`preprocess`)."""

    def __init__(self, model: nn.Module, document: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.client = int(document["client"])
        self.client_name = document.get("client_name")
        self.class_names: list[str] = list(document["class_names"])
        self.input_shape = tuple(int(v) for v in document["input_shape"])
        self.preprocessing: dict[str, Any] = document.get("preprocessing") or {}
        self.run_accuracy = document.get("run", {}).get("accuracy")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits [N, classes] for preprocessed input ``x``, exactly as the run fed the model."""
        return self.model(x)

    def preprocess(self, inputs: Any) -> torch.Tensor:
        """Raw inputs as the model's input tensor.

        Images: file paths, encoded bytes, Pillow images, uint8 arrays of one image each, or a list
        mixing them; or one uint8 array [N, H, W(, C)] / [N, C, H, W] -> mode conversion, resize/pad and normalisation as in training. client_npz
        data: float arrays as stored in its files. Text: strings (tokenized as in training) or
        token ids. A float tensor already shaped [N, *input_shape] is taken as preprocessed.
        """
        kind = self.preprocessing.get("kind")
        if torch.is_tensor(inputs) and inputs.is_floating_point() and tuple(inputs.shape[1:]) == self.input_shape:
            return inputs
        if kind == "image":
            from pfedlora.data.images import preprocess_images

            return preprocess_images(inputs, self.preprocessing)
        if kind == "tensor":
            from pfedlora.data.client_data import fit_tensor_images

            x = torch.as_tensor(np.asarray(inputs, dtype=np.float32))
            x = x[:, None] if x.dim() == 3 else x
            return fit_tensor_images(x, int(self.preprocessing["image_size"]), self.preprocessing["fit"])
        if kind in ("text", "token_ids"):
            length = int(self.preprocessing["max_length"])
            if isinstance(inputs, str) or (isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], str)):
                if kind != "text":
                    raise UserError("this model was trained on token ids (client_npz); pass token ids, not strings")
                from pfedlora.data.text import load_tokenizer, tokenize

                texts = [inputs] if isinstance(inputs, str) else list(inputs)
                ids = tokenize(texts, load_tokenizer(self.preprocessing["tokenizer"]), length)
                return torch.from_numpy(np.asarray(ids, dtype=np.int64))
            ids = np.asarray(inputs, dtype=np.int64)
            ids = ids[None] if ids.ndim == 1 else ids
            out = np.zeros((len(ids), length), dtype=np.int64)
            out[:, : min(length, ids.shape[1])] = ids[:, :length]
            return torch.from_numpy(out)
        raise UserError(f"no preprocessing recorded for this model (kind {kind!r}); pass preprocessed tensors "
                        f"of shape [N, {', '.join(map(str, self.input_shape))}] to the module itself")

    @torch.inference_mode()
    def predict(self, inputs: Any, batch_size: int = 1024) -> torch.Tensor:
        """Class indices (LongTensor [N]) for raw ``inputs``; ``class_names[i]`` names class ``i``."""
        x = self.preprocess(inputs)
        was_training = self.training
        self.eval()
        try:
            return torch.cat([self.model(x[i: i + batch_size]).argmax(dim=1) for i in range(0, len(x), batch_size)]) \
                if len(x) else torch.zeros(0, dtype=torch.long)
        finally:
            self.train(was_training)

    def predict_labels(self, inputs: Any) -> list[str]:
        """Class names for raw ``inputs`` (as :meth:`predict`)."""
        return [self.class_names[int(i)] for i in self.predict(inputs)]


def _document_path(path: Path) -> Path:
    if path.is_dir():
        found = sorted(path.glob("client-*.json"))
        if len(found) != 1:
            listed = ", ".join(p.name for p in found) or "none"
            raise UserError(f"{path}: expected one exported client-K.json, found {listed}; pass the file itself")
        return found[0]
    if path.suffix == ".safetensors":
        return path.with_suffix(".json")
    return path


def load_personalized(path: str | Path) -> PersonalizedClassifier:
    """An exported client model (its ``client-K.json``, ``.safetensors``, or a folder holding one)
    as a :class:`PersonalizedClassifier` in eval mode on the CPU."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from pfedlora.algorithms import get_algorithm
    from pfedlora.config import build_config

    document_path = _document_path(Path(path))
    try:
        document = json.loads(document_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{document_path}: not a readable exported model ({str(exc).splitlines()[0][:200]})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise UserError(f"{document_path}: not a pfedlora exported model (format {FORMAT!r} expected)")
    if document.get("version") != FORMAT_VERSION:
        raise UserError(f"{document_path}: export version {document.get('version')!r}; this pfedlora reads {FORMAT_VERSION}")
    config = build_config(document["config"])
    ctx = _context(config, document)
    algorithm = get_algorithm(config.algorithm)
    k = int(document["client"])
    _, broadcast = algorithm.init_server(ctx)
    skeleton = algorithm.personalized_model(ctx, k, algorithm.init_client(ctx, k), broadcast)
    weights_path = document_path.parent / document["weights"]
    try:
        weights = load_file(str(weights_path))
        skeleton.load_state_dict(weights, strict=True)
    except (OSError, SafetensorError, RuntimeError) as exc:
        raise UserError(f"{weights_path}: weights do not fit the model in {document_path.name} "
                        f"({str(exc).splitlines()[0][:200]})") from None
    return PersonalizedClassifier(skeleton, document).eval()
