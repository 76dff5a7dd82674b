"""The zoo's hub layer: moves folders of files between a local Hub-cache-shaped hub and a Hugging Face Hub.

`LocalHub` is the embedded default hub (readable offline by an unmodified huggingface_hub);
`download`/`pull`/`upload` talk to a real Hub endpoint. No model logic lives here.
"""
from zoo.hub.errors import (
    HubConnectionError,
    InvalidResponseError,
    OversizedFileError,
    RepoFileNotFoundError,
    RepoNotFoundError,
    RevisionNotFoundError,
    UnknownRepoError,
)
from zoo.hub.local import LocalHub, default_hub_root, folder_files, validate_repo_id
from zoo.hub.remote import cached_or_download, download, pull, upload

__all__ = [
    "HubConnectionError",
    "InvalidResponseError",
    "LocalHub",
    "OversizedFileError",
    "RepoFileNotFoundError",
    "RepoNotFoundError",
    "RevisionNotFoundError",
    "UnknownRepoError",
    "cached_or_download",
    "default_hub_root",
    "download",
    "folder_files",
    "pull",
    "upload",
    "validate_repo_id",
]
