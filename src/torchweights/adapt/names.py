"""How the adapters read state-dict keys: a key's module path and leaf, and the words of one name part (``pos_embed``
-> ``pos``, ``embed``; ``PatchEmbed`` -> ``patch``, ``embed``)."""

from __future__ import annotations

import re

__all__ = ["EMBED_WORDS", "module_and_leaf", "words"]

#: The words that say "embedding" in a name part.
EMBED_WORDS = frozenset({"embed", "embeds", "embedding", "embeddings", "emb"})

_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+")


def module_and_leaf(key: str) -> tuple[str, str]:
    """``"blocks.0.attn.qkv.weight"`` -> ``("blocks.0.attn.qkv", "weight")``; a key without a dot has module ``""``."""
    module, _, leaf = key.rpartition(".")
    return module, leaf


def words(part: str) -> tuple[str, ...]:
    """The lower-case words of one name part, split at ``_``, ``-``, digits and CamelCase humps."""
    return tuple(w.lower() for w in _WORD.findall(part))
