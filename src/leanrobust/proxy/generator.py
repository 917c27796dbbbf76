"""The proxy generators' former single module, kept so that `leanrobust.proxy.generator` imports keep working:
the config is in generator_config.py, the DDPM in ddpm.py, sampling in sampling.py, the Gaussian in gaussian.py."""
from ..data.sources import load_images
from ..io import write_shards
from .ddpm import (CKPT_DIR, CONFIG, LATEST, METRICS, Generator, GeneratorTrainer, build_unet, checkpoint_file,
                   ddpm_scheduler, load_generator, read_latest)
from .gaussian import GaussianProxy, gaussian_to_npz
from .generator_config import SynthConfig, load_synth_config
from .sampling import class_counts, fast_scheduler, generate, sample_to_npz

__all__ = ["CKPT_DIR", "CONFIG", "GaussianProxy", "Generator", "GeneratorTrainer", "LATEST", "METRICS", "SynthConfig",
           "build_unet", "checkpoint_file", "class_counts", "ddpm_scheduler", "fast_scheduler", "gaussian_to_npz",
           "generate", "load_generator", "load_images", "load_synth_config", "read_latest", "sample_to_npz",
           "write_shards"]
