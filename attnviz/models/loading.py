"""Load a model and its preprocessing: bundled tiny models, timm, torchvision, user code.

``load_model(spec)`` understands

* a bundled name (``"sk_tiny"``): :mod:`attnviz.models.tiny` + ``assets/models/<name>.safetensors``
  (sha256 checked against ``assets/models/manifest.json``);
* ``"timm:<name>"``: :func:`timm.create_model`, preprocessing from
  :func:`timm.data.resolve_data_config`;
* ``"torchvision:<name>"``: :func:`torchvision.models.get_model`;
* ``"python:package.module:factory"``: ``factory()`` (or ``factory(num_classes=...)``).

Local weights (``weights=``) are read from ``.safetensors`` or, for ``.pth`` / ``.pt`` / ``.bin``
pickles, with ``torch.load(weights_only=True)`` only: a pickle that would run code is refused.
``pretrained=True`` goes through timm's (or torchvision's) real download path; offline, set
``HF_HUB_OFFLINE=1`` before starting Python to fail at once, and pass a local file instead.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import pickle
import socket
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.assets import assets_dir, read_manifest
from ..errors import AttnvizError
from .zoo import IMAGE_SIZE, MEAN, STD, TINY_MODELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PICKLE_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".pkl")


class WeightsError(AttnvizError, ValueError):
    """A weights file cannot be read safely or does not fit the model."""


class PretrainedUnavailableError(AttnvizError, RuntimeError):
    """Pretrained weights could not be fetched (no hub access)."""


@dataclass
class PreprocessConfig:
    """How images must be prepared for a model.

    ``input_size`` (C, H, W); ``mean``/``std`` per channel on [0, 1] pixel values;
    ``interpolation`` ("bilinear" / "bicubic") for the resize; ``crop_pct`` the centre crop
    fraction (timm's recipe: resize the shorter side to floor(H / crop_pct), crop H x W; see
    :func:`attnviz.preprocess_for`); ``resize_size`` an explicit shorter side instead (a
    torchvision weights recipe). ``classes``: the model's class names in output order, when
    known (bundled models): image folders are labelled in this order. ``source`` records where
    the model came from (``spec``, ``weights`` path, ``weights_sha256``).
    """

    input_size: tuple[int, int, int] = (3, 224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    resize_size: int | None = None
    classes: tuple[str, ...] = ()
    source: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- assets
def bundled_models() -> list[str]:
    """Names of the bundled (trained, shipped) tiny models."""
    try:
        return sorted(read_manifest()["models"])
    except FileNotFoundError:
        return []


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- weights
def _check_weights_path(path: Path) -> None:
    if path.is_dir():
        raise WeightsError(f"weights {path} is a folder; give a .safetensors or .pth file")
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    if path.stat().st_size == 0:
        raise WeightsError(f"weights file {path} is empty")


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``weights_only=True`` pickle (never full pickle).

    Checkpoints that wrap the weights (``{"state_dict": ...}``, ``{"model": ...}``, EMA) are
    unwrapped and a ``module.`` prefix (DataParallel) is stripped. A missing, empty, folder or
    unreadable file raises :class:`WeightsError` (or FileNotFoundError) naming the file.
    """
    path = Path(path)
    _check_weights_path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise WeightsError(
                f"cannot read {path} as safetensors ({str(exc).splitlines()[0]})"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        detail = str(exc).split("WeightsUnpickler error:")[-1].split("Check the doc")[0]
        if "global" not in detail.lower():  # no object to refuse: not a checkpoint at all
            raise WeightsError(
                f"cannot read weights file {path}: not a torch checkpoint "
                "(it does not unpickle as tensors)"
            ) from None
        raise WeightsError(
            f"refusing to load {path}: it is a pickle that needs more than tensors to load "
            "(it could run arbitrary code), and attnviz only loads pickles with "
            "torch.load(weights_only=True). Convert it to .safetensors in a trusted "
            "environment (safetensors.torch.save_file(model.state_dict(), 'model.safetensors')) "
            f"or save a plain state_dict. Details: {str(exc).splitlines()[0]}"
        ) from None
    except Exception as exc:
        raise WeightsError(
            f"cannot read weights file {path}: not a torch checkpoint "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    return _unwrap_state_dict(obj, path)


def _unwrap_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model", "module"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"{path} does not hold a state dict (name -> tensor)")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def apply_weights(model: nn.Module, state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Load ``state`` strictly into ``model``, trying timm's checkpoint filter on a mismatch."""
    try:
        model.load_state_dict(state, strict=True)
        return
    except RuntimeError as first:
        filter_fn = getattr(
            importlib.import_module(type(model).__module__), "checkpoint_filter_fn", None
        )
        if filter_fn is not None:
            try:
                model.load_state_dict(filter_fn(state, model), strict=True)
                return
            except Exception:
                pass
        msg = str(first).split("\n\t", 1)[-1][:800]
        raise WeightsError(f"weights in {path} do not fit {type(model).__name__}: {msg}") from None


# --------------------------------------------------------------------------- loaders
def _load_bundled(
    name: str, weights: str | Path | None, pretrained: bool, num_classes: int | None
) -> tuple[nn.Module, PreprocessConfig]:
    entry = read_manifest().get("models", {}).get(name) if weights is None else None
    if weights is None and entry is None:
        raise FileNotFoundError(
            f"tiny model {name!r} has no bundled checkpoint in {assets_dir()}; train it with "
            f"`python -m attnviz.models.train {name}` or pass weights=PATH"
        )
    n_out = num_classes or (entry or {}).get("config", {}).get("num_classes", 10)
    model = TINY_MODELS[name](num_classes=n_out)
    if weights is None:
        path = assets_dir() / entry["file"]
        digest = sha256_file(path)
        if digest != entry["sha256"]:
            raise WeightsError(
                f"{path} has sha256 {digest}, the manifest says {entry['sha256']}: the file was "
                f"changed; retrain with `{entry.get('command', 'python -m attnviz.models.train')}`"
            )
        pre = entry["preprocessing"]
        cfg = PreprocessConfig(
            input_size=tuple(pre["input_size"]),
            mean=tuple(pre["mean"]),
            std=tuple(pre["std"]),
            interpolation=pre["interpolation"],
            crop_pct=pre["crop_pct"],
            classes=tuple(entry.get("classes", ())),
        )
    else:
        path, digest = Path(weights), sha256_file(weights)
        cfg = PreprocessConfig((3, IMAGE_SIZE, IMAGE_SIZE), MEAN, STD, "bilinear", 1.0)
        from ..data.shapes import SHAPE_CLASSES

        cfg.classes = tuple(c.name for c in SHAPE_CLASSES)  # every tiny model: the shapes
    state = load_weights_file(path)
    if (
        num_classes is not None
        and entry is not None
        and num_classes != entry["config"]["num_classes"]
    ):
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("fc.") for k in missing):
            raise WeightsError(f"weights in {path} do not fit {name}")
    else:
        apply_weights(model, state, path)
    cfg.source = {"spec": name, "weights": str(path), "weights_sha256": digest}
    return model, cfg


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """Why the Hugging Face hub cannot be reached (a quick TCP probe), or None if it can.

    Without ``HF_HUB_OFFLINE`` huggingface_hub retries for about a minute before giving up;
    this probe lets an offline machine fail at once instead.
    """
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return None  # behind a proxy: let huggingface_hub try
    try:
        with socket.create_connection((url.hostname or "huggingface.co", port), timeout=timeout):
            return None
    except OSError as exc:
        return f"{endpoint} is unreachable ({exc})"


def _pretrained_failure(spec: str, exc: BaseException) -> PretrainedUnavailableError:
    return PretrainedUnavailableError(
        f"could not fetch pretrained weights for {spec!r} (no hub access: "
        f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}). "
        "Pass a local file instead: load_model(spec, weights='path/to/weights.safetensors') "
        "(.safetensors, or a .pth/.pt state dict), or on the command line --weights PATH."
    )


