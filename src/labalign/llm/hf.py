"""`Backend` over a Hugging Face causal LM directory, run in-process with transformers.

Requests are batched (left padding) and decoded by `hf_decode` (finished rows leave the batch), or by
`generate` when streaming. Sampling does not use the global RNG: each output row draws from its own
generator seeded from the request's seed, so the same request and seed give the same text whatever
else shares its batch. Per-row limits (max tokens, stop strings) end rows independently. All model
calls run on one worker thread so the event loop stays responsive.
"""

from __future__ import annotations

import functools
import hashlib
import math
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import transformers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
    TextStreamer,
)

from labalign.errors import LabalignError
from labalign.llm import hf_decode
from labalign.llm.chat_template import DEFAULT_CHAT_TEMPLATE, DEFAULT_STOP, ensure_chat_template
from labalign.llm.convert import MARKER, quiet_transformers
from labalign.llm.local_queue import SerialWorker, StopScanner, derive_seed, truncate_at_stop
from labalign.llm.types import (
    Choice,
    LLMCallError,
    LLMError,
    LLMRequest,
    LLMResult,
    ResultCallback,
)

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SMALL_FILE = 64 * 1024 * 1024  # weight files up to this size are identified by content, larger by size+mtime


def pick_device(requested: str | None) -> str:
    """`requested`, else the best accelerator available, else "cpu"."""
    if requested:
        return requested
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def native_bf16(device: str) -> bool:
    """Whether `device` runs bf16 matmuls natively: CUDA with bf16, CPUs with AVX512-BF16 or AMX (on 2
    AVX512-BF16 cores a (720 x 640) @ (640 x 262k) matmul ran 2.6x faster than in fp32; on CPUs without
    them bf16 is emulated and slower)."""
    if device.startswith("cuda"):
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device == "cpu":
        native = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        return bool(native and torch.cpu._is_avx512_bf16_supported())
    return False


def pick_dtype(device: str, requested: str | None) -> torch.dtype:
    """The compute dtype: `requested` ('float32', 'bfloat16', 'float16', 'auto'/None).

    auto: bf16 on CUDA (fp16 where bf16 is missing), fp16 on MPS, fp32 on CPU. On a CPU with native bf16
    (AVX512-BF16) bf16 decoding answered the quick run's 126 held-out questions 2.3x faster, but a tuned
    model's merged weights rounded to bf16 lose part of what training changed: on four tuned models
    their knowledge F1 came out 0.000 to 0.010 lower than in fp32 (the base's 0.004 higher), and greedy
    answers depend more on what else is in the batch. So it is opt-in there (`dtype="bfloat16"`).
    """
    if requested is not None and requested != "auto":
        try:
            return _DTYPES[requested.lower()]
        except KeyError:
            choices = ", ".join(["auto", *sorted(_DTYPES)])
            raise LabalignError(f"unknown dtype {requested!r}", hint=f"use one of: {choices}") from None
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.startswith("mps"):
        return torch.float16
    return torch.float32


