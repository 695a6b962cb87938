"""Ray for a job: a local Ray a job starts is gone when the job ends (its idle workers hold GiBs
the one-node stages after it need); a Ray the process already had is left running."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import psutil, ray
    from jobs.ray_runtime import connect, ray_for_job

    me = psutil.Process()
    with ray_for_job(None):
        assert ray.is_initialized()
        ray.data.range(2_000, override_num_blocks=8).map_batches(lambda b: b).materialize()
        started = me.children(recursive=True)
        assert any("raylet" in " ".join(p.cmdline()) for p in started), started
    assert not ray.is_initialized()
    gone, alive = psutil.wait_procs(started, timeout=60)
    assert not alive, [p.cmdline() for p in alive]

    connect(None)
    with ray_for_job(None):
        pass
    assert ray.is_initialized()  # not this job's to stop
    ray.shutdown()
    print("released")
""")


def test_a_local_ray_a_job_starts_is_shut_down_with_its_workers_and_no_other():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 0 and "released" in done.stdout, done.stderr[-3000:]
