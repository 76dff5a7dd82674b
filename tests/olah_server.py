"""A real `olah-cli` Hub mirror on loopback, serving git repos built by tests: the download side's server.

Fixture `olah_hub` (session scope) starts olah on a free 127.0.0.1 port in a temporary folder, in
offline mode (it never calls huggingface.co), and yields an `OlahServer`: point huggingface_hub at
`.endpoint` and create revisions with `.add_repo(...)`. olah serves each plain git repo under
`{mirrors}/models/{org}/{name}`: branches and tags become revisions, an LFS pointer is served from its
object under `.git/lfs/objects/`. olah refuses every write (create_repo, commits), so it cannot test
uploads. Skips when `olah-cli` is not next to the running Python or `git` is not on PATH.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

_STARTUP_TIMEOUT_S = 30.0
_LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n"
# a fixed identity and no user/system git config, so commits do not depend on the machine
_GIT_ENV = {
    "GIT_AUTHOR_NAME": "zoo-tests", "GIT_AUTHOR_EMAIL": "zoo-tests@localhost",
    "GIT_COMMITTER_NAME": "zoo-tests", "GIT_COMMITTER_EMAIL": "zoo-tests@localhost",
    "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
}


@dataclass
class OlahServer:
    """A running olah: `endpoint` for huggingface_hub, `mirrors` holding the served git repos."""

    endpoint: str
    mirrors: Path
    startup_s: float

    def repo_path(self, repo_id: str, repo_type: str = "model") -> Path:
        if repo_type not in ("model", "dataset"):
            raise ValueError(f"repo_type is 'model' or 'dataset', not {repo_type!r}")
        org, name = repo_id.split("/")
        return self.mirrors / f"{repo_type}s" / org / name

    def add_repo(self, repo_id: str, files: Mapping[str, bytes | Path], branch: str = "main",
                 tag: str | None = None, lfs: Collection[str] = (), repo_type: str = "model") -> str:
        """Commit exactly `files` (repo path -> bytes or a file to copy) on `branch`; returns the commit id.

        Creates the repo on first use; a later call adds a commit (a new revision), creating `branch`
        from the current HEAD when it does not exist yet. `tag` tags the new commit. Paths in `lfs`
        are stored as Git LFS pointers with their object under `.git/lfs/objects/`, as on the Hub.
        `repo_type` "dataset" makes a data set repo (datasets' `load_dataset` reads one that has a README.md).
        """
        repo = self.repo_path(repo_id, repo_type)
        if not (repo / ".git").is_dir():
            repo.mkdir(parents=True)
            _git(repo, "init", "-q", "-b", branch)
        elif branch != _git(repo, "branch", "--show-current"):
            exists = _git(repo, "branch", "--list", branch)
            _git(repo, "switch", "-q", *(() if exists else ("-c",)), branch)
        _git(repo, "rm", "-rq", "--ignore-unmatch", "--", ".")
        for rel, content in files.items():
            data = content.read_bytes() if isinstance(content, Path) else content
            target = repo / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if rel in lfs:
                oid = hashlib.sha256(data).hexdigest()
                obj = repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
                obj.parent.mkdir(parents=True, exist_ok=True)
                obj.write_bytes(data)
                data = _LFS_POINTER.format(oid=oid, size=len(data)).encode()
            target.write_bytes(data)
        _git(repo, "add", "-A")
        _git(repo, "commit", "-q", "--allow-empty", "-m", f"{len(files)} files on {branch}")
        if tag is not None:
            _git(repo, "tag", tag)
        return _git(repo, "rev-parse", "HEAD")


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, env={**os.environ, **_GIT_ENV}, capture_output=True,
                          text=True)
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(endpoint: str) -> bool:
    """Whether an HTTP server answers at all (any status counts)."""
    try:
        urllib.request.urlopen(f"{endpoint}/api/models/zoo/probe/revision/main", timeout=1).close()
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False
    return True


def _config(base: Path, port: int) -> str:
    netloc = f"127.0.0.1:{port}"
    return "\n".join([
        "[basic]",
        'host = "127.0.0.1"',
        f"port = {port}",
        f'repos-path = "{base / "repos"}"',
        'mirror-scheme = "http"',
        f'mirror-netloc = "{netloc}"',  # must match host:port, or the URLs olah hands back are wrong
        f'mirror-lfs-netloc = "{netloc}"',
        f'mirrors-path = ["{base / "mirrors"}"]',
        "[accessibility]",
        "offline = true",
        "",
    ])


@pytest.fixture(scope="session")
def olah_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OlahServer]:
    """A running olah Hub mirror for the whole session; killed at the end."""
    cli = Path(sys.executable).parent / "olah-cli"
    if not cli.is_file():
        pytest.skip(f"olah-cli is not next to {sys.executable}; install the test extra (pip install olah)")
    if shutil.which("git") is None:
        pytest.skip("the git CLI is not on PATH; the olah fixture builds its repos with git")
    base = tmp_path_factory.mktemp("olah")
    (base / "mirrors" / "models").mkdir(parents=True)
    port = _free_port()
    config = base / "olah.toml"
    config.write_text(_config(base, port), encoding="utf-8")
    endpoint = f"http://127.0.0.1:{port}"
    log_path = base / "server.log"
    started = time.monotonic()
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(cli), "-c", str(config), "--log-path", str(base / "logs")], cwd=base,
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            while not _answers(endpoint):
                if proc.poll() is not None or time.monotonic() - started > _STARTUP_TIMEOUT_S:
                    tail = log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"olah did not come up at {endpoint} (exit code {proc.poll()}):\n{tail}")
                time.sleep(0.05)
            yield OlahServer(endpoint, base / "mirrors", time.monotonic() - started)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
