"""``costeff-fast export``: a COST-EFF checkpoint as an ONNX graph for ONNX Runtime users."""

from __future__ import annotations

import argparse
from pathlib import Path

from costeff_fast.export import TOLERANCE, export_onnx

from .common import add_out, refuse

NAME = "export"
HELP = "write a COST-EFF checkpoint as an ONNX graph (one output per exit) for ONNX Runtime"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = (
        "Write a COST-EFF checkpoint as an ONNX graph: every layer at its own width, one output per exit\n"
        "(exit_1_logits ... exit_L_logits, [batch, num_labels] fp32) and the final logits (logits, the last\n"
        "exit's). Inputs: input_ids, attention_mask, token_type_ids, [batch, sequence] int64, right-padded,\n"
        "both axes dynamic. The graph is checked in onnxruntime against the reference forward (every output\n"
        f"within {TOLERANCE:g}) when onnxruntime is installed.\n\n"
        "What the export cannot do: early exit. The graph runs every layer for every row; dropping confident\n"
        "rows from a running batch (the speed-up of COST-EFF) needs the engine (costeff_fast.from_pretrained).\n"
        "Apply the threshold to the outputs (the first exit whose entropy is below config.json's\n"
        "entropy_threshold answers) for the engine's labels at full-depth cost. There is no tokenizer in the\n"
        "graph: tokenize with the checkpoint's tokenizer, truncation=True, max_length=the model's limit.")
    parser.epilog = ("Needs onnx and onnxscript (pip install 'costeff_fast[onnx]', which adds onnxruntime).\n"
                     "A refused argument prints one 'costeff-fast: error:' line and exits with status 2\n"
                     "(-v adds the traceback).")
    parser.add_argument("--model", type=Path, required=True, help="a COST-EFF checkpoint directory")
    parser.add_argument("--format", choices=["onnx"], default="onnx", help="output format (default onnx, the only one)")
    add_out(parser, metavar="FILE", help="the .onnx file to write (its directory is created; weights over 2 GB go "
                                         "to FILE.data next to it)")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset version (default: the exporter's)")
    parser.add_argument("--no-check", action="store_true",
                        help="do not run the graph in onnxruntime against the reference forward")


def run(args: argparse.Namespace) -> None:
    try:
        result = export_onnx(args.model, args.output, opset=args.opset, check=not args.no_check)
    except (ModuleNotFoundError, FileNotFoundError, ValueError) as error:
        refuse(error)
    outputs = result.outputs
    print(f"wrote {result.path}: outputs {outputs[0]} ... {outputs[-2]} and {outputs[-1]}"
          + (f" (weights in {result.external_data})" if result.external_data else ""))
    if result.max_abs_diff is not None:
        print(f"onnxruntime matches the reference forward: max |difference| {result.max_abs_diff:.1e} "
              f"(tolerance {TOLERANCE:g})")
    elif not args.no_check:
        print("not checked: onnxruntime is not installed (pip install 'costeff_fast[onnx]')")
