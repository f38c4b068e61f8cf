"""``@structure`` (torchweights.structs) behaves as ``@dataclass`` for everything the package and its users rely on."""

from __future__ import annotations

import copy
import dataclasses
import inspect
import pickle
from dataclasses import field

import pytest

from torchweights.records import StorageRef, TensorRecord
from torchweights.structs import structure


@structure(frozen=True)
class Frozen:
    """A frozen example."""

    a: int
    b: str = "x"
    c: tuple[int, ...] = field(default_factory=tuple)
    d: int = field(default=0, init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "d", self.a * 2)


@structure
class Mutable:
    x: int
    items: list[int] = field(default_factory=list)
    tags: tuple[str, ...] = ()


@structure(frozen=True)
class Child(Frozen):
    e: int = 7


def test_init_defaults_factories_and_post_init() -> None:
    one = Frozen(1, "q")
    assert (one.a, one.b, one.c, one.d) == (1, "q", (), 2)
    assert Frozen(a=3).b == "x"
    first, second = Mutable(1), Mutable(2)
    first.items.append(1)
    assert second.items == []  # a new list per instance, as default_factory gives
    assert first.tags == () and Mutable(1, [], ("a",)).tags == ("a",)  # a tuple default is a value, not a factory
    assert Child(1, e=9).e == 9 and Child(1).d == 2


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: Frozen(), "missing 1 required argument(s): 'a'"),
        (lambda: Frozen(1, "b", (), 4), "takes 4 positional arguments but 5 were given"),
        (lambda: Frozen(1, a=2), "multiple values for argument 'a'"),
        (lambda: Frozen(1, z=2), "unexpected keyword argument 'z'"),
        (lambda: Frozen(1, d=2), "unexpected keyword argument 'd'"),  # init=False
    ],
)
def test_init_refuses_what_a_dataclass_refuses(call: object, message: str) -> None:
    with pytest.raises(TypeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()  # type: ignore[operator]


def test_eq_hash_repr_and_frozen() -> None:
    assert Frozen(1, "q") == Frozen(1, "q") and Frozen(1) != Frozen(2)
    assert Frozen(1) != Child(1)  # another class is never equal, as dataclasses compare
    assert hash(Frozen(1, "q")) == hash(Frozen(1, "q"))
    assert repr(Frozen(1, "q")) == "Frozen(a=1, b='q', c=())"  # repr=False field left out
    with pytest.raises(dataclasses.FrozenInstanceError):
        Frozen(1).a = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        del Frozen(1).a  # type: ignore[misc]
    m = Mutable(1)
    m.x = 5
    assert m == Mutable(5)
    with pytest.raises(TypeError, match="unhashable"):
        hash(m)  # compared by value and mutable: unhashable, as a dataclass


def test_recursive_repr_does_not_loop() -> None:
    m = Mutable(1)
    m.items.append(m)  # type: ignore[arg-type]
    assert repr(m) == "Mutable(x=1, items=[...], tags=())"


def test_dataclasses_functions_work() -> None:
    one = Frozen(1, "q", (2,))
    assert dataclasses.is_dataclass(one)
    assert [f.name for f in dataclasses.fields(Frozen)] == ["a", "b", "c", "d"]
    assert dataclasses.asdict(one) == {"a": 1, "b": "q", "c": (2,), "d": 2}
    again = dataclasses.replace(one, a=5)
    assert (again.a, again.b, again.d) == (5, "q", 10)
    assert pickle.loads(pickle.dumps(one)) == one and copy.deepcopy(one) == one


def test_signature_is_the_dataclass_one() -> None:
    assert str(inspect.signature(Frozen)) == "(a: 'int', b: 'str' = 'x', c: 'tuple[int, ...]' = <factory>)"
    assert str(inspect.signature(Mutable)) == "(x: 'int', items: 'list[int]' = <factory>, tags: 'tuple[str, ...]' = ())"


def test_package_records_keep_their_dataclass_behaviour(tmp_path: object) -> None:
    ref = StorageRef("0", "/nonexistent", 0, 16)
    record = TensorRecord("w", ("w",), "float32", (2, 2), (2, 1), 0, ref)
    assert record == TensorRecord("w", ("w",), "float32", (2, 2), (2, 1), 0, ref)
    assert record.nbytes == 16 and record.numel == 4 and record.is_contiguous
    moved = dataclasses.replace(record, name="v")
    assert moved.name == "v" and moved.nbytes == 16 and moved != record
    assert {record: 1}[TensorRecord("w", ("w",), "float32", (2, 2), (2, 1), 0, ref)] == 1
