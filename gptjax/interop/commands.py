"""`gptjax convert` and `gptjax sample`."""

from __future__ import annotations

import sys

from gptjax.config import SAMPLE


def _convert(args) -> int:
    from gptjax.config import ConfigError
    from gptjax.interop import pretrained
    from gptjax.store import paths

    if not args.overwrite and paths.exists(paths.as_path(args.dst)):  # refused before anything is loaded
        raise ConfigError(f"{args.dst} already exists; choose a new directory or pass --overwrite (which replaces "
                          "it once the new one is complete)")
    pretrained.convert(args.src, args.dst, to=args.to, merge_lora=args.merge_lora, peft=args.peft,
                       overwrite=args.overwrite)
    print(f"wrote {args.dst} ({args.to} format)")
    return 0


def _sample(args) -> int:
    import gptjax
    from gptjax import generation

    model = gptjax.from_pretrained(args.model)  # read-only for run directories
    tokenizer = getattr(model, "tokenizer", None)
    if args.prompt_ids:
        try:
            prompts = [[int(t) for t in p.split(",")] for p in args.prompt_ids]
        except ValueError:
            bad = next(p for p in args.prompt_ids if not all(t.strip().lstrip("-").isdigit() for t in p.split(",")))
            print(f"gptjax sample: error: --prompt-ids {bad!r}: expected token ids separated by commas, such as "
                  "15496,995", file=sys.stderr)
            return 2
    elif args.prompt:
        prompts = args.prompt
    elif tokenizer is not None:
        prompts = [[tokenizer.eot_id] if tokenizer.eot_id is not None else tokenizer.encode("\n")]
    else:
        print("gptjax sample: error: this model has no tokenizer; give --prompt-ids", file=sys.stderr)
        return 2
    single = len(prompts) == 1 and args.num_return_sequences == 1
    if args.temperature == 0 and args.num_return_sequences > 1:
        print(f"gptjax sample: --temperature 0 is greedy, so the {args.num_return_sequences} sequences per prompt "
              "are identical by construction; give a temperature above 0 to draw different ones", file=sys.stderr)
    try:
        encoded = generation.prompt_ids(prompts, tokenizer, model.cfg.vocab_size)  # ids checked against the vocabulary
        if model.cfg.position == "learned" and max(map(len, encoded)) + args.max_new_tokens > model.cfg.max_seq_len:
            # Longer than the learned context: slide the window (generation.sample), as nanoGPT does.
            _print_outputs([list(ids) + generation.sample(
                model, list(ids), args.max_new_tokens, temperature=args.temperature, top_k=args.top_k or None,
                top_p=args.top_p, seed=args.seed + 10_000 * copy, repetition_penalty=args.repetition_penalty,
                no_repeat_ngram_size=args.no_repeat_ngram_size, stop=args.stop)
                for ids in encoded for copy in range(args.num_return_sequences)], tokenizer, args.num_return_sequences)
            return 0
    except ValueError as e:  # sampling options out of range
        print(f"gptjax sample: error: {e}", file=sys.stderr)
        return 2
    streamer = _Streamer(tokenizer, prompts[0]) if single and tokenizer is not None and not args.no_stream else None
    try:
        out = generation.generate(model, encoded, args.max_new_tokens, temperature=args.temperature,
                                  top_k=args.top_k or None, top_p=args.top_p,
                                  repetition_penalty=args.repetition_penalty,
                                  no_repeat_ngram_size=args.no_repeat_ngram_size,
                                  num_return_sequences=args.num_return_sequences, stop=args.stop, seed=args.seed,
                                  stream=streamer)
    except ValueError as e:  # sampling options out of range
        print(f"gptjax sample: error: {e}", file=sys.stderr)
        return 2
    if streamer is not None:
        streamer.finish(out[0])
        return 0
    _print_outputs(out, tokenizer, args.num_return_sequences)
    return 0


