"""Training: the stage schedule (run, its plan), the Trainer subclass and GradCache, query-group collation, the
schedule's state, summary and curves, and the distillation teacher."""
