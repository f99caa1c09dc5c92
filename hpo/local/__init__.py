"""One host: ``hpo run`` (create the study, start workers, watch), ``hpo launch`` (a worker per
GPU, restarted if it crashes) and the preflight checks a spec passes before anything starts.

Reading order: ``preflight``, ``launch``, ``run``.
"""

from hpo.local.launch import Launcher, build_slots, worker_command
from hpo.local.preflight import check_spec_file, inspect_spec_file
from hpo.local.run import run_study

__all__ = [
    "Launcher",
    "build_slots",
    "check_spec_file",
    "inspect_spec_file",
    "run_study",
    "worker_command",
]
