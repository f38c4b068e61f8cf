"""``pos_embed``: absolute position embeddings resampled to another grid, as timm's ``resample_abs_pos_embed`` (and
``resample_abs_pos_embed_nhwc``) do with their defaults.

**Which keys.** The parameter's own name (or, for an ``nn.Embedding``'s ``.weight``, its module's name) has a
position word (``pos``, ``position``, ``positional``) and an embedding word (``embed``, ``embedding``, ``emb``):
``pos_embed``, ``position_embeddings``, ``positional_embedding``, ``absolute_pos_embed``,
``embeddings.position_embedding.weight``, ``decoder_pos_embed``. Keys with a text word anywhere in their path
(``text``, ``txt``, ``language``, ``lang``, ``word``, ``caption``: CLIP's text tower) are refused: text positions
are a 1-D sequence, and resampling them as an image grid would be wrong. So are position tables beside a token
embedding table in the same module (a sibling named with ``word``/``token``/``tok``/``vocab`` and an embedding
word: BERT's ``embeddings.word_embeddings`` and ``token_type_embeddings``); a ``cls_token`` is no such table. GPT's
``wpe`` never matches (no position word), nor does any name outside the rule (rename it to let the adapter see it).

**Which shapes.** Tokens ``(1, P + N, D)`` or ``(P + N, D)`` with ``N = s * s`` grid tokens (row-major) behind ``P``
prefix tokens (class, distillation, register tokens); the other layout in both the checkpoint and the model, the same
``D``. ``P`` is found from the two token counts: the ``P`` in 0..8 for which both counts minus ``P`` are squares of
a side of at least 2. When no ``P`` works (a non-square grid: its size cannot be read from a token count) or more
than one does (small grids: 4 + 5 = 9 tokens is a 3x3 grid or 2x2 plus 5 tokens), there is no fit and the shapes
are reported as mismatched. Also the 4-D conv-style layouts ``(1, D, s, s)`` (the grid in the last two dimensions,
``D`` unchanged) and ``(1, s, s, D)`` (timm's NHWC), square grids only (so that a changed ``D`` is never read as a
grid); when both readings fit the two shapes, no fit.

**The resample.** The ``P`` prefix tokens are kept as they are; the grid is laid out ``(1, D, h, w)`` and resized with
``F.interpolate(mode="bicubic", align_corners=False, antialias=True)`` in float32 (float64 stays float64), then
returned in the checkpoint's dtype. That is timm's default (``interpolation="bicubic", antialias=True``, what its ViT
``checkpoint_filter_fn`` uses). ``antialias=True`` matters on upsampling too: PyTorch's antialiased bicubic is the
PIL kernel (a = -0.5, weights renormalised at the borders) where plain bicubic uses a = -0.75 and clamps the border;
14x14 -> 24x24 differs by about 0.3 on unit-variance values between the two.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .base import Adapter, Context, Step
from .names import EMBED_WORDS, module_and_leaf, words
from .numeric import resize_grid, working_copy

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["ADAPTER", "MAX_PREFIX", "apply", "beside_token_table", "fit", "is_position_key", "prefix_tokens"]

#: The most prefix tokens (class + distillation + registers) tried.
MAX_PREFIX = 8

POSITION_WORDS = frozenset({"pos", "position", "positional"})
TEXT_WORDS = frozenset({"text", "txt", "language", "lang", "word", "caption"})
#: Words of a token embedding table's name (with an embedding word): a position table beside one is a text model's.
TOKEN_WORDS = frozenset({"word", "words", "token", "tokens", "tok", "vocab"})

TOKENS, NCHW, NHWC = "tokens", "nchw", "nhwc"


def is_position_key(key: str) -> bool:
    """True for a key the adapter may resample (see the module docstring)."""
    module, leaf = module_and_leaf(key)
    name = module.rpartition(".")[2] if leaf == "weight" else leaf
    if not any(w in TEXT_WORDS for part in key.split(".") for w in words(part)):
        found = set(words(name))
        return bool(found & POSITION_WORDS) and bool(found & EMBED_WORDS)
    return False


def beside_token_table(key: str, keys: frozenset[str]) -> bool:
    """Whether the position table ``key`` has a token embedding table beside it (same parent module)."""
    module, leaf = module_and_leaf(key)
    table = module if leaf == "weight" else key
    parent = table.rpartition(".")[0]
    start = parent + "." if parent else ""
    for other in keys:
        if not other.startswith(start) or other.startswith(table + ".") or other == table:
            continue
        found = set(words(other[len(start) :].partition(".")[0]))
        if found & TOKEN_WORDS and found & EMBED_WORDS:
            return True
    return False


def _side(count: int) -> int | None:
    """The side of a square grid of ``count`` tokens (at least 2), or None."""
    side = math.isqrt(count) if count > 0 else 0
    return side if side >= 2 and side * side == count else None


def prefix_tokens(src_tokens: int, dst_tokens: int) -> int | None:
    """The one number of prefix tokens that leaves a square grid of side 2 or more in both token counts, or None
    (none or several)."""
    found = [p for p in range(MAX_PREFIX + 1) if _side(src_tokens - p) and _side(dst_tokens - p)]
    return found[0] if len(found) == 1 else None


def _grid_step(layout: str, prefix: int, old: tuple[int, int], new: tuple[int, int]) -> Step:
    kept = f", {prefix} prefix token{'s' if prefix != 1 else ''} kept" if layout == TOKENS else ""
    detail = f"position grid {old[0]}x{old[1]} -> {new[0]}x{new[1]}: bicubic, antialiased{kept}"
    params = (("layout", layout), ("prefix", prefix), ("grid", old), ("new_grid", new))
    return Step("pos_embed", (), params, detail)


def fit(target: str, src_shape: tuple[int, ...], dst_shape: tuple[int, ...], context: Context) -> Step | None:
    """The resample that makes ``dst_shape`` from ``src_shape``, or None (see the module docstring)."""
    if not is_position_key(target) or len(src_shape) != len(dst_shape) or src_shape == dst_shape:
        return None
    if beside_token_table(target, context.keys):
        return None
    rank = len(src_shape)
    if rank in (2, 3) and src_shape[-1] == dst_shape[-1] and (rank == 2 or src_shape[0] == dst_shape[0] == 1):
        prefix = prefix_tokens(src_shape[-2], dst_shape[-2])
        if prefix is None:
            return None
        old, new = math.isqrt(src_shape[-2] - prefix), math.isqrt(dst_shape[-2] - prefix)
        return _grid_step(TOKENS, prefix, (old, old), (new, new))
    if rank == 4 and src_shape[0] == dst_shape[0] == 1:
        nchw = src_shape[1] == dst_shape[1] and src_shape[2] == src_shape[3] and dst_shape[2] == dst_shape[3]
        nhwc = src_shape[3] == dst_shape[3] and src_shape[1] == src_shape[2] and dst_shape[1] == dst_shape[2]
        if nchw == nhwc:
            return None
        if nchw:
            return _grid_step(NCHW, 0, (src_shape[2], src_shape[3]), (dst_shape[2], dst_shape[3]))
        return _grid_step(NHWC, 0, (src_shape[1], src_shape[2]), (dst_shape[1], dst_shape[2]))
    return None


def apply(step: Step, tensors: Sequence[torch.Tensor], dst_shape: tuple[int, ...]) -> torch.Tensor:
    """The resampled embedding, in the source's dtype."""
    import torch

    (source,) = tensors
    values = working_copy(source)
    layout, prefix = step.param("layout"), step.param("prefix")
    old, new = step.param("grid"), step.param("new_grid")
    if layout == NCHW:
        return resize_grid(values, new).to(source.dtype)
    if layout == NHWC:
        return resize_grid(values.permute(0, 3, 1, 2), new).permute(0, 2, 3, 1).to(source.dtype)
    dim = values.shape[-1]
    tokens = values.reshape(-1, dim)
    grid = tokens[prefix:].reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    resized = resize_grid(grid, new).permute(0, 2, 3, 1).reshape(-1, dim)
    return torch.cat([tokens[:prefix], resized]).reshape(dst_shape).to(source.dtype)


ADAPTER = Adapter(
    name="pos_embed",
    kind="reshape",
    summary="ViT position embeddings to another grid, as timm's resample_abs_pos_embed (bicubic, antialiased; "
    "class/register tokens kept)",
    apply=apply,
    fit=fit,
)
