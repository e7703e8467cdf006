"""Train the tiny preset on a fixture with 1 or 2 CPU processes (Lightning DDP over gloo).

    python tests/helpers/ddp_train.py DATA OUT DEVICES BATCH_PER_PROCESS

Lightning's DDP launcher re-runs this script once per extra rank, so it must be a script.
"""

import sys

import torch

from crystalformer import ModelConfig, TrainConfig
from crystalformer.train import train

if __name__ == "__main__":
    data, out, devices, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    torch.set_num_threads(1)
    config = TrainConfig.from_name("tiny", batch_size=batch, max_epochs=2, accelerator="cpu", devices=str(devices),
                                   strategy="ddp" if devices > 1 else "auto", log_every_steps=1, warmup_steps=2)
    train([data], out, ModelConfig.from_name("tiny"), config, val_fraction=0.0, cache_dir=out + "-cache",
          progress=False)