def _print_outputs(out: list[list[int]], tokenizer, copies: int) -> None:
    for i, ids in enumerate(out):
        if len(out) > 1:  # one header line per output, so texts that run together stay apart
            prompt, copy = divmod(i, copies)
            print(f"--- prompt {prompt + 1}" + (f", sample {copy + 1}" if copies > 1 else "") + " ---")
        print(tokenizer.decode(ids) if tokenizer is not None else ",".join(map(str, ids)))


class _Streamer:
    """Prints text as tokens arrive (decoding the whole continuation each time, so characters
    split over tokens come out whole)."""

    def __init__(self, tokenizer, prompt):
        self.tokenizer, self.prompt, self.new, self.printed = tokenizer, prompt, [], ""
        text = prompt if isinstance(prompt, str) else tokenizer.decode(prompt)
        print(text, end="", flush=True)

    def __call__(self, index: int, token: int) -> None:
        self.new.append(token)
        self._show(self.tokenizer.decode(self.new))

    def _show(self, text: str) -> None:
        if text.startswith(self.printed) and not text.endswith("\ufffd"):
            print(text[len(self.printed):], end="", flush=True)
            self.printed = text

    def finish(self, ids) -> None:
        start = len(self.prompt) if not isinstance(self.prompt, str) else len(self.tokenizer.encode(self.prompt))
        final = self.tokenizer.decode(ids[start:])  # stop strings may have cut the streamed text
        print(final[len(self.printed):] if final.startswith(self.printed) else "", flush=True)


def add_parser(sub) -> None:
    """This subpackage's commands, added to the `gptjax` command line (cli.py assembles them)."""
    s = sub.add_parser("convert", help="convert between Hugging Face and gptjax checkpoints")
    s.add_argument("src", help="a Hugging Face directory (safetensors), a gptjax directory or a run directory")
    s.add_argument("dst", help="output directory (must not exist, unless --overwrite)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output directory, once the new "
                   "one is complete")
    s.add_argument("--to", choices=["hf", "gptjax"], required=True, help="output format")
    s.add_argument("--merge-lora", action="store_true", help="a LoRA run: its adapters merged into the base "
                   "(what every conversion of a LoRA run writes; the flag says so)")
    s.add_argument("--peft", action="store_true", help="a LoRA run: the adapters alone in PEFT's format "
                   "(adapter_config.json + adapter_model.safetensors; with --to hf)")
    s.set_defaults(func=_convert)

    s = sub.add_parser("sample", help="generate from a run directory, a gptjax or a Hugging Face directory")
    s.add_argument("model", help="run directory (its latest verified checkpoint), gptjax or Hugging Face directory")
    s.add_argument("--prompt", action="append", default=[], help="text to continue (repeat for a batch; "
                   "default: end-of-text or a newline)")
    s.add_argument("--prompt-ids", action="append", default=[], help="token ids to continue, comma-separated")
    s.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per prompt")
    s.add_argument("--temperature", type=float, default=SAMPLE.temperature, help="0 is greedy")
    s.add_argument("--top-k", type=int, default=SAMPLE.top_k, help="sample among the k most likely tokens (0: all)")
    s.add_argument("--top-p", type=float, default=None, help="sample from the smallest set of tokens with this "
                   "probability (default: all)")
    s.add_argument("--repetition-penalty", type=float, default=1.0, help="divide the logits of tokens already seen "
                   "(Keskar et al.; 1 is none)")
    s.add_argument("--no-repeat-ngram-size", type=int, default=0, help="never repeat an n-gram of this size (0: off)")
    s.add_argument("--num-return-sequences", type=int, default=1, help="samples per prompt")
    s.add_argument("--stop", action="append", default=[], help="stop after this string (repeatable)")
    s.add_argument("--seed", type=int, default=0, help="sampling seed")
    s.add_argument("--no-stream", action="store_true", help="print when done instead of token by token")
    s.set_defaults(func=_sample)
