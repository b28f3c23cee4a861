"""Generator benchmark: the ONNX generator (KV cache) vs transformers PyTorch fp32, greedy.

Same chat-templated prompts, 64 new tokens each (EOS ignored so both produce all 64), same
thread count, interleaved rounds. ``greedy_match`` is the share of prompts whose 64 greedy
tokens are identical.

    python -m bench.generate [--bundle DIR] [--threads N] [--rounds N]
"""

from __future__ import annotations

import logging

import torch
from transformers import AutoModelForCausalLM

from bench._common import bundle_for, parser, print_machine
from slipway.generation import Sampling, load_generator
from slipway.onnx.calibration import BUILTIN_PROMPTS
from slipway.onnx.latency import interleaved

NEW_TOKENS = 64


def main() -> None:
    p = parser(__doc__ or "")
    p.add_argument("--prompts", type=int, default=5)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    print_machine(args.threads)
    bundle = bundle_for("generator", args.bundle, args.quantization)
    info = bundle.info("generator")
    gen = load_generator(bundle.role_dir("generator"), bundle.runtime("generator"), args.threads)
    model = AutoModelForCausalLM.from_pretrained(
        bundle.source_path("generator"), dtype=torch.float32, local_files_only=True
    ).eval()
    prompts = [gen.prompt_ids(p) for p in BUILTIN_PROMPTS[: args.prompts]]
    sampling = Sampling(max_new_tokens=NEW_TOKENS, ignore_eos=True)
    print(
        f"artifact: {bundle.runtime('generator')} {info['precision']} provider={gen.provider} | "
        f"prompts={len(prompts)} new_tokens={NEW_TOKENS}"
    )
    outputs: dict[str, list[list[int]]] = {"onnx": [], "torch": []}

    def run_onnx() -> float:
        outputs["onnx"] = [list(gen.decoder.stream_ids(ids, sampling)) for ids in prompts]
        return sum(len(o) for o in outputs["onnx"])

    def run_torch() -> float:
        outs = []
        for ids in prompts:
            x = torch.tensor([ids])
            with torch.inference_mode():
                y = model.generate(
                    x,
                    attention_mask=torch.ones_like(x),
                    do_sample=False,
                    max_new_tokens=NEW_TOKENS,
                    min_new_tokens=NEW_TOKENS,
                )
            outs.append(y[0, len(ids) :].tolist())
        outputs["torch"] = outs
        return sum(len(o) for o in outs)

    a, b = interleaved(run_onnx, run_torch, rounds=args.rounds, warmup=1, names=("onnx", "torch"))
    match = sum(o == t for o, t in zip(outputs["onnx"], outputs["torch"], strict=True)) / len(
        prompts
    )
    print(f"onnx:  {a.throughput:7.1f} tokens/s")
    print(f"torch: {b.throughput:7.1f} tokens/s")
    print(
        f"RESULT gen_speedup={a.throughput / b.throughput:.2f} "
        f"onnx_tokens_per_s={a.throughput:.1f} "
        f"torch_tokens_per_s={b.throughput:.1f} greedy_match={match:.2f} "
        f"precision={info['precision']}"
    )


if __name__ == "__main__":
    main()
