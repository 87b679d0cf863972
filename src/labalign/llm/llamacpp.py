"""`Backend` over a GGUF file run in-process by llama.cpp (llama-cpp-python).

The model is loaded once; llama.cpp is not re-entrant, so every call goes through one worker thread and
concurrent callers simply queue. Requests run one after another (llama-cpp-python has no batched
decoding), each choice sampled with its own seed so a request's answers are reproducible.

Waiting requests are not answered first come, first served: the worker takes the one whose prompt shares
the most whole prefill blocks with what the model holds (ties: the oldest), so the few-shot prefix of
one SDG block is evaluated once, not once per interleaved leaf. Answers do not depend on the order (see
`_reuse_whole_blocks`). On the example taxonomy's quick run this cut the prompt tokens to evaluate from
130k to 56k (of 225k) and the generate stage from 821 s to 471 s on 2 AVX2 cores (prefill runs at about
270 tokens/s there), with byte-identical data.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import threading
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from jinja2 import nodes
from jinja2.exceptions import TemplateError
from jinja2.ext import Extension
from jinja2.parser import Parser
from jinja2.sandbox import ImmutableSandboxedEnvironment

from labalign.errors import LabalignError
from labalign.llm.chat_template import DEFAULT_CHAT_TEMPLATE, DEFAULT_STOP
from labalign.llm.convert import check_gguf, file_sha256, gguf_metadata
from labalign.llm.hints import LLAMA_CPP_HINT
from labalign.llm.local_queue import SerialWorker, derive_seed
from labalign.llm.types import Choice, LLMCallError, LLMError, LLMRequest, LLMResult, Message, ResultCallback

# Context used when none is given, capped by the model's own: the KV cache of a 32k context would cost
# hundreds of MB for little use in SDG prompts.
DEFAULT_N_CTX = 8192
# Prompts are evaluated in blocks of this many tokens at positions that are multiples of it, and a
# cached prefix is reused only in whole blocks (see `_reuse_whole_blocks`).
PREFILL_BLOCK = 64
# How many of the oldest waiting requests the worker chooses among.
SCHEDULING_WINDOW = 256

_load_lock = threading.Lock()


def physical_cores() -> int:
    """Physical cores available to this process: llama.cpp gets slower, not faster, on hyper-threads."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 1
    cores: set[tuple[str, str]] = set()
    try:
        physical = core = ""
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                name, _, value = line.partition(":")
                name, value = name.strip(), value.strip()
                if name == "physical id":
                    physical = value
                elif name == "core id":
                    core = value
                elif not name and core:
                    cores.add((physical, core))
                    physical = core = ""
        if core:
            cores.add((physical, core))
    except OSError:
        pass
    return max(1, min(allowed, len(cores) or allowed))


def _cpu_has_amx() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return any(line.startswith("flags") and " amx_tile" in line for line in f)
    except OSError:
        return False


