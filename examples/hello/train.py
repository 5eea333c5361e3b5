"""A stand-in for a training script: prints progress and writes an artifact."""

import os
import time
from pathlib import Path

for epoch in range(1, 4):
    print(f"epoch {epoch}/3: loss={1 / epoch:.3f}", flush=True)
    time.sleep(0.3)
Path("out").mkdir(exist_ok=True)
Path("out/model.txt").write_text(f"trained by run {os.environ['DSTACK_RUN_NAME']}\n")
print("saved out/model.txt")
