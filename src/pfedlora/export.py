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
        """Raw inputs as the model's input tensor, at the scale the model was trained on.

        Images: file paths, encoded bytes, Pillow images, uint8 arrays of one image each, or a list
        mixing them; or one uint8 array [N, H, W(, C)] / [N, C, H, W]; or a float array in the training
        data's own units (``preprocessing["input"]``: e.g. 0..255 pixel values for CIFAR and image
        folders, 0..16 for scikit-learn's digits). 8-bit pixels are mapped to the training units
        (``input.pixel_scale``), then resized and normalised as in training. Models trained on
        client_npz float arrays take float arrays as stored in those files; image files are refused
        there (their mapping to the stored units is unknown). Text: strings (tokenized as in
        training) or token ids. Anything else stops with one line (:class:`~pfedlora.errors.UserError`);
        preprocessed tensors go to the module itself (``model(x)``).
        """
        kind = self.preprocessing.get("kind")
        if kind in ("image", "tensor"):
            return _preprocess_images(inputs, self.preprocessing, self.input_shape)
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


# --------------------------------------------------------------------------- raw images -> model input

# exports written before preprocessing stated its input: every image loader then stored uint8 pixels
# (digits' 0..16 floats were the exception, and predicted wrongly from 8-bit images)
_UINT8_INPUT = {"dtype": "uint8", "range": [0, 255], "pixel_scale": 1.0, "resize": "pillow-bilinear"}


def input_spec(preprocessing: dict[str, Any]) -> dict[str, Any]:
    """What raw image input a model expects: ``dtype`` and ``range`` of the training data's units,
    ``pixel_scale`` (training units per 8-bit pixel value; None: image files are not accepted) and
    ``resize`` (``pillow-bilinear`` on 8-bit pixels, ``torch-bilinear`` on floats, as in training)."""
    return dict(preprocessing.get("input") or _UINT8_INPUT)


def _describe(spec: dict[str, Any]) -> str:
    low, high = spec.get("range") or (None, None)
    units = f"{spec['dtype']} values in {low:g}..{high:g}" if low is not None else f"{spec['dtype']} values"
    if spec.get("pixel_scale") is None:
        return f"{units} (as stored in its training files; image files are not accepted)"
    return f"{units} (8-bit images are scaled by {spec['pixel_scale']:.6g})"


def _is_float_array(item: Any) -> bool:
    if torch.is_tensor(item):
        return item.is_floating_point()
    return isinstance(item, np.ndarray) and np.issubdtype(item.dtype, np.floating)


def _is_array(item: Any) -> bool:
    return torch.is_tensor(item) or isinstance(item, np.ndarray)


def _check_range(values: np.ndarray, spec: dict[str, Any], where: str) -> None:
    if spec.get("range") is None or values.size == 0:
        return
    low, high = (float(v) for v in spec["range"])
    found_low, found_high = float(values.min()), float(values.max())
    if not np.isfinite(values).all():
        raise UserError(f"{where}: float input holds NaN or infinity; expected {_describe(spec)}")
    slack = 0.01 * (high - low) + 1e-6
    if spec.get("pixel_scale") is not None and high > 2.0 and 0.0 < found_high <= 1.0 and found_low >= -1.0:
        raise UserError(f"{where}: float values in {found_low:g}..{found_high:g} look like 0..1 images, but this "
                        f"model expects {_describe(spec)}; scale them by {high:g} or pass uint8 pixels or image files")
    if spec.get("pixel_scale") is not None and (found_low < low - slack or found_high > high + slack):
        raise UserError(f"{where}: float values span {found_low:g}..{found_high:g}, but this model expects "
                        f"{_describe(spec)}; preprocessed tensors go to the module itself: model(x)")


def _float_batch(array: Any, channels: int, where: str) -> torch.Tensor:
    """A float array of images as [N, C, H, W]: [N, H, W] or [N, H, W, C] batches, or one [H, W] image."""
    x = torch.as_tensor(np.asarray(array.detach().cpu() if torch.is_tensor(array) else array, dtype=np.float32))
    if x.dim() == 2:
        x = x[None, None]
    elif x.dim() == 3:
        x = x[:, None] if channels == 1 or x.shape[-1] not in (1, 3, 4) else x.permute(2, 0, 1)[None]
    elif x.dim() == 4 and x.shape[1] != channels and x.shape[-1] == channels:
        x = x.permute(0, 3, 1, 2)
    if x.dim() != 4 or x.shape[1] != channels:
        raise UserError(f"{where}: float images must be [N, {channels}, H, W], [N, H, W, {channels}]"
                        f"{' or [N, H, W]' if channels == 1 else ''}, got shape {list(np.shape(array))}")
    return x.contiguous()


