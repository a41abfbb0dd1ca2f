"""loaderd: the Python client of the per-node data-loading daemon.

    import loaderd
    ds = loaderd.read_parquet("data/train/*.parquet", columns=["x", "label"]).shuffle(seed=42)
    # or: loaderd.read_images("imagenet/train").random_resized_crop(224).random_horizontal_flip()
    shard = loaderd.get_dataset_shard(ds)          # RANK / WORLD_SIZE from the launcher
    for epoch in range(epochs):
        for batch in shard.iter_batches(batch_size=256, epoch=epoch):
            ...                                     # dict[str, numpy.ndarray]

All reading, splitting, shuffling and decoding runs in the daemon (``loaderd
serve``); the client only describes what it wants and receives batches.
"""

from loaderd._io import GroupedData
from loaderd._socket import default_socket
from loaderd._tables import from_arrow, from_items, from_pandas, range
from loaderd._version import __version__
from loaderd.dataset import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Dataset,
    Shard,
    ShardPlan,
    get_dataset_shard,
    read_csv,
    read_images,
    read_json,
    read_numpy,
    read_parquet,
    read_webdataset,
)
from loaderd.errors import (
    DaemonUnavailableError,
    DataError,
    InvalidArgumentError,
    LoaderError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnsupportedError,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DaemonUnavailableError",
    "DataError",
    "Dataset",
    "GroupedData",
    "InvalidArgumentError",
    "LoaderError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "Shard",
    "ShardPlan",
    "UnsupportedError",
    "__version__",
    "default_socket",
    "from_arrow",
    "from_items",
    "from_pandas",
    "get_dataset_shard",
    "range",
    "read_csv",
    "read_images",
    "read_json",
    "read_numpy",
    "read_parquet",
    "read_webdataset",
]
