"""What people read off a study: ``status`` and the ``live`` view, the HTML ``report``, the
``export`` of the best trial (and ``train``, which trains the production model from it, with its
``model_card``), and ``analysis`` (pandas tables for notebooks).

Each view reads trials through ``hpo.records`` and nothing else; none writes to the study.
Modules are imported on use (``hpo.views.report`` and so on): ``train`` needs the trainer.
"""
