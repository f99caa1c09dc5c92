"""What a study is asked to do: the YAML spec (``model``) and its search space (``space``).

Read ``model`` first (the spec's sections, each validated with an error that names its field),
then ``space`` (the one place that calls ``trial.suggest_*``). Nothing here imports Optuna's
storage, the worker or the trainer.
"""

from hpo.spec.model import SamplerSpec, StudySpec, load_spec, parse_spec, spec_from_json
from hpo.spec.space import SearchSpace

__all__ = ["SamplerSpec", "SearchSpace", "StudySpec", "load_spec", "parse_spec", "spec_from_json"]
