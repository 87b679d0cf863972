"""The LAB schedule: phase 1 (knowledge) -> best checkpoint -> phase 2 (skills + replay), or all data
stacked in one phase; held-out splits, resume, the final checkpoint, plots and the summary."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from labalign.errors import LabalignError
from labalign.modeling.models import load_tokenizer, resolve_model
from labalign.paths import default_cache_dir
from labalign.settings.train import TrainSettings
from labalign.train import auto_interpolation
from labalign.train import checkpoint as ckpt
from labalign.train.anchor import BaseTargets, base_targets
from labalign.train.data import read_samples
from labalign.train.distributed import DistContext, barrier, broadcast_object, init_distributed, shutdown
from labalign.train.general import GeneralValidation, replay_epochs, split_general, validation
from labalign.train.interpolate import interpolate_checkpoint
from labalign.train.loop import Evaluator, PhaseSpec, run_phase
from labalign.train.model import attn_implementation, bf16_enabled, load_student
from labalign.train.plots import plot_losses
from labalign.train.summary import SUMMARY_FILE, PhaseResult, TrainResult
from labalign.train.tokenize import TokenizedData, TokenStats, load_tokenized
from labalign.train.trainlog import LogWriter, read_log, truncate_log

RUN_FILE = "run.json"
# The typed config labalign.train.launch writes for its worker processes: part of this start, not a
# trace of an earlier run.
LAUNCH_FILE = "launch.json"


@dataclass
class TrainConfig:
    """Everything `train()` needs. `model` is a Hugging Face directory or 'default' (the embedded
    Gemma 3 270M, converted once into `cache_dir`)."""

    model: str
    out: Path
    phase1: Path | None = None
    phase2: Path | None = None
    # General replay (pretraining or messages JSONL): mixed into each phase at settings.replay_ratio.
    replay: Path | None = None
    settings: TrainSettings = field(default_factory=TrainSettings)
    resume: bool = False
    evaluator: Evaluator | None = None
    cache_dir: Path | None = None  # tokenized data and the default model; None: the user cache
    show_progress: bool = True


def split_heldout(data: TokenizedData, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(train, held-out) indices. Deterministic: the samples whose seeded content hash is lowest, so the
    same conversation is held out wherever it appears (phase 2 replays phase-1 data)."""
    n = len(data)
    if fraction <= 0 or n < 2:
        return list(range(n)), []
    count = min(n - 1, max(1, math.ceil(fraction * n)))
    ranked = sorted(range(n), key=lambda i: hashlib.sha256(f"{seed}:{data.keys[i]}".encode()).digest())
    held = set(ranked[:count])
    return [i for i in range(n) if i not in held], sorted(held)


def _stats_sum(parts: list[TokenStats]) -> TokenStats:
    total = TokenStats()
    for part in parts:
        for name, value in asdict(part).items():
            setattr(total, name, getattr(total, name) + value)
    return total


def _run_record(config: TrainConfig, model_path: Path) -> dict[str, Any]:
    from labalign.train.data import file_digest

    inputs = {
        name: {"path": str(path), "sha256": file_digest(path)}
        for name, path in (("phase1", config.phase1), ("phase2", config.phase2), ("replay", config.replay))
        if path is not None
    }
    return {"model": str(model_path), "inputs": inputs, "settings": config.settings.model_dump(mode="json")}


def _check_out_dir(config: TrainConfig, record: dict[str, Any]) -> None:
    run_file = config.out / RUN_FILE
    if config.resume:
        if not run_file.is_file():
            return  # nothing to resume: start fresh
        previous = ckpt.read_json(run_file)
        if previous != record:
            changed = sorted(k for k in record if previous.get(k) != record[k])
            raise LabalignError(
                f"--resume with different {', '.join(changed)} than the interrupted run",
                path=run_file,
                hint="resume with the same model, data and settings, or train into a new --out",
            )
        return
    if config.out.exists() and any(p.name != LAUNCH_FILE for p in config.out.iterdir()):
        raise LabalignError(
            "output directory is not empty",
            path=config.out,
            hint="pass --resume to continue the run in it, or choose a new --out",
        )


