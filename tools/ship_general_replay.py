"""Write the general replay text shipped for the embedded default student (src/labalign/sdg/data/).

    python tools/ship_general_replay.py

The base student continues each shipped opening exactly as `labalign run` would on a machine's first
run (through the same request cache, so a machine that has already written it asks nothing), and the
records are stored with the key `labalign.sdg.general_replay.shipped_key` checks before using them.
Rerun it after changing the openings, the quick profile's replay parameters or the embedded model:
until then a run writes its own text, and tests/test_sdg_general_replay.py says the file is stale.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from labalign.config import load_settings
from labalign.errors import LabalignError
from labalign.llm.convert import read_marker
from labalign.modeling.models import resolve_model
from labalign.run.profiles import get_profile
from labalign.sdg.general_replay import ReplayOptions, generate_general_replay, shipped_key, shipped_paths


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    # The quick profile over the defaults, as `labalign run` resolves it.
    settings = load_settings(defaults=get_profile("quick").settings)
    student = resolve_model("default", settings.cache_dir)
    sha = (read_marker(student) or {}).get("gguf_sha256")
    if not sha:
        raise LabalignError("the default student has no conversion record", path=student)
    options = ReplayOptions.from_settings(settings)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "replay.jsonl"
        counts = generate_general_replay(
            student,
            out,
            cache_path=settings.cache_dir / "general-replay.sqlite",
            options=options,
            batch_size=settings.llm.local_batch_size,
            use_shipped=False,
        )
        records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    for rec in records:  # the machine's identity of its conversion means nothing elsewhere
        rec["metadata"]["model"] = f"gguf:sha256:{sha}"
    records_path, key_path = shipped_paths(sha)
    with records_path.open("w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
    about = "the embedded student's own continuations of general_openings.jsonl (labalign.sdg.general_replay)"
    key_path.write_text(json.dumps({"about": about, "key": shipped_key(sha, options)}, indent=2) + "\n")
    print(f"{len(records)} texts ({counts.misses} new, {counts.hits} from the cache) -> {records_path}")


if __name__ == "__main__":
    main()
