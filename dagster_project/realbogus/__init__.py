"""Real/bogus scoring, the platform's side of it (Dagster-free): the labelled examples each difference leaves
(``examples``), the training set assembled from them and from human labels, the models trained, measured and
registered (``training``), their files (``model_files``), and the scoring of an observation's candidates into
ModelRun and Detection rows (``scoring``). The algorithms are in ``science.realbogus``, ``science.realbogus_cnn``,
``science.injection`` and ``science.scene``; the assets that run all this are in ``assets/realbogus``.
"""
