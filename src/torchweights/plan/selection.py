"""Which tensors of a checkpoint are "the weights", when there is no model to fit them to.

``load_into`` picks the container that fits the model best (:func:`torchweights.plan.container.best_container`:
matched names and shapes decide, these tables only break ties). ``convert`` and ``diff`` have no model, so
:func:`choose_container` decides from names alone, with the same tables
(:data:`~torchweights.plan.rules.CONTAINER_NAMES`, :data:`~torchweights.plan.rules.EMA_NAMES`,
:data:`~torchweights.plan.rules.OPTIMIZER_NAMES`) and conservatively:

* at each level without tensors of its own, descend into a child named like a weights container (``state_dict``,
  ``model``, ``net``...; an EMA copy only when there is no other). ``*state_dict*`` is taken whatever lies beside
  it (Lightning's callbacks hold tensors too); other names only when everything else that holds tensors is
  training state (optimizer, scheduler, scaler, callbacks), an EMA copy or another such container, and something
  lies beside it (``{"model": ..., "epoch": 3}``), so a pickled module whose only submodule is called ``model``
  keeps the names its ``state_dict()`` gives;
* otherwise stay, and leave out training state found at that level.

The container's members are then taken with :func:`~torchweights.plan.reconcile.reconcile` (forced container, no prefix
change), exactly the keys ``load_into(..., container=NAME)`` would see.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import field

from ..records import Checkpoint, TensorRecord
from ..structs import structure
from ..text import plural, quote, shorten_list
from .reconcile import reconcile
from .rules import CONTAINER_NAMES, EMA_NAMES, OPTIMIZER_NAMES, Rules, is_training_state, matches_any
from .sources import source_keys
from .spec import ModelSpec

__all__ = ["Selection", "choose_container", "select_weights"]

#: What training checkpoints keep beside the weights: optimizer and scheduler state, Lightning's callbacks and loops.
_BESIDE_WEIGHTS = frozenset({*OPTIMIZER_NAMES, "callbacks", "loops"})


@structure
class Selection:
    """The tensors taken from a checkpoint, by their key inside the chosen container.

    Attributes:
        container: path of the chosen container (``()`` for the root).
        reason: why it was chosen.
        tensors: key inside the container -> record, in checkpoint order.
        left_out: record names not taken (outside the container, training state, not selected).
        notes: one line per group left out.
    """

    container: tuple[str, ...]
    reason: str
    tensors: dict[str, TensorRecord] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """Dotted container name, ``""`` for the root."""
        return ".".join(self.container)


def choose_container(ckpt: Checkpoint) -> tuple[tuple[str, ...], str]:
    """The container holding the weights, chosen from names alone (see the module docstring), and why."""
    parents = [key.path[:-1] for key in source_keys(ckpt)]  # the dict holding each tensor
    path: tuple[str, ...] = ()
    reason = "the root: no weights container ('state_dict', 'model'...) stands apart from the rest"
    while True:
        depth = len(path)
        children: dict[str, int] = {}
        for parts in parents:
            if len(parts) > depth and parts[:depth] == path:
                children[parts[depth]] = children.get(parts[depth], 0) + 1
        direct = sum(1 for parts in parents if parts == path)  # tensors right at this level
        siblings = direct + len(children) - 1 + (1 if depth == 0 and ckpt.extras else 0)
        named = [c for c in CONTAINER_NAMES if c in children]
        if not named:
            named = [c for c in EMA_NAMES if c in children]
        if not named:
            return path, reason
        pick = named[0]
        others = [c for c in children if c != pick]
        if direct:
            return path, reason
        if "state_dict" not in pick:  # 'model', 'net'...: could be a submodule's name; descend on evidence only
            beside_ok = all(c in _BESIDE_WEIGHTS or c in EMA_NAMES or c in CONTAINER_NAMES for c in others)
            if not beside_ok or siblings < 1:
                return path, reason
        path = (*path, pick)
        beside = f" beside {shorten_list(quote(c) for c in others)}" if others else ""
        reason = f"{quote('.'.join(path))}: the weights container{beside}"


def select_weights(ckpt: Checkpoint, container: str = "auto", select: Iterable[str] | str | None = None) -> Selection:
    """The tensors of ``ckpt`` that are the weights, by their key inside the container.

    Args:
        ckpt: an opened checkpoint.
        container: ``"auto"`` (see :func:`choose_container`), or a dotted path (``"state_dict"``, ``"ema"``,
            ``""`` for the root) as ``load_into`` takes it.
        select: glob patterns (``"encoder.*"``) of keys to keep; None keeps all.

    Raises:
        RuleError: ``container`` is not a dict of tensors in the checkpoint (the message lists those found).
    """
    if container == "auto":
        path, reason = choose_container(ckpt)
        forced = ".".join(path)
        auto = True
    else:
        forced, reason, auto = container, f"{quote(container or '<root>')} as requested", False
    plan = reconcile(ckpt, ModelSpec(), Rules.make(strict=False, container=forced, prefix=None), source=ckpt.path)
    path = plan.container.path
    inside: dict[str, TensorRecord] = {}
    for action in plan.actions:
        if action.kind != "ignored" and action.source is not None and action.key is not None:
            inside[action.key] = ckpt.records[action.source]
    selection = Selection(path, reason)
    taken: set[str] = set()
    training: list[str] = []
    for key, record in inside.items():
        if auto and not path and is_training_state((record.path or (record.name,))[:-1]):
            training.append(record.name)
        else:
            selection.tensors[key] = record
            taken.add(record.name)
    outside = [name for name in ckpt.records if name not in taken and name not in training]
    _note(selection, outside, f"outside the container {quote(selection.name or '<root>')}")
    _note(selection, training, "training state (optimizer, scheduler, scaler)")
    if select is not None:
        patterns: Sequence[str] = (select,) if isinstance(select, str) else tuple(select)
        dropped = [key for key in selection.tensors if matches_any(key, patterns) is None]
        names = [selection.tensors.pop(key).name for key in dropped]
        _note(selection, names, f"not matched by select={list(patterns)!r}")
    return selection


def _note(selection: Selection, names: list[str], why: str) -> None:
    if not names:
        return
    selection.left_out.extend(names)
    tops: dict[str, int] = {}
    for name in names:
        top = name.split(".", 1)[0]
        tops[top] = tops.get(top, 0) + 1
    groups = shorten_list(f"{quote(top)} ({n})" for top, n in tops.items())
    selection.notes.append(f"left out {plural(len(names), 'tensor')} {why}: {groups}")
