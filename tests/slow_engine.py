"""`python -m tests.slow_engine RUN_DIR [--resume]`: the engine, slowed on purpose.

Every U-Net call sleeps LORADECK_TEST_UNET_SLEEP seconds and every latent encode
LORADECK_TEST_ENCODE_SLEEP, as on a busy machine or a small GPU, so a test can watch a
run that caches, trains and samples slowly. Tests start it in place of the engine.
"""
from __future__ import annotations

import os
import sys
import time


def slow_down() -> None:
    from diffusers import UNet2DConditionModel

    import engine.train.data as data

    unet_sleep = float(os.environ.get("LORADECK_TEST_UNET_SLEEP", "0.1"))
    encode_sleep = float(os.environ.get("LORADECK_TEST_ENCODE_SLEEP", "0.5"))
    forward, encode = UNet2DConditionModel.forward, data.encode_pixels

    def slow_forward(self, *args, **kwargs):
        time.sleep(unet_sleep)
        return forward(self, *args, **kwargs)

    def slow_encode(*args, **kwargs):
        time.sleep(encode_sleep)
        return encode(*args, **kwargs)

    UNet2DConditionModel.forward = slow_forward
    data.encode_pixels = slow_encode


if __name__ == "__main__":
    slow_down()
    from engine.train.process import main

    sys.exit(main())
