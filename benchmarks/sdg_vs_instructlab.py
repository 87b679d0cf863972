"""labalign's synthetic data generation against instructlab-sdg's, same skill leaves, same teacher server.

Both tools generate from the two skill leaves of examples/taxonomy (a freeform one and a grounded
one), each through its own public library API and its own LAB skills pipelines ("full" for
instructlab-sdg), against the same OpenAI-compatible endpoint:

- `slots`: the simulated server of benchmarks/_slot_server.py with the SDG teacher of
  benchmarks/_sdg_teacher.py: K parallel slots, `ms-per-token` per generated token, answers in the
  format each prompt asks for, judges with the same odds for both tools. It counts every token it
  serves, so tokens per accepted sample are measured on the server side, the same way for both.
- `llamacpp`: `labalign serve default` (the embedded Gemma 3 270M through llama.cpp) behind
  benchmarks/_usage_proxy.py, which adds up the token counts the server reports. Slow on 2 cores,
  so each tool gets a time limit (--llamacpp-timeout) and the samples it accepted by then count:
  labalign's from its progress events, instructlab-sdg's from the leaves it finished.

Accepted samples are those that passed every filter: labalign's training plus held-out samples,
instructlab-sdg's per-leaf pipeline output (generated_*/ before mixing). "server busy" is the share
of the wall time the slot server would need for the tokens served with all slots busy (its capacity
used). Wall time is the library
call (`generate()` / `generate_data()`), imports excluded; instructlab-sdg's pipelines-only time
(its generate_taxonomy stage) is shown too. On the slot server labalign runs with its default
settings and instructlab-sdg with ilab's: num_cpus 10 and batch_size 8 (ilab's default for vLLM
servers), and also batch_size 0 (one request per block, its fastest setting there); model family
merlinite. On llama.cpp, which answers one request at a time, both keep one request in flight with
600 s per attempt, instructlab-sdg as ilab runs it there (batch_size 0, one prompt per request).

instructlab-sdg is installed from PyPI into its own venv under ~/.cache/labalign/bench/ on first use
(about 5 minutes, 2.4 GB: docling pulls torch, which is pinned to the CPU build first).

    python benchmarks/sdg_vs_instructlab.py                       # both endpoints (~25 min on 2 cores)
    python benchmarks/sdg_vs_instructlab.py --only slots          # ~12 min
    python benchmarks/sdg_vs_instructlab.py --only llamacpp --llamacpp-timeout 1800
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _slot_server
import _usage_proxy
import httpx

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "taxonomy"
LEAVES = (
    "compositional_skills/writing/formal_business_rewrite",
    "compositional_skills/grounded/extraction/meeting_action_items",
)
INSTRUCTLAB_SDG = "0.8.3"
TORCH = "torch==2.13.0"  # the CPU wheel (pip's find-links); unpinned, docling's torch pulls CUDA
DRIVER = Path(__file__).resolve().parent / "_instructlab_driver.py"

Stats = Callable[[], dict[str, Any]]


@dataclass
class Run:
    tool: str
    endpoint: str
    config: str
    accepted: int
    seconds: float
    completion_tokens: int
    prompt_tokens: int
    requests: int
    pipeline_seconds: float | None = None  # instructlab-sdg's generate_taxonomy stage alone
    ideal_seconds: float | None = None  # the slot server's time for these tokens with every slot busy
    note: str = ""

    @property
    def per_minute(self) -> float:
        return 60 * self.accepted / self.seconds if self.seconds else 0.0

    @property
    def tokens_per_accepted(self) -> float:
        return self.completion_tokens / self.accepted if self.accepted else float("inf")


# -- instructlab-sdg in its own venv ------------------------------------------------------------------


def instructlab_python(version: str, cache: Path) -> Path:
    """The venv's python, installing instructlab-sdg==version there on first use."""
    venv = cache / f"instructlab-sdg-{version}"
    python = venv / "bin" / "python"
    marker = venv / ".labalign-bench-installed"
    if marker.is_file():
        return python
    print(f"installing instructlab-sdg=={version} into {venv} (first run only, ~5 min)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    # torch first, then again as a pin: docling (a dependency since 0.5) needs torch and torchvision,
    # and pip would otherwise pick the CUDA build from PyPI.
    subprocess.run([*pip, TORCH], check=True)
    subprocess.run([*pip, TORCH, f"instructlab-sdg=={version}"], check=True)
    marker.write_text(version + "\n", encoding="utf-8")
    return python


def make_taxonomy(dest: Path) -> str:
    """A git taxonomy whose diff against branch `base` is the two leaves; returns the base ref."""

    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args],
            cwd=dest,
            check=True,
            capture_output=True,
        )

    dest.mkdir(parents=True)
    git("init", "-q", "-b", "main")
    (dest / "README.md").write_text("benchmark taxonomy\n", encoding="utf-8")
    git("add", "README.md")
    git("commit", "-q", "-m", "base")
    git("branch", "base")
    for leaf in LEAVES:
        shutil.copytree(EXAMPLES / leaf, dest / leaf)
    git("add", ".")
    git("commit", "-q", "-m", "leaves")
    return "base"


