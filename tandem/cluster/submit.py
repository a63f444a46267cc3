"""`tandem submit`: run a tandem job on a Ray cluster through Ray Jobs.

The config's set values travel as the job's working directory (one file), and the `tandem`
package as a py_module, so the cluster needs the stack installed but not this checkout. The job's
driver attaches to the cluster through the RAY_ADDRESS that Ray Jobs sets.
"""

from __future__ import annotations

import shlex
import tempfile
import time
from pathlib import Path

import tandem
from tandem.cluster.runtime import worker_env
from tandem.config import Config, dump_config
from tandem.errors import UserError

JOB_CONFIG = "job.yaml"


def submit(cfg: Config, command: str, address: str, follow: bool = False) -> str | None:
    """Submit `tandem <command>` on `cfg` to the Ray cluster at `address`.

    Returns the job's final status when following, else None.
    """
    from ray.job_submission import JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UserError(f"cannot reach the Ray job server at {address}: {e}") from None
    with tempfile.TemporaryDirectory(prefix="tandem-job-") as staging:
        (Path(staging) / JOB_CONFIG).write_text(dump_config(cfg, only_set=True))
        job_id = _submit_when_ready(
            client,
            # Through job_entry: a head whose `python` lacks the stack gets one clear line, not a traceback.
            entrypoint=f"python -m tandem.cluster.job_entry {shlex.quote(command)} {JOB_CONFIG}",
            runtime_env={
                "working_dir": staging,
                "py_modules": [str(Path(tandem.__file__).parent)],
                "env_vars": worker_env(),
            },
            metadata={"tandem_command": command, "tandem_run": cfg.run.name},
        )
    print(f"submitted job {job_id} to {address}", flush=True)
    if not follow:
        return None
    status = follow_job(client, job_id)
    print(f"job {job_id} finished: {status}", flush=True)
    return status


def _submit_when_ready(client, wait_s: float = 300.0, **job) -> str:
    """Submit, retrying while a freshly started head's job agent is not up yet (Ray answers 500)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if "try again later" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(2.0)


def follow_job(client, job_id: str, poll_s: float = 1.0) -> str:
    """Stream the job's logs to stdout until it ends; return its final status."""
    from ray.job_submission import JobStatus

    printed = 0
    while True:
        status = client.get_job_status(job_id)
        logs = client.get_job_logs(job_id)
        print(logs[printed:], end="", flush=True)
        printed = len(logs)
        if status in {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
            return str(status.value)
        time.sleep(poll_s)
