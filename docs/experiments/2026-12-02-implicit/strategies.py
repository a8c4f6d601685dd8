"""Where the implicit gap to the joint autoencoder comes from (docs/benchmarks.md, "Tried on 2026-12-02"):
configs/ml100k-implicit.yaml under two strategies that are not product options, registered here only.

    .venv/bin/python docs/experiments/2026-12-02-implicit/strategies.py pfr_all '[{"extra": {"federation.server_lr": 10.0}}]'
    .venv/bin/python docs/experiments/2026-12-02-implicit/strategies.py shared_touched '[{}]'

pfr_all: personal encoder as in personalfr, but every client trains and sends every decoder row (no
partial compression), so the softmax's push-down of the items a user did not touch reaches the server.
shared_touched: partial compression as in personalfr, but the encoder rows are federated too.
Arguments: a strategy name, then a JSON list of run.run keyword sets (see run.py).
"""
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from federation import jobs, strategies  # noqa: E402
from recsys.models.autoencoder import ENCODER_KEYS  # noqa: E402

import run as R  # noqa: E402

strategies.STRATEGIES["pfr_all"] = strategies.Strategy("pfr_all", ENCODER_KEYS, "all", True)
strategies.STRATEGIES["shared_touched"] = strategies.Strategy("shared_touched", (), "touched", True)

if __name__ == "__main__":
    name = sys.argv[1]
    plain = jobs.fed_settings
    jobs.fed_settings = lambda cfg: dataclasses.replace(plain(cfg), strategy=name)   # the config only allows product strategies
    for spec in json.loads(sys.argv[2]):
        t0 = time.time()
        print(name, json.dumps(spec), R.run(**spec), f"{time.time() - t0:.0f}s", flush=True)
