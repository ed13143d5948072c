"""Caption generation speed of MaMMUT, with and without the KV cache, against open_clip's CoCa.

    python bench/generate.py                          # tiny preset, batch 8, 20 new tokens
    python bench/generate.py --repeats 2 --warmup 1   # a quick check

Every caption generates exactly --new-tokens tokens: the models are randomly initialised and
would otherwise stop at a random end-of-text token. MaMMUT gets min_new_tokens = max_new_tokens;
CoCa gets min_seq_len and seq_len to match, with fixed_output_length=True. An "encode + generate"
call encodes the batch of images and generates its captions, as CoCa's generate does; a "generate
only" call starts from visual tokens encoded beforehand, so it times the decoding loop alone, the
part a KV cache can speed up. CoCa's generate has no KV cache: every step re-runs its text towers
over the whole prefix. Its top-k decoding with k=1 is greedy.

Timing rounds visit every method in turn, in reverse order every other round, so load changes on
a shared machine hit all of them alike; the table gives the median call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable

import open_clip
import torch
import transformers
from torch import Tensor

from mammut.model import GenerationConfig, Mammut, generate, preset
from report import RESULTS, build_coca, markdown_table, publish, random_batch


def mammut_method(model: Mammut, num_beams: int, use_cache: bool, new_tokens: int,
                  visual_tokens: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """Encodes the images and generates; with ``visual_tokens`` given, only generates from them."""
    config = GenerationConfig(max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                              num_beams=num_beams, use_cache=use_cache)
    if visual_tokens is not None:
        return lambda images: generate(model, visual_tokens, config=config)
    return lambda images: generate(model, model.encode_image(images), config=config)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="mammut size preset; CoCa is built to match")
    parser.add_argument("--batch-size", type=int, default=8, help="images, one caption each")
    parser.add_argument("--new-tokens", type=int, default=20, help="tokens generated for every caption")
    parser.add_argument("--beams", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per method (at least 1)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file the tables are appended to")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = preset(args.preset)
    images, _ = random_batch(config, args.batch_size, torch.Generator().manual_seed(args.seed))
    torch.manual_seed(args.seed)
    mammut = Mammut(config).eval()
    torch.manual_seed(args.seed)
    coca = build_coca(config).eval()

    n, k = args.new_tokens, args.beams
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    with torch.inference_mode(), autocast:
        visual_tokens = mammut.encode_image(images)
    both, decode = "encode + generate", "generate only"
    methods = {
        ("mammut", "greedy", "yes", both): mammut_method(mammut, 1, True, n),
        ("mammut", "greedy", "no", both): mammut_method(mammut, 1, False, n),
        ("mammut", f"beam {k}", "yes", both): mammut_method(mammut, k, True, n),
        ("mammut", f"beam {k}", "no", both): mammut_method(mammut, k, False, n),
        ("mammut", "greedy", "yes", decode): mammut_method(mammut, 1, True, n, visual_tokens),
        ("mammut", "greedy", "no", decode): mammut_method(mammut, 1, False, n, visual_tokens),
        ("mammut", f"beam {k}", "yes", decode): mammut_method(mammut, k, True, n, visual_tokens),
        ("mammut", f"beam {k}", "no", decode): mammut_method(mammut, k, False, n, visual_tokens),
        ("open_clip CoCa", "top-k, k=1 (greedy)", "none", both): coca_method(coca, "top_k", 1, n, config),
        ("open_clip CoCa", f"beam {k}", "none", both): coca_method(coca, "beam_search", k, n, config),
    }

    failures, lengths = {}, {}
    with torch.inference_mode(), autocast:
        for key, method in list(methods.items()):
            try:
                for _ in range(max(1, args.warmup)):  # at least one call, to catch a failing peer here
                    lengths[key] = method(images).shape[1]
            except Exception as error:  # noqa: BLE001 - a failing peer is reported, not fatal
                if key[0] == "mammut":
                    raise
                failures[key] = f"{type(error).__name__}: {error}"
                del methods[key]
        seconds = defaultdict(list)
        runs = list(methods.items())
        for round_index in range(args.repeats):
            for key, method in runs if round_index % 2 == 0 else runs[::-1]:
                start = time.perf_counter()
                lengths[key] = method(images).shape[1]
                seconds[key].append(time.perf_counter() - start)

    captions_per_second = {key: args.batch_size / statistics.median(s) for key, s in seconds.items()}
    rows = [[*key, lengths[key], f"{statistics.median(seconds[key]) * 1e3:.0f}", f"{captions_per_second[key]:.1f}",
             f"{captions_per_second[key] * lengths[key]:.0f}"] for key in methods]
    table = markdown_table(["model", "decoding", "KV cache", "timed", "new tokens / caption", "ms / batch",
                            "captions/s", "tokens/s"], rows)

    def ratio(label: str, a: tuple, b: tuple) -> list[str]:
        if a in captions_per_second and b in captions_per_second:
            return [label, f"{captions_per_second[a] / captions_per_second[b]:.2f}"]
        return [label, "n/a: " + "; ".join(failures.get(a, failures.get(b, "")).splitlines()[:1])]

    beam = f"beam {k}"
    ratios = markdown_table(["ratio (captions/s)", "value"], [
        ratio("mammut greedy, cached / uncached (encode + generate)", ("mammut", "greedy", "yes", both),
              ("mammut", "greedy", "no", both)),
        ratio(f"mammut {beam}, cached / uncached (encode + generate)", ("mammut", beam, "yes", both),
              ("mammut", beam, "no", both)),
        ratio("mammut greedy, cached / uncached (generate only)", ("mammut", "greedy", "yes", decode),
              ("mammut", "greedy", "no", decode)),
        ratio(f"mammut {beam}, cached / uncached (generate only)", ("mammut", beam, "yes", decode),
              ("mammut", beam, "no", decode)),
        ratio("mammut cached greedy / CoCa greedy (encode + generate)", ("mammut", "greedy", "yes", both),
              ("open_clip CoCa", "top-k, k=1 (greedy)", "none", both)),
        ratio(f"mammut cached {beam} / CoCa {beam} (encode + generate)", ("mammut", beam, "yes", both),
              ("open_clip CoCa", beam, "none", both)),
    ])

    notes = (f"Preset `{args.preset}`, {args.precision}, batch {args.batch_size} images, {args.warmup} warm-up and "
             f"{args.repeats} timed calls per method, medians. An \"encode + generate\" call encodes the images and "
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
