"""Training: arguments, tokenising collator, the Trainer subclass, the stage schedule and the run that drives it."""
