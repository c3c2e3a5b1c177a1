"""MLflow (extra `mlflow`): a local file store in <run>/mlruns (`mlflow ui --backend-store-uri <run>/mlruns`)."""

from __future__ import annotations

import os

from mlflow.tracking import MlflowClient

from fastadv.train.sinks import Sink, flat_config, scalars


class MlflowSink(Sink):
    def __init__(self, out_dir, cfg) -> None:
        super().__init__(out_dir, cfg)
        # MLflow 3 keeps the file store (no server, no database: what a run folder wants) in maintenance mode
        # and refuses it unless opted in; a user's own setting of the variable wins.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=(self.out_dir / "mlruns").absolute().as_uri())
        self.run_id = None

    def start(self, config) -> None:
        found = self.client.get_experiment_by_name("fastadv")
        experiment = found.experiment_id if found else self.client.create_experiment("fastadv")
        self.run_id = self.client.create_run(experiment, run_name=self.cfg.name).info.run_id
        for key, value in flat_config(config).items():
            self.client.log_param(self.run_id, key, str(value)[:500])

    def write(self, record) -> None:
        event = record.get("event")
        if self.run_id is None or event not in ("train", "validation"):
            return
        step = int(record.get("step", 0))
        for key, value in scalars(record).items():
            if key != "step":
                self.client.log_metric(self.run_id, f"{event}.{key}", value, step=step)

    def close(self) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id)
            self.run_id = None
