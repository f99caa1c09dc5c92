"""What the 200-worker test's fork server holds before it forks (``test_scale.py``).

Everything a stand-in worker imports, optuna-dashboard too (a finished trial's note; it pulls
in scikit-learn), then ``gc.freeze()``: objects already there are never touched by the garbage
collector again, so 200 forked children share those pages instead of each copying them
(without it the children held about 20 GB on this 24 GB machine).
"""

import gc

import optuna  # noqa: F401
import optuna_dashboard  # noqa: F401
import psycopg2  # noqa: F401
import sqlalchemy  # noqa: F401

import hpo.notes
import hpo.worker.loop  # noqa: F401

gc.freeze()
