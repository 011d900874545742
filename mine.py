"""Mine hard negatives for the training queries with a trained checkpoint; writes a parquet and a JSON summary.

    python mine.py --checkpoint checkpoints/epoch_2 --esci_dir ../shared/data/esci-us-sample \
        --output data/hard_negatives_stage2.parquet
    accelerate launch --multi_gpu --num_processes 2 mine.py ...   # processes share the encoding

The catalogue embeddings are cached under --cache_dir (keyed by model and catalogue): mining again with the same
checkpoint does not encode the catalogue again. See ttsn_hf/retrieval/mining.py for the selection rules.
"""

from dataclasses import dataclass, field, fields

from transformers import HfArgumentParser

from ttsn_hf.errors import UserInputError, cli_entry
from ttsn_hf.retrieval.catalogue import DEFAULT_CACHE_DIR
from ttsn_hf.retrieval.encoding import make_accelerator
from ttsn_hf.retrieval.mining import MiningSettings, mine_to_file


@dataclass
class MineArguments:
    model_name_or_path: str = field(
        metadata={"aliases": ["--checkpoint"], "help": "Checkpoint (two-tower folder) or base encoder to mine with."}
    )
    output: str = field(default="data/hard_negatives_stage2.parquet", metadata={"help": "Parquet file to write."})
    esci_dir: str | None = field(default=None, metadata={"help": "ESCI data: official folder, file or dataset."})
    data_dir: str | None = field(default=None, metadata={"help": "Prepared data (only its training queries)."})
    num_negatives: int = field(default=10, metadata={"help": "Negatives per query."})
    margin: float | None = field(default=None, metadata={"help": "Absolute margin: score <= positive - margin."})
    relative_margin: float = field(
        default=0.05, metadata={"help": "Relative margin: score <= positive - |positive| * r; negative disables."}
    )
    range_min: int = field(default=0, metadata={"help": "Skip this many best valid candidates."})
    range_max: int | None = field(default=None, metadata={"help": "Search depth (default as sentence-transformers)."})
    sampling_strategy: str = field(default="top", metadata={"help": "top or random", "choices": ["top", "random"]})
    batch_size: int = field(default=256, metadata={"help": "Encoding batch size."})
    bf16: bool = field(default=False, metadata={"help": "Encode under bfloat16 autocast."})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={"help": "Catalogue embedding cache."})
    chunk_size: int = field(default=50_000, metadata={"help": "Products per encoding / search chunk."})
    seed: int = field(default=42, metadata={"help": "Seed of random sampling."})


@cli_entry
def main(argv: list[str] | None = None):
    (args,) = HfArgumentParser(MineArguments).parse_args_into_dataclasses(args=argv)
    if (args.esci_dir is None) == (args.data_dir is None):
        raise UserInputError("give exactly one of --esci_dir (ESCI data) and --data_dir (prepared data)")
    from ttsn_hf.modeling.model import load_model

    accelerator = make_accelerator()
    model = load_model(args.model_name_or_path).to(accelerator.device)
    settings = MiningSettings(
        **{item.name: getattr(args, item.name) for item in fields(MiningSettings) if hasattr(args, item.name)}
    )
    if settings.relative_margin is not None and settings.relative_margin < 0:
        settings.relative_margin = None
    output = mine_to_file(model, args.esci_dir or args.data_dir, args.output, accelerator, settings)
    if accelerator.is_main_process:
        print(f"hard negatives written to {output} (summary: {output.with_suffix('.json')})")
    accelerator.end_training()  # close the process group before exit: gloo threads alive at exit can abort
    return output


if __name__ == "__main__":
    main()
