"""Build a FAISS index of the catalogue with a model, or search one.

Build (index.faiss, products.parquet and manifest.json in --output_dir):

    python index.py --model_name_or_path checkpoints/best_model --esci_dir ../shared/data/esci-us-sample \
        --output_dir index/ [--index_factory Flat | HNSW32 | IVF1024,PQ32np]
    accelerate launch --multi_gpu --num_processes 2 index.py ...   # processes share the encoding

Search (any --query switches to search mode; the model is the manifest's unless --model_name_or_path is given):

    python index.py --index_dir index/ --query "usb c cable" --query "running shoes" --top_k 10

The catalogue is streamed from its table; encoding is chunked and cached under --cache_dir (default:
embedding_cache/ beside --output_dir), so an interrupted build resumes from the chunks already encoded.
"""

from ttsn_hf.arguments import IndexArguments, parse_args
from ttsn_hf.errors import cli_entry
from ttsn_hf.retrieval.encoding import make_accelerator


@cli_entry
def main(argv: list[str] | None = None):
    (args,) = parse_args((IndexArguments,), argv)
    return search(args) if args.query else build(args)


def build(args: IndexArguments):
    from ttsn_hf.modeling.model import load_model
    from ttsn_hf.retrieval.catalogue import default_cache_dir, load_catalogue
    from ttsn_hf.retrieval.indexing import build_catalogue_index

    accelerator = make_accelerator()
    model = load_model(args.model_name_or_path).to(accelerator.device)
    catalogue = load_catalogue(args.data_source)
    folder = build_catalogue_index(
        model,
        catalogue,
        None,
        args.output_dir,
        factory=args.index_factory,
        batch_size=args.batch_size,
        bf16=args.bf16,
        chunk_size=args.chunk_size,
        cache_dir=args.cache_dir or default_cache_dir(args.output_dir),
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
