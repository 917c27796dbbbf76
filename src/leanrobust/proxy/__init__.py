"""Proxy (generated) training data: a diffusers DDPM generator (config, model and training, sampling) and a
Gaussian one, filtering of generated samples, and measures of how well a proxy set stands in for the real one
(ARC, conditional Wasserstein)."""
from ..data.sources import load_images
from .ddpm import Generator, GeneratorTrainer, load_generator
from .filtering import confidence_scores, filter_npz, keep_top_per_class, realism_scores
from .gaussian import GaussianProxy, gaussian_to_npz
from .generator_config import SynthConfig, load_synth_config
from .quality import (conditional_wasserstein, frechet_distance, normalised_area, penultimate_features, proxy_quality,
                      random_features, robust_discrimination, train_discriminator, wasserstein)
from .sampling import class_counts, generate, sample_to_npz

__all__ = ["GaussianProxy", "Generator", "GeneratorTrainer", "SynthConfig", "class_counts", "conditional_wasserstein",
           "confidence_scores", "filter_npz", "frechet_distance", "gaussian_to_npz", "generate", "keep_top_per_class",
           "load_generator", "load_images", "load_synth_config", "normalised_area", "penultimate_features",
           "proxy_quality", "random_features", "realism_scores", "robust_discrimination", "sample_to_npz",
           "train_discriminator", "wasserstein"]