class LlamaCppBackend:
    """A GGUF model behind the `Backend` interface, run by llama.cpp on this machine."""

    def __init__(
        self,
        model_path: Path,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        seed: int = 0,
        order: Literal["shared_prefix", "arrival"] = "shared_prefix",
        n_gpu_layers: int = -1,
    ) -> None:
        """`order="arrival"` answers each caller's requests one after another, callers interleaved as
        they come (labalign's order before the shared-prefix one; see
        benchmarks/llamacpp_request_order.py). `n_gpu_layers`: layers offloaded to a GPU (-1: all) when
        this llama.cpp build can offload; 0 otherwise."""
        try:
            import llama_cpp
        except ImportError as exc:
            raise LabalignError("running a GGUF model needs llama-cpp-python", hint=LLAMA_CPP_HINT) from exc
        self.model_path = check_gguf(Path(model_path))
        meta = gguf_metadata(
            self.model_path, lambda k: k.endswith(".context_length") or k.startswith("general.")
        )
        arch = meta.get("general.architecture", "")
        trained = meta.get(f"{arch}.context_length")
        if n_ctx is None:
            n_ctx = min(DEFAULT_N_CTX, trained) if isinstance(trained, int) and trained > 0 else DEFAULT_N_CTX
        self.n_threads = n_threads or physical_cores()
        self._seed = seed
        self.gpu_layers = n_gpu_layers if llama_cpp.llama_supports_gpu_offload() else 0
        try:
            with _load_lock, _without_amx(llama_cpp):
                self._llm = llama_cpp.Llama(
                    model_path=str(self.model_path),
                    n_ctx=n_ctx,
                    n_threads=self.n_threads,
                    n_threads_batch=self.n_threads,
                    n_batch=PREFILL_BLOCK,
                    seed=seed,
                    n_gpu_layers=self.gpu_layers,
                    verbose=False,
                )
        except (ValueError, RuntimeError) as exc:
            raise LabalignError(f"llama.cpp cannot load this model: {exc}", path=self.model_path) from exc
        # Free llama.cpp's memory at interpreter exit too: Llama.__del__ during module teardown raises.
        self._finalizer = weakref.finalize(self, self._llm.close)
        self._n_ctx = int(self._llm.n_ctx())
        model = self._llm._model
        template = self._llm.metadata.get("tokenizer.chat_template")
        self.has_own_chat_template = bool(template)
        # The default template ends turns with plain text, so its stop strings apply whenever it is used.
        uses_default = not template or template == DEFAULT_CHAT_TEMPLATE
        self._chat_stops: tuple[str, ...] = DEFAULT_STOP if uses_default else ()
        self._template = _compile_template(template or DEFAULT_CHAT_TEMPLATE)
        self._bos = _token_text(model, self._llm.token_bos())
        self._eos = _token_text(model, self._llm.token_eos())
        self._identity = "llamacpp:sha256:" + file_sha256(self.model_path)
        self._worker = SerialWorker("labalign-llamacpp")
        self._waiting: list[_Waiting] = []  # appended on the event loop, taken on the worker
        self._waiting_lock = threading.Lock()
        self._arrivals = itertools.count()
        self._order = order

    # -- Backend interface -------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def context_window(self) -> int | None:
        return self._n_ctx

    async def generate(
        self, requests: Sequence[LLMRequest], *, on_result: ResultCallback | None = None
    ) -> list[LLMResult]:
        if self._worker.closed:
            raise RuntimeError("the model backend is closed")
        if self._order == "arrival":
            return await self._generate_in_arrival_order(requests, on_result)
        loop = asyncio.get_running_loop()
        jobs = [_Waiting(request, next(self._arrivals), loop.create_future()) for request in requests]
        with self._waiting_lock:
            self._waiting.extend(jobs)
        # One worker turn per request: each turn answers whichever waiting request suits the model's
        # state best, so concurrent callers' requests interleave by shared prefix, not by arrival.
        turns = [asyncio.ensure_future(self._worker.run(self._answer_next)) for _ in jobs]
        try:
            for done in asyncio.as_completed([job.result for job in jobs]):
                result = await done
                if on_result is not None:
                    on_result(result)
        finally:
            mine = set(jobs)  # by identity (eq=False)
            with self._waiting_lock:  # a cancelled or failed caller's unanswered requests are dropped
                self._waiting = [job for job in self._waiting if job not in mine]
            await asyncio.gather(*turns, return_exceptions=True)
        return [job.result.result() for job in jobs]

    async def _generate_in_arrival_order(
        self, requests: Sequence[LLMRequest], on_result: ResultCallback | None
    ) -> list[LLMResult]:
        results: list[LLMResult] = []
        for request in requests:
            result = await self._worker.run(functools.partial(self._prepare_and_answer, request))
            results.append(result)
            if on_result is not None:
                on_result(result)
        return results

    async def stream(self, request: LLMRequest) -> AsyncIterator[str]:
        params = request.params
        seed = derive_seed(params.seed if params.seed is not None else self._seed, request.sample_index, 0)

        def produce(emit: Callable[[str], None], cancel: threading.Event) -> None:
            prepared = self._prepare(request)  # on the worker: tokenizing touches the model too
            if isinstance(prepared, LLMError):
                raise LLMCallError(prepared)
            ids, stops = prepared
            self._reuse_whole_blocks(ids)
            chunks = cast(
                Iterator[Any],
                self._llm.create_completion(ids, stream=True, seed=seed, **self._sampling(request, stops)),
            )
            try:
                for chunk in chunks:
                    text = chunk["choices"][0]["text"]
                    if text:
                        emit(text)
                    if cancel.is_set():
                        break
            finally:
                close = getattr(chunks, "close", None)
                if close is not None:
                    close()

        try:
            async for delta in self._worker.stream(produce):
                yield delta
        except LLMCallError:
            raise
        except Exception as exc:  # llama.cpp failed mid-stream
            raise LLMCallError(LLMError("internal", f"{type(exc).__name__}: {exc}")) from exc

    async def aclose(self) -> None:
        if self._worker.closed:
            return
        await self._worker.run(self._finalizer)
        self._worker.close()

    # -- helpers -------------------------------------------------------------------------------------

    def render_chat(self, messages: Sequence[Message]) -> str:
        """The prompt text a chat request becomes: the GGUF's chat template, or labalign's default."""
        return str(
            self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        )

    def _prepare(self, request: LLMRequest) -> tuple[list[int], tuple[str, ...]] | LLMError:
        """Prompt tokens and stop strings of a request, or the error that stops it before generating."""
        params = request.params
        if params.temperature < 0 or not 0 < params.top_p <= 1 or params.max_tokens < 1 or params.n < 1:
            return LLMError(
                "invalid_request", "temperature must be >= 0, top_p in (0, 1], max_tokens and n >= 1"
            )
        try:
            if request.messages is not None:
                try:
                    text = self.render_chat(request.messages)
                except TemplateError as exc:  # e.g. raise_exception() on an unsupported role order
                    return LLMError("invalid_request", f"the chat template rejected the messages: {exc}")
                # The template writes BOS itself; special=True turns its text back into the BOS token.
                ids = self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            else:
                assert request.prompt is not None  # an LLMRequest has messages or a prompt
                ids = self._llm.tokenize(request.prompt.encode("utf-8"), add_bos=True, special=True)
        except Exception as exc:
            return LLMError("internal", f"{type(exc).__name__}: {exc}")
        if not ids:
            return LLMError("invalid_request", "the prompt is empty")
        if len(ids) + params.max_tokens > self._n_ctx:
            return LLMError(
                "context_length",
                f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds the context "
                f"window of {self._n_ctx} tokens",
            )
        stops = tuple(dict.fromkeys((*params.stop, *(self._chat_stops if request.is_chat else ()))))
        return list(ids), stops

    def _answer_next(self) -> None:
        """One worker turn: answer the waiting request that reuses the most of the model's state."""
        with self._waiting_lock:
            # The oldest few only: a turn stays cheap with thousands waiting, and none waits forever.
            waiting = self._waiting[:SCHEDULING_WINDOW]
        if not waiting:
            return  # its caller gave up (cancelled) and took its requests back
        for job in waiting:
            if job.prepared is None:
                job.prepared = self._prepare(job.request)
        held = np.asarray(self._llm.input_ids[: self._llm.n_tokens])
        job = max(waiting, key=lambda j: (self._reusable_tokens(j.prepared, held), -j.arrival))
        with self._waiting_lock:
            if job not in self._waiting:  # withdrawn meanwhile: leave this turn unused
                return
            self._waiting.remove(job)
        assert job.prepared is not None
        result = self._answer(job.request, job.prepared)
        job.result.get_loop().call_soon_threadsafe(_settle, job.result, result)

    def _reusable_tokens(
        self, prepared: tuple[list[int], tuple[str, ...]] | LLMError | None, held: np.ndarray
    ) -> int:
        """Prompt tokens a request would not have to evaluate, given the tokens the model holds (a request
        that fails before generating costs nothing, so it goes first)."""
        if not isinstance(prepared, tuple):
            return self._n_ctx
        ids = prepared[0]
        n = min(len(held), len(ids))
        if n == 0:
            return 0
        same = held[:n] == np.asarray(ids[:n])
        common = n if same.all() else int(np.argmin(same))
        return min(common, len(ids) - 1) // PREFILL_BLOCK * PREFILL_BLOCK

    def _reuse_whole_blocks(self, ids: list[int]) -> None:
        """Let llama-cpp-python reuse only whole PREFILL_BLOCK blocks of the prompt the model holds.

        llama-cpp-python reuses the longest common prefix of the previous and the new prompt, and
        evaluates the rest from there. The rest then falls into other batches than in a fresh
        evaluation, and llama.cpp's CPU kernels round differently per batch shape: the same request
        gave another greedy answer depending on the request before it. Cut back to a block boundary,
        every token is evaluated in the same block as in a fresh evaluation, so answers do not depend
        on history, and prompts that share a long prefix (few-shot examples) still skip most of it.
        """
        held = self._llm.n_tokens
        common = 0
        for a, b in zip(self._llm.input_ids[:held], ids, strict=False):
            if a != b:
                break
            common += 1
        # At least one token is left to evaluate, so the logits come from this evaluation.
        self._llm.n_tokens = min(common, len(ids) - 1) // PREFILL_BLOCK * PREFILL_BLOCK

    def _sampling(self, request: LLMRequest, stops: tuple[str, ...]) -> dict[str, Any]:
        params = request.params
        # Plain temperature + nucleus sampling, as an OpenAI server does: llama.cpp's extra defaults
        # (top_k 40, min_p 0.05, repeat penalty) are switched off so both backends sample alike.
        return {
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "typical_p": 1.0,
            "repeat_penalty": 1.0,
            "stop": list(stops),
        }

    def _prepare_and_answer(self, request: LLMRequest) -> LLMResult:
        return self._answer(request, self._prepare(request))

    def _answer(
        self, request: LLMRequest, prepared: tuple[list[int], tuple[str, ...]] | LLMError
    ) -> LLMResult:
        """One request, on the worker thread; never raises."""
        if isinstance(prepared, LLMError):
            return LLMResult(request=request, error=prepared)
        ids, stops = prepared
        params = request.params
        base_seed = params.seed if params.seed is not None else self._seed
        choices: list[Choice] = []
        completion_tokens = 0
        try:
            for j in range(params.n):
                seed = derive_seed(base_seed, request.sample_index, j)
                self._reuse_whole_blocks(ids)
                out: Any = self._llm.create_completion(ids, seed=seed, **self._sampling(request, stops))
                choice = out["choices"][0]
                choices.append(Choice(text=choice["text"], finish_reason=choice.get("finish_reason")))
                completion_tokens += int(out["usage"]["completion_tokens"])
        except Exception as exc:  # this request fails alone; the model stays usable
            return LLMResult(
                request=request,
                prompt_tokens=len(ids),
                error=LLMError("internal", f"{type(exc).__name__}: {exc}"),
            )
        return LLMResult(
            request=request,
            choices=tuple(choices),
            prompt_tokens=len(ids),
            completion_tokens=completion_tokens,
        )


