"""Prepare the per-stage training data: ``python prepare.py --esci_dir DIR --output_dir data/``.

``python prepare.py --show data/ [--stages 3]`` prints the first query groups of a prepared stage with their texts
joined from the catalogue (the stage folders themselves hold ids: ``datasets.load_from_disk("data/stage1")``).
"""

import json
import logging
import sys
from dataclasses import asdict

from ttsn_hf.arguments import PrepareArguments, parse_args
from ttsn_hf.data.stages import prepare, show
from ttsn_hf.errors import cli_entry


@cli_entry
def main(argv: list[str] | None = None) -> dict | str:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    (args,) = parse_args((PrepareArguments,), argv)
    if args.show:
        text = show(args.show, stage=(args.stage_list or (None,))[0])
        print(text)
        return text
    options = asdict(args)
    for consumed in ("esci_dir", "data_dir", "output_dir", "hard_negatives", "stages", "show"):
        options.pop(consumed)
    summary = prepare(
        args.esci_dir, args.output_dir, hard_negatives=args.hard_negatives, stages=args.stage_list, **options
    )
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return summary


if __name__ == "__main__":
    main()