def model_dir_identity(model_dir: Path) -> str:
    """'hf:' + a hash of the config, tokenizer files and weights (small files by content, large ones by
    name, size and mtime, so a multi-GB checkpoint is not read at startup)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in model_dir.iterdir() if p.is_file()):
        name = path.name
        if name.endswith(".sha256.json") or name.startswith(".") or name == MARKER:
            continue
        if name.endswith(_WEIGHT_SUFFIXES) and path.stat().st_size > _SMALL_FILE:
            stat = path.stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
        elif name.endswith((".json", ".jinja", ".model", ".txt", *_WEIGHT_SUFFIXES)):
            digest.update(f"{name}:".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return "hf:" + digest.hexdigest()


@dataclass
class _Row:
    """One output sequence: choice `choice` of request `index`."""

    index: int
    choice: int
    prompt_ids: list[int]
    max_new: int
    temperature: float
    top_p: float
    stops: tuple[str, ...]
    seed: int
    choice_out: Choice | None = None
    completion_tokens: int = 0


@dataclass
class _Pending:
    request: LLMRequest
    prompt_tokens: int = 0
    rows: list[_Row] = field(default_factory=list)
    error: LLMError | None = None


class TransformersBackend:
    """A local Hugging Face model directory behind the `Backend` interface."""

    def __init__(
        self,
        model_dir: Path,
        *,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise LabalignError("not a Hugging Face model directory (no config.json)", path=self.model_dir)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, dtype)
        self.batch_size = batch_size
        self._seed = seed
        started = time.perf_counter()
        try:
            with quiet_transformers(transformers):  # no tqdm bars in chat/serve output
                self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir, local_files_only=True)
                model: Any = AutoModelForCausalLM.from_pretrained(
                    self.model_dir, local_files_only=True, dtype=self.dtype
                )
            self._model = model.to(self.device)
        except (OSError, ValueError) as exc:
            raise LabalignError(f"cannot load the model: {exc}", path=self.model_dir) from exc
        self.load_seconds = time.perf_counter() - started
        self._model.eval()
        self._tokenizer.padding_side = "left"
        # Lengths are checked against the context window per request; this only silences a warning.
        self._tokenizer.model_max_length = sys.maxsize
        # A model without a chat template is prompted with labalign's default one, as the trainer trains it;
        # that template ends turns with plain text, so its stop strings apply (also when a converted or
        # trained model carries it).
        ensure_chat_template(self._tokenizer)
        self._chat_stops = DEFAULT_STOP if self._tokenizer.chat_template == DEFAULT_CHAT_TEMPLATE else ()
        self._eos_ids = _eos_ids(self._model, self._tokenizer)
        pad = self._tokenizer.pad_token_id
        self._pad_id = int(pad) if pad is not None else min(self._eos_ids, default=0)
        self._vocab_size = int(self._model.get_input_embeddings().weight.shape[0])
        self._context_window = _context_window(self._model.config)
        self._identity = model_dir_identity(self.model_dir)
        self._drop_finished = hf_decode.supports_row_dropping(self._model)
        self._worker = SerialWorker("labalign-hf")

    # -- Backend interface -------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def context_window(self) -> int | None:
        return self._context_window

    async def generate(
        self, requests: Sequence[LLMRequest], *, on_result: ResultCallback | None = None
    ) -> list[LLMResult]:
        # Tokenizing happens on the worker too: a fast tokenizer used from two threads at once can fail
        # ("Already borrowed") while the worker decodes for stop strings.
        pending = await self._worker.run(lambda: [self._prepare(r, index=i) for i, r in enumerate(requests)])
        results: list[LLMResult | None] = [None] * len(pending)
        remaining = [len(p.rows) for p in pending]

        def finish(i: int) -> None:
            result = results[i] = self._result(pending[i])
            if on_result is not None:
                on_result(result)

        for i, p in enumerate(pending):
            if p.error is not None:
                finish(i)
        rows = sorted(
            (row for p in pending if p.error is None for row in p.rows), key=lambda r: -len(r.prompt_ids)
        )
        spans = hf_decode.plan_batches(
            [len(row.prompt_ids) for row in rows],
            [row.max_new for row in rows],
            batch_size=self.batch_size,
            step_cost=hf_decode.step_cost_tokens(self.device),
        )
        for start, end in spans:
            chunk = rows[start:end]
            await self._worker.run(functools.partial(self._run_chunk, chunk, pending))
            for i in sorted({row.index for row in chunk}):
                remaining[i] -= sum(1 for row in chunk if row.index == i)
                if remaining[i] == 0:
                    finish(i)
        return [r for r in results if r is not None]

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        def produce(emit: Callable[[str], None], cancel: threading.Event) -> None:
            pending = self._prepare(request, choices=1)
            if pending.error is not None:
                raise LLMCallError(pending.error)
            self._stream_row(pending.rows[0], emit, cancel)

        try:
            async for delta in self._worker.stream(produce):
                yield delta
        except LLMCallError:
            raise
        except Exception as exc:  # an in-process failure: report it like generate() would
            raise LLMCallError(LLMError("internal", f"{type(exc).__name__}: {exc}")) from exc

    async def aclose(self) -> None:
        if self._worker.closed:
            return
        self._worker.close()
        del self._model
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    # -- requests -> rows ----------------------------------------------------------------------------

    def _prepare(self, request: LLMRequest, *, index: int = 0, choices: int | None = None) -> _Pending:
        p = _Pending(request)
        params = request.params
        try:
            if params.temperature < 0 or not 0 < params.top_p <= 1 or params.max_tokens < 1 or params.n < 1:
                raise _BadRequest("temperature must be >= 0, top_p in (0, 1], max_tokens and n >= 1")
            ids = self._encode(request)
        except _BadRequest as exc:
            p.error = LLMError("invalid_request", str(exc))
            return p
        except Exception as exc:  # a tokenizer/template crash is this request's problem only
            p.error = LLMError("internal", f"{type(exc).__name__}: {exc}")
            return p
        p.prompt_tokens = len(ids)
        window = self._context_window
        if window is not None and len(ids) + params.max_tokens > window:
            p.error = LLMError(
                "context_length",
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the model's "
                f"context window of {window} tokens",
            )
            return p
        stops = tuple(dict.fromkeys((*params.stop, *(self._chat_stops if request.is_chat else ()))))
        base_seed = params.seed if params.seed is not None else self._seed
        p.rows = [
            _Row(
                index=index,
                choice=j,
                prompt_ids=ids,
                max_new=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                stops=stops,
                seed=derive_seed(base_seed, request.sample_index, j),
            )
            for j in range(choices if choices is not None else params.n)
        ]
        return p

    def _encode(self, request: LLMRequest) -> list[int]:
        if request.messages is not None:
            messages = [{"role": m.role, "content": m.content} for m in request.messages]
            try:
                text = self._tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=False
                )
            except Exception as exc:  # templates raise on roles they do not support
                raise _BadRequest(f"the chat template rejected the messages: {exc}") from exc
            # The template writes any BOS itself; letting the tokenizer add one would double it.
            ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = self._tokenizer(request.prompt)["input_ids"]
        if not ids:
            raise _BadRequest("the prompt is empty")
        if max(ids) >= self._vocab_size:
            raise _BadRequest("the prompt has tokens outside the model's vocabulary")
        return list(ids)

    def _result(self, p: _Pending) -> LLMResult:
        if p.error is not None:
            return LLMResult(request=p.request, prompt_tokens=p.prompt_tokens, error=p.error)
        for row in p.rows:
            if row.choice_out is None:
                return LLMResult(
                    request=p.request,
                    prompt_tokens=p.prompt_tokens,
                    error=LLMError("internal", "generation failed for this request"),
                )
        choices = tuple(row.choice_out for row in sorted(p.rows, key=lambda r: r.choice) if row.choice_out)
        return LLMResult(
            request=p.request,
            choices=choices,
            prompt_tokens=p.prompt_tokens,
            completion_tokens=sum(row.completion_tokens for row in p.rows),
        )

    # -- on the worker thread ------------------------------------------------------------------------

    def _run_chunk(self, chunk: list[_Row], pending: list[_Pending]) -> None:
        """Generate a batch of rows; if it fails, retry each row alone so only the culprit fails."""
        if len(chunk) > 1:
            try:
                self._generate(chunk)
                return
            except Exception:
                for row in chunk:
                    self._run_chunk([row], pending)
                return
        row = chunk[0]
        try:
            self._generate([row])
        except Exception as exc:
            pending[row.index].error = LLMError("internal", f"{type(exc).__name__}: {exc}")

    def _generate(self, rows: list[_Row], streamer: TextStreamer | None = None, stopper: Any = None) -> None:
        width = max(len(r.prompt_ids) for r in rows)
        input_ids = torch.full((len(rows), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            n = len(row.prompt_ids)
            input_ids[i, width - n :] = torch.tensor(row.prompt_ids, dtype=torch.long)
            attention[i, width - n :] = 1
        limits = _RowLimits(rows, width, self._tokenizer)
        if streamer is None and stopper is None and self._drop_finished:
            generated = hf_decode.decode(
                self._model,
                input_ids.to(self.device),
                attention.to(self.device),
                max_new=[r.max_new for r in rows],
                choose=_RowSampler(rows, self.device).choose,
                ended=lambda i, tokens: tokens[-1] in self._eos_ids or limits.ended(rows[i], tokens),
            )
            for row, tokens in zip(rows, generated, strict=True):
                row.choice_out, row.completion_tokens = self._decode_row(row, tokens, limits)
            return
        criteria: list[StoppingCriteria] = [limits]
        if stopper is not None:
            criteria.append(stopper)
        config = cast(Any, GenerationConfig)(
            max_new_tokens=max(r.max_new for r in rows),
            do_sample=False,  # _RowSampler does any sampling, per row, with its own generator
            num_beams=1,
            eos_token_id=sorted(self._eos_ids) or None,
            pad_token_id=self._pad_id,
            bos_token_id=self._tokenizer.bos_token_id,
            use_cache=True,
        )
        with torch.inference_mode():
            out = self._model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                generation_config=config,
                logits_processor=LogitsProcessorList([_RowSampler(rows, self.device)]),
                stopping_criteria=StoppingCriteriaList(criteria),
                streamer=streamer,
            )
        out = out.to("cpu")
        for i, row in enumerate(rows):
            row.choice_out, row.completion_tokens = self._decode_row(row, out[i, width:].tolist(), limits)

    def _decode_row(self, row: _Row, generated: list[int], limits: _RowLimits) -> tuple[Choice, int]:
        end = limits.ended_at.get(id(row), len(generated))
        tokens = generated[:end]
        eos = next((k for k, t in enumerate(tokens) if t in self._eos_ids), None)
        if eos is not None:
            tokens = tokens[:eos]
        text = str(self._tokenizer.decode(tokens, skip_special_tokens=True))
        text, stopped = truncate_at_stop(text, row.stops)
        # "length" only when the row ran into its own limit, as an OpenAI server reports it.
        reason = "length" if eos is None and not stopped and len(tokens) >= row.max_new else "stop"
        return Choice(text=text, finish_reason=reason), len(tokens)

    def _stream_row(self, row: _Row, emit: Callable[[str], None], cancel: threading.Event) -> None:
        scanner = StopScanner(row.stops)

        def on_text(text: str, end: bool) -> None:
            delta = scanner.feed(text)
            if end:
                delta += scanner.finish()
            if delta:
                emit(delta)

        streamer = _CallbackStreamer(self._tokenizer, on_text)
        self._generate(
            [row], streamer=streamer, stopper=_StopWhen(lambda: cancel.is_set() or scanner.stopped)
        )


class _BadRequest(Exception):
    pass


class _RowSampler(LogitsProcessor):
    """Samples the next token of each sampling row with that row's own generator, then leaves only that
    token possible, so `generate`'s greedy step picks it. Greedy rows are left as they are."""

    def __init__(self, rows: list[_Row], device: str) -> None:
        self._rows = rows
        self._generators: list[torch.Generator | None] = []
        for row in rows:
            if row.temperature > 0:
                self._generators.append(torch.Generator(device=device).manual_seed(row.seed))
            else:
                self._generators.append(None)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for i in range(len(self._rows)):
            token = self._sample(i, scores[i])
            if token is not None:
                scores[i] = -math.inf
                scores[i, token] = 0.0
        return scores

    def choose(self, live: list[int], logits: torch.Tensor) -> torch.Tensor:
        """The next token of each live row (`hf_decode.decode`): greedy, or drawn as __call__ does."""
        tokens = logits.argmax(dim=-1)
        for j, i in enumerate(live):
            token = self._sample(i, logits[j])
            if token is not None:
                tokens[j] = token
        return tokens

    def _sample(self, i: int, scores: torch.Tensor) -> torch.Tensor | None:
        row, generator = self._rows[i], self._generators[i]
        if generator is None:
            return None
        logits = scores.float() / row.temperature
        if row.top_p < 1.0:
            logits = _top_p_filter(logits, row.top_p)
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[0]


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches `top_p`."""
    sorted_logits, order = torch.sort(logits, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    drop = probs.cumsum(dim=-1) - probs >= top_p  # the tokens before this one already reach top_p
    sorted_logits[drop] = -math.inf
    return torch.full_like(logits, -math.inf).scatter(0, order, sorted_logits)


class _RowLimits(StoppingCriteria):
    """Ends each row at its own max_tokens or at its first stop string; records where it ended."""

    def __init__(self, rows: list[_Row], prompt_width: int, tokenizer: Any) -> None:
        self._rows = rows
        self._width = prompt_width
        self._tokenizer = tokenizer
        self.ended_at: dict[int, int] = {}  # id(row) -> generated tokens kept

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self._width
        done = torch.zeros(len(self._rows), dtype=torch.bool, device=input_ids.device)
        for i, row in enumerate(self._rows):
            key = id(row)
            if key not in self.ended_at:
                if row.stops and self._hits_stop(input_ids[i], generated, row.stops):
                    self.ended_at[key] = generated
                elif generated >= row.max_new:
                    self.ended_at[key] = row.max_new
            done[i] = key in self.ended_at
        return done  # type: ignore[return-value]  # a bool tensor is what generate expects

    def ended(self, row: _Row, tokens: list[int]) -> bool:
        """Whether `row`'s generated `tokens` end with one of its stop strings (`hf_decode.decode`)."""
        if row.stops and self._hits_stop(torch.tensor(tokens), len(tokens), row.stops):
            self.ended_at[id(row)] = len(tokens)
            return True
        return False

    def _hits_stop(self, ids: torch.Tensor, generated: int, stops: tuple[str, ...]) -> bool:
        # Only the tail can hold a stop string that was not there one token ago.
        window = min(generated, max(len(s) for s in stops) + 4)
        tail = self._tokenizer.decode(ids[ids.shape[0] - window :].tolist(), skip_special_tokens=True)
        return any(s in tail for s in stops)


class _StopWhen(StoppingCriteria):
    def __init__(self, condition: Callable[[], bool]) -> None:
        self._condition = condition

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        return torch.full(  # type: ignore[return-value]
            (input_ids.shape[0],), self._condition(), dtype=torch.bool, device=input_ids.device
        )


class _CallbackStreamer(TextStreamer):
    """transformers' TextStreamer, handing each piece of finished text to a callback instead of stdout."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str, bool], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self._on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self._on_text(text, stream_end)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _context_window(config: Any) -> int | None:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