class InputSizeError(AttnvizError, ValueError):
    """A model cannot be built for the input size asked for."""


def _timm_size_kwargs(name: str, input_size: tuple[int, int] | None) -> dict[str, Any]:
    """``{"img_size": (H, W)}`` when ``input_size`` is not the model's own (its pretrained
    config's); a timm model whose constructor takes ``img_size`` (ViT, Swin, MaxViT, ...) sizes
    its position embeddings, windows and relative-position tables by it."""
    from timm.models import get_pretrained_cfg_value

    if input_size is None:
        return {}
    own = get_pretrained_cfg_value(name, "input_size")
    if own is not None and tuple(own[-2:]) == tuple(input_size):
        return {}
    return {"img_size": tuple(int(s) for s in input_size)}


def _create_timm(name: str, pretrained: bool, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model``; without ``img_size`` when the model's constructor has none (a
    convolutional network takes any size); a model that cannot be built for the size asked for
    is one :class:`InputSizeError` line."""
    import timm

    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        if "img_size" not in kwargs or "img_size" not in str(exc):
            raise
        kwargs.pop("img_size")
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (AssertionError, ValueError, RuntimeError) as exc:
        if "img_size" not in kwargs or "Unknown model" in str(exc):
            raise
        h, w = kwargs["img_size"]
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputSizeError(f"timm:{name} cannot be built for input {h}x{w}: {first}") from None


def _load_timm(
    name: str,
    weights: str | Path | None,
    pretrained: bool,
    num_classes: int | None,
    input_size: tuple[int, int] | None = None,
) -> tuple[nn.Module, PreprocessConfig]:
    from timm.data import resolve_data_config

    kwargs: dict[str, Any] = _timm_size_kwargs(name, input_size)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if pretrained and weights is None:
        if not _offline():
            reason = _hub_unreachable()
            if reason is not None:
                raise _pretrained_failure(
                    f"timm:{name}",
                    RuntimeError(f"{reason}; with HF_HUB_OFFLINE=1 the local HF cache is used"),
                )
        try:
            model = _create_timm(name, True, kwargs)
        except InputSizeError:
            raise
        except Exception as exc:
            raise _pretrained_failure(f"timm:{name}", exc) from exc
        source: dict[str, Any] = {"weights": f"hf-hub/timm:{name}", "weights_sha256": None}
    else:
        model = _create_timm(name, False, kwargs)
        source = {"weights": None, "weights_sha256": None}
        if weights is not None:
            apply_weights(model, load_weights_file(weights), weights)
            source = {"weights": str(weights), "weights_sha256": sha256_file(weights)}
    dc = resolve_data_config({}, model=model)
    cfg = PreprocessConfig(
        input_size=tuple(dc["input_size"]),
        mean=tuple(dc["mean"]),
        std=tuple(dc["std"]),
        interpolation=dc.get("interpolation", "bilinear"),
        crop_pct=float(dc.get("crop_pct", 0.875)),
        source={"spec": f"timm:{name}", **source},
    )
    return model, cfg


def _load_torchvision(
    name: str,
    weights: str | Path | None,
    pretrained: bool,
    num_classes: int | None,
    input_size: tuple[int, int] | None = None,  # built as usual: the model's own sizing
) -> tuple[nn.Module, PreprocessConfig]:
    import torchvision

    kwargs: dict[str, Any] = {}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    cfg = PreprocessConfig(source={"spec": f"torchvision:{name}", "weights": None})
    if pretrained and weights is None:
        enum = torchvision.models.get_model_weights(name).DEFAULT
        cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(enum.url).name
        if _offline() and not cached.exists():
            raise _pretrained_failure(f"torchvision:{name}", RuntimeError("HF_HUB_OFFLINE is set"))
        try:
            model = torchvision.models.get_model(name, weights=enum, **kwargs)
        except Exception as exc:
            raise _pretrained_failure(f"torchvision:{name}", exc) from exc
        t = enum.transforms()
        crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
        cfg = PreprocessConfig(
            input_size=(3, crop, crop),
            mean=tuple(t.mean),
            std=tuple(t.std),
            interpolation=t.interpolation.value,
            crop_pct=crop / resize,
            resize_size=resize,
            classes=tuple(enum.meta.get("categories") or ()),
            source={"spec": f"torchvision:{name}", "weights": enum.url, "weights_sha256": None},
        )
    else:
        model = torchvision.models.get_model(name, weights=None, **kwargs)
        if weights is not None:
            apply_weights(model, load_weights_file(weights), weights)
            cfg.source.update(weights=str(weights), weights_sha256=sha256_file(weights))
    return model, cfg


def _load_python(
    target: str,
    weights: str | Path | None,
    pretrained: bool,
    num_classes: int | None,
    input_size: tuple[int, int] | None = None,  # built as usual: the model's own sizing
) -> tuple[nn.Module, PreprocessConfig]:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ValueError(f"python spec must be 'python:package.module:factory', got {target!r}")
    import sys

    cwd = os.getcwd()
    added = cwd not in sys.path  # like `python -m`: modules in the working directory import
    if added:
        sys.path.insert(0, cwd)
    try:
        factory = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"python:{target}: cannot import {module_name!r} ({exc})") from None
    finally:
        if added:
            sys.path.remove(cwd)
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"python:{target}: {module_name} has no attribute {attr!r}")
        factory = getattr(factory, part)
    if not callable(factory):
        raise ValueError(f"python:{target}: {attr} is not callable")
    try:
        model = factory(num_classes=num_classes) if num_classes is not None else factory()
    except Exception as exc:
        raise ValueError(
            f"python:{target}: calling {attr}() failed ({type(exc).__name__}: {exc}); the "
            "factory must take no arguments and return a torch.nn.Module"
        ) from None
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"python:{target}: {attr}() returned {type(model).__name__}, not a torch.nn.Module"
        )
    cfg = PreprocessConfig()
    pcfg = getattr(model, "pretrained_cfg", None)
    if isinstance(pcfg, Mapping) and "mean" in pcfg:  # a timm model built by user code
        from timm.data import resolve_data_config

        dc = resolve_data_config({}, model=model)
        cfg = PreprocessConfig(
            tuple(dc["input_size"]),
            tuple(dc["mean"]),
            tuple(dc["std"]),
            dc.get("interpolation", "bilinear"),
            float(dc.get("crop_pct", 0.875)),
        )
    cfg.source = {"spec": f"python:{target}", "weights": None, "weights_sha256": None}
    if weights is not None:
        apply_weights(model, load_weights_file(weights), weights)
        cfg.source.update(weights=str(weights), weights_sha256=sha256_file(weights))
    return model, cfg


# --------------------------------------------------------------------------- seed replicates
# (their storage and bundling: attnviz.models.seeds)
SEED_DIR = "seeds"


def seeds_dir() -> Path:
    return assets_dir() / SEED_DIR


def seed_key(name: str, seed: int) -> str:
    return f"{name}@seed{int(seed)}"


def split_seed(spec: str) -> tuple[str, int | None]:
    """``"sk_tiny@seed1"`` -> ("sk_tiny", 1); a spec without ``@seed`` -> (spec, None)."""
    name, sep, rest = spec.rpartition("@")
    if not sep or not rest.startswith("seed") or not rest[4:].isdigit():
        return spec, None  # other uses of "@" (e.g. a hub revision) are the loader's
    return name, int(rest[4:])


def seed_manifest(directory: str | Path | None = None) -> dict[str, Any]:
    """The seed replicates' manifest (``{"models": {}}`` when none is bundled)."""
    path = Path(directory or seeds_dir()) / "manifest.json"
    if not path.is_file():
        return {"models": {}}
    return json.loads(path.read_text())