def _kill_group(process: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def run_instructlab(
    python: Path,
    url_v1: str,
    model: str,
    taxonomy: Path,
    base: str,
    out: Path,
    *,
    endpoint: str,
    batch_size: int,
    timeout_s: float,
    stats: Stats,
    batched_server: bool = True,
) -> Run:
    before = stats()
    command = [
        str(python),
        str(DRIVER),
        "--url",
        url_v1,
        "--model",
        model,
        "--taxonomy",
        str(taxonomy),
        "--taxonomy-base",
        base,
        "--out",
        str(out),
        "--batch-size",
        str(batch_size),
        "--num-cpus",
        "10",
        *([] if batched_server else ["--no-batched-server"]),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TQDM_DISABLE": "1"}
    log = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as log_file:
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            cwd=out.parent,
            env=env,
            start_new_session=True,
        )
        try:
            stdout, _ = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(process)
            stdout = ""
    elapsed = time.perf_counter() - started
    after = stats()
    config = f"batch_size {batch_size}" + ("" if batched_server else ", 1 prompt/request")
    tokens = after["completion_tokens"] - before["completion_tokens"]
    prompt = after["prompt_tokens"] - before["prompt_tokens"]
    requests = after["requests"] - before["requests"]
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        # Stopped at its time limit (or failed): instructlab-sdg writes each leaf's accepted samples
        # to generated_*/ when the leaf is done, so the leaves it finished still count.
        done = sum(
            sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
            for path in out.glob("generated_*/*.jsonl")
        )
        timed_out = process.returncode in (-9, None)
        why = f"time limit {timeout_s:.0f} s: accepted so far" if timed_out else f"failed (see {log})"
        return Run("instructlab-sdg", endpoint, config, done, elapsed, tokens, prompt, requests, note=why)
    result = json.loads(lines[-1])
    return Run(
        f"instructlab-sdg {result['version']}",
        endpoint,
        config,
        int(result["accepted"]),
        float(result["seconds"]),
        tokens,
        prompt,
        requests,
        pipeline_seconds=float(result["stages"].get("generate_taxonomy", 0.0)),
    )


# -- labalign -----------------------------------------------------------------------------------------


def run_labalign(
    url_v1: str,
    samples: int,
    out: Path,
    *,
    endpoint: str,
    seed: int,
    stats: Stats,
    overrides: dict[str, Any] | None = None,
    config: str = "defaults",
    timeout_s: float | None = None,
) -> Run:
    from labalign.config import load_settings
    from labalign.llm.resolve import open_backend
    from labalign.sdg.driver import leaf_inputs, options_from_settings
    from labalign.sdg.generate import generate
    from labalign.taxonomy import ValidationOptions, load_leaves

    s = load_settings(overrides={"sdg.samples_per_leaf": samples, "sdg.seed": seed, **(overrides or {})})
    leaves = [
        leaf for leaf in load_leaves([EXAMPLES], ValidationOptions.from_settings(s)) if leaf.name in LEAVES
    ]
    jobs = leaf_inputs(leaves, s)
    options = options_from_settings(s)

    # Samples that passed every filter so far, per leaf (the progress events carry them), so that a
    # run stopped at its time limit still counts what it had accepted.
    accepted: dict[str, int] = {}

    def on_event(leaf: str, block: str, done: int, total: int) -> None:
        if block.startswith("round") or block == "done":
            accepted[leaf] = done

    async def go() -> None:
        teacher = open_backend(url_v1, settings=s.llm, cache_dir=s.cache_dir)
        try:
            await generate(jobs, teacher=teacher, out_dir=out, options=options, on_event=on_event)
        finally:
            await teacher.aclose()

    async def limited() -> str:
        try:
            await asyncio.wait_for(go(), timeout_s)
        except TimeoutError:
            return f"time limit {timeout_s:.0f} s: accepted so far"
        return ""

    before = stats()
    started = time.perf_counter()
    note = asyncio.run(limited())
    seconds = time.perf_counter() - started
    after = stats()
    return Run(
        "labalign",
        endpoint,
        f"{samples}/leaf, {config}",
        sum(accepted.values()),
        seconds,
        after["completion_tokens"] - before["completion_tokens"],
        after["prompt_tokens"] - before["prompt_tokens"],
        after["requests"] - before["requests"],
        note=note,
    )


# -- endpoints ----------------------------------------------------------------------------------------


def slots_endpoint(args: argparse.Namespace, python: Path, work: Path) -> list[Run]:
    server, url = _slot_server.start(args.slots, args.ms_per_token, teacher="sdg")
    stats: Stats = lambda: _slot_server.get_stats(url)  # noqa: E731
    endpoint = f"slots {args.slots}x{args.ms_per_token:g}ms"
    runs: list[Run] = []
    try:
        taxonomy = work / "taxonomy"
        base = make_taxonomy(taxonomy)
        for batch_size in args.instructlab_batch_sizes:
            print(f"[{endpoint}] instructlab-sdg, batch_size {batch_size} ...", flush=True)
            runs.append(
                run_instructlab(
                    python,
                    url + "/v1",
                    _slot_server.MODEL,
                    taxonomy,
                    base,
                    work / f"instructlab-slots-b{batch_size}",
                    endpoint=endpoint,
                    batch_size=batch_size,
                    timeout_s=args.timeout,
                    stats=stats,
                )
            )
        print(f"[{endpoint}] labalign ...", flush=True)
        runs.append(
            run_labalign(
                url + "/v1",
                args.samples,
                work / "labalign-slots",
                endpoint=endpoint,
                seed=args.seed,
                stats=stats,
            )
        )
        for run in runs:
            run.ideal_seconds = run.completion_tokens * args.ms_per_token / 1000 / args.slots
        unrecognised = stats()["kinds"].get("unrecognised", 0)
        # instructlab-sdg's probe for batched completions (2 prompts x 3 choices) is all that
        # should be unrecognised.
        print(f"[{endpoint}] requests the SDG teacher did not recognise: {unrecognised}", flush=True)
    finally:
        _slot_server.stop(server)
    return runs


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def llamacpp_server(timeout_s: float) -> Iterator[str]:
    """`labalign serve default` on a free loopback port; yields its base URL once it answers."""
    port = _free_port()
    labalign = Path(sys.executable).with_name("labalign")
    command = [str(labalign), "serve", "default", "--port", str(port), "--model-name", "gemma-3-270m"]
    server = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"labalign serve exited: {server.stderr.read() if server.stderr else ''}")
            try:
                if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("labalign serve did not come up")
            time.sleep(0.5)
        yield url
    finally:
        _kill_group(server)