def _on_main(ctx: DistContext, fn: Callable[[], Any]) -> Any:
    """Run `fn` on the main process and hand its value (or its LabalignError) to every process, so a
    user error stops all ranks instead of leaving them waiting."""
    if not ctx.distributed:
        return fn()
    payload: tuple[str, Any] | None = None
    if ctx.is_main:
        try:
            payload = ("ok", fn())
        except LabalignError as exc:
            payload = ("error", (exc.message, exc.path, exc.line, exc.column, exc.hint))
    payload = broadcast_object(ctx, payload)
    assert payload is not None
    if payload[0] == "error":
        message, path, line, column, hint = payload[1]
        raise LabalignError(message, path=path, line=line, column=column, hint=hint)
    return payload[1]


def _load_data(
    config: TrainConfig, model_path: Path, ctx: DistContext, cache_dir: Path
) -> dict[str, TokenizedData]:
    """Tokenize each file once: the main process validates and fills the cache, the others read it."""
    tokenizer = load_tokenizer(model_path)
    s = config.settings
    replay = config.replay if s.replay_ratio > 0 else None
    if s.replay_ratio > 0 and replay is None:
        raise LabalignError(
            f"replay_ratio is {s.replay_ratio} but there is no replay data",
            hint="pass --replay-data FILE (or let `labalign run` write the base model's own text), "
            "or set replay_ratio 0",
        )

    def load() -> dict[str, TokenizedData]:
        return {
            name: load_tokenized(
                path,
                tokenizer,
                max_seq_len=s.max_seq_len,
                long_samples=s.long_samples,
                cache_dir=cache_dir,
                flag="--replay-data" if name == "replay" else f"--{name}",
            )
            for name, path in (("phase1", config.phase1), ("phase2", config.phase2), ("replay", replay))
            if path is not None
        }

    if ctx.distributed:
        # The main process validates the files and fills the cache (its errors reach every rank);
        # then every process reads the cache.
        _on_main(ctx, lambda: bool(load()))
    return load()


@dataclass
class ReplayPool:
    """General replay ready for the phases: the trainable part of the pool (with the base's anchors when
    the KL anchor is on) and the held-out slice that measures drift."""

    data: TokenizedData
    train: list[int]
    validation: GeneralValidation | None


def replay_base_targets(
    s: TrainSettings, model_path: Path, replay: TokenizedData, device: Any, cache_dir: Path
) -> BaseTargets:
    """The base's targets over the replay pool as training computes them under `s` (cached on disk)."""
    return base_targets(
        model_path,
        replay,
        k=s.kl_top_k,
        device=device,
        bf16=bf16_enabled(s.bf16, device),
        attn_implementation=attn_implementation(s.attn_implementation, device),
        max_batch_tokens=s.max_batch_tokens,
        cache_dir=cache_dir,
    )


def prepare_replay(
    config: TrainConfig, model_path: Path, replay: TokenizedData, ctx: DistContext, cache_dir: Path
) -> ReplayPool:
    """Split the replay pool, and compute (or read back) the base's distributions over it once."""
    s = config.settings
    train_idx, val_idx = split_general(replay, s.general_validation, s.seed)
    if not train_idx:
        raise LabalignError(
            "the replay data has no sample left for training after the general validation split",
            path=config.replay,
            hint="give more replay samples or lower general_validation",
        )
    pool = replay.subset(range(len(replay)))
    pool.stats = replay.stats
    targets = None
    if s.kl_weight > 0 or val_idx:

        def compute() -> BaseTargets:
            return replay_base_targets(s, model_path, replay, ctx.device, cache_dir)

        if ctx.distributed:
            _on_main(ctx, lambda: bool(compute()))  # the main process fills the cache
        targets = compute()
    if s.kl_weight > 0 and targets is not None:
        pool.anchors = targets.anchors(replay)
    if not s.replay_ce:
        pool.supervised = np.zeros_like(pool.supervised)
    general = validation(replay, val_idx, targets.nll) if targets is not None else None
    return ReplayPool(pool, train_idx, general)


