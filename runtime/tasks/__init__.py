"""Deterministic, seeded generators of the papers' own toy problems, as numpy batches.

`make_task(name, options)` builds a registered task; `task.batch(step, batch_size)` is the same
for the same seed and step; `task.eval_batches(batch_size)` is the validation data;
`task.feeds()` / `task.reads()` name the spec inputs it provides and the targets the loss reads;
`check_against(task, spec.inputs)` holds a task to a spec. Nothing downloads.

Tasks: copy, repeat_copy, associative_recall (NTM); sort, convex_hull, tsp (Pointer Networks,
Order Matters); nth_farthest (RMC); sort_of_clevr (Relation Networks); graph_properties (MPNN);
char_corpus (char-rnn), word_corpus (Zaremba et al.); ctc_spectrogram (CTC); seq2seq
(reversal / copy); preference_pairs (DPO); retrieval (synthetic passages); digits
(scikit-learn's bundled 8x8 digits, for the image classifiers); set_average (the sequence mean at
every position, for the transformer encoder).
"""
from . import clevr, images, induction, ntm, pairs, pointer, sequences, signals, text  # noqa: F401  (registers the tasks)
from .base import MAX_BATCH, MAX_ELEMENTS, TASKS, Slot, Task, TaskError, TaskOptions, check_against, make_task, register

__all__ = ["MAX_BATCH", "MAX_ELEMENTS", "TASKS", "Slot", "Task", "TaskError", "TaskOptions", "check_against",
           "make_task", "register"]
