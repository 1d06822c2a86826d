"""PyTorch checkpoints -> flat `ViT` params, by tables of key rules.

Each source format is data: a list of `Rule`s (regex on the source key -> flat target keys
plus an array transform), a few "anchor" key suffixes locating the model inside a bigger
checkpoint (prefixes such as `backbone.`, `vision_model.`, `visual.` are found, not listed),
and patterns of "foreign" keys outside the model that belong to other parts of such a
checkpoint (a text tower, a training head) and are skipped. Adding a format = adding a table.

Transforms: Linear `weight [O, I]` -> `kernel [I, O]`; conv `weight [O, I, kh, kw]` ->
`kernel [kh, kw, I, O]`; LayerNorm `weight` -> `scale`; fused projections (qkv, SwiGLU's
gate+up) split along the output axis; leading unit axes of tokens/position tables dropped.

Every key must match a rule (rules with no targets mark weights the backbone does not use:
DINOv2's mask token, ViTModel's pooler, CLIP's image-text projection), and the result must
have exactly the variant's keys and shapes (`hiseg_jax.models.vit.param_shapes`); anything
else is a `ValueError` naming the keys and shapes involved.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping

import numpy as np

from hiseg_jax.models.vit import ViTConfig, get_config, param_shapes

Transform = Callable[[np.ndarray], tuple[np.ndarray, ...]]


def _copy(a: np.ndarray) -> tuple[np.ndarray, ...]:
    return (a,)


def _linear(a: np.ndarray) -> tuple[np.ndarray, ...]:
    if a.ndim != 2:
        raise ValueError(f"a Linear weight must be 2-D [out, in], got shape {a.shape}")
    return (a.T,)


def _conv(a: np.ndarray) -> tuple[np.ndarray, ...]:
    if a.ndim != 4:
        raise ValueError(f"a conv weight must be 4-D [out, in, kh, kw], got shape {a.shape}")
    return (a.transpose(2, 3, 1, 0),)


def _squeeze_to(ndim: int) -> Transform:
    """Drop leading unit axes: `[1, 1, D]` -> `[D]` (ndim 1), `[1, T, D]` -> `[T, D]` (ndim 2)."""

    def squeeze(a: np.ndarray) -> tuple[np.ndarray, ...]:
        lead = a.shape[: max(a.ndim - ndim, 0)]
        if a.ndim < ndim or any(n != 1 for n in lead):
            raise ValueError(f"expected {ndim} axes after leading unit axes, got shape {a.shape}")
        return (a.reshape(a.shape[a.ndim - ndim :]),)

    return squeeze


def _split(parts: int, then: Transform) -> Transform:
    """Split a fused projection into `parts` equal chunks along axis 0, then transform each."""

    def split(a: np.ndarray) -> tuple[np.ndarray, ...]:
        if a.ndim == 0 or a.shape[0] % parts:
            raise ValueError(f"cannot split shape {a.shape} into {parts} along axis 0")
        return tuple(then(chunk)[0] for chunk in np.split(a, parts, axis=0))

    return split


@dataclasses.dataclass(frozen=True)
class Rule:
    """`pattern` (full match on the key after the model prefix) -> `targets` via `transform`.

    Targets are `re.Match.expand` templates (`\\1` = the block index). No targets: a known
    weight the backbone does not use, skipped.
    """

    pattern: str
    targets: tuple[str, ...]
    transform: Transform = _copy


@dataclasses.dataclass(frozen=True)
class Source:
    """One checkpoint naming scheme."""

    anchors: tuple[str, ...]  # key suffixes of the patch embedding: locate the model prefix
    rules: tuple[Rule, ...]
    foreign: tuple[str, ...] = ()  # full-key patterns outside the prefix, skipped


def _linear_rules(src: str, dst: str) -> tuple[Rule, ...]:
    return (
        Rule(src + r"\.weight", (dst + "/kernel",), _linear),
        Rule(src + r"\.bias", (dst + "/bias",)),
    )


def _suffixed(dsts: tuple[str, ...], leaf: str) -> tuple[str, ...]:
    return tuple(f"{d}/{leaf}" for d in dsts)


def _fused_rules(src: str, dsts: tuple[str, ...]) -> tuple[Rule, ...]:
    n = len(dsts)
    return (
        Rule(src + r"\.weight", _suffixed(dsts, "kernel"), _split(n, _linear)),
        Rule(src + r"\.bias", _suffixed(dsts, "bias"), _split(n, _copy)),
    )


def _norm_rules(src: str, dst: str) -> tuple[Rule, ...]:
    return (Rule(src + r"\.weight", (dst + "/scale",)), Rule(src + r"\.bias", (dst + "/bias",)))


_BLK = r"blocks/\1/"
_QKV = (_BLK + "attn/query", _BLK + "attn/key", _BLK + "attn/value")

# transformers ViTModel (DINO v1), Dinov2Model, Dinov2WithRegistersModel, CLIPVisionModel:
# both the names stored in Hub checkpoints (`attention.attention.query`, `intermediate.dense`,
# `mlp.weights_in`, ...) and the names of transformers 5.x state dicts (`q_proj`, `o_proj`,
# `mlp.gate_proj`, ViT's `layers.N`).
_HF_BLOCK = r"(?:encoder\.layers?|layers)\.(\d+)\."
_HF = Source(
    anchors=("embeddings.patch_embeddings.projection.weight", "embeddings.patch_embedding.weight"),
    rules=(
        Rule(r"embeddings\.(?:cls_token|class_embedding)", ("cls_token",), _squeeze_to(1)),
        Rule(r"embeddings\.register_tokens", ("registers",), _squeeze_to(2)),
        Rule(
            r"embeddings\.(?:position_embeddings|position_embedding\.weight)",
            ("pos_embed",),
            _squeeze_to(2),
        ),
        Rule(
            r"embeddings\.(?:patch_embeddings\.projection|patch_embedding)\.weight",
            ("patch_embed/kernel",),
            _conv,
        ),
        Rule(r"embeddings\.patch_embeddings\.projection\.bias", ("patch_embed/bias",)),
        *_norm_rules(r"pre_layrnorm", "pre_norm"),
        *_norm_rules(r"(?:layernorm|post_layernorm)", "norm"),
        *_norm_rules(_HF_BLOCK + r"(?:layernorm_before|norm1|layer_norm1)", _BLK + "norm1"),
        *_norm_rules(_HF_BLOCK + r"(?:layernorm_after|norm2|layer_norm2)", _BLK + "norm2"),
        *(
            rule
            for name in ("query", "key", "value")
            for rule in _linear_rules(
                _HF_BLOCK
                + rf"(?:attention\.attention\.{name}|(?:attention|self_attn)\.{name[0]}_proj)",
                _BLK + "attn/" + name,
            )
        ),
        *_linear_rules(
            _HF_BLOCK + r"(?:attention\.output\.dense|attention\.o_proj|self_attn\.out_proj)",
            _BLK + "attn/out",
        ),
        *_linear_rules(_HF_BLOCK + r"(?:intermediate\.dense|mlp\.fc1)", _BLK + "mlp/fc1"),
        *_linear_rules(_HF_BLOCK + r"(?:output\.dense|mlp\.fc2)", _BLK + "mlp/fc2"),
        *_fused_rules(_HF_BLOCK + r"mlp\.weights_in", (_BLK + "mlp/gate", _BLK + "mlp/up")),
        *_linear_rules(_HF_BLOCK + r"mlp\.gate_proj", _BLK + "mlp/gate"),
        *_linear_rules(_HF_BLOCK + r"mlp\.up_proj", _BLK + "mlp/up"),
        *_linear_rules(_HF_BLOCK + r"mlp\.(?:down_proj|weights_out)", _BLK + "mlp/down"),
        Rule(_HF_BLOCK + r"layer_scale1\.lambda1", (_BLK + "ls1",)),
        Rule(_HF_BLOCK + r"layer_scale2\.lambda1", (_BLK + "ls2",)),
        Rule(r"embeddings\.(?:mask_token|position_ids)|pooler\.dense\.(?:weight|bias)", ()),
    ),
    foreign=(
        r"text_model\..*",
        r"(?:visual|text)_projection\.weight",
        r"logit_scale",
        r"classifier\..*",
    ),
)

# facebookresearch/dino `vision_transformer.py` (also the base of the DINOv2 names).
_HUB_BLOCK = r"blocks\.(\d+)\."
_DINO_RULES = (
    Rule(r"cls_token", ("cls_token",), _squeeze_to(1)),
    Rule(r"pos_embed", ("pos_embed",), _squeeze_to(2)),
    Rule(r"patch_embed\.proj\.weight", ("patch_embed/kernel",), _conv),
    Rule(r"patch_embed\.proj\.bias", ("patch_embed/bias",)),
    *_norm_rules(r"norm", "norm"),
    *_norm_rules(_HUB_BLOCK + "norm1", _BLK + "norm1"),
    *_norm_rules(_HUB_BLOCK + "norm2", _BLK + "norm2"),
    *_fused_rules(_HUB_BLOCK + r"attn\.qkv", _QKV),
    *_linear_rules(_HUB_BLOCK + r"attn\.proj", _BLK + "attn/out"),
    *_linear_rules(_HUB_BLOCK + r"mlp\.fc1", _BLK + "mlp/fc1"),
    *_linear_rules(_HUB_BLOCK + r"mlp\.fc2", _BLK + "mlp/fc2"),
)
_DINO_HUB = Source(anchors=("patch_embed.proj.weight",), rules=_DINO_RULES, foreign=(r"head\..*",))


def _dinov2_hub_rules() -> tuple[Rule, ...]:
    """DINO's names with DINOv2's additions; blocks may be chunked (`blocks.<chunk>.<i>.`)."""
    chunked = r"blocks\.(?:\d+\.)?(\d+)\."
    rules = tuple(
        dataclasses.replace(rule, pattern=rule.pattern.replace(_HUB_BLOCK, chunked))
        for rule in _DINO_RULES
    )
    return (
        *rules,
        Rule(r"register_tokens", ("registers",), _squeeze_to(2)),
        Rule(chunked + r"ls1\.gamma", (_BLK + "ls1",)),
        Rule(chunked + r"ls2\.gamma", (_BLK + "ls2",)),
        *_fused_rules(chunked + r"mlp\.w12", (_BLK + "mlp/gate", _BLK + "mlp/up")),
        *_linear_rules(chunked + r"mlp\.w3", _BLK + "mlp/down"),
        Rule(r"mask_token", ()),
    )


_DINOV2_HUB = Source(
    anchors=("patch_embed.proj.weight",), rules=_dinov2_hub_rules(), foreign=(r"head\..*",)
)

# OpenAI CLIP `model.py` (`visual.*` of the released state dicts; the rest is the text tower).
_CLIP_BLOCK = r"transformer\.resblocks\.(\d+)\."
_OPENAI_CLIP = Source(
    anchors=("conv1.weight",),
    rules=(
        Rule(r"class_embedding", ("cls_token",)),
        Rule(r"positional_embedding", ("pos_embed",)),
        Rule(r"conv1\.weight", ("patch_embed/kernel",), _conv),
        *_norm_rules(r"ln_pre", "pre_norm"),
        *_norm_rules(r"ln_post", "norm"),
        *_norm_rules(_CLIP_BLOCK + "ln_1", _BLK + "norm1"),
        *_norm_rules(_CLIP_BLOCK + "ln_2", _BLK + "norm2"),
        Rule(_CLIP_BLOCK + r"attn\.in_proj_weight", _suffixed(_QKV, "kernel"), _split(3, _linear)),
        Rule(_CLIP_BLOCK + r"attn\.in_proj_bias", _suffixed(_QKV, "bias"), _split(3, _copy)),
        *_linear_rules(_CLIP_BLOCK + r"attn\.out_proj", _BLK + "attn/out"),
        *_linear_rules(_CLIP_BLOCK + r"mlp\.c_fc", _BLK + "mlp/fc1"),
        *_linear_rules(_CLIP_BLOCK + r"mlp\.c_proj", _BLK + "mlp/fc2"),
        Rule(r"proj", ()),  # image-text projection: features are taken before it
    ),
    foreign=(
        r"positional_embedding",
        r"text_projection",
        r"logit_scale",
        r"token_embedding\.weight",
        r"ln_final\.(?:weight|bias)",
        r"transformer\..*",
        r"input_resolution|context_length|vocab_size",
    ),
)

SOURCES: dict[str, Source] = {
    "hf": _HF,
    "dino_hub": _DINO_HUB,
    "dinov2_hub": _DINOV2_HUB,
    "openai_clip": _OPENAI_CLIP,
}


def _find_prefix(keys: list[str], source: Source, name: str) -> str:
    """The model prefix: what precedes the single key ending with one of the anchors."""
    found = [
        key[: len(key) - len(anchor)]
        for key in keys
        for anchor in source.anchors
        if key.endswith(anchor) and (len(key) == len(anchor) or key[-len(anchor) - 1] == ".")
    ]
    if len(found) != 1:
        raise ValueError(
            f"cannot locate the model in this {name!r} state dict: expected exactly one key "
            f"ending with one of {list(source.anchors)}, found {len(found)} (prefixes {found})"
        )
    return found[0]


def _apply_rule(rules: tuple[Rule, ...], key: str) -> tuple[Rule, re.Match[str]] | None:
    for rule in rules:
        match = re.fullmatch(rule.pattern, key)
        if match:
            return rule, match
    return None


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray], variant: str | ViTConfig, source: str
) -> dict[str, np.ndarray]:
    """Convert a PyTorch state dict (NumPy arrays) to the variant's flat float32 params.

    Args:
      state_dict: source key -> array; may hold a whole checkpoint (prefixed model plus
        foreign parts such as a text tower).
      variant: a `VARIANTS` name or a `ViTConfig`.
      source: one of `SOURCES`: "hf", "dino_hub", "dinov2_hub", "openai_clip".

    Raises:
      ValueError: unknown source or variant; keys matching no rule; two keys mapping to one
        param; missing or unexpected params; a shape differing from the variant's.
    """
    if source not in SOURCES:
        raise ValueError(f"unknown checkpoint source {source!r}; valid: {sorted(SOURCES)}")
    config = get_config(variant) if isinstance(variant, str) else variant
    label = variant if isinstance(variant, str) else f"{config.family} config"
    spec = SOURCES[source]
    prefix = _find_prefix(list(state_dict), spec, source)
    params: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    unknown: list[str] = []
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            if not any(re.fullmatch(p, key) for p in spec.foreign):
                unknown.append(key)
            continue
        found = _apply_rule(spec.rules, key[len(prefix) :])
        if found is None:
            unknown.append(key)
            continue
        rule, match = found
        if not rule.targets:
            continue
        try:
            arrays = rule.transform(np.asarray(value, dtype=np.float32))
        except ValueError as err:
            raise ValueError(f"{source!r} key {key!r}: {err}") from None
        for template, array in zip(rule.targets, arrays, strict=True):
            target = match.expand(template)
            if target in params:
                raise ValueError(f"keys {origin[target]!r} and {key!r} both convert to {target!r}")
            params[target], origin[target] = array, key
    if unknown:
        raise ValueError(f"{len(unknown)} {source!r} keys match no conversion rule: {unknown}")
    _check_params(params, origin, param_shapes(config), label)
    return params


def _check_params(
    params: dict[str, np.ndarray],
    origin: dict[str, str],
    expected: dict[str, tuple[int, ...]],
    label: str,
) -> None:
    """Raise one `ValueError` listing missing, unexpected and mis-shaped params."""
    problems = []
    missing = sorted(set(expected) - set(params))
    if missing:
        problems.append(f"missing params {missing}")
    unexpected = sorted(set(params) - set(expected))
    if unexpected:
        problems.append(
            "unexpected params " + ", ".join(f"{t!r} (from {origin[t]!r})" for t in unexpected)
        )
    for target in sorted(set(params) & set(expected)):
        shape = params[target].shape
        if shape != expected[target]:
            problems.append(
                f"{origin[target]!r} -> {target!r} has shape {shape}, "
                f"{label} expects {expected[target]}"
            )
    if problems:
        raise ValueError(f"checkpoint does not fit {label}: " + "; ".join(problems))
