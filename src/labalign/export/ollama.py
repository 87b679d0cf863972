"""An Ollama model folder: the GGUF file and a Modelfile for `ollama create NAME -f Modelfile`.

Ollama renders chats with Go templates, not Jinja. labalign's own chat template (the one every model
labalign trains without a template of its own gets) is written as the equivalent Go template; any
other template stays in the GGUF's metadata, where Ollama recognises the common families itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from labalign.llm.chat_template import DEFAULT_CHAT_TEMPLATE, DEFAULT_STOP

# DEFAULT_CHAT_TEMPLATE in Go: `<|role|>\ncontent<|end|>\n` per message, then `<|assistant|>\n`.
DEFAULT_GO_TEMPLATE = "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"


def modelfile_text(gguf_name: str, chat_template: str | None, eos_token: str | None) -> str:
    """The Modelfile beside `gguf_name`: FROM, TEMPLATE (labalign's template) and the stop strings."""
    lines = [f"FROM ./{gguf_name}", ""]
    stops: list[str] = []
    if chat_template is None or chat_template == DEFAULT_CHAT_TEMPLATE:
        lines += [f'TEMPLATE """{DEFAULT_GO_TEMPLATE}"""', ""]
        stops += DEFAULT_STOP
    if eos_token and eos_token not in stops:
        stops.append(eos_token)
    lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in stops]
    return "\n".join(lines) + "\n"


def write_modelfile(folder: Path, gguf_name: str, chat_template: str | None, eos_token: str | None) -> Path:
    path = folder / "Modelfile"
    path.write_text(modelfile_text(gguf_name, chat_template, eos_token), encoding="utf-8")
    return path