@dataclass(eq=False)  # compared by identity: two equal requests are still two jobs
class _Waiting:
    request: LLMRequest
    arrival: int
    result: asyncio.Future[LLMResult]
    prepared: tuple[list[int], tuple[str, ...]] | LLMError | None = None  # tokenized on the worker


def _settle(future: asyncio.Future[LLMResult], result: LLMResult) -> None:
    if not future.done():  # its caller may have been cancelled
        future.set_result(result)


class _GenerationTag(Extension):
    """`{% generation %}…{% endgeneration %}` (transformers' marker of assistant text for training masks):
    rendered as its plain content."""

    tags = {"generation"}  # noqa: RUF012  # jinja2 declares it as an instance attribute

    def parse(self, parser: Parser) -> list[nodes.Node]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _compile_template(source: str) -> Any:
    # The same environment settings transformers uses for chat templates, so both backends render alike.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationTag])
    env.globals["raise_exception"] = _raise_exception
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise LabalignError(f"the model's chat template does not compile: {exc}") from exc


def _token_text(model: Any, token: int) -> str:
    if token < 0:
        return ""
    text = model.token_get_text(token)
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


@contextmanager
def _without_amx(llama_cpp: Any) -> Iterator[None]:
    """Load without llama.cpp's extra CPU buffer types on AMX CPUs.

    The AMX matmul path crashed (SIGSEGV in ggml_backend_amx_mul_mat) on the first decode with Gemma 3
    Q4_K_M on this project's Xeon machines; the plain CPU path works and is fast. Elsewhere the extra
    buffer types (weight repacking) are kept. llama-cpp-python has no argument for it, so the default
    model parameters are patched while the model loads (under `_load_lock`).
    """
    if os.environ.get("LABALIGN_LLAMACPP_EXTRA_BUFTS") == "1" or not _cpu_has_amx():
        yield
        return
    low = llama_cpp.llama_cpp
    original = low.llama_model_default_params

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = False
        return params

    low.llama_model_default_params = patched
    try:
        yield
    finally:
        low.llama_model_default_params = original
