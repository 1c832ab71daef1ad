"""lm-eval's HFLM, faster for this suite's tasks and able to stop generation at a line's end.

Multiple choice shares the prompt between candidates: lm-eval's HFLM only reuses logits when every
candidate is a single token, so PrefixSharingLM runs the prompt once per item and scores all
candidates from its key/value cache (CaseHOLD's five ~30-token holdings cost one prompt, not five)."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval.models.huggingface import HFLM
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList

from core.errors import ConfigError


class FirstLineDone(StoppingCriteria):
    """Per sequence: the generated text, leading whitespace aside, holds a complete line."""

    def __init__(self, tokenizer: Any, prompt_length: int) -> None:
        self.tokenizer, self.prompt_length = tokenizer, prompt_length

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_length :], skip_special_tokens=True)
        return torch.tensor(["\n" in text.lstrip() for text in texts], device=input_ids.device)


class PrefixSharingLM(HFLM):
    """HFLM whose log-likelihood runs each distinct prompt once and scores all its candidate
    continuations from the prompt's key/value cache, and whose greedy generation can stop at the
    end of the first non-empty line (`first_line: true` in a task's generation_kwargs); rolling
    log-likelihood and all other generation are lm-eval's own. `share_prompts=False` keeps
    lm-eval's batched scoring (for comparison)."""

    def __init__(self, *args: Any, share_prompts: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.share_prompts = share_prompts

    def continuation_tokens(self, context: str, continuation: str) -> int:
        """How many tokens of `continuation` are scored after `context` (as lm-eval splits them)."""
        return len(self._encode_pair(context, continuation)[1])

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, override_bs: int | None = None):
        if override_bs is not None or self.backend != "causal" or not self.share_prompts:  # e.g. rolling
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, (_, context, _) in enumerate(requests):
            groups.setdefault(tuple(context), []).append(index)
        answers: list[tuple[float, bool] | None] = [None] * len(requests)
        bar = tqdm(groups.items(), desc="loglikelihood (shared prompts)", disable=disable_tqdm)
        for context, members in bar:
            continuations = [requests[i][2] for i in members]
            if len(context) + max(map(len, continuations)) > self.max_length + 1:  # lm-eval truncates
                scored = super()._loglikelihood_tokens([requests[i] for i in members], disable_tqdm=True)
            else:
                scored = self._score_shared(list(context), continuations)
            for i, answer in zip(members, scored, strict=True):
                answers[i] = answer
                if requests[i][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[i][0], answer)
        return answers

    @torch.no_grad()
    def _score_shared(self, context: list[int], continuations: list[list[int]]) -> list[tuple[float, bool]]:
        """Sum of log-probs of each continuation and whether greedy decoding would produce it."""
        multi = [k for k, cont in enumerate(continuations) if len(cont) > 1]
        params = inspect.signature(self.model.forward).parameters
        kwargs = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        cache_arg = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.x
        prompt = torch.tensor([context], device=self.device)
        out = self.model(input_ids=prompt, use_cache=bool(multi), **kwargs)
        first = F.log_softmax(out.logits[0, -1].float(), dim=-1)  # predicts each continuation's first token
        totals = [float(first[cont[0]]) for cont in continuations]
        greedy = [int(first.argmax()) == cont[0] for cont in continuations]
        if multi:
            cache = getattr(out, "cache", None) or out.past_key_values
            cache.batch_repeat_interleave(len(multi))
            width = max(len(continuations[k]) for k in multi) - 1
            tails = torch.tensor(  # right padding: causal attention never lets real tokens see it
                [continuations[k][:-1] + [0] * (width + 1 - len(continuations[k])) for k in multi],
                device=self.device)
            logits = self.model(input_ids=tails, use_cache=True, **{cache_arg: cache}).logits
            logprobs = F.log_softmax(logits.float(), dim=-1)
            for row, k in enumerate(multi):
                targets = torch.tensor(continuations[k][1:], device=self.device)
                steps = logprobs[row, : targets.numel()]
                totals[k] += float(steps.gather(1, targets[:, None]).sum())
                greedy[k] = greedy[k] and bool((steps.argmax(-1) == targets).all())
        return list(zip(totals, greedy, strict=True))

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        if not generation_kwargs.pop("first_line", False):
            return super()._model_generate(context, max_length, stop, **generation_kwargs)
        if generation_kwargs.pop("do_sample", False):
            raise ConfigError("first_line generation is greedy; the task sets do_sample: true")
        generation_kwargs.pop("temperature", None)
        criteria = StoppingCriteriaList([FirstLineDone(self.tokenizer, context.shape[1])])
        return self.model.generate(input_ids=context, max_length=max_length, stopping_criteria=criteria,
                                   pad_token_id=self.tokenizer.pad_token_id, use_cache=True, do_sample=False,
                                   **generation_kwargs)