def seeds_of(name: str, directory: str | Path | None = None) -> list[int]:
    """Seeds of a bundled model: 0 (the bundled model) and every bundled replicate, sorted."""
    found = [
        entry["seed"]
        for key, entry in seed_manifest(directory)["models"].items()
        if key.partition("@")[0] == name
    ]
    return [0, *sorted(int(s) for s in found if int(s) != 0)]


def load_seed(name: str, seed: int) -> tuple[nn.Module, PreprocessConfig]:
    """The bundled replicate ``name@seed<seed>`` in eval mode, float32, sha256 checked."""
    from safetensors.torch import load_file

    key = seed_key(name, seed)
    entry = seed_manifest()["models"].get(key)
    if entry is None:
        have = seeds_of(name)
        raise FileNotFoundError(
            f"no bundled seed replicate {key} in {seeds_dir()} (seeds of {name}: {have}); "
            f"train it with `python -m attnviz.models.train {name} --seed {seed}` and bundle it "
            "with `python -m attnviz.models.seeds DIR`"
        )
    path = seeds_dir() / entry["file"]
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(f"{path} has sha256 {digest}, the manifest says {entry['sha256']}")
    state = {
        k: (v.float() if v.is_floating_point() else v) for k, v in load_file(str(path)).items()
    }
    model = TINY_MODELS[name](num_classes=entry["config"]["num_classes"])
    model.load_state_dict(state, strict=True)
    pre = entry["preprocessing"]
    cfg = PreprocessConfig(
        input_size=tuple(pre["input_size"]),
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
        interpolation=pre["interpolation"],
        crop_pct=pre["crop_pct"],
        classes=tuple(entry.get("classes", ())),
        source={"spec": key, "weights": str(path), "weights_sha256": digest, "seed": int(seed)},
    )
    return model.eval(), cfg


