"""torch.package archives (``torch.package.PackageExporter``), read as data: every pickled resource, no code.

A package is a zip with one root folder holding the resources saved with ``save_pickle(package, resource, obj)``
at ``<package path>/<resource>`` (``models/net.pkl``), the Python source of interned modules (``mymodels.py``),
other resources (``save_text``, ``save_binary``) and ``.data/``: ``extern_modules``, ``version``, and one
``.data/<key>.storage`` member per tensor storage, shared by every pickle of the package.

Naming: each pickle resource is read like a ``torch.save`` pickle (a state dict, a pickled ``nn.Module`` as an
inert stub...), and its tensors are named ``<resource path>/<dotted name>``: ``weights/sd.pkl/fc.weight``,
``models/net.pkl/fc.weight``. A record's ``path`` starts with the resource path, so ``load_into`` treats each
resource as a container and picks the one that fits the model. Non-tensor leaves go to ``extras`` under the same
names. A pickle is any member that ends in ``.pkl`` or starts like a pickle (protocol 2 to 5) outside ``.data/``.

Globals of the package's own (interned) modules are mangled by torch.package (``<torch_package_0>.models.Net``);
they are listed without the mangle prefix, stay inert stubs like any unknown class, and are checked for safety as
the name they stand for (torch.package demangles before importing). ``metadata["code_files"]`` lists the source
files (name and size; never run), ``metadata["resources"]`` the other resources, ``metadata["extern_modules"]``
the modules the package expects the loader to provide.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..errors import CorruptCheckpointError
from ..records import Checkpoint, TensorRecord
from ..text import quote
from ..unpickle.values import PickledStorage, Stub
from ._pickled import run_pickle
from ._zip import ZipMember
from .torch_zip import Archive, ZipStorages, check_byteorder, open_archive, read_text_members
from .torchscript import ScriptModule, read_script_module
from .tree import flatten, record_maker, short_repr

if TYPE_CHECKING:  # pragma: no cover
    from . import ReadOptions

__all__ = ["demangle", "read"]

_RECORDS = (".data/version", "byteorder", ".data/serialization_id", ".data/python_version")
_EXTERN_MAX_BYTES = 1 << 20
_MANGLE = re.compile(r"<torch_package_\d+>\.")


def demangle(name: str) -> str:
    """``<torch_package_0>.models.Net`` -> ``models.Net``: the name torch.package would import."""
    return _MANGLE.sub("", name)


def _find_root(names: list[str], path: str) -> str:
    for name in names:
        if name.endswith(".data/extern_modules") and name.count("/") <= 2:
            return name[: -len(".data/extern_modules")]
    raise CorruptCheckpointError(
        f"{quote(path)} has no '.data/extern_modules' member, so it is not a torch.package archive. Re-export it "
        "with torch.package.PackageExporter.",
        code="bad-record",
        path=path,
    )


_UNPACKAGE_SCRIPT = "torch.jit._script.unpackage_script_module"


class _EmbeddedScripts:
    """TorchScript modules saved into the package (``save_pickle`` of a scripted module): each read once, as data.

    ``ScriptModule.__reduce_package__`` writes the module's pickles to ``.data/ts_code/<id>/data.pkl`` and
    ``constants.pkl``, its classes to ``.data/ts_code/code/``, and its storages to the package's own
    ``.data/<key>.storage`` (keys ``"<key>.storage"``, shared with the package pickles); the resource pickle holds
    the persistent id ``('reduce_package', <object id>, unpackage_script_module, ('<id>',))``, which
    ``PackageImporter`` answers by compiling and running the module's code. Here it is answered with the module's
    inert stub, named like its ``state_dict()`` inside the resource.
    """

    def __init__(self, archive: Archive, root: str, storages: ZipStorages, options: ReadOptions) -> None:
        self.archive = archive
        self.root = root
        self.storages = storages
        self.options = options
        self.modules: dict[str, ScriptModule] = {}
        self.used_by: dict[str, list[str]] = {}  # resource -> ids of the modules it embeds
        self.resource = ""
        self.budget = 0  # walk budget the modules read for the current resource add

    def __call__(self, args: Any) -> Any:
        path = self.archive.path
        ident = args[0] if isinstance(args, tuple) and len(args) == 1 else None
        if not (isinstance(ident, str) and ident.isdigit() and len(ident) < 20):
            raise CorruptCheckpointError(
                f"{quote(path)} resource {quote(self.resource)}: TorchScript module id {short_repr(args, 80)} is not "
                "the decimal id torch.package writes. The package is corrupt or was modified; re-export it.",
                code="bad-record",
                path=path,
            )
        ids = self.used_by.setdefault(self.resource, [])
        if ident not in ids:
            ids.append(ident)
        module = self.modules.get(ident)
        if module is None:
            folder = f"{self.root}.data/ts_code/{ident}/"
            module = read_script_module(
                self.archive,
                self._member(folder + "data.pkl", "holds the module"),
                self._member(folder + "constants.pkl", "torch.package writes with every TorchScript module"),
                f"{self.root}.data/ts_code/code/",
                self.storages,
                self.storages,
                self.options,
            )
            self.modules[ident] = module
            self.budget += module.budget
        return module.tree

    def _member(self, name: str, why: str) -> ZipMember:
        info = self.archive.get(name)
        if info is None:
            raise CorruptCheckpointError(
                f"{quote(self.archive.path)}: resource {quote(self.resource)} embeds a TorchScript module whose "
                f"{quote(name)} member, which {why}, is missing; torch.package refuses it too. The package is "
                "incomplete or was modified; re-export it.",
                code="missing-member",
                path=self.archive.path,
            )
        return info


class _PackageStorages:
    """persistent_load for package pickles: ``('storage', type, key, location, numel)`` with the bytes at
    ``<root>.data/<key>.storage`` (the torch zip reader's resolver, one for the whole package, so storages shared
    between resources stay shared); ``('reduce_package', ...)`` of a TorchScript module is read as data
    (:class:`_EmbeddedScripts`); other ``reduce_package`` objects are kept as inert stubs, never rebuilt."""

    def __init__(self, storages: ZipStorages, scripts: _EmbeddedScripts, path: str) -> None:
        self.storages = storages
        self.scripts = scripts
        self.path = path

    def __call__(self, pid: Any) -> PickledStorage | Stub:
        if isinstance(pid, tuple) and pid:
            kind = pid[0].decode("ascii", "replace") if isinstance(pid[0], bytes) else pid[0]
            if kind == "storage" and len(pid) == 5:
                key = pid[2].decode("ascii", "replace") if isinstance(pid[2], bytes) else pid[2]
                if (type(key) is int and key >= 0) or (isinstance(key, str) and key.isdigit()):
                    return self.storages(("storage", pid[1], f"{key}.storage", pid[3], pid[4]))
            elif kind == "reduce_package" and len(pid) in (3, 4):
                func = pid[-2]
                name = getattr(func, "qualname", None) or getattr(func, "cls", None)
                if name == _UNPACKAGE_SCRIPT:
                    return self.scripts(pid[-1])  # type: ignore[no-any-return]
                return Stub(name if isinstance(name, str) else "torch.package.reduce_package", pid)
        raise CorruptCheckpointError(
            f"{quote(self.path)}: unexpected persistent id {short_repr(pid, 80)} (expected ('storage', type, key, "
            "location, numel) with an integer key). The package is corrupt or was modified; re-export it.",
            code="bad-record",
            path=self.path,
        )


def _is_pickle(archive: Archive, info: ZipMember) -> bool:
    if info.name.endswith(".pkl"):
        return True
    if info.size < 3 or info.name.endswith(".py"):
        return False
    head = archive.read(info, 2)
    return head[0] == 0x80 and 2 <= head[1] <= 5


def _extern_modules(archive: Archive, root: str) -> list[str]:
    info = archive.get(root + ".data/extern_modules")
    assert info is not None  # _find_root found it
    text = archive.read(info, _EXTERN_MAX_BYTES).decode("utf-8", "replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _embedded_constants(
    scripts: _EmbeddedScripts, records: dict[str, TensorRecord], warnings: list[str], globals_seen: set[str]
) -> None:
    """The constants of every embedded TorchScript module, as records named ``.data/ts_code/<id>/constants.pkl/c0``
    (the member they come from, as resources are named), its warnings and globals."""
    for ident, module in scripts.modules.items():
        resource = f".data/ts_code/{ident}/constants.pkl"
        globals_seen |= module.globals
        warnings.extend(f".data/ts_code/{ident}: {w}" for w in module.warnings)
        if not module.constants:
            continue
        where = f"{quote(scripts.archive.path)} member {quote(scripts.root + resource)}"
        flat = flatten(module.constants, record_maker(where), limits=scripts.options.limits, budget=module.budget)
        for record in flat.records.values():
            full = f"{resource}/{record.name}"
            records[full] = replace(record, name=full, path=(resource, *record.path))
        warnings.extend(f"{resource}: {w}" for w in flat.warnings)


def read(path: str, options: ReadOptions) -> Checkpoint:
    """Read every pickle resource of a torch.package archive and locate every storage; nothing is imported or run."""
    records: dict[str, TensorRecord] = {}
    extras: dict[str, Any] = {}
    warnings: list[str] = []
    globals_seen: set[str] = set()
    code_files: dict[str, int] = {}
    resources: dict[str, int] = {}
    with open_archive(path, options) as archive:
        root = _find_root(archive.names(), path)
        text_records = read_text_members(archive, root, _RECORDS)
        byteorder = check_byteorder(text_records, path)
        extern = _extern_modules(archive, root)
        storages = ZipStorages(archive, root + ".", byteorder)
        scripts = _EmbeddedScripts(archive, root, storages, options)
        loader = _PackageStorages(storages, scripts, path)
        for info in archive.members():
            name = info.name
            if not name.startswith(root) or name.endswith("/"):
                continue
            resource = name[len(root) :]
            if resource.startswith(".data/ts_code/code/"):
                code_files[resource] = info.size  # TorchScript classes of embedded modules: listed, never run
                continue
            if resource.startswith(".data/") or resource in ("byteorder", ".data"):
                continue
            if resource.endswith(".py"):
                code_files[resource] = info.size
                continue
            if not _is_pickle(archive, info):
                resources[resource] = info.size
                continue
            data = archive.read_parsed(info, f"pickle resource {quote(resource)}")
            where = f"{quote(path)} resource {quote(resource)}"
            scripts.resource, scripts.budget = resource, 0
            result = run_pickle(data, options, where, persistent_load=loader)
            globals_seen |= result.globals
            budget = 4 * result.opcodes + 10_000 + scripts.budget
            flat = flatten(result.value, record_maker(where), limits=options.limits, budget=budget)
            for record in flat.records.values():
                full = f"{resource}/{record.name}"
                records[full] = replace(record, name=full, path=(resource, *record.path))
            for key, value in flat.extras.items():
                extras[f"{resource}/{key}" if key else resource] = value
            warnings.extend(f"{resource}: {w}" for w in flat.warnings)
        _embedded_constants(scripts, records, warnings, globals_seen)
        warnings.extend(storages.warnings)
    metadata: dict[str, Any] = {"archive_root": root.rstrip("/"), **text_records, "extern_modules": extern}
    metadata["code_files"] = code_files
    if scripts.used_by:
        metadata["torchscript_modules"] = scripts.used_by
    if resources:
        metadata["resources"] = resources
    return Checkpoint(
        path=path,
        format="torch-package",
        files=(path,),
        records=records,
        extras=extras,
        globals=tuple(sorted({demangle(g) for g in globals_seen})),
        metadata=metadata,
        warnings=warnings,
    )
