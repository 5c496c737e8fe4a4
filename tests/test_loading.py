"""load_model: bundled tiny models, timm, torchvision, user code; safe local weights."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from attnviz.models import (
    PreprocessConfig,
    PretrainedUnavailableError,
    TinyResNet,
    WeightsError,
    create_tiny,
    load_model,
    load_weights_file,
    read_manifest,
)
from attnviz.models.loading import assets_dir


def _first_bundled() -> str:
    models = read_manifest()["models"]  # bundled with the repository: must exist
    return "se_tiny" if "se_tiny" in models else sorted(models)[0]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_bundled_model_and_preprocessing() -> None:
    name = _first_bundled()
    entry = read_manifest()["models"][name]
    model, cfg = load_model(name)
    assert not model.training
    assert isinstance(cfg, PreprocessConfig)
    assert cfg.input_size == tuple(entry["preprocessing"]["input_size"]) == (3, 64, 64)
    assert cfg.crop_pct == 1.0 and cfg.mean == tuple(entry["preprocessing"]["mean"])
    assert cfg.source["spec"] == name and cfg.source["weights_sha256"] == entry["sha256"]
    assert model(torch.zeros(2, *cfg.input_size)).shape == (2, entry["config"]["num_classes"])


def test_bundled_sha256_mismatch_is_refused(tmp_path, monkeypatch) -> None:
    name = _first_bundled()
    entry = read_manifest()["models"][name]
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "manifest.json").write_bytes(
        (assets_dir() / "manifest.json").read_bytes()
    )
    data = bytearray((assets_dir() / entry["file"]).read_bytes())
    data[-1] ^= 1
    (tmp_path / "models" / entry["file"]).write_bytes(bytes(data))
    monkeypatch.setenv("ATTNVIZ_ASSETS", str(tmp_path))
    with pytest.raises(WeightsError, match="sha256"):
        load_model(name)


def test_local_safetensors_and_pth(tmp_path) -> None:
    src = create_tiny("se_tiny").eval()
    st = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(st))
    model, cfg = load_model("se_tiny", weights=st)
    assert _same_weights(model, src) and cfg.source["weights"] == str(st)
    pth = tmp_path / "w.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, pth)
    model, _ = load_model("se_tiny", weights=pth)  # wrapped + DataParallel prefix
    assert _same_weights(model, src)
    bad = tmp_path / "bad.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3)}, str(bad))
    with pytest.raises(WeightsError, match="do not fit"):
        load_model("se_tiny", weights=bad)


class _Evil:
    """A pickle payload that would run a shell command when unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_code_running_pickle_is_refused(tmp_path) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"fc.weight": torch.zeros(1), "payload": _Evil(str(marker))}, path)
    with pytest.raises(WeightsError, match="weights_only=True") as info:
        load_weights_file(path)
    assert "refusing to load" in str(info.value) and "safetensors" in str(info.value)
    with pytest.raises(WeightsError):
        load_model("timm:resnet18", weights=path, num_classes=10)
    assert not marker.exists()


def test_timm_spec_and_local_weights(tmp_path) -> None:
    import timm
    from timm.data import resolve_data_config

    model, cfg = load_model("timm:resnet18", num_classes=7)
    assert not model.training and model.num_classes == 7
    dc = resolve_data_config({}, model=model)
    assert cfg.input_size == tuple(dc["input_size"]) and cfg.crop_pct == dc["crop_pct"]
    assert cfg.mean == tuple(dc["mean"]) and cfg.interpolation == dc["interpolation"]
    src = timm.create_model("resnet18", num_classes=7)
    path = tmp_path / "r18.safetensors"
    save_file(src.state_dict(), str(path))
    model, cfg = load_model("timm:resnet18", weights=path, num_classes=7)
    assert _same_weights(model, src) and cfg.source["weights_sha256"]


def test_torchvision_and_python_specs(tmp_path, monkeypatch) -> None:
    model, cfg = load_model("torchvision:resnet18", num_classes=5)
    assert not model.training and model.fc.out_features == 5
    assert cfg.input_size == (3, 224, 224) and cfg.crop_pct == 0.875
    assert cfg.mean == (0.485, 0.456, 0.406)
    (tmp_path / "my_models.py").write_text(
        textwrap.dedent(
            """
            from attnviz.models import TinyResNet

            def build(num_classes=10):
                return TinyResNet("cbam", num_classes=num_classes)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    model, cfg = load_model("python:my_models:build", num_classes=4)
    assert isinstance(model, TinyResNet) and model.fc.out_features == 4 and not model.training
    assert cfg.source["spec"] == "python:my_models:build"
    with pytest.raises(ValueError, match="unknown model spec"):
        load_model("nonsense_model")


@pytest.mark.subprocess
def test_pretrained_offline_fails_fast_with_hint(tmp_path) -> None:
    """With HF_HUB_OFFLINE set, pretrained=True fails with a hint and never touches the network."""
    code = textwrap.dedent(
        """
        import socket
        attempts = []

        def refuse(self, address):
            attempts.append(address)
            raise OSError("network disabled by the test")

        socket.socket.connect = refuse
        socket.create_connection = lambda address, *a, **k: refuse(None, address)
        from attnviz.models import load_model, PretrainedUnavailableError
        try:
            load_model("timm:resnet18", pretrained=True)
        except PretrainedUnavailableError as exc:
            print("REFUSED", len(attempts), exc)
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert "REFUSED" in out.stdout, out.stderr[-2000:]
    assert out.stdout.split()[1] == "0", out.stdout  # no connection attempted, no retries
    assert "weights=" in out.stdout


def test_pretrained_failure_in_process_names_the_model_the_cause_and_the_way_out(monkeypatch):
    """The same failure as above, in this process (mutation testing sees it): timm's download
    raising becomes one PretrainedUnavailableError that names the spec, the cause's type and
    first line, and both ways to pass local weights."""
    from attnviz.models import loading

    def no_hub(name, pretrained, kwargs):
        assert pretrained
        raise OSError("We have no connection\nsecond line")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(loading, "_create_timm", no_hub)
    with pytest.raises(PretrainedUnavailableError) as info:
        load_model("timm:resnet18", pretrained=True)
    assert str(info.value) == (
        "could not fetch pretrained weights for 'timm:resnet18' (no hub access: OSError: We have "
        "no connection). Pass a local file instead: load_model(spec, weights='path/to/weights"
        ".safetensors') (.safetensors, or a .pth/.pt state dict), or on the command line "
        "--weights PATH."
    )
    assert isinstance(info.value.__cause__, OSError)


def test_pretrained_unreachable_hub_fails_before_any_download(monkeypatch):
    """Online mode with the hub unreachable: refused from the probe, timm never called."""
    from attnviz.models import loading

    def never(*args):
        raise AssertionError("timm was asked to download")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_hub_unreachable", lambda: "https://hub is unreachable (x)")
    monkeypatch.setattr(loading, "_create_timm", never)
    with pytest.raises(PretrainedUnavailableError, match=r"'timm:resnet18' \(no hub access: "
                       r"RuntimeError: https://hub is unreachable \(x\); with HF_HUB_OFFLINE=1 "
                       r"the local HF cache is used\)"):  # fmt: skip
        load_model("timm:resnet18", pretrained=True)