def _with_replay(
    train: TokenizedData, pool: ReplayPool | None, ratio: float, epochs: int, seed: int, phase: int
) -> tuple[TokenizedData, list[list[int]] | None, dict[str, int]]:
    """A phase's training data followed by the replay texts it draws, each epoch's replay indices into
    that data, and what was added."""
    if pool is None or ratio <= 0:
        return train, None, {}
    budget = round(ratio * int(train.lengths().sum()))
    draws = replay_epochs(pool.train, pool.data.lengths(), budget, epochs, seed, phase)
    used = sorted({i for draw in draws for i in draw})
    if not used:
        return train, None, {}
    extra = pool.data.subset(used)
    merged = TokenizedData.concat([train, extra])
    at = {sample: len(train) + j for j, sample in enumerate(used)}
    per_epoch = [[at[i] for i in draw] for draw in draws]
    lengths = pool.data.lengths()
    added = {
        "replay_samples": len(draws[0]),
        "replay_tokens": int(sum(lengths[i] for i in draws[0])),
        "replay_texts": len(used),
    }
    return merged, per_epoch, added


def plan_phases(
    config: TrainConfig,
    model_path: Path,
    data: dict[str, TokenizedData],
    replay: ReplayPool | None = None,
) -> list[tuple[PhaseSpec, list[str]]]:
    """The phases to run, each with its held-out split (phase 2 also holds out phase 1's held-out
    samples it replays, so the knowledge split stays unseen) and its share of general replay (never
    held out: it is not the phase's to judge). Phase 2 starts from phase 1's best."""
    s = config.settings
    general = replay.validation if replay is not None else None

    def mixed(
        train: TokenizedData, phase: int
    ) -> tuple[TokenizedData, list[list[int]] | None, dict[str, int]]:
        epochs = s.phase_epochs(phase) if phase else s.epochs
        return _with_replay(train, replay, s.replay_ratio, epochs, s.seed, phase)

    if s.strategy == "stacked":
        parts = [data[n] for n in ("phase1", "phase2") if n in data]
        merged = TokenizedData.concat(parts)
        train_idx, held_idx = split_heldout(merged, s.holdout_fraction, s.seed)
        own = merged.subset(train_idx)
        train, draws, added = mixed(own, 0)
        spec = PhaseSpec(
            "stacked",
            0,
            model_path,
            train,
            merged.subset(held_idx) if held_idx else None,
            config.evaluator,
            _stats_sum([p.stats for p in parts]),
            general,
            added,
            len(own),
            draws,
        )
        return [(spec, [])]
    specs: list[tuple[PhaseSpec, list[str]]] = []
    held1_keys: set[str] = set()
    start = model_path
    if "phase1" in data:
        d1 = data["phase1"]
        train_idx, held_idx = split_heldout(d1, s.holdout_fraction, s.seed)
        held1_keys = {d1.keys[i] for i in held_idx}
        own1 = d1.subset(train_idx)
        train1, draws1, added1 = mixed(own1, 1)
        spec1 = PhaseSpec(
            "phase1",
            1,
            model_path,
            train1,
            d1.subset(held_idx) if held_idx else None,
            None,
            d1.stats,
            general,
            added1,
            len(own1),
            draws1,
        )
        specs.append((spec1, ["phase2"]))
        start = config.out / "phase1" / "best"
    if "phase2" in data:
        d2 = data["phase2"]
        train_idx, held_idx = split_heldout(d2, s.holdout_fraction, s.seed)
        moved = [i for i in train_idx if d2.keys[i] in held1_keys]
        train_idx = [i for i in train_idx if d2.keys[i] not in held1_keys]
        held_idx = sorted(held_idx + moved)
        if not train_idx:
            raise LabalignError(
                "phase 2 has no training sample left after the held-out split",
                path=config.phase2,
                hint="add samples or lower --holdout-fraction",
            )
        own2 = d2.subset(train_idx)
        train2, draws2, added2 = mixed(own2, 2)
        spec2 = PhaseSpec(
            "phase2",
            2,
            start,
            train2,
            d2.subset(held_idx) if held_idx else None,
            config.evaluator,
            d2.stats,
            general,
            added2,
            len(own2),
            draws2,
        )
        specs.append((spec2, []))
    return specs


