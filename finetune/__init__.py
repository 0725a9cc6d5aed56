"""Fine-tuning: refusal/QA dataset builder, QLoRA trainer, evaluation. Never imported by the API."""
