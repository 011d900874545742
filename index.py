"""Build a FAISS index of the catalogue with a model, or search one.

Build (index.faiss, products.parquet and manifest.json in --output_dir):

    python index.py --model_name_or_path checkpoints/best_model --esci_dir ../shared/data/esci-us-sample \
        --output_dir index/ [--index_factory Flat | HNSW32 | IVF1024,PQ32np]
    accelerate launch --multi_gpu --num_processes 2 index.py ...   # processes share the encoding

Search (any --query switches to search mode; the model is the manifest's unless --model_name_or_path is given):

    python index.py --index_dir index/ --query "usb c cable" --query "running shoes" --top_k 10

Encoding is chunked and cached under --cache_dir, so an interrupted build resumes from the chunks already encoded.
"""

from dataclasses import dataclass, field

from transformers import HfArgumentParser

from ttsn_hf.errors import UserInputError, cli_entry
from ttsn_hf.retrieval.catalogue import DEFAULT_CACHE_DIR
from ttsn_hf.retrieval.encoding import make_accelerator


@dataclass
class IndexArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Model to encode with."})
    esci_dir: str | None = field(default=None, metadata={"help": "ESCI data: official folder, file or dataset."})
    data_dir: str | None = field(default=None, metadata={"help": "Prepared data (its catalogue/)."})
    output_dir: str = field(default="index", metadata={"help": "Index folder to write."})
    index_factory: str = field(
        default="auto",
        metadata={
            "help": "faiss index_factory: auto (exact Flat up to 500k products, IVF above, its recall@10 against "
            "exact search in manifest.json), Flat, HNSW32, IVF1024,PQ32np ('np' skips polysemous training: "
            "3x faster builds, bench/RESULTS.md)."
        },
    )
    batch_size: int = field(default=256, metadata={"help": "Encoding batch size."})
    bf16: bool = field(default=False, metadata={"help": "Encode under bfloat16 autocast."})
    chunk_size: int = field(default=50_000, metadata={"help": "Products per encoding chunk (resume unit)."})
    cache_dir: str = field(default=DEFAULT_CACHE_DIR, metadata={"help": "Catalogue embedding cache."})
    query: list[str] = field(
        default_factory=list, metadata={"help": "Search mode: query strings (repeatable).", "action": "extend"}
    )
    index_dir: str | None = field(default=None, metadata={"help": "Index folder to search (default --output_dir)."})
    top_k: int = field(default=10, metadata={"help": "Products returned per query."})


@cli_entry
def main(argv: list[str] | None = None):
    (args,) = HfArgumentParser(IndexArguments).parse_args_into_dataclasses(args=argv)
    return search(args) if args.query else build(args)


def build(args: IndexArguments):
    if args.model_name_or_path is None:
        raise UserInputError("building an index needs --model_name_or_path (or pass --query to search one)")
    if (args.esci_dir is None) == (args.data_dir is None):
        raise UserInputError("give exactly one of --esci_dir (ESCI data) and --data_dir (prepared data)")
    from ttsn_hf.modeling.model import load_model
    from ttsn_hf.retrieval.catalogue import load_catalogue
    from ttsn_hf.retrieval.indexing import build_catalogue_index, check_output_folder

    check_output_folder(args.output_dir)  # before hours of encoding, not after
    accelerator = make_accelerator()
    model = load_model(args.model_name_or_path).to(accelerator.device)
    catalogue = load_catalogue(args.esci_dir or args.data_dir)
    folder = build_catalogue_index(
        model,
        catalogue.product_ids,
        catalogue.texts,
        args.output_dir,
        factory=args.index_factory,
        batch_size=args.batch_size,
        bf16=args.bf16,
        chunk_size=args.chunk_size,
        cache_dir=args.cache_dir,
        accelerator=accelerator,
    )
    if accelerator.is_main_process:
        print(f"index of {len(catalogue)} products written to {folder}/")
    accelerator.end_training()  # close the process group before exit: gloo threads alive at exit can abort
    return folder


def search(args: IndexArguments):
    from ttsn_hf.retrieval.indexing import ProductSearcher

    model = None
    if args.model_name_or_path is not None:
        from ttsn_hf.modeling.model import load_model

        model = load_model(args.model_name_or_path)
    searcher = ProductSearcher.from_folder(args.index_dir or args.output_dir, model, batch_size=args.batch_size)
    results = searcher.search(args.query, k=args.top_k)
    for query, hits in zip(args.query, results, strict=True):
        print(f"query: {query}")
        for rank, hit in enumerate(hits, start=1):
            print(f"{rank:>4}  {hit.score:.4f}  {hit.product_id}  {hit.text[:100]}")
    return results


if __name__ == "__main__":
    main()