def llamacpp_endpoint(args: argparse.Namespace, python: Path, work: Path) -> list[Run]:
    endpoint = "llama.cpp Gemma 3 270M"
    runs: list[Run] = []
    with llamacpp_server(timeout_s=300) as upstream:
        proxy, url = _usage_proxy.start(upstream)
        stats: Stats = lambda: _usage_proxy.get_stats(url)  # noqa: E731
        try:
            # Both clients as suits a server that answers one request at a time: one request in
            # flight, 600 s per attempt. (labalign's defaults, 64 in flight and 120 s per attempt,
            # are for servers with parallel slots: here queued requests would time out and be retried.)
            print(f"[{endpoint}] labalign ...", flush=True)
            runs.append(
                run_labalign(
                    url + "/v1",
                    args.llamacpp_samples,
                    work / "labalign-llamacpp",
                    endpoint=endpoint,
                    seed=args.seed,
                    stats=stats,
                    overrides={"llm.max_concurrency": 1, "llm.request_timeout_s": 600},
                    config="1 in flight",
                    timeout_s=args.llamacpp_timeout,
                )
            )
            taxonomy = work / "taxonomy-llamacpp"
            base = make_taxonomy(taxonomy)
            print(f"[{endpoint}] instructlab-sdg (limit {args.llamacpp_timeout:.0f} s) ...", flush=True)
            # As ilab runs it with llama.cpp: batch_size 0 and one prompt per request.
            runs.append(
                run_instructlab(
                    python,
                    url + "/v1",
                    "gemma-3-270m",
                    taxonomy,
                    base,
                    work / "instructlab-llamacpp",
                    endpoint=endpoint,
                    batch_size=0,
                    timeout_s=args.llamacpp_timeout,
                    stats=stats,
                    batched_server=False,
                )
            )
        finally:
            _usage_proxy.stop(proxy)
    return runs


