"""Fine-tuning (layer 4, a front): refusal/QA dataset builder, QLoRA trainer, evaluation. Never imported by the API."""