#: ``(name, weights, pretrained, num_classes, input_size=None) -> (model, config)``; the
#: ``input_size`` (H, W) is passed only when asked for (``load_model(..., input_size=)``)
Loader = Callable[..., tuple[nn.Module, PreprocessConfig]]

LOADERS: dict[str, Loader] = {
    "timm": _load_timm,
    "torchvision": _load_torchvision,
    "python": _load_python,
}


def load_model(
    spec: str,
    *,
    weights: str | Path | None = None,
    pretrained: bool = False,
    num_classes: int | None = None,
    seed: int | None = None,
    input_size: tuple[int, int] | None = None,
) -> tuple[nn.Module, PreprocessConfig]:
    """Build the model named by ``spec``, load its weights, return it in eval mode with its
    :class:`PreprocessConfig` (see the module docstring for the specs). ``seed`` (or a spec
    ``NAME@seedK``): a bundled training-seed replicate (:mod:`attnviz.models.seeds`; seed 0
    is the bundled model itself). ``input_size`` (H, W): build for that input where the model
    is sized at construction (a timm model's ``img_size``: ViT position embeddings, Swin
    windows); others are built as usual. The config's ``input_size`` is then (C, H, W)."""
    spec, at = split_seed(spec)
    if at is not None and seed is not None and at != seed:
        raise ValueError(f"model spec {spec}@seed{at} and seed={seed} disagree")
    seed = at if at is not None else seed
    if seed:
        if weights is not None or num_classes is not None or spec not in TINY_MODELS:
            raise ValueError(
                f"seed={seed} names a bundled seed replicate of a bundled tiny model; it takes "
                f"no weights= or num_classes= (got spec {spec!r})"
            )
        return load_seed(spec, seed)
    if weights is not None:
        _check_weights_path(Path(weights))
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in LOADERS:
        sized = {} if input_size is None else {"input_size": tuple(input_size)}
        model, cfg = LOADERS[prefix](rest, weights, pretrained, num_classes, **sized)
    elif spec in TINY_MODELS:
        model, cfg = _load_bundled(spec, weights, pretrained, num_classes)
    else:
        raise ValueError(
            f"unknown model spec {spec!r}: use a bundled name ({', '.join(sorted(TINY_MODELS))}), "
            "'timm:<name>', 'torchvision:<name>' or 'python:package.module:factory'"
        )
    cfg.source.setdefault("spec", spec)
    if input_size is not None:
        cfg.input_size = (cfg.input_size[0], *(int(s) for s in input_size))
    return model.eval(), cfg
