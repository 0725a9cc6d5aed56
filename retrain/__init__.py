"""The retraining loop (layer 4, a front): flags in the answer log -> screened flags -> pairs and a
regression set -> a mix with the base data -> a warm-started adapter -> evaluation against the serving
adapter -> the gate -> the adapter registry and hot swap, plus the health monitor and the runs record.

Thin functions over ``candor.finetune`` (training, metrics), ``candor.service.answering`` (the answer core,
through which the evaluation asks every question: ``served.py``) and ``candor.feedback`` (the answer store);
``dvc.yaml`` runs each stage as `candor loop <stage>`, `candor retrain` runs them all.
"""