def _to_size(x: torch.Tensor, preprocessing: dict[str, Any]) -> torch.Tensor:
    from pfedlora.data.client_data import fit_tensor_images

    if x.shape[-1] != x.shape[-2] and preprocessing.get("fit") != "resize":
        raise UserError(f"images are {x.shape[-1]}x{x.shape[-2]}; this model pads (image_fit pad), which needs "
                        "square images")
    return fit_tensor_images(x, int(preprocessing["image_size"]), preprocessing.get("fit") or "resize")


def _normalise(x: torch.Tensor, preprocessing: dict[str, Any]) -> torch.Tensor:
    if preprocessing.get("mean") is None:
        return x  # client_npz arrays: used as stored
    mean = torch.tensor(preprocessing["mean"], dtype=torch.float32).view(1, -1, 1, 1)
    std = torch.tensor(preprocessing["std"], dtype=torch.float32).view(1, -1, 1, 1)
    return x.to(torch.float32).sub(mean).div(std)


def _pixels_in_units(items: list[tuple[str, Any]], preprocessing: dict[str, Any], spec: dict[str, Any]) -> list[torch.Tensor]:
    """8-bit images (files, bytes, Pillow images, uint8 arrays of one image) as float [1, C, H, W] in the
    training units, at their own size (models trained on float units are resized in floats, as in training)."""
    from pfedlora.data.images import _array_images, _convert, _open

    channels = int(preprocessing["channels"])
    out = []
    for where, item in items:
        image = _array_images(item, where, single=True)[0] if _is_array(item) else _open(item, where)
        pixels = np.asarray(_convert(image, channels), dtype=np.float32)
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        out.append(torch.from_numpy(pixels * np.float32(spec["pixel_scale"]))[None])
    return out


def _preprocess_images(inputs: Any, preprocessing: dict[str, Any], input_shape: tuple[int, ...]) -> torch.Tensor:
    """Raw images as model input [N, *input_shape], by the training data's units (:func:`input_spec`)."""
    spec = input_spec(preprocessing)
    channels = int(preprocessing["channels"])
    if _is_array(inputs) and not _is_float_array(inputs):
        values = np.asarray(inputs.detach().cpu() if torch.is_tensor(inputs) else inputs)
        if values.dtype != np.uint8 and values.size and (values.min() < 0 or values.max() > 255):
            raise UserError(f"inputs: integer images must be 8-bit pixels in 0..255, got {values.min()}..{values.max()}")
    if _is_float_array(inputs) or (isinstance(inputs, (list, tuple)) and inputs and all(map(_is_float_array, inputs))):
        # float arrays: the training data's own units
        parts = [inputs] if _is_array(inputs) else list(inputs)
        batches = [_float_batch(part, channels, f"inputs[{i}]" if not _is_array(inputs) else "inputs")
                   for i, part in enumerate(parts)]
        for i, batch in enumerate(batches):
            _check_range(batch.numpy(), spec, "inputs")
        if spec["resize"] == "pillow-bilinear" and any(b.shape[-2:] != input_shape[-2:] for b in batches):
            # trained on 8-bit pixels resized by Pillow: resize these the same way
            from pfedlora.data.images import preprocess_images

            pixels = [b.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy() for b in batches]
            return preprocess_images([image for batch in pixels for image in batch], preprocessing)
        return _normalise(torch.cat([_to_size(b, preprocessing) for b in batches]) if batches
                          else torch.zeros((0, *input_shape)), preprocessing)
    if spec.get("pixel_scale") is None:
        raise UserError(f"this model was trained on float arrays ({_describe(spec)}); pass float arrays "
                        "[N, C, H, W] in those units")
    if spec["resize"] == "pillow-bilinear":
        from pfedlora.data.images import preprocess_images

        return preprocess_images(inputs, preprocessing)  # exactly the loaders' decoding of 8-bit images
    if _is_array(inputs):
        from pfedlora.data.images import _array_images

        items = [(f"inputs[{i}]", np.asarray(image)) for i, image in enumerate(_array_images(inputs, "inputs"))]
    else:
        listed = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        items = [(str(item) if isinstance(item, (str, Path)) else f"inputs[{i}]", item) for i, item in enumerate(listed)]
        for where, item in items:
            if _is_float_array(item):
                raise UserError(f"{where}: a list mixes float arrays with images; pass float arrays on their own")
    tensors = _pixels_in_units(items, preprocessing, spec)
    if not tensors:
        return torch.zeros((0, *input_shape))
    return _normalise(torch.cat([_to_size(t, preprocessing) for t in tensors]), preprocessing)
