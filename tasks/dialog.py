"""Dialog collection: WikiDialog, QReCC and Taskmaster (the three Dialog rows of flan_collection_info).

Every dialog becomes a canonical example `{history, question, answer}`: the turns before the last
user turn, the last user turn, and the reply to predict. Input inversion (reply → the question it
answers) is mixed in at 1 : 0.3 by `mixtures/flan2022.py`.

Data is read from `$FLAN_JAX_DATA_DIR/<dataset>/` (not in ../shared/data; registration still works):
* wiki_dialog/train.jsonl: rows with `utterances` (google-research/dialog-inpainting release, OQ);
* qrecc/qrecc_train.json: the JSON list of turns with `Context`, `Question`, `Answer` (apple/ml-qrecc);
* task_master/train.jsonl: rows with `utterances: [{"speaker", "text"}]` (Taskmaster-2, one per line).

Counts are approximate public training sizes (WikiDialog OQ ≈ 11.3M dialogs, QReCC 63,501 turns,
Taskmaster-2 17,289 dialogs); only QReCC and Taskmaster fall under the 200k cap.
"""
from typing import Any, Mapping

from flan_jax.data import sources
from flan_jax.data import templates
from flan_jax.data import user_tasks

COLLECTION = "dialog"
TYPES = (templates.ZS_NOOPT, templates.FS_NOOPT)


def _turns(history: list[str]) -> str:
  speakers = ("User", "Assistant")
  return "\n".join(f"{speakers[i % 2]}: {t}" for i, t in enumerate(history))


def from_utterances(utterances: list[str]) -> dict[str, str]:
  """A dialog (alternating user/assistant turns, ending with the assistant) as a canonical example."""
  if len(utterances) < 2:
    raise ValueError(f"A dialog needs at least two turns, got {len(utterances)}.")
  history = list(utterances[:-2])
  return {"history": _turns(history) or "(no earlier turns)", "question": utterances[-2],
          "answer": utterances[-1]}


def wiki_dialog_row(row: Mapping[str, Any]) -> dict[str, str]:
  return from_utterances([str(u) for u in row["utterances"]])


def qrecc_row(row: Mapping[str, Any]) -> dict[str, str]:
  return from_utterances([str(u) for u in row["Context"]] + [row["Question"], row["Answer"]])


def task_master_row(row: Mapping[str, Any]) -> dict[str, str]:
  return from_utterances([str(u["text"]) for u in row["utterances"]])


_PATTERNS = (
    ("{history}\nUser: {question}\nAssistant:", "{answer}"),
    ("Continue the conversation.\n\n{history}\nUser: {question}", "{answer}"),
    ("Here is a dialog.\n{history}\nUser: {question}\n\nWhat should the assistant say next?",
     "{answer}"),
    ("Conversation so far:\n{history}\n\nLatest message: {question}\nWrite a helpful reply.",
     "{answer}"),
    ("Answer the last question in this chat.\n{history}\nUser: {question}", "{answer}"),
    ("{history}\nUser: {question}\n\nRespond as the assistant.", "{answer}"),
    ("Read the chat and reply to the final message.\n\n{history}\nUser: {question}\nReply:",
     "{answer}"),
    ("Dialog history:\n{history}\nQuestion: {question}\nAnswer:", "{answer}"),
    ("Given this conversation, write the next turn.\n{history}\nUser: {question}", "{answer}"),
    ("{history}\nUser: {question}\nWhat is a good answer?", "{answer}"),
)
_INVERSION_PATTERNS = (
    ("{history}\nAssistant: {answer}\n\nWhat did the user ask just before this reply?",
     "{question}"),
    ("Here is a reply from a conversation: \"{answer}\"\nEarlier turns:\n{history}\n"
     "Write the user message it answers.", "{question}"),
    ("Guess the question.\nConversation:\n{history}\nAnswer given: {answer}", "{question}"),
    ("The assistant said: {answer}\nGiven the dialog below, what was the user's question?\n"
     "{history}", "{question}"),
    ("Fill in the missing user turn.\n{history}\nUser: ???\nAssistant: {answer}", "{question}"),
    ("Write a question that \"{answer}\" would answer, continuing this chat:\n{history}",
     "{question}"),
    ("Dialog:\n{history}\nReply: {answer}\nQuestion that led to the reply:", "{question}"),
    ("Reconstruct the user's message.\n\n{history}\n(user message)\nAssistant: {answer}",
     "{question}"),
    ("{history}\n\nThe next answer was \"{answer}\". What was asked?", "{question}"),
    ("Given the answer {answer}, and this conversation, write the question.\n{history}",
     "{question}"),
)
FAMILY = templates.TemplateFamily(
    "dialog", tuple(templates.Template(i, t) for i, t in _PATTERNS))
INVERSION_FAMILY = templates.TemplateFamily(
    "dialog_inversion", tuple(templates.Template(i, t) for i, t in _INVERSION_PATTERNS))

# name → (file under the data dir, file format, row mapping, count, count source)
DATASETS = {
    "wiki_dialog": ("wiki_dialog/train.jsonl", "jsonl", wiki_dialog_row, 11_264_129,
                    "approximate: WikiDialog OQ release"),
    "qrecc": ("qrecc/qrecc_train.json", "json", qrecc_row, 63_501, "approximate: QReCC train turns"),
    "task_master": ("task_master/train.jsonl", "jsonl", task_master_row, 17_289,
                    "approximate: Taskmaster-2 dialogs"),
}

for _name, (_file, _format, _row_fn, _count, _count_source) in DATASETS.items():
  _source = sources.local_source({"train": sources.data_dir() / _file}, file_format=_format,
                                 row_fn=_row_fn, num_input_examples={"train": _count})
  user_tasks.register_task(f"dialog_{_name}", _source, FAMILY, TYPES, collection=COLLECTION,
                           num_examples=_count, count_source=_count_source)
  user_tasks.register_task(f"dialog_{_name}_ii", _source, INVERSION_FAMILY, TYPES,
                           collection=COLLECTION + "_inversion", num_examples=_count,
                           count_source=_count_source)

TASK_LIST_SOURCE = f"DATASETS in flan_jax/tasks/dialog.py: {', '.join(DATASETS)}"
