"""Data: dataset sources, the sample Pool, tensor augmentation and the mixing batch sampler."""
from .augment import augment_batch, to_float
from .pool import Pool, split_validation
from .sampler import MixingSampler
from .sources import (DataError, DataNotFoundError, DatasetInfo, cache_dir, dataset_info, load_dataset, load_npz,
                      read_idx, search_dirs, validate_arrays)

__all__ = ["DataError", "DataNotFoundError", "DatasetInfo", "MixingSampler", "Pool", "augment_batch", "cache_dir",
           "dataset_info", "load_dataset", "load_npz", "read_idx", "search_dirs", "split_validation", "to_float",
           "validate_arrays"]
