"""Evaluation speed on one model: items/s and wall time per domain task (an eval preset's
subsets), tokens/s of perplexity, and whether the project's strided perplexity agrees with
lm-eval's `loglikelihood_rolling` on the same text.

    python -m bench.perf.eval_speed                         # default model, quick preset, both domains
    python -m bench.perf.eval_speed --preset paper --tasks rqe,casehold
    python -m bench.perf.eval_speed --no-share-prompts --tasks casehold   # lm-eval's own batching
    python -m bench.perf.eval_speed --skip-tasks            # perplexity only

Perplexity is compared twice on the first `--ppl-tokens` tokens of the legal perplexity text:
as each evaluator counts by default (lm-eval scores every token, the first one after a prefix
token, with disjoint windows of `max_length`; the project leaves the first token of each window
unscored), and aligned (the project run on prefix + text with window L+1, stride L, which scores
exactly lm-eval's tokens with exactly its contexts), where the two must agree to 1e-4.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from bench.perf.cell import compose_config
from bench.perf.worker import bench_parser
from core.files import write_atomic
from core.paths import project_path

MODULE = "bench.perf.eval_speed"


def task_speed(model: Any, tokenizer: Any, settings: list[str], domains: list[str], only: set[str] | None,
               share_prompts: bool, root: Path, batch_size: int | None = None) -> list[dict[str, Any]]:
    """One row per task: items, seconds, items/s and its metrics (`settings`: the config
    overrides that choose the model and eval preset)."""
    from evals.lm_tasks import evaluate_domain_tasks

    rows = []
    for domain in domains:
        cfg = compose_config([*settings, f"domain={domain}"])
        limits = OmegaConf.to_container(cfg.eval.tasks, resolve=True)
        tasks = OmegaConf.to_container(cfg.domain.tasks, resolve=True)
        tasks = {name: spec for name, spec in tasks.items() if only is None or name in only}
        if not tasks:
            continue
        result = evaluate_domain_tasks(model, tokenizer, tasks, limits, root, batch_size,
                                       share_prompts=share_prompts)
        for key, seconds in result.seconds.items():
            metrics = {m.rsplit("/", 1)[1]: v for m, v in result.metrics.items() if m.startswith(key + "/")}
            rows.append({"task": key, "items": result.items[key], "limit": result.limits[key],
                         "seconds": seconds, "items_per_s": result.items[key] / seconds, "metrics": metrics})
    return rows


def round_trip_text(tokenizer: Any, text: str, n_tokens: int) -> tuple[str, list[int]]:
    """A prefix of `text` that tokenizes to exactly its first <= n_tokens tokens."""
    ids = tokenizer(text, add_special_tokens=False).input_ids[:n_tokens]
    while ids:
        candidate = tokenizer.decode(ids)
        if tokenizer(candidate, add_special_tokens=False).input_ids == ids:
            return candidate, ids
        ids = ids[:-1]
    raise ValueError("no round-trip prefix found")


def perplexity_agreement(model: Any, tokenizer: Any, text: str, window: int,
                         batch_size: int) -> dict[str, Any]:
    """Both evaluators on the same text, at their defaults and aligned (see the module doc)."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    from evals.perplexity import strided_perplexity

    lm = HFLM(pretrained=model, tokenizer=tokenizer, backend="causal", max_length=window,
              batch_size=batch_size)
    request = Instance(request_type="loglikelihood_rolling", doc={}, arguments=(text,), idx=0)
    n_tokens = len(lm.tok_encode(text))
    began = time.perf_counter()
    loglik = lm.loglikelihood_rolling([request], disable_tqdm=True)[0]
    lm_seconds = time.perf_counter() - began
    lm_ppl = math.exp(-loglik / n_tokens)

    began = time.perf_counter()
    native = strided_perplexity(model, tokenizer, [text], window, window, None, batch_size, progress=False)
    native_seconds = time.perf_counter() - began

    prefix = tokenizer.decode([lm.prefix_token_id])
    prefixed = prefix + text
    if tokenizer(prefixed, add_special_tokens=False).input_ids != [lm.prefix_token_id, *lm.tok_encode(text)]:
        raise ValueError(f"{prefix!r} + text does not tokenize as lm-eval's prefix token + text")
    aligned = strided_perplexity(model, tokenizer, [prefixed], window + 1, window, None, batch_size,
                                 progress=False)
    return {
        "text_tokens": n_tokens, "window": window, "prefix_token": prefix,
        "lm_eval": {"ppl": lm_ppl, "tokens": n_tokens, "seconds": lm_seconds,
                    "tokens_per_s": n_tokens / lm_seconds},
        "project": {"ppl": native.ppl, "tokens": native.tokens, "seconds": native_seconds,
                    "tokens_per_s": native.tokens / native_seconds},
        "project_aligned": {"ppl": aligned.ppl, "tokens": aligned.tokens},
        "ratio_default": native.ppl / lm_ppl,
        "ratio_aligned": aligned.ppl / lm_ppl,
    }


