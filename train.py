"""Train the two-tower model through the three-stage schedule.

accelerate launch --config_file accelerate_config.yaml train.py --esci_dir ../shared/data/esci-us-sample
"""

import logging

from accelerate import PartialState

from ttsn_hf.arguments import DataArguments, ModelArguments, ScheduleArguments, TwoTowerTrainingArguments, parse_args
from ttsn_hf.errors import cli_entry
from ttsn_hf.training.curves import training_curves, write_training_curves
from ttsn_hf.training.run import TrainingRun, configure_threads, environment_line
from ttsn_hf.training.summary import format_run_summary, run_summary, write_run_summary

logger = logging.getLogger("train")
SEED_ALIASES = {
    "--checkpoint_dir": "--output_dir",
    "--batch_size": "--per_device_train_batch_size",
    "--num_workers": "--dataloader_num_workers",
}


@cli_entry
def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model_args, data_args, schedule_args, training_args = parse_args(
        (ModelArguments, DataArguments, ScheduleArguments, TwoTowerTrainingArguments), aliases=SEED_ALIASES
    )
    configure_threads(data_args.num_threads)
    run = TrainingRun(model_args, data_args, schedule_args, training_args)  # checks every option first
    logger.info(environment_line(training_args))
    run.run()
    state = PartialState()
    if state.is_main_process:
        data_option = f"--esci_dir {data_args.esci_dir}" if data_args.esci_dir else f"--data_dir {run.data.data_dir}"
        summary = run_summary(run.output_dir, data_option)
        summary["curves"] = training_curves(run.output_dir)
        write_run_summary(run.output_dir, summary)
        print(write_training_curves(run.output_dir, summary["curves"]), flush=True)
        print(format_run_summary(summary), flush=True)  # its last line: the next command
    state.destroy_process_group()  # before exit: gloo threads alive at exit can abort


if __name__ == "__main__":
    main()
