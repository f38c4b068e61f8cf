"""``torchweights convert SRC DST``: the weights of any readable checkpoint as safetensors (or a plain torch file,
or a torch.distributed.checkpoint folder).

Streams tensor by tensor, writes every output to a temporary file first and renames it into place only when all of
them are written and verified bit for bit against the source. Never overwrites without ``--force``; leaves nothing
partial behind on any error or Ctrl-C.

Exit codes: 0 written and verified; 2 the source cannot be read, an option cannot be followed, or an output
cannot be written (nothing was kept).
"""

from __future__ import annotations

import argparse

from . import EXIT_OK
from ._options import add_allow_global, add_verb, print_report

__all__ = ["EXAMPLES", "EXIT_CODES", "register", "run"]

#: What each exit code of ``convert`` means (its ``--help`` lists them).
EXIT_CODES = {
    0: "written and verified",
    2: "the source cannot be read, an option cannot be followed, or an output cannot be written (nothing was kept)",
}
#: ``(command line, what it does)`` for ``convert --help``.
EXAMPLES = (
    ("torchweights convert runs/epoch=9.ckpt export/", "the weights as export/model.safetensors, verified"),
    ("torchweights convert model.pth out/ --max-shard-size 2GB", "shards with model.safetensors.index.json"),
    ("torchweights convert model.pt half/ --dtype bfloat16", "cast floating-point tensors (needs torch)"),
    ("torchweights convert old.pt clean.pt --to torch", "a plain state dict for torch.load(weights_only=True)"),
    ("torchweights convert model.safetensors ckpt/ --to dcp", "a folder torch.distributed.checkpoint.load reads"),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``convert`` subcommand to the top-level parser."""
    parser = add_verb(
        subparsers,
        "convert",
        help="write a checkpoint's weights as safetensors (sharded with an index), a plain torch file or a DCP "
        "folder, verified",
        description=(
            "Write the weights of SRC (any format torchweights reads) to DST: safetensors by default (one file, or "
            "shards model-00001-of-0000N.safetensors with model.safetensors.index.json), --to torch, or --to dcp (a "
            "torch.distributed.checkpoint folder: .metadata and __0_N.distcp files). Streaming, "
            "atomic, verified bit for bit; nothing from SRC is executed."
        ),
        exit_codes=EXIT_CODES,
        examples=EXAMPLES,
        json="print the report as one JSON object",
    )
    parser.add_argument("src", metavar="SRC", help="checkpoint file, sharded index (*.index.json) or folder")
    parser.add_argument(
        "dst",
        metavar="DST",
        help="output file (.safetensors, .pt/.bin for --to torch) or folder (created if needed; the checkpoint "
        "folder itself for --to dcp)",
    )
    parser.add_argument(
        "--to", choices=["safetensors", "torch", "dcp"], default="safetensors", help="default: safetensors"
    )
    parser.add_argument(
        "--max-shard-size",
        metavar="SIZE",
        default="5GB",
        help="largest safetensors shard or .distcp file: 5GB (default), 500MiB...",
    )
    parser.add_argument(
        "--dtype", metavar="DTYPE", default=None, help="cast floating-point tensors (bfloat16, float16...); needs torch"
    )
    parser.add_argument(
        "--select",
        metavar="PATTERN",
        action="append",
        default=None,
        help="glob of keys to write ('encoder.*'); repeat for several (default: all)",
    )
    parser.add_argument(
        "--container", metavar="NAME", default="auto", help="dict in the file to take ('state_dict', 'ema'; '' = all)"
    )
    parser.add_argument("--force", action="store_true", help="replace existing outputs")
    parser.add_argument("--no-verify", dest="verify", action="store_false", help="skip re-reading the outputs")
    parser.add_argument(
        "--no-extras", dest="extras", action="store_false", help="do not write <stem>.extras.json (DCP: extras items)"
    )
    add_allow_global(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """Convert and print the report; return the exit code."""
    from ..progress import cli_enabled, terminal_bar
    from ..tools.convert.run import convert

    with terminal_bar("convert", enabled=cli_enabled(args)) as bar:  # on a terminal only
        report = convert(
            args.src,
            args.dst,
            to=args.to,
            max_shard_size=args.max_shard_size,
            dtype=args.dtype,
            select=args.select,
            container=args.container,
            force=args.force,
            verify=args.verify,
            extras=args.extras,
            allow_globals=args.allow_globals,
            progress=bar,
        )
    print_report(args, report)
    return EXIT_OK