def markdown(header: dict[str, Any], rows: list[dict[str, Any]], ppl: dict[str, Any] | None) -> str:
    """The report: a row per task, then the two evaluators' perplexities and their ratios."""
    lines = [f"# Evaluation speed ({header['model']}, eval={header['preset']}, "
             f"prompt sharing {'on' if header['share_prompts'] else 'off'}, "
             f"batch size {header['batch_size']})", "",
             f"{header['torch_threads']} torch threads; {header['date']}", ""]
    if rows:
        lines += ["| task | items (limit) | seconds | items/s | metrics |", "|---|---:|---:|---:|---|"]
        for row in rows:
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in row["metrics"].items())
            lines.append(f"| {row['task']} | {row['items']} ({row['limit']}) | {row['seconds']:.1f} | "
                         f"{row['items_per_s']:.2f} | {metrics} |")
        total = sum(r["seconds"] for r in rows)
        lines += [f"| total | {sum(r['items'] for r in rows)} | {total:.1f} | | |", ""]
    if ppl:
        lines += [f"Perplexity on {ppl['text_tokens']} tokens, window {ppl['window']}:", "",
                  "| evaluator | ppl | scored tokens | seconds | tokens/s |", "|---|---:|---:|---:|---:|"]
        for name in ("project", "lm_eval"):
            entry = ppl[name]
            lines.append(f"| {name} | {entry['ppl']:.6f} | {entry['tokens']} | {entry['seconds']:.1f} | "
                         f"{entry['tokens_per_s']:.0f} |")
        lines += ["", f"- ratio project/lm-eval at their defaults: {ppl['ratio_default']:.6f}",
                  f"- ratio aligned (project on `{ppl['prefix_token']}` + text, window {ppl['window'] + 1}, "
                  f"stride {ppl['window']}): {ppl['ratio_aligned']:.8f} "
                  f"(|1 - ratio| {'<' if abs(1 - ppl['ratio_aligned']) < 1e-4 else '>='} 1e-4)", ""]
    return "\n".join(lines)


def main() -> None:
    """Measure, then write the report and its numbers (JSON) beside it."""
    parser = bench_parser(MODULE, __doc__, domain=False)
    parser.add_argument("--preset", default="quick", help="a conf/eval entry (its `tasks` limits)")
    parser.add_argument("--domains", default="healthcare,legal")
    parser.add_argument("--tasks", default=None, help="comma-separated subset, e.g. rqe,casehold")
    parser.add_argument("--no-share-prompts", action="store_true",
                        help="lm-eval's own log-likelihood batching")
    parser.add_argument("--batch-size", type=int, default=None, help="instead of the preset's batch_size")
    parser.add_argument("--skip-tasks", action="store_true")
    parser.add_argument("--skip-perplexity", action="store_true")
    parser.add_argument("--ppl-tokens", type=int, default=4096)
    parser.add_argument("--ppl-window", type=int, default=512)
    parser.add_argument("--ppl-batch-size", type=int, default=4)
    parser.add_argument("--out", default="results/bench/eval_speed.md",
                        help="relative to the project root; a .json beside it holds every number")
    args = parser.parse_args()

    import torch

    from core.data import load_texts, resolve_data_root
    from core.models import load_model

    settings = [f"model={args.model}", f"eval={args.preset}"]
    cfg = compose_config([*settings, "domain=legal"])  # the legal text is the perplexity sample
    root = resolve_data_root(cfg.data.root)
    model, tokenizer = load_model(cfg.model)
    header = {"model": args.model, "preset": args.preset, "share_prompts": not args.no_share_prompts,
              "batch_size": args.batch_size or "preset",
              "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M")}
    rows = [] if args.skip_tasks else task_speed(
        model, tokenizer, settings, args.domains.split(","),
        set(args.tasks.split(",")) if args.tasks else None, not args.no_share_prompts, root, args.batch_size)
    ppl = None
    if not args.skip_perplexity:
        spec = OmegaConf.to_container(cfg.domain.perplexity.multilegalpile, resolve=True)
        text, _ = round_trip_text(tokenizer, "\n\n".join(load_texts(spec, root)), args.ppl_tokens)
        ppl = perplexity_agreement(model, tokenizer, text, args.ppl_window, args.ppl_batch_size)
    report = markdown(header, rows, ppl)
    out = write_atomic(project_path(args.out), report + "\n")
    payload = {**header, "tasks": rows, "perplexity": ppl}
    write_atomic(out.with_suffix(".json"), json.dumps(payload, indent=2) + "\n")
    print(report)
    print(f"written: {out} and {out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