def _finish(
    config: TrainConfig, results: list[PhaseResult], last_spec: PhaseSpec, log_path: Path, base: Path
) -> TrainResult:
    """final/ (the last phase's best, interpolated toward `base` when so set, or its adapter), the
    combined plot and summary.json."""
    final = config.out / "final"
    last = results[-1]
    weight = _fixed_weight(config.settings)
    chosen_from: list[dict[str, float]] = []
    if config.settings.lora and not config.settings.merge_lora:
        import torch

        state = ckpt.load_train_state(config.out / last.phase / "state" / f"step-{last.best_step}")
        student = load_student(
            last_spec.start_model,
            config.settings,
            device=torch.device("cpu"),
            bf16=False,
            seed=config.settings.seed,
        )
        with torch.no_grad():
            for name, param in student.trainable().items():
                param.copy_(state.trainable[name].to(param.device, param.dtype))
        ckpt.save_adapter(final, student)
    elif config.settings.interpolation == "auto":
        choice = _auto_interpolation(config, last_spec, Path(last.best_dir), final, base)
        weight, chosen_from = choice.weight, choice.candidates
    elif config.settings.interpolation < 1:
        interpolate_checkpoint(base, Path(last.best_dir), final, config.settings.interpolation)
    else:
        ckpt.copy_checkpoint(Path(last.best_dir), final)
    plot = config.out / "loss.png"
    plot_losses(read_log(log_path), plot, phases=[r.phase for r in results])
    summary = config.out / SUMMARY_FILE
    result = TrainResult(
        out=config.out,
        final=final,
        phases=results,
        log=log_path,
        plot=plot,
        summary=summary,
        interpolation=weight,
        interpolation_candidates=chosen_from,
    )
    ckpt.write_json(summary, result.as_dict())
    return result


def train(config: TrainConfig, *, on_phase_start: Callable[[PhaseSpec], None] | None = None) -> TrainResult:
    """Train the student as configured; resumable with `resume=True` after a kill.

    Runs on every process of a distributed launch (torchrun, accelerate launch, `--nproc`); the main
    process writes the files. Returns the same result on every process.
    """
    config = _without_empty_phases(config)
    if config.replay is None and config.settings.replay_data and config.settings.replay_ratio > 0:
        import dataclasses

        # The user's own replay file: its digest goes into run.json, so a changed file is not resumed.
        config = dataclasses.replace(config, replay=Path(config.settings.replay_data).expanduser())
    if config.phase1 is None and config.phase2 is None:
        raise LabalignError("no training data", hint="pass --phase1 and/or --phase2")
    _check_data_files(config)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    # Per-checkpoint "Writing model shards" bars would bury ours.
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        return _train(config, on_phase_start)
    finally:
        if bars:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def _check_data_files(config: TrainConfig) -> None:
    """Read every data file once before the model is found or converted (30 s, minutes the first
    time): a broken line is reported at once, naming its file and line."""
    replay = config.replay if config.settings.replay_ratio > 0 else None
    for flag, path in (("--phase1", config.phase1), ("--phase2", config.phase2), ("--replay-data", replay)):
        if path is not None:
            read_samples(path, flag=flag)


