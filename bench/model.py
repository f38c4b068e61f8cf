"""The bench's model and checkpoints: a transformer-like model of a given size (32 blocks, ~290 tensors from 3 KiB
norms to ~100 MiB embeddings) and its weights as a torch zip file, a safetensors file and a 3-shard safetensors set.
Shared by ``bench/run.py`` (warm mode), ``bench/fresh.py`` (first call in a fresh process), ``bench/scale.py`` and
``bench/gpu.py``, with what every script's child process needs: the resident-memory figures of ``/proc/self``
(:func:`memory_status`, :func:`reset_peak`) and the command line of a script that is also its own child
(:func:`script_entry`). Imports only the standard library and torch, so that a fresh-process case imports nothing
else before its clock starts."""

from __future__ import annotations

import gc
import json
import math
import os
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

GB = 1 << 30
LAYERS = 32
VOCAB = 32000


def width_for(nbytes: int, itemsize: int) -> int:
    """Hidden size so that the model holds about ``nbytes`` (32 blocks of 4 d^2 attention + 3 d (8/3 d) MLP)."""
    params = nbytes / itemsize
    a, b = 12 * LAYERS, 2 * VOCAB
    d = (-b + math.sqrt(b * b + 4 * a * params)) / (2 * a)
    return max(64, int(round(d / 64)) * 64)


def build_model(width: int, dtype: str, device: str) -> Any:
    import torch
    from torch import nn

    ffn = (8 * width // 3 + 63) // 64 * 64

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn_norm = nn.RMSNorm(width)
            self.q = nn.Linear(width, width, bias=False)
            self.k = nn.Linear(width, width, bias=False)
            self.v = nn.Linear(width, width, bias=False)
            self.o = nn.Linear(width, width, bias=False)
            self.mlp_norm = nn.RMSNorm(width)
            self.gate = nn.Linear(width, ffn, bias=False)
            self.up = nn.Linear(width, ffn, bias=False)
            self.down = nn.Linear(ffn, width, bias=False)

    class LM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, width)
            self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
            self.norm = nn.RMSNorm(width)
            self.lm_head = nn.Linear(width, VOCAB, bias=False)

    with torch.device("meta"):
        model = LM().to(getattr(torch, dtype))
    if device != "meta":
        model = model.to_empty(device=device)
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()  # written memory, as after a real initialisation
    return model


def generate(folder: Path, size_gb: int, dtype: str) -> dict[str, Any]:
    """Write the three checkpoints of one size and dtype; returns their description."""
    import torch

    itemsize = torch.empty(0, dtype=getattr(torch, dtype)).element_size()
    width = width_for(size_gb * GB, itemsize)
    model = build_model(width, dtype, "meta")
    gen = torch.Generator().manual_seed(0)
    sd = {}
    for name, p in model.state_dict().items():
        sd[name] = torch.randn(p.shape, generator=gen).to(p.dtype)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    paths, files = write_all(folder, f"{size_gb}g-{dtype}", sd)
    del sd
    gc.collect()
    for group in files.values():
        for p in group:
            with open(p, "rb+") as fh:
                os.fsync(fh.fileno())  # clean pages, so that eviction works
    return {
        "size_gb": size_gb,
        "dtype": dtype,
        "width": width,
        "nbytes": nbytes,
        "tensors": len(model.state_dict()),
        "paths": paths,
        "files": files,
    }


