"""One training process of `labalign.train.launch`: `python -m labalign.train.worker LAUNCH_JSON`, with
torch.distributed.run's environment (RANK, WORLD_SIZE, ...). A user error prints as one line, exit 1."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import ValidationError

from labalign.errors import LabalignError


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m labalign.train.worker LAUNCH_JSON", file=sys.stderr)
        return 2
    path = Path(args[0])
    from labalign.train.launch import LaunchConfig
    from labalign.train.phases import train

    try:
        try:
            config = LaunchConfig.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError, ValidationError) as exc:
            raise LabalignError(f"cannot read the launch config: {exc}", path=path) from exc
        train(config.train_config())
    except LabalignError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
