"""`RunTracking`: the Trainer callback that ties a run's tracking to its plan and run directory (`forgekit.tracking`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from forgekit.tracking import MLFLOW_RUN_ID_FILE, plan_params

__all__ = ["RunTracking"]


class RunTracking(TrainerCallback):
    """The Trainer callback after the providers' own (WandbCallback, MLflowCallback, TensorBoardCallback), which log
    the TrainingArguments at the start of each session.

    - A resumed session logs the same arguments as the first one (MLflow rejects a changed param): `eval_on_start`
      stays as the plan has it until the providers have logged it, and is turned off here, since a resumed run
      already has its baseline evaluation.
    - On rank 0, with an MLflow run active: the run's id goes to `<run dir>/mlflow_run_id` (`forgekit.tracking.continue_mlflow_run`),
      and the plan's numbers (`plan_params`) become params; on a resumed run, those already logged are kept.
    - At the end of training, the W&B run is finished: WandbCallback leaves that to an exit hook, which a Ray worker
      (ended by Ray Train when the run is over) never runs, and the run's records would never reach its `.wandb`
      log (offline) or the server.
    """

    def __init__(self, plan: Any, run_dir: str | Path, *, resumed: bool) -> None:
        self.plan, self.run_dir, self.resumed = plan, run_dir, resumed

    def on_train_begin(self, args, state, control, **kwargs):
        if self.resumed:
            args.eval_on_start = False
        if not state.is_world_process_zero or "mlflow" not in (args.report_to or []):
            return
        import mlflow

        from forgekit import storage

        run = mlflow.active_run()
        if run is None:
            return
        storage.write_text(storage.join(self.run_dir, MLFLOW_RUN_ID_FILE), run.info.run_id + "\n")
        logged = mlflow.MlflowClient().get_run(run.info.run_id).data.params
        params = plan_params(self.plan.to_json())
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != v)
        if changed:
            print(f"forgekit: the resumed run's plan differs from the MLflow run's params in {', '.join(changed)}; "
                  "the params keep the first session's values", flush=True)
        mlflow.log_params({k: v for k, v in params.items() if k not in logged})

    def on_train_end(self, args, state, control, **kwargs):
        if "wandb" not in (args.report_to or []):
            return
        import wandb

        if wandb.run is not None:  # rank 0's (WandbCallback starts none on the other ranks)
            wandb.run.finish()