# -- report -------------------------------------------------------------------------------------------


def print_report(runs: list[Run]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=200)  # the table is wide; do not fold it to a pipe's 80 columns
    table = Table(title="LAB skills SDG: labalign vs instructlab-sdg (same leaves, same server)")
    columns = (
        "tool",
        "endpoint",
        "config",
        "accepted",
        "wall s",
        "accepted/min",
        "completion tok",
        "tok/accepted",
        "prompt tok/accepted",
        "requests",
        "server busy",
        "note",
    )
    for name in columns:
        table.add_column(name, justify="left" if name in ("tool", "endpoint", "config", "note") else "right")
    for r in runs:
        note = r.note
        if r.pipeline_seconds is not None:
            note = f"pipelines alone {r.pipeline_seconds:.0f} s" + (f"; {note}" if note else "")
        table.add_row(
            r.tool,
            r.endpoint,
            r.config,
            str(r.accepted),
            f"{r.seconds:.1f}",
            f"{r.per_minute:.1f}",
            str(r.completion_tokens),
            f"{r.tokens_per_accepted:.0f}" if r.accepted else "-",
            f"{r.prompt_tokens / r.accepted:.0f}" if r.accepted else "-",
            str(r.requests),
            f"{r.ideal_seconds / r.seconds:.0%}" if r.ideal_seconds and r.seconds else "-",
            note,
        )
    console.print(table)
    for endpoint in dict.fromkeys(r.endpoint for r in runs):
        ours = next((r for r in runs if r.endpoint == endpoint and r.tool == "labalign"), None)
        peers = [r for r in runs if r.endpoint == endpoint and r.tool != "labalign"]
        if ours is None or not peers:
            continue
        for peer in peers:
            label = f"{endpoint}, vs instructlab-sdg {peer.config}"
            if not peer.accepted:
                console.print(f"{label}: instructlab-sdg accepted nothing ({peer.note or 'no output'})")
                continue
            speed = ours.per_minute / peer.per_minute
            thrift = ours.tokens_per_accepted / peer.tokens_per_accepted
            line = (
                f"{label}: accepted/min labalign/instructlab [bold]{speed:.1f}x[/], "
                f"tokens/accepted labalign/instructlab [bold]{thrift:.2f}[/]"
            )
            if peer.pipeline_seconds:
                pipelines_rate = 60 * peer.accepted / peer.pipeline_seconds
                line += (
                    f" (accepted/min vs its pipelines stage alone: {ours.per_minute / pipelines_rate:.1f}x)"
                )
            console.print(line, highlight=False)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["slots", "llamacpp"], help="one endpoint only (default: both)")
    parser.add_argument(
        "--samples", type=int, default=150, help="labalign samples per leaf on the slot server"
    )
    parser.add_argument(
        "--llamacpp-samples", type=int, default=2, help="labalign samples per leaf on llama.cpp"
    )
    parser.add_argument("--slots", type=int, default=32, help="parallel slots of the simulated server")
    parser.add_argument("--ms-per-token", type=float, default=10.0, help="decode time per token in a slot")
    parser.add_argument(
        "--instructlab-batch-sizes",
        type=lambda text: [int(x) for x in text.split(",")],
        default=[8, 0],
        help="instructlab-sdg batch_size values to run on the slot server (default 8,0)",
    )
    parser.add_argument(
        "--timeout", type=float, default=1800.0, help="seconds per instructlab-sdg run (slots)"
    )
    parser.add_argument(
        "--llamacpp-timeout",
        type=float,
        default=600.0,
        help="seconds each tool may run on llama.cpp; what it accepted by then counts",
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--instructlab-version", default=INSTRUCTLAB_SDG)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "labalign" / "bench")
    parser.add_argument("--keep", type=Path, help="write outputs here instead of a temporary folder")
    args = parser.parse_args(argv)
    # SIGTERM as an exception, so that the servers started below are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))

    python = instructlab_python(args.instructlab_version, args.cache)
    runs: list[Run] = []
    with tempfile.TemporaryDirectory(prefix="sdg-bench-") as tmp:
        work = args.keep or Path(tmp)
        if args.only in (None, "slots"):
            runs += slots_endpoint(args, python, work)
        if args.only in (None, "llamacpp"):
            runs += llamacpp_endpoint(args, python, work)
    print_report(runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
