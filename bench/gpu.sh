#!/usr/bin/env bash
# A train.py smoke run through the default accelerate config (it must pick the GPU), then benchmarks 1 (training
# throughput vs sentence-transformers), 2 (catalogue encoding) and 4 (FAISS index scaling) in bf16 on one GPU, in under 9.5 minutes. Results go to $OUT when set (a lent device machine's output folder), else bench/results/.
#
#     bash bench/gpu.sh            # PYTHON=/path/to/python to choose the interpreter
#
# The index benchmark puts Flat and IVF-PQ on the GPU only where faiss was built with GPU support (faiss-gpu);
# with faiss-cpu it runs them on the CPU cores and says so ("faiss_device" in index_gpu.json).
set -euo pipefail

cd "$(dirname "$0")/.."
out_dir="${OUT:-bench/results}"
mkdir -p "$out_dir"
python="${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3)}"
threads="$(nproc)"
export HF_HUB_OFFLINE=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$python" -c "import torch; assert torch.cuda.is_available(), 'torch sees no GPU'; print(torch.cuda.get_device_name(0))"

status=0
# 0. train.py through `accelerate launch` with the default config: one short stage, its start line must say cuda.
timeout 80 "$python" -m accelerate.commands.launch --config_file accelerate_config.yaml train.py \
    --esci_dir ../shared/data/esci-us-sample --output_dir "$out_dir/train_smoke" --stage 1 --stage_epochs 1,1,1 \
    --max_train_samples 512 --max_eval_samples 256 --bf16 --disable_tqdm true 2> "$out_dir/train_smoke.log" \
    && grep -q "device cuda" "$out_dir/train_smoke.log" || { status=1; tail -5 "$out_dir/train_smoke.log"; }
rm -rf "$out_dir/train_smoke"

# 1. training: all 2,176 pairs, 3 epochs a run (34 steps an epoch), best of 3 runs per system (ST random and
#    length-grouped, ttsn_hf padded and packed): about 3.5 minutes. Reports each run's model FLOP/s as a fraction of
#    the GPU's measured bf16 matmul rate ("fraction_of_matmul_rate", "matmul_rate").
timeout 220 "$python" bench/bench_training.py --device cuda --bf16 --max_pairs 0 --epochs 3 --repeats 3 \
    --threads "$threads" --output "$out_dir/training_gpu.json" || status=$?

# 2. catalogue encoding: all 6,122 products, ttsn_hf padded and packed vs SentenceTransformer.encode at its best batch
#    size, with the fraction of the matmul rate: about 1 minute.
timeout 60 "$python" bench/bench_encoding.py --device cuda --bf16 --max_products 0 --repeats 3 \
    --threads "$threads" --output "$out_dir/encoding_gpu.json" || status=$?

# 4. index: 10k, 100k, 1M vectors; Flat, HNSW32, IVF-PQ, and a bf16 flat index (SQbf16): about 3 minutes.
timeout 210 "$python" bench/bench_index.py --device cuda --bf16 --sizes 10000,100000,1000000 \
    --threads "$threads" --output "$out_dir/index_gpu.json" --plot "$out_dir/index_scaling_gpu.png" || status=$?

exit "$status"  # 1: train.py did not run on the GPU; 124: a benchmark ran past its share of the time
