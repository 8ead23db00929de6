"""The data layer: discover images, caption them, plan crops and buckets, sample batches.

Pure functions plus thin I/O (PIL, numpy, huggingface_hub); nothing here imports torch.

    discovery   find_images / probe / scan / DigestMemo        (image headers, EXIF orientation, content digests)
    captions    caption_for                                    (filename / textfile / instanceprompt)
    transforms  plan_crop / apply_crop / meets_minimum         (resize + crop math, 64-px buckets)
    buckets     bucket_key / group_by_bucket / check_dataset_size / bucket_batches
    preflight   plan_dataset / check_local_datasets            (used by `validate` and the cache stage)
    samples     materialize_samples                            (scikit-image photos for smoke runs)
    hub         download_dataset                               (Hub dataset repos)
"""
from __future__ import annotations


class DatasetError(Exception):
    """A dataset that cannot be used, with a message meant for the user (no traceback needed)."""

    def __init__(self, message: str):
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message


class HubUnavailable(Exception):
    """The Hub could not be reached, or kept failing (timeouts, 429, 5xx, a download that stayed
    incomplete), after the retries: not bad input, since a later attempt may well work, so a run
    ends with exit 1 and Kubernetes retries the pod instead of failing the Job. The message is
    meant for the user and names the repo, what failed and what to check."""