def write_all(folder: Path, tag: str, sd: dict[str, Any]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``sd`` as a torch zip file, a safetensors file and a 3-shard safetensors set (with its index)."""
    import torch
    from safetensors.torch import save_file

    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    zip_path = folder / f"{tag}.pt"
    st_path = folder / f"{tag}.safetensors"
    shard_dir = folder / f"{tag}-sharded"
    shard_dir.mkdir(exist_ok=True)
    torch.save(sd, zip_path)
    save_file(sd, str(st_path))
    shards: list[list[str]] = [[], [], []]
    acc = 0
    for name, t in sd.items():
        shards[min(2, int(3 * acc / nbytes))].append(name)
        acc += t.numel() * t.element_size()
    weight_map = {}
    for i, part in enumerate(shards):
        file = f"model-{i + 1:05d}-of-00003.safetensors"
        save_file({n: sd[n] for n in part}, str(shard_dir / file))
        weight_map.update(dict.fromkeys(part, file))
    index = {"metadata": {"total_size": nbytes}, "weight_map": weight_map}
    (shard_dir / "model.safetensors.index.json").write_text(json.dumps(index))
    paths = {"torch-zip": str(zip_path), "safetensors": str(st_path), "sharded-3": str(shard_dir)}
    files = {
        "torch-zip": [str(zip_path)],
        "safetensors": [str(st_path)],
        "sharded-3": sorted(str(p) for p in shard_dir.glob("*.safetensors")),
    }
    return paths, files


def generate_sharded(folder: Path, nbytes: int, dtype: str = "bfloat16", shards: int = 0) -> dict[str, Any]:
    """A checkpoint of about ``nbytes`` written one shard at a time, so that only one shard's tensors are ever in
    memory: a safetensors set (``folder/safetensors``: ``model-0000X-of-0000N.safetensors`` and
    ``model.safetensors.index.json``) and the same tensors as torch zip shards (``folder/torch-zip``:
    ``pytorch_model-0000X-of-0000N.bin`` and ``pytorch_model.bin.index.json``), as transformers writes them.
    ``shards`` defaults to the larger of 4 and one per 4 GB. Returns the description ``bench/scale.py`` keeps."""
    import torch

    torch_dtype = getattr(torch, dtype)
    itemsize = torch.empty(0, dtype=torch_dtype).element_size()
    width = width_for(nbytes, itemsize)
    entries = [(n, tuple(p.shape)) for n, p in build_model(width, dtype, "meta").state_dict().items()]
    sizes = [math.prod(shape) * itemsize for _, shape in entries]
    total = sum(sizes)
    count = shards or max(4, math.ceil(total / (4 * GB)))
    groups: list[list[int]] = [[] for _ in range(count)]
    acc = 0
    for i, size in enumerate(sizes):
        groups[min(count - 1, int(count * acc / total))].append(i)
        acc += size
    groups = [g for g in groups if g]
    count = len(groups)
    gen = torch.Generator().manual_seed(0)
    pool = torch.empty(32 << 20, dtype=torch_dtype).normal_(generator=gen)  # values drawn once, then copied
    st_dir, pt_dir = folder / "safetensors", folder / "torch-zip"
    st_dir.mkdir(parents=True, exist_ok=True)
    pt_dir.mkdir(parents=True, exist_ok=True)
    st_map: dict[str, str] = {}
    pt_map: dict[str, str] = {}
    files: dict[str, list[str]] = {"safetensors": [], "torch-zip": []}
    for k, group in enumerate(groups):
        sd = {entries[i][0]: _filled(entries[i][1], pool, gen) for i in group}
        st_file = st_dir / f"model-{k + 1:05d}-of-{count:05d}.safetensors"
        pt_file = pt_dir / f"pytorch_model-{k + 1:05d}-of-{count:05d}.bin"
        save_safetensors(st_file, sd)
        torch.save(sd, pt_file)
        st_map.update(dict.fromkeys(sd, st_file.name))
        pt_map.update(dict.fromkeys(sd, pt_file.name))
        del sd
        gc.collect()
        for f in (st_file, pt_file):
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())  # clean pages, so that eviction works
            evict([str(f)])  # keep the page cache free for the next shard
            files["safetensors" if f == st_file else "torch-zip"].append(str(f))
    for d, name, wmap in ((st_dir, "model.safetensors", st_map), (pt_dir, "pytorch_model.bin", pt_map)):
        index = {"metadata": {"total_size": total}, "weight_map": wmap}
        (d / f"{name}.index.json").write_text(json.dumps(index, indent=2))
    return {
        "dtype": dtype,
        "width": width,
        "nbytes": total,
        "tensors": len(entries),
        "shards": count,
        "paths": {"safetensors": str(st_dir), "torch-zip": str(pt_dir)},
        "files": files,
    }


def _filled(shape: tuple[int, ...], pool: Any, gen: Any) -> Any:
    """A tensor of ``shape`` filled from ``pool`` at random offsets (``normal_`` itself runs at ~0.3 GB/s)."""
    import torch

    t = torch.empty(shape, dtype=pool.dtype)
    flat = t.view(-1)
    step = len(pool) // 2
    for offset in range(0, flat.numel(), step):
        n = min(step, flat.numel() - offset)
        start = int(torch.randint(0, len(pool) - n + 1, (1,), generator=gen))
        flat[offset : offset + n].copy_(pool[start : start + n])
    return t


_ST_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64"}


def save_safetensors(path: Path, sd: dict[str, Any]) -> None:
    """``sd`` as a safetensors file, written tensor by tensor from the tensors' own memory (``save_file`` first
    copies every tensor into a bytes object, which would double a shard's memory)."""
    import torch

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, t in sd.items():
        size = t.numel() * t.element_size()
        dtype = _ST_DTYPES[str(t.dtype).removeprefix("torch.")]
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw)
        for t in sd.values():
            fh.write(memoryview(t.contiguous().view(-1).view(torch.uint8).numpy()))


def evict(files: list[str]) -> None:
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(files: list[str]) -> None:
    buf = bytearray(64 << 20)
    for path in files:
        with open(path, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass


def remove(info: dict[str, Any]) -> None:
    """Delete the checkpoints that ``generate`` wrote."""
    import shutil

    for fmt, path in info["paths"].items():
        if fmt == "sharded-3":
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)


def memory_status() -> dict[str, int]:
    """This process's resident memory from ``/proc/self/status``, in bytes: VmHWM (peak), VmRSS, RssAnon, RssFile,
    RssShmem."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (``/proc/self/clear_refs``); whether the kernel allowed it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def script_entry(doc: str | None, main: Callable[[], int], child: Callable[[Any], Any], flag: str) -> None:
    """The command line of a bench script that is also its own child process: ``-h`` prints ``doc``; ``flag SPEC``
    runs ``child`` on the JSON ``SPEC`` and prints its result as JSON (the parent reads the last line); anything
    else runs ``main``."""
    if len(sys.argv) > 1 and sys.argv[1] in ("-h", "--help"):
        print(doc)
        sys.exit(0)
    if len(sys.argv) == 3 and sys.argv[1] == flag:
        print(json.dumps(child(json.loads(sys.argv[2]))))
        sys.exit(0)
    sys.exit(main())
