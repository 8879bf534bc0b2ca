"""``cirl audit``: the lineage of a registered model, checked and reproduced on demand.

* :func:`lineage` follows a ``models:/NAME@ALIAS`` (or ``models:/NAME/VERSION``) back through
  the records: the version's tags (data, code, environment, test scores), its source run (the
  ``register`` run) and that run's artifacts (evaluation, training config, provenance), the
  parent pipeline run and every stage run nested under it (oldest first, each with its
  parameters, tags and metrics), the dataset card of the ``prepare`` run, and the alias
  history of the model (:func:`cirl.lineage.registry.alias_history`). A version registered outside a
  pipeline has no parent: the chain is reported incomplete, which is not an error.
* :func:`verify` checks the records against the files: the manifest's SHA-256, every tile's
  SHA-256 (all splits), the registered weights against the recorded checkpoint hash, the
  registered weights re-evaluated on the recorded test split against the recorded scores
  (``tolerance``), and the registered ONNX model against those weights (``onnx_tolerance``).
* :func:`retrain` runs the recorded training again (phase I, select, phase II, evaluate; or the
  BCE baseline and evaluate) with the recorded parameters on the recorded data, and compares
  the retrained weights (tensor by tensor) and test scores with the registered ones. The
  command runs it in a fresh process (:func:`retrain_in_fresh_process`), as a pipeline task
  trains, so nothing the verification left in the process reaches the training.
* :func:`run` does what the command does: lineage, optionally verify and retrain, and writes
  ``OUT/audit.md`` and ``OUT/audit.json`` (each replaced atomically).

Every finding that makes an audit fail is a :class:`Difference` (kind, what, expected, found),
so a report says exactly which file, hash or score differs. See ``docs/audit.md``.

Modules: :mod:`~cirl.audit.record` (the lineage read back), :mod:`~cirl.audit.checks` (the
comparisons), :mod:`~cirl.audit.verify`, :mod:`~cirl.audit.retrain`, :mod:`~cirl.audit.report`
(``audit.md``), :mod:`~cirl.audit.command` (``cirl audit``); :mod:`~cirl.audit.results` holds
what they return.
"""

from cirl.audit.checks import locate_data
from cirl.audit.command import run
from cirl.audit.record import BCE_CHAIN, CIRL_CHAIN, lineage
from cirl.audit.report import markdown
from cirl.audit.results import AuditConfig, AuditResult, Difference, RetrainResult, VerifyResult
from cirl.audit.retrain import as_trained, cpu_kind_warning, retrain, retrain_in_fresh_process
from cirl.audit.verify import verify

__all__ = [
    "BCE_CHAIN",
    "CIRL_CHAIN",
    "AuditConfig",
    "AuditResult",
    "Difference",
    "RetrainResult",
    "VerifyResult",
    "as_trained",
    "cpu_kind_warning",
    "lineage",
    "locate_data",
    "markdown",
    "retrain",
    "retrain_in_fresh_process",
    "run",
    "verify",
]
