"""``--provider openclip`` on the Flink cluster: the job runs with ``--runner FlinkRunner`` and
EXTERNAL workers from the cluster's worker pool (two slots, batches formed on the cluster), each
worker process loads the tiny model from its folder once, and every stored vector is the model's
own output for THAT row's image — recomputed here per ImageID with open_clip itself — so the
cluster gives the same vectors as the local engine (``tests/test_openclip_pipeline.py``).
"""
from __future__ import annotations

import subprocess
import sys
import uuid

import numpy as np
import pytest

from tests.flink.conftest import runner_flags, summary_numbers
from tests.openclip_models import image_vector, reference, tiny_models  # noqa: F401
from tests.test_openclip_pipeline import (archive, flags, model_pixels,  # noqa: F401
                                          stored_vectors)

pytestmark = [pytest.mark.slow, pytest.mark.flink]


def test_openclip_on_flink_stores_each_images_own_vector(idle_cluster, job_server_jar, archive,
                                                         tiny_models, tmp_path):  # noqa: F811
    root, good, broken = archive
    model = tiny_models["folder"]
    run_id = f"oc{uuid.uuid4().hex[:8]}"
    proc = subprocess.run(
        [sys.executable, "-m", "dicomvec.cli", "run", *flags(root, tmp_path, model, run_id),
         *runner_flags(idle_cluster, job_server_jar, "FlinkRunner", "EXTERNAL")],
        text=True, capture_output=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:] + idle_cluster.tail_logs()
    (job,) = idle_cluster.jobs(f"dicomvec-{run_id}-")
    assert job["state"] == "FINISHED"                    # it ran on the cluster
    numbers = summary_numbers(proc.stdout)
    assert numbers["images stored"] == len(good), proc.stdout
    assert numbers["dead-lettered"] == len(broken), proc.stdout
    vectors = stored_vectors(tmp_path, model, good)
    assert set(vectors) == set(good)
    ref = reference("folder", model)
    for image_id, path in good.items():
        assert np.allclose(vectors[image_id], image_vector(ref, model_pixels(path)),
                           atol=1e-5), image_id
