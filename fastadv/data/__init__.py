"""Data loading: class folders (folder / dali / ffcv backends) and the embedded digits demo, deterministic and resumable."""

from fastadv.data.batch import Batch, collate
from fastadv.data.loader import Loader, build_dataset, build_loader, resolve_backend
from fastadv.data.sampler import EpochSampler
from fastadv.data.seeding import limit_indices, mix, sample_seed
from fastadv.data.folder import FolderDataset, build_folder_dataset, split_root
from fastadv.data.demo import DigitsDataset, build_demo_dataset

__all__ = [
    "Batch",
    "DigitsDataset",
    "EpochSampler",
    "FolderDataset",
    "Loader",
    "build_dataset",
    "build_demo_dataset",
    "build_folder_dataset",
    "build_loader",
    "collate",
    "limit_indices",
    "mix",
    "resolve_backend",
    "sample_seed",
    "split_root",
]
