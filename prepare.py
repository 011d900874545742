"""Prepare the per-stage training data: ``python prepare.py --esci_dir DIR --output_dir data/``."""

from ttsn_hf.data.stages import main

if __name__ == "__main__":
    main()
