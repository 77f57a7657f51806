#!/bin/bash
# Session 17: the snippet probe on the default teacher, then what its take reads and its full evaluation.
cd "$(dirname "$0")"
PY=../../../../.venv/bin/python
T=${SAGE_OPD_CACHE:-$HOME/.cache/sage-opd}/tiny/teacher-c5a05ba7ab31fdbc/teacher
OUTM=/tmp/snippet_teacher
$PY snippet_probe.py $T $OUTM 300 48 4 2e-4 2>&1 | grep -v "Loading\|Writing" > snippet_probe.log
$PY probe_reads_task.py $OUTM 2>&1 | grep -v Loading > probe_reads_task_snippet.log
cd ../../../.. && .venv/bin/python -m harness experiment=paper_cpu mode=eval model.student.path=$OUTM model.teacher.path=$OUTM \
  hydra.run.dir=/tmp/eval_snippet > results/diagnosis/levers/session17/eval_snippet.log 2>&1
cp /tmp/eval_snippet/result.json results/diagnosis/levers/session17/eval_snippet_result.json
tail -2 results/diagnosis/levers/session17/eval_snippet.log
