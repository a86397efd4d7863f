"""gptjax models inside lm-evaluation-harness.

`import gptjax.harness` registers `GptjaxLM` under the name "gptjax", so that

    lm_eval.simple_evaluate(model="gptjax", model_args="path=DIR,batch_size=8", tasks=[...])
    lm_eval.simple_evaluate(model=GptjaxLM("DIR"), tasks=[...])
    gptjax lm-eval --model gptjax --model_args path=DIR --tasks hellaswag

all work. The class is a TemplateLM: lm-eval itself turns text requests into token pairs (its
`_encode_pair`, empty contexts, trailing spaces), and gptjax's batched scorer answers them.
"""

from __future__ import annotations

import sys

from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from gptjax.evals import scorer as scoring


@register_model("gptjax")
class GptjaxLM(TemplateLM):
    """A gptjax run directory, gptjax directory or Hugging Face directory, evaluated by lm-eval."""

    def __init__(self, path: str, batch_size: int | str = 8, max_length: int | str | None = None,
                 max_gen_toks: int | str = 256, **kwargs):
        super().__init__()
        import gptjax

        self.model = gptjax.from_pretrained(path)
        self.tokenizer = getattr(self.model, "tokenizer", None)
        if self.tokenizer is None:
            raise ValueError(f"{path}: this model has no tokenizer; lm-eval needs one to encode its tasks")
        self.path = path
        self.scorer = scoring.Scorer(self.model, batch_size=int(batch_size),
                                     max_length=None if max_length is None else int(max_length))
        self.max_gen_toks = int(max_gen_toks)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> GptjaxLM:
        """--model_args first: lm-eval's CLI also passes its own --batch_size and --device, and
        `path=DIR,batch_size=16` must win over the CLI's default batch size, not collide with it."""
        from lm_eval.utils import simple_parse_args_string

        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None) -> GptjaxLM:
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    @property
    def max_length(self) -> int:
        return self.scorer.max_length

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs) -> list[tuple[float, bool]]:
        self.scorer.progress = not disable_tqdm
        return self.scorer.loglikelihood_tokens([(context, continuation) for _, context, continuation in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        # lm-eval's windows (huggingface.py): every token predicted once, the first after end-of-text.
        windows, owner = [], []
        for index, request in enumerate(requests):
            ids = self.tok_encode(request.args[0])
            for pair in get_rolling_token_windows(ids, self.eot_token_id, self.max_length, 1):
                windows.append(make_disjoint_window(pair))
                owner.append(index)
        scores = self._loglikelihood_tokens([(None, c, x) for c, x in windows], disable_tqdm)
        totals = [0.0] * len(requests)
        for index, (logprob, _) in zip(owner, scores):
            totals[index] += logprob
        return totals

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        from gptjax import generation

        out = []
        for request in requests:
            context, kwargs = request.args
            kwargs = dict(kwargs)
            until = kwargs.pop("until", None) or [self.tok_decode([self.eot_token_id])]
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
            temperature = float(kwargs.pop("temperature", 0.0)) if kwargs.pop("do_sample", None) is not False else 0.0
            ids = self.tok_encode(context)[-max(1, self.max_length - max_new):]  # lm-eval cuts from the left
            seq = generation.generate(self.model, [ids], max_new, temperature=temperature,
                                      top_p=kwargs.pop("top_p", None), top_k=kwargs.pop("top_k", None),
                                      stop=until, tokenizer=self.tokenizer)[0]
            text = self.tok_decode([t for t in seq[len(ids):] if t != self.eot_token_id])
            for stop in until:  # lm-eval returns the text before the first stop sequence
                text = text.split(stop)[0]
            out.append(text)
        return out


def main(argv: list[str] | None = None) -> int:
    """lm-eval's own command line, with the gptjax model registered."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    cli_evaluate()
    return 0
