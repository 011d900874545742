"""Mine hard negatives for the training queries with a trained checkpoint; writes a parquet and a JSON summary.

    python mine.py --checkpoint checkpoints/epoch_2 --esci_dir ../shared/data/esci-us-sample \
        --output data/hard_negatives_stage2.parquet
    accelerate launch --multi_gpu --num_processes 2 mine.py ...   # processes share the encoding

The catalogue is streamed from its table in chunks and its embeddings cached under --cache_dir (default:
embedding_cache/ beside --output; keyed by model and catalogue): mining again with the same checkpoint does not encode
the catalogue again. See ttsn_hf/retrieval/mining.py for the selection rules.
"""

from dataclasses import fields

from ttsn_hf.arguments import MineArguments, parse_args
from ttsn_hf.errors import cli_entry
from ttsn_hf.retrieval.catalogue import default_cache_dir
from ttsn_hf.retrieval.encoding import make_accelerator
from ttsn_hf.retrieval.mining import MiningSettings, mine_to_file


@cli_entry
def main(argv: list[str] | None = None):
    (args,) = parse_args((MineArguments,), argv)
    from ttsn_hf.modeling.model import load_model

    accelerator = make_accelerator()
    model = load_model(args.model_name_or_path).to(accelerator.device)
    settings = MiningSettings(
        **{item.name: getattr(args, item.name) for item in fields(MiningSettings) if hasattr(args, item.name)}
    )
    if settings.relative_margin is not None and settings.relative_margin < 0:
        settings.relative_margin = None
    settings.cache_dir = args.cache_dir or default_cache_dir(args.output)
    output = mine_to_file(model, args.data_source, args.output, accelerator, settings)
    if accelerator.is_main_process:
        print(f"hard negatives written to {output} (summary: {output.with_suffix('.json')})")
    accelerator.end_training()  # close the process group before exit: gloo threads alive at exit can abort
    return output


if __name__ == "__main__":
    main()