def _is_empty(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return not any(line.strip() for line in f)
    except OSError:
        return False  # missing or unreadable: the data reader reports it with the file name


def _without_empty_phases(config: TrainConfig) -> TrainConfig:
    """An empty phase file is a phase with nothing to learn (a taxonomy without knowledge leaves gives
    an empty phase1.jsonl): skip it, saying so, as long as the other phase has data."""
    import dataclasses

    from rich.console import Console

    phases = {"phase1": config.phase1, "phase2": config.phase2}
    empty = [name for name, path in phases.items() if path is not None and _is_empty(path)]
    if not empty or len(empty) == sum(p is not None for p in phases.values()):
        return config  # nothing empty, or everything empty: the reader's error names the file
    for name in empty:
        Console(stderr=True).print(f"[yellow]warning:[/] {phases[name]} is empty: {name} is skipped")
    return dataclasses.replace(
        config,
        phase1=None if "phase1" in empty else config.phase1,
        phase2=None if "phase2" in empty else config.phase2,
    )


def _train(config: TrainConfig, on_phase_start: Callable[[PhaseSpec], None] | None) -> TrainResult:
    ctx = init_distributed()
    try:
        return _train_in(ctx, config, on_phase_start)
    finally:
        shutdown(ctx)


def _train_in(
    ctx: DistContext, config: TrainConfig, on_phase_start: Callable[[PhaseSpec], None] | None
) -> TrainResult:
    cache_dir = config.cache_dir or default_cache_dir()
    model_path = Path(_on_main(ctx, lambda: str(resolve_model(config.model, cache_dir))))
    data = _load_data(config, model_path, ctx, cache_dir)
    record = _run_record(config, model_path)

    def prepare_out() -> None:
        _check_out_dir(config, record)
        config.out.mkdir(parents=True, exist_ok=True)
        ckpt.write_json(config.out / RUN_FILE, record)

    _on_main(ctx, prepare_out)
    replay = (
        prepare_replay(config, model_path, data.pop("replay"), ctx, cache_dir) if "replay" in data else None
    )
    phases = plan_phases(config, model_path, data, replay)
    log_path = config.out / "training_log.jsonl"
    log = LogWriter(log_path if ctx.is_main else None)
    results: list[PhaseResult] = []
    try:
        for spec, later in phases:
            done = config.out / spec.name / "done.json"
            if config.resume and done.is_file():
                results.append(PhaseResult(**ckpt.read_json(done)))
                continue
            if ctx.is_main:
                state = ckpt.latest_state(config.out / spec.name / "state") if config.resume else None
                step = int(ckpt.read_json(state / "progress.json")["step"]) if state else 0
                log.close()
                truncate_log(log_path, spec.name, step, later)
            if on_phase_start is not None:
                on_phase_start(spec)
            result = run_phase(
                spec,
                config.settings,
                config.out,
                ctx,
                log,
                resume=config.resume,
                show_progress=config.show_progress,
            )
            results.append(result)
            if ctx.is_main:
                ckpt.write_json(done, result.as_dict())
            barrier(ctx)
        log.close()
        final: TrainResult | None = (
            _finish(config, results, phases[-1][0], log_path, model_path) if ctx.is_main else None
        )
        barrier(ctx)
    finally:
        log.close()
    if final is None:
        final = TrainResult(
            out=config.out,
            final=config.out / "final",
            phases=results,
            log=log_path,
            plot=config.out / "loss.png",
            summary=config.out / SUMMARY_FILE,
            interpolation=_fixed_weight(config.settings),
        )
    return final


def _fixed_weight(s: TrainSettings) -> float:
    return 1.0 if s.interpolation == "auto" else float(s.interpolation)


def _auto_interpolation(
    config: TrainConfig, last_spec: PhaseSpec, tuned: Path, final: Path, base: Path
) -> auto_interpolation.Choice:
    import torch
    from rich.console import Console

    general = last_spec.general
    if general is None:
        raise LabalignError(
            "interpolation auto found no held-out general text to measure drift on",
            hint="give training general replay (replay_ratio > 0, general_validation > 0), or set "
            "interpolation to a number",
        )
    s = config.settings
    budget = s.interpolation_budget or s.forgetting_budget or auto_interpolation.DEFAULT_BUDGET
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    choice = auto_interpolation.choose_interpolation(
        base, tuned, final, general, budget, bf16=bf16_enabled(config.settings.bf16, device), device=device
    )
    tried = ", ".join(f"{c['interpolation']:g}: {c['general_ratio']:.3f}" for c in choice.candidates)
    Console(stderr=True).print(
        f"interpolation auto: w {choice.weight:g} (held-out general perplexity {choice.general_ratio:.3f}x "
        f"the base's, budget {budget:g}; tried {tried})",
        soft_wrap=True,
        highlight=False,
    )
    return choice
