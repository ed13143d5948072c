"""Caption generation speed of MaMMUT, with and without the KV cache, against open_clip's CoCa.

    python bench/generate.py                                  # tiny preset, batches of 1, 8, 32 and 250 (~10 min)
    python bench/generate.py --batch-sizes 8 --repeats 2      # a quick check

Batch 250 is the eval batch of configs/pretrain.yaml, at which validation generates its captions;
batches 1 and 8 are small, latency-bound batches, where per-operation overhead weighs most.

Every caption generates exactly --new-tokens tokens: the models are randomly initialised and
would otherwise stop at a random end-of-text token. MaMMUT gets min_new_tokens = max_new_tokens;
CoCa gets min_seq_len and seq_len to match, with fixed_output_length=True. An "encode + generate"
call encodes the batch of images and generates its captions, as CoCa's generate does; a "generate
only" call starts from visual tokens encoded beforehand, so it times the decoding loop alone, the
part a KV cache can speed up. CoCa's generate has no KV cache: every step re-runs its text towers
over the whole prefix. Its top-k decoding with k=1 is greedy.

"yes, compiled step" is mammut's `generation.compile`: the cached step compiled by inductor with
frozen weights (src/mammut/model/compiled_decoding.py). The uncached greedy baseline is also run
through the same compiler ("no, compiled pass": the generative pass, dynamic shapes, since the
prefix grows every step), so that the cache's speed-up is not the compiler's. The first warm-up
call of a compiled method compiles it (the "first call" column); only later calls are timed.

Timing rounds visit every method in turn, in reverse order every other round, so load changes on
a shared machine hit all of them alike; the table gives the median call.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import open_clip
import torch
import transformers
from torch import Tensor

from mammut.model import GenerationConfig, Mammut, generate, preset
from mammut.model.compiled_decoding import COMPILE_OPTIONS
from report import RESULTS, build_coca, markdown_table, median_step_seconds, publish, random_batch

BOTH, DECODE = "encode + generate", "generate only"
CACHED, UNCACHED, COMPILED, COMPILED_UNCACHED = "yes", "no", "yes, compiled step", "no, compiled pass"


def mammut_method(model: Mammut, num_beams: int, cache: str, new_tokens: int,
                  visual_tokens: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """Encodes the images and generates; with ``visual_tokens`` given, only generates from them."""
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens, num_beams=num_beams,
                              use_cache=cache in (CACHED, COMPILED), compile=cache == COMPILED)

    def run(images: Tensor) -> Tensor:
        return generate(model, model.encode_image(images) if visual_tokens is None else visual_tokens, config=config)

    if cache != COMPILED_UNCACHED:
        return run
    compiled_pass = torch.compile(model.decoder.generative, dynamic=True, options=COMPILE_OPTIONS)

    def run_compiled_pass(images: Tensor) -> Tensor:
        model.decoder.generative = compiled_pass  # shadows the method for this call only
        try:
            with torch._inductor.config.patch(freezing=True):
                return run(images)
        finally:
            del model.decoder.generative

    return run_compiled_pass


def coca_method(model, generation_type: str, num_beams: int, new_tokens: int, ids) -> Callable[[Tensor], Tensor]:
    # seq_len counts the start token; the last of the new tokens is forced to be end-of-text.
    kwargs = dict(seq_len=new_tokens + 1, min_seq_len=new_tokens, generation_type=generation_type,
                  sot_token_id=ids.bos_id, eos_token_id=ids.eos_id, pad_token_id=ids.pad_id,
                  fixed_output_length=True)
    if generation_type == "top_k":
        kwargs.update(top_k=1)
    else:
        kwargs.update(num_beams=num_beams, num_beam_groups=1)
    return lambda images: model.generate(images, **kwargs)[:, 1:]  # drop the start token


def methods_for(mammut: Mammut, coca, images: Tensor, new_tokens: int, beams: int) -> dict[tuple, Callable]:
    """Every decoding method, keyed by (model, decoding, KV cache, what is timed)."""
    visual_tokens = mammut.encode_image(images)
    beam = f"beam {beams}"
    methods = {}
    for timed, tokens in ((BOTH, None), (DECODE, visual_tokens)):
        for decoding, num_beams in (("greedy", 1), (beam, beams)):
            caches = (CACHED, UNCACHED, COMPILED) + ((COMPILED_UNCACHED,) if num_beams == 1 else ())
            for cache in caches:
                methods["mammut", decoding, cache, timed] = mammut_method(mammut, num_beams, cache, new_tokens, tokens)
    methods["open_clip CoCa", "top-k, k=1 (greedy)", "none", BOTH] = coca_method(
        coca, "top_k", 1, new_tokens, mammut.config)
    methods["open_clip CoCa", beam, "none", BOTH] = coca_method(coca, "beam_search", beams, new_tokens, mammut.config)
    return methods


def ratio_definitions(beams: int) -> list[tuple[str, list[tuple], list[tuple]]]:
    """(label, numerator, denominator): each side is the faster of its listed methods."""
    beam = f"beam {beams}"
    coca_greedy = ("open_clip CoCa", "top-k, k=1 (greedy)", "none", BOTH)
    coca_beam = ("open_clip CoCa", beam, "none", BOTH)
    rows = []
    for timed in (DECODE, BOTH):
        greedy = {cache: ("mammut", "greedy", cache, timed)
                  for cache in (CACHED, UNCACHED, COMPILED, COMPILED_UNCACHED)}
        beamed = {cache: ("mammut", beam, cache, timed) for cache in (CACHED, UNCACHED, COMPILED)}
        rows += [
            (f"mammut greedy, cached / uncached ({timed})", [greedy[CACHED]], [greedy[UNCACHED]]),
            (f"mammut greedy, compiled cached step / uncached ({timed})", [greedy[COMPILED]], [greedy[UNCACHED]]),
            (f"mammut greedy, compiled cached step / compiled uncached pass ({timed})", [greedy[COMPILED]],
             [greedy[COMPILED_UNCACHED]]),
            (f"mammut greedy, faster cached / faster uncached, eager or compiled ({timed})",
             [greedy[CACHED], greedy[COMPILED]], [greedy[UNCACHED], greedy[COMPILED_UNCACHED]]),
            (f"mammut {beam}, cached / uncached ({timed})", [beamed[CACHED]], [beamed[UNCACHED]]),
            (f"mammut {beam}, compiled cached step / uncached ({timed})", [beamed[COMPILED]], [beamed[UNCACHED]]),
        ]
    greedy_cached = [("mammut", "greedy", cache, BOTH) for cache in (CACHED, COMPILED)]
    return rows + [
        ("mammut cached greedy / CoCa greedy (encode + generate)", greedy_cached[:1], [coca_greedy]),
        ("mammut faster cached greedy, eager or compiled / CoCa greedy (encode + generate)", greedy_cached,
         [coca_greedy]),
        (f"mammut cached {beam} / CoCa {beam} (encode + generate)", [("mammut", beam, CACHED, BOTH)], [coca_beam]),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="mammut size preset; CoCa is built to match")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32, 250],
                        help="images per call, one caption each; every size is timed in this run")
    parser.add_argument("--new-tokens", type=int, default=20, help="tokens generated for every caption")
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per method")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per method (at least 1)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file the tables are appended to")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # Two graphs (greedy, beam) per batch size: past the limit the compiled rows would time eager code.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(args.batch_sizes))

    config = preset(args.preset)
    torch.manual_seed(args.seed)
    mammut = Mammut(config).eval()
    torch.manual_seed(args.seed)
    coca = build_coca(config).eval()
    n, k = args.new_tokens, args.beams
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")

    rows, captions_per_second, first_call, failures = [], {}, {}, {}
    for batch_size in args.batch_sizes:
        images, _ = random_batch(config, batch_size, torch.Generator().manual_seed(args.seed))
        with torch.inference_mode(), autocast:
            methods, lengths = methods_for(mammut, coca, images, n, k), {}
            for key, method in list(methods.items()):
                try:  # the first warm-up call, to catch a failing peer before any timing
                    start = time.perf_counter()
                    lengths[key] = method(images).shape[1]
                    first_call[batch_size, key] = time.perf_counter() - start
                except Exception as error:  # noqa: BLE001 - a failing peer is reported, not fatal
                    if key[0] == "mammut":
                        raise
                    failures[key] = f"{type(error).__name__}: {error}"
                    del methods[key]
            seconds = median_step_seconds({key: (lambda m=method: m(images)) for key, method in methods.items()},
                                          args.warmup - 1, args.repeats)
        for key, s in seconds.items():
            captions_per_second[batch_size, key] = batch_size / s
            rows.append([batch_size, *key, lengths[key], f"{first_call[batch_size, key]:.2f}", f"{s * 1e3:.0f}",
                         f"{batch_size / s:.1f}", f"{batch_size / s * lengths[key]:.0f}"])
    table = markdown_table(["batch", "model", "decoding", "KV cache", "timed", "new tokens / caption",
                            "first call, s", "ms / batch", "captions/s", "tokens/s"], rows)

    def ratio(batch_size: int, a: list[tuple], b: list[tuple]) -> str:
        measured = [[captions_per_second[batch_size, key] for key in keys if (batch_size, key) in captions_per_second]
                    for keys in (a, b)]
        return f"{max(measured[0]) / max(measured[1]):.2f}" if all(measured) else "n/a"

    ratios = markdown_table(["ratio (captions/s)", *(f"batch {b}" for b in args.batch_sizes)],
                            [[label, *(ratio(b, a, c) for b in args.batch_sizes)]
                             for label, a, c in ratio_definitions(k)])

    notes = (f"Preset `{args.preset}`, {args.precision}, {args.warmup} warm-up and {args.repeats} timed calls per "
             f"method and batch size, medians. An \"encode + generate\" call encodes the images and "
             f"generates; a \"generate only\" call starts from the visual tokens of the same images, encoded "
             f"once beforehand, and times the decoding loop alone, which is all the KV cache changes. "
             f"Every caption is forced to {n} new tokens (end-of-text masked until then: mammut min_new_tokens = "
             f"max_new_tokens = {n}; CoCa min_seq_len={n}, seq_len={n + 1} with fixed_output_length=True, and "
             f"its last token is forced to end-of-text), since random-init models would stop early. CoCa's "
             f"generate (open_clip {open_clip.__version__}, transformers {transformers.__version__}) has no KV "
             f"cache; its beam search is transformers' BeamSearchScorer with num_beam_groups=1.")
    for (model, decoding, *_), error in failures.items():
        notes += f"\n\n{model} {decoding} did not run: `{error}`"
    publish("Caption generation: mammut (KV cache on/off) vs open_clip CoCa", f"{table}\n\n{ratios}\n\n{notes}",
            args.results)


if __name__ == "__main__":
    main()
