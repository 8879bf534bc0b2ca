"""What produced a model, as records: the tag and stage-name schema, MLflow tracking and the
model registry (the audit, which reads them back and reruns the chain, is :mod:`cirl.audit`)."""
