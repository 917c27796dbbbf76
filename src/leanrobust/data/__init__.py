"""Data: dataset sources (by format: IDX, CIFAR, npz), the sample Pool, tensor augmentation and the mixing batch
sampler."""
from .augment import augment_batch, to_float
from .idx import read_idx
from .npz import load_npz
from .pool import Pool, split_validation
from .sampler import MixingSampler
from .sources import DatasetInfo, cache_dir, dataset_info, load_dataset, load_images, search_dirs
from .validate import DataError, DataNotFoundError, validate_arrays

__all__ = ["DataError", "DataNotFoundError", "DatasetInfo", "MixingSampler", "Pool", "augment_batch", "cache_dir",
           "dataset_info", "load_dataset", "load_images", "load_npz", "read_idx", "search_dirs", "split_validation",
           "to_float", "validate_arrays"]
